"""The comparison and sweep reports show the paired differences, their intervals and DeLong's p."""

from __future__ import annotations

import ast
from pathlib import Path

from xrayfm.report import comparison_report
from xrayfm.report.comparison_report import write_comparison_report, write_sweep_report


def _leaf(a: float, b: float, low: float, high: float) -> dict:
    return {"a": a, "b": b, "difference": b - a, "low": low, "high": high, "n_boot": 100, "skipped": 0}


def _comparison() -> dict:
    delong = {"a": 0.7, "b": 0.8, "difference": 0.1, "se": 0.04, "z": 2.5, "p": 0.0124}
    thresholds = {"rule": "youden", "split": "val", "tasks": {}, "notes": [], "default": 0.5}
    return {
        "a": {"run": "runs/a", "arch": "resnet18", "thresholds": thresholds},
        "b": {"run": "runs/b", "arch": "eva_x_tiny", "thresholds": thresholds},
        "dataset": "phantom", "split": "test", "n": 40, "n_boot": 100, "seed": 0, "alpha": 0.05,
        "threshold_rule": "youden", "notes": ["B: labels/x: no positive or no negative case in val; threshold 0.5"],
        "tasks": {"labels": {"kind": "multilabel", "differences": {
            "mean_auroc": _leaf(0.7, 0.8, 0.02, 0.18), "accuracy": _leaf(0.6, 0.55, -0.1, 0.01),
            "per_class": {"x": {"auroc": _leaf(0.7, 0.8, 0.02, 0.18), "accuracy": _leaf(0.6, 0.55, -0.1, 0.01)}}},
            "delong": {"mean_auroc": delong, "per_class": {"x": {"auroc": delong}}}}},
    }  # fmt: skip


def test_comparison_report_shows_differences_intervals_and_delong(tmp_path: Path) -> None:
    page = write_comparison_report(_comparison(), tmp_path / "c.html").read_text("utf-8")
    assert "<td class='up'>+0.100 <span class='ci'>[+0.020, +0.180]</span></td><td>0.012</td>" in page
    assert "<td>-0.050 <span class='ci'>[-0.100, +0.010]</span></td>" in page  # interval holds 0: not coloured
    assert "A: youden chosen on val" in page and "runs/b (eva_x_tiny)" in page and "no positive or no negative" in page


def test_sweep_report_shows_seed_mean_sd_and_paired_differences(tmp_path: Path) -> None:
    stats = {
        "split": "test", "baseline": "random", "n_boot": 100, "notes": [],
        "rows": [{"backbone": "mine", "mode": "full", "fraction": 1.0, "task": "labels", "metric": "mean_auroc",
                  "n_seeds": 3, "mean": 0.81, "sd": 0.02}],
        "differences": [{"row": "mine full f1", "against": "random full f1", "task": "labels", "metric": "mean_auroc",
                         "per_seed": [0.05, 0.03, 0.04], "difference": 0.04, "sd": 0.01, "low": -0.01, "high": 0.09}],
    }  # fmt: skip
    page = write_sweep_report(stats, tmp_path / "s.html").read_text("utf-8")
    assert "<td>3</td><td>0.810</td><td>0.020</td>" in page
    assert "<td>mine full f1</td><td>random full f1</td><td>labels mean_auroc</td><td>3</td>" in page
    assert "+0.040 <span class='ci'>[-0.010, +0.090]</span>" in page
    stats["baseline"] = None
    assert "Paired differences" not in write_sweep_report(stats, tmp_path / "t.html").read_text("utf-8")


def test_comparison_report_imports_nothing_from_evaluate() -> None:
    tree = ast.parse(Path(comparison_report.__file__).read_text(encoding="utf-8"))
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m.startswith("xrayfm.evaluate")]
