"""Evaluate a model on a dataset split: metrics with CIs, predictions, report.

Writes into ``out_dir``, each file atomically: ``metrics.json`` (point values, 95% bootstrap
intervals, notes, the decision thresholds and the split that chose them), ``predictions.npz``
(ids, probabilities and targets per task, for re-analysis: :func:`load_predictions`) and
``report.html``. :func:`evaluate_splits` evaluates several splits of one model, choosing the
multi-label decision thresholds on the validation split (:mod:`xrayfm.evaluate.thresholds`).

Imports run one way, evaluate -> report: this module computes everything the report shows
(metrics, intervals, ROC curves) and hands it to
:func:`~xrayfm.report.evaluation_report.write_evaluation_report`, which imports nothing from
:mod:`xrayfm.evaluate`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.bootstrap import classification_cis, segmentation_cis
from xrayfm.evaluate.box_bootstrap import detection_cis
from xrayfm.evaluate.box_metrics import detection_metrics
from xrayfm.evaluate.metrics import classification_metrics, roc_curves, segmentation_metrics
from xrayfm.evaluate.predict import predict
from xrayfm.evaluate.thresholds import ThresholdChoice, ThresholdRule, choose_task_thresholds
from xrayfm.io.atomic import atomic_path, atomic_write_json
from xrayfm.models.task_model import XrayModel
from xrayfm.report.evaluation_report import write_evaluation_report
from xrayfm.tasks import CLASSIFICATION_KINDS, TaskSpec

log = logging.getLogger(__name__)


def score_predictions(
    model: XrayModel, predictions: dict[str, Any], *, n_boot: int, seed: int, threshold: float | ThresholdChoice
) -> dict[str, Any]:
    """Metrics, intervals and headline numbers per task from :func:`predict` output.

    Args:
        model: The model whose task specs say how each task is scored.
        predictions: Output of :func:`~xrayfm.evaluate.predict.predict`; tasks missing from it
            are left out.
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.
        threshold: Multi-label decision threshold, or the per-class thresholds of a
            :class:`~xrayfm.evaluate.thresholds.ThresholdChoice`.

    Returns:
        Task name -> ``metrics`` (point values), ``cis`` (intervals) and ``headline`` (the
        intervals of the task's main numbers).
    """
    choice = threshold if isinstance(threshold, ThresholdChoice) else ThresholdChoice.fixed(threshold)
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
            thr = choice.for_task(t)
            m = classification_metrics(pred["probs"], pred["labels"], t.classes, kind=t.kind, threshold=thr)
            ci = classification_cis(pred["probs"], pred["labels"], t.classes, kind=t.kind, threshold=thr,
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
    threshold: float | ThresholdChoice = 0.5,
    batch_size: int = 16,
    device: str | None = None,
    model_name: str = "",
    predictions: dict[str, Any] | None = None,
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
        threshold: Decision threshold (multi-label sensitivity / specificity / accuracy), or the
            per-class thresholds chosen on another split
            (:func:`~xrayfm.evaluate.thresholds.choose_task_thresholds`).
        batch_size: Inference batch size.
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        model_name: How the report names the model (architecture, weights).
        predictions: The model's :func:`~xrayfm.evaluate.predict.predict` output on ``dataset``
            when already computed (it is not predicted again).

    Returns:
        ``model``, ``dataset``, ``split``, ``n`` (images), ``n_boot``, ``seed``, ``thresholds``
        (rule, the split that chose them, per task and class), ``task_specs``, ``tasks`` (per
        task ``metrics``, ``cis`` and ``headline``, as :func:`score_predictions`) and ``report``
        (the HTML file's path).
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if predictions is None:
        predictions = predict(model, dataset, batch_size=batch_size,
                              device=device or ("cuda" if torch.cuda.is_available() else "cpu"))  # fmt: skip
        model.cpu()
    choice = threshold if isinstance(threshold, ThresholdChoice) else ThresholdChoice.fixed(threshold)
    result = {
        "model": model_name,
        "dataset": getattr(dataset, "name", None),
        "split": getattr(dataset, "split", None),
        "n": len(predictions["ids"]),
        "n_boot": n_boot,
        "seed": seed,
        "thresholds": choice.to_dict(),
        "task_specs": [t.to_dict() for t in model.tasks],
        "tasks": score_predictions(model, predictions, n_boot=n_boot, seed=seed, threshold=choice),
    }
    save_predictions(out / "predictions.npz", model.tasks, predictions)
    curves = {
        t.name: roc_curves(predictions[t.name]["probs"], predictions[t.name]["labels"], t.classes)
        for t in model.tasks
        if t.kind in CLASSIFICATION_KINDS and t.name in predictions
    }
    report = write_evaluation_report(result, predictions, dataset, out / "report.html", roc=curves)
    result["report"] = str(report)
    atomic_write_json(out / "metrics.json", result)
    return result


def save_predictions(path: str | Path, tasks: list[TaskSpec], predictions: dict[str, Any]) -> Path:
    """Write :func:`~xrayfm.evaluate.predict.predict` output to ``path`` (``.npz``, atomically).

    Arrays are stored as ``TASK.FIELD``; detection's ragged fields as one JSON string per image.
    """
    arrays = {"ids": np.asarray(predictions["ids"])}
    kinds = {t.name: t.kind for t in tasks}
    for name, pred in predictions.items():
        if name == "ids":
            continue
        if kinds[name] == "detection":  # ragged: one object array per field
            for field in ("pred", "target"):
                arrays[f"{name}.{field}"] = np.asarray([json.dumps(_listed(d)) for d in pred[field]])
            arrays[f"{name}.index"] = np.asarray(pred["index"])
        else:
            arrays.update({f"{name}.{k}": v for k, v in pred.items()})
    with atomic_path(Path(path)) as tmp:  # the temporary ends in .npz, so numpy adds no suffix
        np.savez_compressed(tmp, **arrays)
    return Path(path)


def load_predictions(path: str | Path, tasks: list[TaskSpec]) -> dict[str, Any]:
    """Read predictions written by :func:`save_predictions` back into :func:`predict`'s form.

    Raises:
        XrayfmError: The file is missing or unreadable.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise XrayfmError(f"{path}: cannot read predictions ({exc})") from None
    out: dict[str, Any] = {"ids": [str(i) for i in arrays.pop("ids", [])]}
    for t in tasks:
        fields = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.split(".", 1)[0] == t.name}
        if not fields:
            continue
        if t.kind == "detection":
            out[t.name] = {
                "pred": [{k: np.asarray(v) for k, v in json.loads(str(d)).items()} for d in fields["pred"]],
                "target": [{k: np.asarray(v) for k, v in json.loads(str(d)).items()} for d in fields["target"]],
                "index": fields["index"].tolist(),
            }
        else:
            out[t.name] = fields
    return out


def evaluate_splits(
    model: XrayModel,
    datasets: Mapping[str, Dataset],
    out_dir: str | Path,
    *,
    threshold: str | float | ThresholdRule = "youden",
    threshold_split: str = "val",
    threshold_dataset: Dataset | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    device: str | None = None,
    model_name: str = "",
) -> dict[str, dict[str, Any]]:
    """Evaluate several splits of one model, with thresholds chosen on ``threshold_split``.

    Each split is predicted once. With a rule that reads data (``youden``, ``sens:0.9``) the
    thresholds are chosen on the predictions of ``threshold_split`` and used unchanged on every
    split; without that split the rule falls back to 0.5, which the result's ``thresholds`` notes
    say (choosing on the test split itself would flatter it).

    Args:
        model: The model.
        datasets: Split name -> dataset (already resized to the model's input), in evaluation order.
        out_dir: Each split's files go to ``OUT/eval_SPLIT``.
        threshold: ``youden``, ``sens:TARGET`` or a fixed number (see :mod:`xrayfm.evaluate.thresholds`).
        threshold_split: The split that chooses the thresholds.
        threshold_dataset: That split's dataset when it is not among ``datasets`` (predicted for the
            thresholds only, not evaluated).
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.
        batch_size: Inference batch size.
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        model_name: How the reports name the model.

    Returns:
        Split -> result of :func:`evaluate_dataset`.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rule = ThresholdRule.parse(threshold)
    predictions = {split: predict(model, ds, batch_size=batch_size, device=device) for split, ds in datasets.items()}
    if (
        rule.needs_data
        and threshold_split not in predictions
        and threshold_dataset is not None
        and len(threshold_dataset)
    ):
        predictions[threshold_split] = predict(model, threshold_dataset, batch_size=batch_size, device=device)
    model.cpu()
    if not rule.needs_data:
        choice = ThresholdChoice.fixed(float(rule.value))
    elif threshold_split in predictions:
        choice = choose_task_thresholds(model.tasks, predictions[threshold_split], rule, split=threshold_split)
    else:
        note = f"no {threshold_split} split to choose {rule} thresholds on: fixed 0.5 used"
        log.warning("%s", note)
        choice = ThresholdChoice.fixed(0.5, note)
    return {
        split: evaluate_dataset(model, ds, Path(out_dir) / f"eval_{split}", n_boot=n_boot, seed=seed,
                                threshold=choice, model_name=model_name, predictions=predictions[split])
        for split, ds in datasets.items()
    }  # fmt: skip


def load_evaluation(folder: str | Path) -> tuple[list[TaskSpec], dict[str, Any], ThresholdChoice]:
    """Task specs, predictions and thresholds of an evaluation folder written by :func:`evaluate_dataset`.

    Args:
        folder: A folder holding ``metrics.json`` and ``predictions.npz`` (e.g. ``RUN/eval_test``).

    Returns:
        ``(tasks, predictions, thresholds)``; an evaluation written before thresholds were
        recorded gets the threshold its metrics record.

    Raises:
        XrayfmError: A file is missing or unreadable.
    """
    folder = Path(folder)
    try:
        result = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError) as exc:
        raise XrayfmError(f"{folder / 'metrics.json'}: cannot read the evaluation ({exc})") from None
    tasks = [TaskSpec.from_dict(t) for t in result["task_specs"]]
    if "thresholds" in result:
        choice = ThresholdChoice.from_dict(result["thresholds"])
    else:
        choice = ThresholdChoice(rule="recorded")
        for t in tasks:
            thr = result["tasks"].get(t.name, {}).get("metrics", {}).get("threshold")
            if t.kind == "multilabel" and thr is not None:
                values = thr if isinstance(thr, list) else [thr] * len(t.classes)
                choice.tasks[t.name] = {c: float(v) for c, v in zip(t.classes, values)}
    return tasks, load_predictions(folder / "predictions.npz", tasks), choice
