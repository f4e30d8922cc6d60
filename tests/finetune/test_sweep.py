"""Sweeps: every combination once, finished runs reused only with the same config, one table, a line per run."""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from xrayfm.errors import XrayfmError
from xrayfm.finetune import sweep as sweep_mod
from xrayfm.finetune.run import FinetuneConfig
from xrayfm.finetune.sweep import Backbone, markdown_table, run_sweep
from xrayfm.progress import PROGRESS_LOGGER


def fake_run_finetune(calls: list[tuple]):
    """A stand-in for ``run_finetune`` that writes a summary as the real one does (the config it
    ran, with ``train.steps`` resolved from the epochs), without training."""

    def fake_run(cfg: FinetuneConfig) -> dict:
        calls.append((cfg.arch, cfg.pretrained, cfg.mode, cfg.train_fraction, cfg.train.seed))
        out = Path(cfg.train.out_dir)
        out.mkdir(parents=True)
        train_images = int(100 * cfg.train_fraction)
        if cfg.train.steps <= 0:
            cfg.train.steps = max(1, math.ceil(cfg.epochs * train_images / cfg.train.batch_size))
        value = 0.5 + cfg.train_fraction / 4 + cfg.train.seed / 100
        summary = {
            "config": json.loads(json.dumps(asdict(cfg), default=str)),
            "train_images": train_images, "parameters": {"trainable_percent": 100.0},
            "evaluations": {"test": {"tasks": {"labels": {"headline": {
                "mean_auroc": {"value": value, "low": value - 0.1, "high": value + 0.1}}}}}},
        }  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    return fake_run


def test_backbone_parsing() -> None:
    assert Backbone.parse("mine=eva_x_tiny_patch16:runs/mim") == Backbone("mine", "eva_x_tiny_patch16", "runs/mim")
    assert Backbone.parse("r=resnet50").pretrained is None
    with pytest.raises(XrayfmError, match="LABEL=ARCH"):
        Backbone.parse("resnet50")


def test_sweep_runs_each_combination_once_and_resumes(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(sweep_mod, "run_finetune", fake_run_finetune(calls))
    base = FinetuneConfig(dataset="phantom", root="R")
    kw = dict(backbones=[Backbone("a", "eva_x_tiny_patch16"), Backbone("b", "resnet18", "w.pt")],
              modes=["full", "lora"], fractions=[0.1, 1.0], seeds=[0, 1], out_dir=tmp_path)  # fmt: skip
    table = run_sweep(base, **kw)
    assert len(calls) == 2 * 2 * 2 * 2 and len(set(calls)) == 16
    assert ("resnet18", "w.pt", "lora", 0.1, 1) in calls
    rows = list(csv.DictReader(open(table)))
    assert len(rows) == 16 and {r["metric"] for r in rows} == {"mean_auroc"}
    assert base.arch == "eva_x_tiny_patch16" and base.train.seed == 0  # the base config is not mutated
    run_sweep(base, **kw)  # everything finished: nothing runs again
    assert len(calls) == 16
    md = (tmp_path / "sweep.md").read_text()
    assert "| a | full | 0.1 | 0.530 (seeds 0.525–0.535, n=2) |" in md


def test_markdown_single_seed_shows_the_interval() -> None:
    rows = [{"backbone": "a", "mode": "full", "fraction": 1.0, "split": "test", "task": "t", "metric": "m",
             "value": 0.9, "low": 0.8, "high": 0.95}]  # fmt: skip
    assert "| a | full | 1 | 0.900 [0.800, 0.950] |" in markdown_table(rows)


def _one_run_sweep(base: FinetuneConfig, out: Path) -> Path:
    return run_sweep(base, backbones=[Backbone("a", "resnet18")], modes=["full"], fractions=[0.5], seeds=[0],
                     out_dir=out)  # fmt: skip


def test_a_changed_config_runs_again_and_says_which_keys_differ(tmp_path: Path, monkeypatch, caplog) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(sweep_mod, "run_finetune", fake_run_finetune(calls))
    base = FinetuneConfig(dataset="phantom", root="R", epochs=2)
    base.train.steps = 0  # resolved from the epochs, as the benchmarks do
    _one_run_sweep(base, tmp_path / "sweep")
    stale = tmp_path / "sweep" / "a_full_f0.5_s0" / "stale.txt"
    stale.write_text("left by the first run")
    caplog.set_level(logging.WARNING, logger="xrayfm.finetune.sweep")
    _one_run_sweep(base, tmp_path / "sweep")  # same config: the recorded resolved steps match
    assert len(calls) == 1 and not caplog.records

    base.train.lr, base.img_size = 5e-4, 128
    _one_run_sweep(base, tmp_path / "sweep")
    assert len(calls) == 2
    assert "differs in img_size, train.lr" in caplog.text and "running it again" in caplog.text
    assert not stale.exists()  # run from scratch, not resumed from the old run's checkpoint

    base.train.steps = 7  # explicit steps differ from the 2 epochs' worth the run recorded
    _one_run_sweep(base, tmp_path / "sweep")
    assert len(calls) == 3 and "train.steps" in caplog.records[-1].getMessage()


def test_identical_config_is_reused_wherever_the_sweep_folder_is(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(sweep_mod, "run_finetune", fake_run_finetune(calls))
    base = FinetuneConfig(dataset="phantom", root="R")
    _one_run_sweep(base, tmp_path / "first")
    shutil.copytree(tmp_path / "first", tmp_path / "moved")
    base.train.log_every = 1  # logging cadence does not change the result
    table = _one_run_sweep(base, tmp_path / "moved")
    assert len(calls) == 1 and len(list(csv.DictReader(open(table)))) == 1


def test_a_summary_without_config_runs_again(tmp_path: Path, monkeypatch, caplog) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(sweep_mod, "run_finetune", fake_run_finetune(calls))
    run = tmp_path / "a_full_f0.5_s0"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"train_images": 50}))
    _one_run_sweep(FinetuneConfig(dataset="phantom", root="R"), tmp_path)
    assert len(calls) == 1 and "records no config" in caplog.text


def test_each_run_is_announced_when_it_starts_ends_or_is_reused(tmp_path: Path, monkeypatch, caplog) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(sweep_mod, "run_finetune", fake_run_finetune(calls))
    monkeypatch.setattr(logging.getLogger(PROGRESS_LOGGER), "propagate", True)  # the CLI prints it on its own
    base = FinetuneConfig(dataset="phantom", root="R")
    kw = dict(backbones=[Backbone("a", "resnet18")], modes=["full", "lora"], fractions=[0.5], seeds=[0],
              out_dir=tmp_path)  # fmt: skip

    def lines() -> list[str]:
        found = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
        caplog.clear()
        return found

    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        run_sweep(base, **kw)
        first = lines()
        run_sweep(base, **kw)
        assert lines() == [
            "run 1/2 a full f0.5 s0: reused, test labels mean_auroc 0.625",
            "run 2/2 a lora f0.5 s0: reused, test labels mean_auroc 0.625",
        ]
        monkeypatch.setattr(sweep_mod, "is_global_zero", lambda: False)  # another rank of a multi-process run
        run_sweep(base, **kw)
        assert lines() == []
    assert [line.split(":")[0] for line in first] == ["run 1/2 a full f0.5 s0"] * 2 + ["run 2/2 a lora f0.5 s0"] * 2
    assert first[0].endswith(": started") and first[2].endswith(": started")
    for done in (first[1], first[3]):
        assert re.fullmatch(r"run \d/2 a \w+ f0\.5 s0: done in \d+ s, test labels mean_auroc 0\.625", done), done
