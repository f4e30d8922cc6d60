"""Evaluate a model on a dataset split: metrics with CIs, predictions, report.

Writes into ``out_dir``, each file atomically: ``metrics.json`` (point values, 95% bootstrap
intervals, notes), ``predictions.npz`` (ids, probabilities and targets per task, for
re-analysis) and ``report.html``.

Imports run one way, evaluate -> report: this module computes everything the report shows
(metrics, intervals, ROC curves) and hands it to
:func:`~xrayfm.report.evaluation_report.write_evaluation_report`, which imports nothing from
:mod:`xrayfm.evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from xrayfm.evaluate.bootstrap import classification_cis, detection_cis, segmentation_cis
from xrayfm.evaluate.metrics import classification_metrics, detection_metrics, roc_curves, segmentation_metrics
from xrayfm.evaluate.predict import predict
from xrayfm.io.atomic import atomic_path, atomic_write_json
from xrayfm.models.task_model import XrayModel
from xrayfm.report.evaluation_report import write_evaluation_report
from xrayfm.tasks import CLASSIFICATION_KINDS


def score_predictions(
    model: XrayModel, predictions: dict[str, Any], *, n_boot: int, seed: int, threshold: float
) -> dict[str, Any]:
    """Metrics, intervals and headline numbers per task from :func:`predict` output.

    Args:
        model: The model whose task specs say how each task is scored.
        predictions: Output of :func:`~xrayfm.evaluate.predict.predict`; tasks missing from it
            are left out.
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.
        threshold: Multi-label decision threshold.

    Returns:
        Task name -> ``metrics`` (point values), ``cis`` (intervals) and ``headline`` (the
        intervals of the task's main numbers).
    """
    tasks: dict[str, Any] = {}
    for t in model.tasks:
        pred = predictions.get(t.name)
        if pred is None:
            continue
        if t.kind == "detection":
            m = detection_metrics(pred["pred"], pred["target"], t.classes)
            ci = detection_cis(pred["pred"], pred["target"], t.classes, n_boot=n_boot, seed=seed)
            headline = {"map": ci["map"], "map_50": ci["map_50"]}
        elif t.kind == "segmentation":
            m = segmentation_metrics(pred["probs"] >= 0.5, pred["mask"], t.classes, return_per_image=True)
            ci = segmentation_cis(m["per_image"]["dice"], m["per_image"]["jaccard"], t.classes, n_boot=n_boot,
                                  seed=seed)  # fmt: skip
            headline = {"mean_dice": ci["mean_dice"], "mean_jaccard": ci["mean_jaccard"]}
        else:
            m = classification_metrics(pred["probs"], pred["labels"], t.classes, kind=t.kind, threshold=threshold)
            ci = classification_cis(pred["probs"], pred["labels"], t.classes, kind=t.kind, threshold=threshold,
                                    n_boot=n_boot, seed=seed)  # fmt: skip
            headline = {"mean_auroc": ci["mean_auroc"], "accuracy": ci["accuracy"]}
        tasks[t.name] = {"metrics": m, "cis": ci, "headline": headline}
    return tasks


def _listed(d: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() for k, v in d.items()}


def evaluate_dataset(
    model: XrayModel,
    dataset: Dataset,
    out_dir: str | Path,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
    batch_size: int = 16,
    device: str | None = None,
    model_name: str = "",
) -> dict[str, Any]:
    """Predict, score and report; returns the result written to ``metrics.json``.

    The report gets the ROC curve of each class of each classification task
    (:func:`~xrayfm.evaluate.metrics.roc_curves`); ``metrics.json`` does not (its size would
    grow with the number of images).

    Args:
        model: The model (its task specs say what is scored).
        dataset: Samples already resized to the model's input.
        out_dir: Folder for metrics.json, predictions.npz and report.html.
        n_boot: Bootstrap resamples for the 95% intervals.
        seed: Seed of the resampling.
        threshold: Decision threshold (multi-label sensitivity / specificity / accuracy).
        batch_size: Inference batch size.
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        model_name: How the report names the model (architecture, weights).

    Returns:
        ``model``, ``dataset``, ``split``, ``n`` (images), ``n_boot``, ``seed``, ``task_specs``,
        ``tasks`` (per task ``metrics``, ``cis`` and ``headline``, as :func:`score_predictions`)
        and ``report`` (the HTML file's path).
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions = predict(model, dataset, batch_size=batch_size, device=device)
    model.cpu()
    result = {
        "model": model_name,
        "dataset": getattr(dataset, "name", None),
        "split": getattr(dataset, "split", None),
        "n": len(predictions["ids"]),
        "n_boot": n_boot,
        "seed": seed,
        "task_specs": [t.to_dict() for t in model.tasks],
        "tasks": score_predictions(model, predictions, n_boot=n_boot, seed=seed, threshold=threshold),
    }
    arrays = {"ids": np.asarray(predictions["ids"])}
    kinds = {t.name: t.kind for t in model.tasks}
    for name, pred in predictions.items():
        if name == "ids":
            continue
        if kinds[name] == "detection":  # ragged: one object array per field
            for field in ("pred", "target"):
                arrays[f"{name}.{field}"] = np.asarray([json.dumps(_listed(d)) for d in pred[field]])
            arrays[f"{name}.index"] = np.asarray(pred["index"])
        else:
            arrays.update({f"{name}.{k}": v for k, v in pred.items()})
    with atomic_path(out / "predictions.npz") as tmp:  # the temporary ends in .npz, so numpy adds no suffix
        np.savez_compressed(tmp, **arrays)
    curves = {
        t.name: roc_curves(predictions[t.name]["probs"], predictions[t.name]["labels"], t.classes)
        for t in model.tasks
        if t.kind in CLASSIFICATION_KINDS and t.name in predictions
    }
    report = write_evaluation_report(result, predictions, dataset, out / "report.html", roc=curves)
    result["report"] = str(report)
    atomic_write_json(out / "metrics.json", result)
    return result
