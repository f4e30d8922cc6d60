"""A data-loading worker process that dies (a decoder crashing on a damaged file, the memory running out) is
named as such by the command line, with what to do, instead of reported as an internal error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch.utils.data.dataloader

import xrayfm.cli.data as data_commands
from xrayfm.cli import main
from xrayfm.errors import data_worker_death

#: A DataLoader whose worker dies on item 2 as a native decoder crash kills its process, run in a process of its
#: own (PyTorch reports a worker's death from a SIGCHLD handler, which must not fire inside the test runner).
#: ``PAUSE`` seconds pass before the crash: with a pause the main process has taken items 0 and 1 whole before the
#: worker dies; without one it may die while handing item 1 over, which PyTorch reports as a lost connection.
SCRIPT = """
import faulthandler, os, sys, time, torch
from torch.utils.data import DataLoader, Dataset
from xrayfm.errors import data_worker_death

PAUSE = float(sys.argv[1])

class AbortsOnTwo(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        if i == 2:
            time.sleep(PAUSE)
            faulthandler.disable()
            os.abort()
        return torch.tensor(i)

told = []
try:
    try:
        list(DataLoader(AbortsOnTwo(), batch_size=1, num_workers=1))
    except Exception as exc:
        told.append(data_worker_death(exc))
except Exception as exc:  # a second report of the same death, raised by the SIGCHLD handler while handling the first
    told.append(data_worker_death(exc))
print(next((t for t in told if t), "not recognised: " + repr(told)))
"""


def _loader_crash(pause: float) -> tuple[str, str]:
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(pause)], capture_output=True, text=True, timeout=120)
    return res.stdout.strip(), res.stdout + res.stderr


def test_a_worker_killed_mid_epoch_is_recognised_in_pytorchs_own_words() -> None:
    told, output = _loader_crash(pause=2.0)
    assert told.startswith("a data-loading worker process died (DataLoader worker (pid"), output
    assert "xrayfm inspect ROOT --check -1" in told and "fewer --workers" in told


def test_a_worker_killed_while_handing_over_a_batch_is_recognised_too() -> None:
    # no pause: whichever of PyTorch's reports comes first (its own words or the lost connection), it is named
    for _ in range(3):
        told, output = _loader_crash(pause=0.0)
        assert told.startswith("a data-loading worker process died (DataLoader worker"), output


def _raised_inside_the_loader(exc: BaseException) -> BaseException:
    """``exc`` as raised from code that PyTorch's DataLoader runs (its frame names dataloader.py)."""
    code = compile("raise exc", torch.utils.data.dataloader.__file__, "exec")
    try:
        exec(code, {"exc": exc})
    except BaseException as raised:  # noqa: BLE001 - handed back to the test
        return raised
    raise AssertionError("not raised")


@pytest.mark.parametrize("exc", [ConnectionResetError(104, "Connection reset by peer"), EOFError()])
def test_a_connection_lost_inside_the_loader_is_a_worker_death(exc: BaseException) -> None:
    told = data_worker_death(_raised_inside_the_loader(exc))
    assert told is not None and told.startswith(
        f"a data-loading worker process died (DataLoader worker connection lost: {type(exc).__name__}"
    )


def test_a_worker_death_found_along_the_exception_chain() -> None:
    try:
        try:
            raise RuntimeError("DataLoader worker (pid(s) 7) exited unexpectedly")
        except RuntimeError:
            raise ValueError("while shutting down") from None
    except ValueError as exc:
        outer = exc
    assert data_worker_death(outer) is None  # "from None" hides the cause on purpose
    outer.__cause__ = RuntimeError("DataLoader worker (pid 7) is killed by signal: Aborted.")
    assert "is killed by signal" in (data_worker_death(outer) or "")


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("CUDA out of memory"),
        ValueError("DataLoader worker (pid(s) 1) exited unexpectedly"),
        ConnectionResetError(104, "Connection reset by peer"),  # not from inside the loader
        _raised_inside_the_loader(EOFError("Caught EOFError in DataLoader worker process 0.")),  # a truncated file
    ],
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
