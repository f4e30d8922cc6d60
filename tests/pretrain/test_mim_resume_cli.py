"""``xrayfm pretrain mim`` stopped by SIGTERM saves and says how to resume; a rerun says where it resumed; a
corrupt or unsafe ``OUT/last.ckpt`` is one line and status 2, and runs no code."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.train import CHECKPOINT


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), n=8, seed=0, size=48)


def _args(data: Path, out: Path, steps: int) -> list[str]:
    return [
        "pretrain", "mim", "phantom", str(data), "--out", str(out), "--img-size", "32", "--batch-size", "4",
        "--steps", str(steps), "--warmup", "1", "--log-every", "1", "--accelerator", "cpu", "--precision", "32-true",
        "--checkpoint-minutes", "0",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_saves_and_the_rerun_says_where_it_resumed(phantom: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    env = {"CI": "true", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    proc = subprocess.Popen(
        [sys.executable, "-m", "xrayfm.cli", *_args(phantom, out, 10_000)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not ((out / "metrics.csv").is_file() and len((out / "metrics.csv").read_text().splitlines()) > 1):
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
    step = torch.load(out / CHECKPOINT, weights_only=True)["step"]
    assert proc.returncode == 143 and step >= 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last == (
        f"xrayfm: stopped by SIGTERM after step {step} of 10000, saved in {out / CHECKPOINT}; "
        "run the same command again to resume"
    )
    assert "Traceback" not in stderr

    assert main(_args(phantom, out, step + 1)) == 0
    assert f"resumed from step {step} of {step + 1} ({out / CHECKPOINT})" in capsys.readouterr().err.splitlines()
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(1, step + 2))


class RunsCode:
    """A pickle that runs a shell command when loaded without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["empty", "runs code"])
def test_a_bad_checkpoint_is_one_line_and_status_2(phantom: Path, tmp_path: Path, capsys, kind: str) -> None:
    out, marker = tmp_path / "run", tmp_path / "ran"
    out.mkdir()
    ckpt = out / CHECKPOINT
    ckpt.write_bytes(b"" if kind == "empty" else pickle.dumps({"step": RunsCode(marker)}))
    assert main(_args(phantom, out, 2)) == 2
    err = capsys.readouterr().err
    problem = "it is empty (0 bytes)" if kind == "empty" else "refused: the file asks to run code (posix.system)"
    assert err == (
        f"xrayfm: error: cannot resume from {ckpt}: {problem}; delete it to start again from step 0, or use a new "
        "--out\n"
    )
    assert not marker.exists()
