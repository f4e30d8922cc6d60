"""The evaluation report renders what it is given: tables, ROC curves passed in, mask overlays."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

from xrayfm.report import evaluation_report
from xrayfm.report.evaluation_report import write_evaluation_report


def _result() -> dict:
    ci = {"value": 0.8, "low": 0.7, "high": 0.9}
    return {
        "dataset": "phantom", "split": "test", "n": 4, "n_boot": 10, "seed": 0, "model": "tiny",
        "task_specs": [
            {"name": "findings", "kind": "multilabel", "classes": ["a", "b"]},
            {"name": "lungs", "kind": "segmentation", "classes": ["lungs"]},
        ],
        "tasks": {
            "findings": {
                "metrics": {"kind": "multilabel", "threshold": 0.5, "notes": ["b: AUROC undefined"],
                            "per_class": {"a": {"positives": 2, "negatives": 2, "auroc": 0.8}, "b": {}}},
                "cis": {"per_class": {"a": {"auroc": ci}}},
                "headline": {"mean_auroc": ci},
            },
            "lungs": {
                "metrics": {"per_image": {"dice": [[0.9], [0.1], [0.5], [0.7]]}},
                "cis": {"per_class": {"lungs": {"dice": ci, "jaccard": ci}}},
                "headline": {"mean_dice": ci},
            },
        },
    }  # fmt: skip


def _inputs() -> tuple[dict, list]:
    mask = np.zeros((4, 1, 8, 8), np.uint8)
    mask[:, :, 2:6, 2:6] = 1
    predictions = {"lungs": {"probs": np.full((4, 1, 8, 8), 0.9, np.float16), "mask": mask}}
    dataset = [{"image": torch.full((1, 8, 8), 0.5)} for _ in range(4)]
    return predictions, dataset


def test_report_draws_the_roc_curves_it_is_given(tmp_path: Path) -> None:
    predictions, dataset = _inputs()
    roc = {"findings": {"a": {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 1.0, 1.0], "auroc": 0.75},
                        "b": {"fpr": [], "tpr": [], "auroc": None}}}  # fmt: skip
    path = write_evaluation_report(_result(), predictions, dataset, tmp_path / "r" / "report.html", roc=roc, examples=2)
    html = path.read_text(encoding="utf-8")
    assert 'alt="ROC curves of findings" src="data:image/png;base64,' in html
    assert "0.800 <span" in html and "b: AUROC undefined" in html
    assert html.count("<figure>") == 2 and "#1 Dice 0.100" in html and "#0 Dice 0.900" in html  # worst, best
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]  # written atomically, no temporary


def test_report_without_curves_has_no_roc_figure(tmp_path: Path) -> None:
    predictions, dataset = _inputs()
    html = write_evaluation_report(_result(), predictions, dataset, tmp_path / "report.html").read_text("utf-8")
    assert "ROC curves" not in html and "<table>" in html


def test_report_imports_nothing_from_evaluate() -> None:
    """Imports run evaluate -> report; the report never reaches back."""
    tree = ast.parse(Path(evaluation_report.__file__).read_text(encoding="utf-8"))
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m.startswith("xrayfm.evaluate")]
