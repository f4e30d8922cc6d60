"""Compare two fine-tuned models on the same images: what ``xrayfm compare`` calls.

Both models predict the split once each (and, for thresholds chosen by a rule, the validation
split once each); the predictions are matched by image id, and every metric's difference B - A
gets a paired-bootstrap interval (:func:`~xrayfm.evaluate.paired.paired_differences`), AUROC also
DeLong's test (:func:`~xrayfm.evaluate.paired.delong_classification`). Each model keeps its own
thresholds, chosen by the same rule on its own validation predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xrayfm.errors import XrayfmError
from xrayfm.evaluate.bootstrap import Resamples, classification_resamples, segmentation_resamples
from xrayfm.evaluate.box_bootstrap import detection_resamples
from xrayfm.evaluate.metrics import overlap_per_image
from xrayfm.evaluate.paired import delong_classification, paired_differences
from xrayfm.evaluate.predict import predict
from xrayfm.evaluate.thresholds import ThresholdChoice, ThresholdRule, choose_task_thresholds
from xrayfm.tasks import CLASSIFICATION_KINDS, TaskSpec

log = logging.getLogger(__name__)


def common_tasks(tasks_a: Sequence[TaskSpec], tasks_b: Sequence[TaskSpec]) -> tuple[list[TaskSpec], list[str]]:
    """The tasks both models have, identical in kind and classes, and notes on the others.

    Raises:
        XrayfmError: A task of the same name differs in kind or classes, or no task is shared.
    """
    by_name = {t.name: t for t in tasks_b}
    shared, notes = [], []
    for t in tasks_a:
        other = by_name.get(t.name)
        if other is None:
            notes.append(f"task {t.name!r} only in A: not compared")
        elif other != t:
            raise XrayfmError(f"the runs are not comparable: task {t.name!r} is {t.kind} {list(t.classes)} in A but "
                              f"{other.kind} {list(other.classes)} in B")  # fmt: skip
        else:
            shared.append(t)
    notes += [f"task {name!r} only in B: not compared" for name in by_name if name not in {t.name for t in tasks_a}]
    if not shared:
        raise XrayfmError("the runs are not comparable: they share no task")
    return shared, notes


def align_ids(ids_a: Sequence[str], ids_b: Sequence[str]) -> np.ndarray:
    """Index into ``ids_b`` of each id of ``ids_a`` (same image set, any order).

    Raises:
        XrayfmError: Ids repeat, or the two sets of images differ.
    """
    ids_a, ids_b = [str(i) for i in ids_a], [str(i) for i in ids_b]
    for name, ids in (("A", ids_a), ("B", ids_b)):
        if len(set(ids)) != len(ids):
            raise XrayfmError(f"image ids repeat in the predictions of {name}: images cannot be paired")
    only_a, only_b = set(ids_a) - set(ids_b), set(ids_b) - set(ids_a)
    if only_a or only_b:
        example = sorted(only_a or only_b)[0]
        raise XrayfmError(f"the two models were scored on different images ({len(only_a)} only in A, {len(only_b)} "
                          f"only in B, e.g. {example!r}): a paired comparison needs the same set")  # fmt: skip
    where = {i: k for k, i in enumerate(ids_b)}
    return np.array([where[i] for i in ids_a], dtype=np.int64)


def _reorder(task: TaskSpec, pred: dict[str, Any], order: np.ndarray, ids_b: Sequence[str], ids_a: Sequence[str]):
    """B's predictions of ``task`` in A's image order (``order`` from :func:`align_ids`)."""
    if task.kind != "detection":
        return {k: np.asarray(v)[order] for k, v in pred.items()}
    by_id = {str(ids_b[i]): k for k, i in enumerate(pred["index"])}
    pos = {str(i): k for k, i in enumerate(ids_a)}
    keep = sorted(by_id, key=pos.__getitem__)
    return {
        "pred": [pred["pred"][by_id[i]] for i in keep],
        "target": [pred["target"][by_id[i]] for i in keep],
        "index": [pos[i] for i in keep],
    }


def _same_targets(task: TaskSpec, a: dict[str, Any], b: dict[str, Any]) -> bool:
    if task.kind == "detection":
        return a["index"] == b["index"] and all(
            np.array_equal(np.asarray(x[k]), np.asarray(y[k]))
            for x, y in zip(a["target"], b["target"])
            for k in ("boxes", "labels")
        )
    key = "labels" if task.kind in CLASSIFICATION_KINDS else "mask"
    return np.array_equal(np.asarray(a[key]), np.asarray(b[key]), equal_nan=task.kind in CLASSIFICATION_KINDS)


def _resamples(task: TaskSpec, pred: dict[str, Any], threshold: Any, *, n_boot: int, seed: int) -> Resamples:
    if task.kind == "detection":
        return detection_resamples(pred["pred"], pred["target"], task.classes, n_boot=n_boot, seed=seed)
    if task.kind == "segmentation":
        dice, jaccard = overlap_per_image(np.asarray(pred["probs"]) >= 0.5, pred["mask"])
        return segmentation_resamples(dice, jaccard, task.classes, n_boot=n_boot, seed=seed)
    return classification_resamples(pred["probs"], pred["labels"], task.classes, kind=task.kind, threshold=threshold,
                                    n_boot=n_boot, seed=seed)  # fmt: skip


def compare_predictions(
    tasks: Sequence[TaskSpec],
    pred_a: Mapping[str, Any],
    pred_b: Mapping[str, Any],
    *,
    thresholds_a: ThresholdChoice | None = None,
    thresholds_b: ThresholdChoice | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired differences B - A of every metric of ``tasks``, and DeLong's test for AUROC.

    Args:
        tasks: Tasks both models have (see :func:`common_tasks`).
        pred_a: :func:`~xrayfm.evaluate.predict.predict` output of model A.
        pred_b: The same for model B on the same images (any order: matched by id).
        thresholds_a: A's multi-label decision thresholds (default 0.5).
        thresholds_b: B's.
        n_boot: Bootstrap resamples (the same for both models).
        seed: Seed of the resampling.
        alpha: 1 - coverage.

    Returns:
        ``n`` (images) and ``tasks`` -> name -> ``kind``, ``differences`` (as
        :func:`~xrayfm.evaluate.paired.paired_differences`) and, for classification, ``delong``.

    Raises:
        XrayfmError: The image sets or the reference labels of the two differ.
    """
    out: dict[str, Any] = {"n": len(pred_a["ids"]), "tasks": {}}
    pairs = paired_resamples(tasks, pred_a, pred_b, thresholds_a=thresholds_a, thresholds_b=thresholds_b,
                             n_boot=n_boot, seed=seed)  # fmt: skip
    order = align_ids(pred_a["ids"], pred_b["ids"])
    for t in tasks:
        if t.name not in pairs:
            continue
        ra, rb = pairs[t.name]
        res: dict[str, Any] = {"kind": t.kind, "differences": paired_differences(ra, rb, alpha=alpha)}
        if t.kind in CLASSIFICATION_KINDS:
            a, b = pred_a[t.name], pred_b[t.name]
            res["delong"] = delong_classification(a["probs"], np.asarray(b["probs"])[order], a["labels"], t.classes,
                                                  kind=t.kind)  # fmt: skip
        out["tasks"][t.name] = res
    return out


def paired_resamples(
    tasks: Sequence[TaskSpec],
    pred_a: Mapping[str, Any],
    pred_b: Mapping[str, Any],
    *,
    thresholds_a: ThresholdChoice | None = None,
    thresholds_b: ThresholdChoice | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[Resamples, Resamples]]:
    """Per task, the resamples of A and of B on the same images and the same draws.

    B's predictions are put in A's image order first (matched by id), so row r of both is the
    same resample of the images.

    Args:
        tasks: Tasks both models have; a task missing from either prediction is left out.
        pred_a: :func:`~xrayfm.evaluate.predict.predict` output (or :func:`~xrayfm.evaluate.run.load_predictions`) of A.
        pred_b: The same for B.
        thresholds_a: A's multi-label thresholds (default 0.5).
        thresholds_b: B's.
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        Task name -> ``(resamples of A, resamples of B)``.

    Raises:
        XrayfmError: The image sets or the reference labels of the two differ.
    """
    order = align_ids(pred_a["ids"], pred_b["ids"])
    thresholds_a, thresholds_b = thresholds_a or ThresholdChoice.fixed(0.5), thresholds_b or ThresholdChoice.fixed(0.5)
    out: dict[str, tuple[Resamples, Resamples]] = {}
    for t in tasks:
        if t.name not in pred_a or t.name not in pred_b:
            continue
        a, b = pred_a[t.name], _reorder(t, pred_b[t.name], order, pred_b["ids"], pred_a["ids"])
        if not _same_targets(t, a, b):
            raise XrayfmError(f"task {t.name!r}: the reference labels differ between the two predictions of the "
                              "same images (another dataset option or label policy?)")  # fmt: skip
        out[t.name] = (
            _resamples(t, a, thresholds_a.for_task(t), n_boot=n_boot, seed=seed),
            _resamples(t, b, thresholds_b.for_task(t), n_boot=n_boot, seed=seed),
        )
    return out


def evaluation_differences(
    evaluation_a: tuple[Sequence[TaskSpec], Mapping[str, Any], ThresholdChoice | None],
    evaluation_b: tuple[Sequence[TaskSpec], Mapping[str, Any], ThresholdChoice | None],
    metrics: Mapping[str, Sequence[str]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[tuple[str, str], tuple[float | None, np.ndarray]]:
    """B - A of two saved evaluations per (task, metric), on the same images and the same resamples: what
    :func:`~xrayfm.evaluate.paired.seed_mean_difference` pools over training seeds.

    Args:
        evaluation_a: ``(tasks, predictions, thresholds)`` of A (:func:`~xrayfm.evaluate.run.load_evaluation`).
        evaluation_b: The same for B.
        metrics: Task name -> the metrics wanted (a metric without resamples is left out).
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.

    Returns:
        ``(task, metric)`` -> (the difference on all images, None where undefined; its (n_boot,) resampled
        differences).

    Raises:
        XrayfmError: The image sets or the reference labels of the two differ.
    """
    (tasks_a, pred_a, thr_a), (tasks_b, pred_b, thr_b) = evaluation_a, evaluation_b
    tasks, _ = common_tasks(tasks_a, tasks_b)
    pairs = paired_resamples(tasks, pred_a, pred_b, thresholds_a=thr_a, thresholds_b=thr_b, n_boot=n_boot, seed=seed)
    out: dict[tuple[str, str], tuple[float | None, np.ndarray]] = {}
    for task, (ra, rb) in pairs.items():
        for metric in metrics.get(task, []):
            if (metric,) in ra.draws:
                va, vb = ra.values.get((metric,)), rb.values.get((metric,))
                out[task, metric] = (None if va is None or vb is None else vb - va,
                                     rb.draws[(metric,)] - ra.draws[(metric,)])  # fmt: skip
    return out


def _split_dataset(model: Any, dataset: str, root: str | Path, split: str, options: Mapping[str, Any]) -> Any:
    from xrayfm.data.registry import build_dataset
    from xrayfm.models.preprocess import resolve_preprocess

    transform = resolve_preprocess(model).eval_transform()
    return build_dataset(dataset, root, split, transform=transform, **dict(options))


def _thresholds(model: Any, rule: ThresholdRule, dataset: str, root: str | Path, split: str,
                options: Mapping[str, Any], *, batch_size: int, device: str) -> ThresholdChoice:  # fmt: skip
    """The rule's thresholds from ``model``'s predictions of ``split`` (0.5 with a note when it has no images)."""
    if not rule.needs_data:
        return ThresholdChoice.fixed(float(rule.value))
    try:
        ds = _split_dataset(model, dataset, root, split, options)
    except XrayfmError as exc:
        ds, why = None, str(exc)
    else:
        why = "it has no images"
    if ds is None or not len(ds):
        return ThresholdChoice.fixed(0.5, f"no {split} split to choose {rule} thresholds on ({why}): fixed 0.5 used")
    preds = predict(model, ds, batch_size=batch_size, device=device)
    return choose_task_thresholds(model.tasks, preds, rule, split=split)


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    dataset: str,
    root: str | Path,
    *,
    split: str = "test",
    options: Mapping[str, Any] | None = None,
    threshold: str | float | ThresholdRule = "youden",
    threshold_split: str = "val",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    batch_size: int = 16,
    device: str | None = None,
    load: Callable[[str | Path], tuple[Any, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Score two fine-tuned models on the same split and compare them, metric by metric.

    Each model reads the images with its own preprocessing and predicts the split once (and
    ``threshold_split`` once when the rule chooses thresholds from data).

    Args:
        run_a: Finetune run folder (or its ``model/``) of model A, the reference.
        run_b: The same for model B; differences are B - A.
        dataset: Dataset adapter name.
        root: Dataset root.
        split: The split compared.
        options: Dataset adapter options.
        threshold: ``youden``, ``sens:TARGET`` or a fixed number (multi-label decisions).
        threshold_split: The split whose predictions choose each model's thresholds.
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.
        alpha: 1 - coverage.
        batch_size: Inference batch size.
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        load: Reads a run folder into (model, sidecar) (default
            :func:`~xrayfm.models.task_checkpoint.load_task_model`; the command line passes one that
            also reads a head of a multi-task model).

    Returns:
        ``a`` / ``b`` (``run``, ``arch``, ``thresholds``, and ``head`` / ``served_weights`` of a
        multi-task model's head), ``dataset``, ``split``, ``n``,
        ``n_boot``, ``seed``, ``alpha``, ``task_specs``, ``tasks`` (as :func:`compare_predictions`)
        and ``notes``.

    Raises:
        XrayfmError: A run has no model, the runs share no task or differ in a shared task's
            classes, or they were scored on different images.
    """
    import torch

    from xrayfm.models.task_checkpoint import load_task_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rule, options = ThresholdRule.parse(threshold), dict(options or {})
    load = load or load_task_model
    (model_a, meta_a), (model_b, meta_b) = load(run_a), load(run_b)
    tasks, notes = common_tasks(model_a.tasks, model_b.tasks)
    sides: dict[str, dict[str, Any]] = {}
    predictions = []
    for name, run, model, meta in (("a", run_a, model_a, meta_a), ("b", run_b, model_b, meta_b)):
        ds = _split_dataset(model, dataset, root, split, options)
        if not len(ds):
            raise XrayfmError(f"{dataset}/{split} in {root} has no images to compare on")
        choice = _thresholds(model, rule, dataset, root, threshold_split, options, batch_size=batch_size,
                             device=device)  # fmt: skip
        notes += [f"{name.upper()}: {n}" for n in choice.notes]
        predictions.append(predict(model, ds, batch_size=batch_size, device=device))
        model.cpu()
        sides[name] = {"run": str(run), "arch": meta.get("arch"), "thresholds": choice.to_dict(),
                       **{k: meta[k] for k in ("head", "served_weights") if k in meta}}  # fmt: skip
    compared = compare_predictions(
        tasks, predictions[0], predictions[1], n_boot=n_boot, seed=seed, alpha=alpha,
        thresholds_a=ThresholdChoice.from_dict(sides["a"]["thresholds"]),
        thresholds_b=ThresholdChoice.from_dict(sides["b"]["thresholds"]),
    )  # fmt: skip
    return {
        **sides, "dataset": dataset, "root": str(root), "split": split, "n": compared["n"], "n_boot": n_boot,
        "seed": seed, "alpha": alpha, "threshold_rule": str(rule), "task_specs": [t.to_dict() for t in tasks],
        "tasks": compared["tasks"], "notes": notes,
    }  # fmt: skip
