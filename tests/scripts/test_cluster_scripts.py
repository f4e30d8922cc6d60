"""The cluster launch scripts (scripts/cluster): valid bash, and the xrayfm command line they launch parses with
xrayfm's own parser, using only options that exist, with devices and nodes matching the launcher's."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xrayfm.cli import build_parser
from xrayfm.cli.anatomy import merge_command_words
from xrayfm.cli.recipes import parse_with_recipe
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.shards import build_shards
from xrayfm.train import CHECKPOINT

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "cluster"
SLURM, TORCHRUN = SCRIPTS / "pretrain_mim.slurm", SCRIPTS / "pretrain_mim_torchrun.sh"
SLURM_ENV = {"SLURM_NTASKS_PER_NODE": "8", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "12"}
CLUSTER_PATHS = {"SHARDS": "/shared/shards/merged520k", "OUT": "/shared/runs/mim", "TEACHER": "/shared/mgca.ckpt"}


def _dry_run(script: Path, env: dict[str, str], *extra: str) -> list[str]:
    """The launch command line the script prints with XRAYFM_DRY_RUN=1, as words."""
    res = subprocess.run(
        ["bash", str(script), *extra], env={**os.environ, **env, "XRAYFM_DRY_RUN": "1"}, capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return shlex.split(res.stdout)


def _parser_of(parser: argparse.ArgumentParser, *words: str) -> argparse.ArgumentParser:
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def _xrayfm_args(words: list[str]) -> tuple[list[str], argparse.Namespace]:
    """The words after ``xrayfm``, parsed as ``xrayfm`` parses them (recipe included); every flag spelled in full."""
    argv = words[words.index("xrayfm") + 1 :]
    args = parse_with_recipe(build_parser(), merge_command_words(argv))
    known = {s for a in _parser_of(build_parser(), "pretrain", "mim")._actions for s in a.option_strings}
    flags = [w.split("=")[0] for w in argv if w.startswith("-")]
    assert set(flags) <= known, f"not options of pretrain mim (abbreviated?): {set(flags) - known}"
    return argv, args


@pytest.mark.parametrize("script", [SLURM, TORCHRUN], ids=lambda p: p.name)
def test_scripts_are_valid_bash(script: Path) -> None:
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_the_slurm_script_launches_one_ddp_process_per_gpu_of_every_node() -> None:
    text = SLURM.read_text()
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)", text, flags=re.M))
    assert directives["ntasks-per-node"] == directives["gpus-per-node"]  # one process per GPU
    assert not re.search(r"^[^#\n].*\n(?:.*\n)*#SBATCH", text, flags=re.M)  # directives before any command
    words = _dry_run(SLURM, {**SLURM_ENV, **CLUSTER_PATHS}, "--epochs", "5")
    assert words[0] == "srun"
    argv, args = _xrayfm_args(words)
    assert argv[:4] == ["pretrain", "mim", "shards", CLUSTER_PATHS["SHARDS"]] and args.out == CLUSTER_PATHS["OUT"]
    assert (args.devices, args.num_nodes, args.strategy) == ("8", 2, "ddp")  # from SLURM's environment
    assert args.accelerator == "gpu" and args.workers == 11 and args.teacher == CLUSTER_PATHS["TEACHER"]
    assert args.config == "eva_x_mim_base" and args.epochs == 5  # the recipe, then the options passed on


def test_the_slurm_script_needs_its_shared_folders() -> None:
    res = subprocess.run(["bash", str(SLURM)], env={**os.environ, **SLURM_ENV, "XRAYFM_DRY_RUN": "1"},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert res.returncode != 0 and "SHARDS" in res.stderr


def test_the_torchrun_script_gives_xrayfm_the_launchers_devices_and_nodes() -> None:
    env = {
        **CLUSTER_PATHS,
        "NNODES": "4",
        "NODE_RANK": "3",
        "NPROC_PER_NODE": "8",
        "MASTER_ADDR": "node0",
        "RECIPE": "",
    }
    words = _dry_run(TORCHRUN, env, "--steps", "10", "-o", "cache_dir=/tmp/c")
    launcher = argparse.ArgumentParser()
    for flag in ("--nnodes", "--node-rank", "--nproc-per-node", "--master-addr", "--master-port"):
        launcher.add_argument(flag)
    torchrun, _ = launcher.parse_known_args(words[1 : words.index("--no-python")])
    argv, args = _xrayfm_args(words)
    assert words[0] == "torchrun" and words[words.index("--no-python") + 1] == "xrayfm"
    assert (torchrun.nnodes, torchrun.node_rank, torchrun.nproc_per_node, torchrun.master_addr) == (
        "4",
        "3",
        "8",
        "node0",
    )
    assert (args.devices, args.num_nodes, args.strategy) == (torchrun.nproc_per_node, 4, "ddp")
    assert args.config is None and args.steps == 10 and args.option == ["cache_dir=/tmp/c"]


@pytest.mark.slow
def test_the_torchrun_script_trains_and_resumes_with_two_cpu_processes(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "phantom", n=16, seed=0, size=32)
    shards = tmp_path / "shards"
    build_shards([f"phantom:{data}"], shards, size=32, resize="square", chunk_mb=0.002)
    out = tmp_path / "run"
    env = {
        **os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "SHARDS": str(shards),
        "OUT": str(out), "RECIPE": "", "NPROC_PER_NODE": "2", "ACCELERATOR": "cpu", "WORKERS": "0",
        "MASTER_PORT": "29731", "OMP_NUM_THREADS": "1",
    }  # fmt: skip
    tiny = ["--img-size", "32", "--batch-size", "2", "--warmup", "1", "--precision", "32-true", "--log-every", "1"]
    for steps in (2, 3):  # the second call resumes from OUT/last.ckpt
        res = subprocess.run(["bash", str(TORCHRUN), *tiny, "--steps", str(steps)], env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["resumed_from_checkpoint"] and summary["steps_this_call"] == 1
    saved = torch.load(out / CHECKPOINT, weights_only=True)
    assert saved["step"] == 3 and saved["loader"]["num_samples_yielded"] > 0  # the stream position travels too
