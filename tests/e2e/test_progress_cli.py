"""What a user sees while ``xrayfm`` trains with its output piped: progress lines, and device mistakes in one line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cli_runner import SCRIPT, run


def test_a_gpu_run_without_a_gpu_is_one_line_before_the_dataset_is_read(tmp_path: Path) -> None:
    env = {"CI": "true", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [str(SCRIPT), "pretrain", "mim", "phantom", str(tmp_path / "no_such_dataset"), "--out", str(tmp_path / "r"),
         "--accelerator", "gpu"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2
    # the dataset root does not exist: had the dataset been built first, the error would name it
    assert res.stderr == (
        "xrayfm: error: --accelerator gpu: no CUDA GPU is visible on this machine "
        "(torch.cuda.is_available() is False); use --accelerator cpu or auto\n"
    )
    assert not (tmp_path / "r").exists()


def test_piped_pretraining_prints_a_progress_line_every_log_every_steps(tmp_path: Path) -> None:
    data = tmp_path / "ph"
    assert run("phantom", str(data), "-n", "12", "--size", "64").returncode == 0
    res = run(
        "pretrain", "mim", "phantom", str(data), "--out", str(tmp_path / "run"), "--img-size", "64",
        "--batch-size", "4", "--steps", "4", "--warmup", "1", "--log-every", "2", "--accelerator", "cpu",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("step ")]
    shape = r"step [24]/4  loss \d+\.\d{4}  lr \d\.\de-0\d  \d+\.\d img/s  ETA \d:\d\d:\d\d"
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"] and all(re.fullmatch(shape, x) for x in lines), lines
    assert res.stdout.count("pretraining finished") == 1 and "step " not in res.stdout
