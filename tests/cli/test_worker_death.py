"""A data-loading worker process that dies (a decoder crashing on a damaged file, the memory running out) is
named as such by the command line, with what to do, instead of reported as an internal error."""

from __future__ import annotations

import subprocess
import sys

import pytest

import xrayfm.cli.data as data_commands
from xrayfm.cli import main
from xrayfm.errors import data_worker_death

#: A DataLoader whose worker dies on item 2 as a native decoder crash kills its process, run in a process of its
#: own (PyTorch reports a worker's death from a SIGCHLD handler, which must not fire inside the test runner).
SCRIPT = """
import faulthandler, os, torch
from torch.utils.data import DataLoader, Dataset
from xrayfm.errors import data_worker_death

class AbortsOnTwo(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            faulthandler.disable()
            os.abort()
        return torch.tensor(i)

told = []
try:
    try:
        list(DataLoader(AbortsOnTwo(), batch_size=1, num_workers=1))
    except RuntimeError as exc:
        told.append(data_worker_death(exc))
except (RuntimeError, EOFError) as exc:  # a second report of the same death, raised while the loader shuts down
    told.append(data_worker_death(exc))
print(next((t for t in told if t), "not recognised: " + repr(told)))
"""


def test_a_worker_killed_mid_epoch_is_recognised_in_pytorchs_own_words() -> None:
    # PyTorch reports the death as "is killed by signal" or "exited unexpectedly", or now and then only as an
    # EOFError on the loader's queue, depending on which of its threads sees it first: three tries
    for _ in range(3):
        res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
        told = res.stdout.strip()
        if "DataLoader worker" in told:
            break
    assert told.startswith("a data-loading worker process died (DataLoader worker (pid"), res.stdout + res.stderr
    assert "xrayfm inspect ROOT --check -1" in told and "fewer --workers" in told


@pytest.mark.parametrize(
    "exc", [RuntimeError("CUDA out of memory"), ValueError("DataLoader worker (pid(s) 1) exited unexpectedly")]
)
def test_other_errors_are_not_taken_for_a_worker_death(exc: Exception) -> None:
    assert data_worker_death(exc) is None


def test_the_command_line_names_it_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def dies(args):  # noqa: ANN001, ANN202
        raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")

    monkeypatch.setattr(data_commands, "cmd_datasets", dies)
    assert main(["datasets"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("xrayfm: error: a data-loading worker process died (DataLoader worker (pid(s) 4242) exited")
    assert "internal error" not in err and len(err.strip().splitlines()) == 1
