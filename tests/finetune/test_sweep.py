"""Sweeps: every combination once, finished runs reused, one table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from xrayfm.errors import XrayfmError
from xrayfm.finetune import sweep as sweep_mod
from xrayfm.finetune.run import FinetuneConfig
from xrayfm.finetune.sweep import Backbone, markdown_table, run_sweep


def test_backbone_parsing() -> None:
    assert Backbone.parse("mine=eva_x_tiny_patch16:runs/mim") == Backbone("mine", "eva_x_tiny_patch16", "runs/mim")
    assert Backbone.parse("r=resnet50").pretrained is None
    with pytest.raises(XrayfmError, match="LABEL=ARCH"):
        Backbone.parse("resnet50")


def test_sweep_runs_each_combination_once_and_resumes(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_run(cfg: FinetuneConfig) -> dict:
        calls.append((cfg.arch, cfg.pretrained, cfg.mode, cfg.train_fraction, cfg.train.seed))
        out = Path(cfg.train.out_dir)
        out.mkdir(parents=True)
        value = 0.5 + cfg.train_fraction / 4 + cfg.train.seed / 100
        summary = {
            "train_images": int(100 * cfg.train_fraction), "parameters": {"trainable_percent": 100.0},
            "evaluations": {"test": {"tasks": {"labels": {"headline": {
                "mean_auroc": {"value": value, "low": value - 0.1, "high": value + 0.1}}}}}},
        }  # fmt: skip
        (out / "summary.json").write_text(__import__("json").dumps(summary))
        return summary

    monkeypatch.setattr(sweep_mod, "run_finetune", fake_run)
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
