"""Sweeps: every combination once, finished runs reused only with the same config, one table, a line per run."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.bootstrap import rank_auroc
from xrayfm.evaluate.run import save_predictions
from xrayfm.evaluate.thresholds import ThresholdChoice
from xrayfm.finetune import sweep as sweep_mod
from xrayfm.finetune.run import FinetuneConfig
from xrayfm.finetune.sweep import Backbone, Baseline, markdown_table, run_sweep
from xrayfm.progress import PROGRESS_LOGGER
from xrayfm.tasks import TaskSpec
from xrayfm.train import TrainConfig


def fake_run_finetune(calls: list[tuple]):
    """A stand-in for ``run_finetune`` that writes a summary as the real one does (the config it
    ran, as given), without training."""

    def fake_run(cfg: FinetuneConfig) -> dict:
        calls.append((cfg.arch, cfg.pretrained, cfg.mode, cfg.train_fraction, cfg.train.seed))
        out = Path(cfg.train.out_dir)
        out.mkdir(parents=True)
        train_images = int(100 * cfg.train_fraction)
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
    assert "| a | full | 0.1 | 0.530 ± 0.007 (n=2) |" in md  # mean ± sd over the seeds


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
    base = FinetuneConfig(dataset="phantom", root="R", train=TrainConfig(steps=0, epochs=2))
    _one_run_sweep(base, tmp_path / "sweep")
    stale = tmp_path / "sweep" / "a_full_f0.5_s0" / "stale.txt"
    stale.write_text("left by the first run")
    caplog.set_level(logging.WARNING, logger="xrayfm.finetune.sweep")
    _one_run_sweep(base, tmp_path / "sweep")  # same config: the recorded resolved steps match
    assert len(calls) == 1 and not [r for r in caplog.records if r.levelno >= logging.WARNING]

    base.train.lr, base.img_size = 5e-4, 128
    _one_run_sweep(base, tmp_path / "sweep")
    assert len(calls) == 2
    assert "differs in img_size, train.lr" in caplog.text and "running it again" in caplog.text
    assert not stale.exists()  # run from scratch, not resumed from the old run's checkpoint

    base.train.steps = 7  # a duration in steps is another config than one in epochs
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
        # each record once: a capture handler another test left on a logger may see a record twice
        found = [r.getMessage() for r in dict.fromkeys(caplog.records) if r.name == PROGRESS_LOGGER]
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


N_TEST = 80
_LABELS = (np.random.default_rng(99).random(N_TEST) < 0.4).astype(float)


def fake_run_with_predictions(calls: list[tuple]):
    """A stand-in for ``run_finetune`` that saves test predictions as the real evaluation does:
    backbone ``good`` scores the same images better than ``base``, and each seed adds its own noise."""

    def fake_run(cfg: FinetuneConfig) -> dict:
        calls.append((cfg.arch, cfg.mode, cfg.train.seed))
        out = Path(cfg.train.out_dir)
        rng = np.random.default_rng(cfg.train.seed + (100 if cfg.arch == "good" else 0))
        signal = 0.5 if cfg.arch == "good" else 0.15
        probs = np.clip(rng.random(N_TEST) * 0.7 + signal * _LABELS, 0, 1)
        task = TaskSpec("labels", "multilabel", ("finding",))
        predictions = {"ids": [f"img{i}" for i in range(N_TEST)], "labels": {"probs": probs[:, None],
                       "labels": _LABELS[:, None]}}  # fmt: skip
        (out / "eval_test").mkdir(parents=True)
        save_predictions(out / "eval_test" / "predictions.npz", [task], predictions)
        auroc = rank_auroc(probs, _LABELS)
        result = {"task_specs": [task.to_dict()], "thresholds": ThresholdChoice.fixed(0.5).to_dict(),
                  "tasks": {"labels": {"headline": {"mean_auroc": {"value": auroc, "low": None, "high": None}}}}}  # fmt: skip
        (out / "eval_test" / "metrics.json").write_text(json.dumps(result))
        summary = {"config": json.loads(json.dumps(asdict(cfg), default=str)), "train_images": 10,
                   "parameters": {"trainable_percent": 100.0}, "evaluations": {"test": result}}  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    return fake_run


def test_seeds_give_mean_sd_and_paired_differences_against_the_baseline(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple] = []
    monkeypatch.setattr(sweep_mod, "run_finetune", fake_run_with_predictions(calls))
    base = FinetuneConfig(dataset="phantom", root="R", n_boot=200)
    run_sweep(base, backbones=[Backbone("base", "base"), Backbone("good", "good")], modes=["full"], fractions=[1.0],
              seeds=[0, 1, 2], out_dir=tmp_path, baseline="base")  # fmt: skip
    assert len(calls) == 6
    stats = json.loads((tmp_path / "sweep_stats.json").read_text())
    aurocs = {}
    for arch in ("base", "good"):
        for seed in (0, 1, 2):
            probs = np.load(tmp_path / f"{arch}_full_f1_s{seed}" / "eval_test" / "predictions.npz")["labels.probs"]
            aurocs[arch, seed] = rank_auroc(probs[:, 0], _LABELS)
    good = next(r for r in stats["rows"] if r["backbone"] == "good")
    values = [aurocs["good", s] for s in (0, 1, 2)]
    assert good["n_seeds"] == 3 and good["values"] == pytest.approx(values)
    assert good["mean"] == pytest.approx(np.mean(values)) and good["sd"] == pytest.approx(np.std(values, ddof=1))
    (diff,) = stats["differences"]
    per_seed = [aurocs["good", s] - aurocs["base", s] for s in (0, 1, 2)]
    assert diff["row"] == "good full f1" and diff["against"] == "base full f1" and diff["seeds"] == [0, 1, 2]
    assert diff["per_seed"] == pytest.approx(per_seed) and diff["difference"] == pytest.approx(np.mean(per_seed))
    assert 0 < diff["low"] < diff["difference"] < diff["high"]  # a clear, paired improvement
    assert diff["n_boot"] == 200
    md = (tmp_path / "sweep.md").read_text()
    assert "paired differences against base" in md and "| good full f1 | base full f1 | labels mean_auroc | 3 |" in md
    page = (tmp_path / "sweep.html").read_text()
    assert "Paired differences against base" in page and "good full f1" in page


def test_a_single_seed_keeps_the_table_and_gets_an_image_interval(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sweep_mod, "run_finetune", fake_run_with_predictions([]))
    base = FinetuneConfig(dataset="phantom", root="R", n_boot=100)
    run_sweep(base, backbones=[Backbone("base", "base"), Backbone("good", "good")], modes=["full"], fractions=[1.0],
              seeds=[0], out_dir=tmp_path, baseline="base")  # fmt: skip
    stats = json.loads((tmp_path / "sweep_stats.json").read_text())
    assert {r["sd"] for r in stats["rows"]} == {None}
    (diff,) = stats["differences"]
    assert diff["sd"] is None and diff["low"] < diff["difference"] < diff["high"]


def test_a_run_without_saved_predictions_is_noted_not_paired(tmp_path: Path, monkeypatch) -> None:
    fake = fake_run_with_predictions([])

    def without_predictions(cfg: FinetuneConfig) -> dict:
        summary = fake(cfg)
        (Path(cfg.train.out_dir) / "eval_test" / "predictions.npz").unlink()
        return summary

    monkeypatch.setattr(sweep_mod, "run_finetune", without_predictions)
    run_sweep(FinetuneConfig(dataset="phantom", root="R", n_boot=10), backbones=[Backbone("base", "base"),
              Backbone("good", "good")], modes=["full"], fractions=[1.0], seeds=[0], out_dir=tmp_path,
              baseline="base")  # fmt: skip
    stats = json.loads((tmp_path / "sweep_stats.json").read_text())
    assert stats["differences"] == [] and "good full f1 vs base full f1: not paired" in stats["notes"][0]


def test_baselines_are_parsed_and_checked() -> None:
    assert Baseline.parse("random") == Baseline("random")
    assert Baseline.parse("random/full/0.1") == Baseline("random", "full", 0.1)
    assert Baseline("random", None, 0.1).of(("mine", "lora", 1.0)) == ("random", "lora", 0.1)
    for bad in ("", "a//b", "a/full/x", "a/b/c/d"):
        with pytest.raises(XrayfmError, match="baseline"):
            Baseline.parse(bad)
    backbones = [Backbone("a", "resnet18")]
    with pytest.raises(XrayfmError, match="baseline backbone 'b' is not in the sweep"):
        Baseline("b").check(backbones, ["full"], [1.0])
    with pytest.raises(XrayfmError, match="baseline fraction 0.5"):
        Baseline("a", "full", 0.5).check(backbones, ["full"], [1.0])
