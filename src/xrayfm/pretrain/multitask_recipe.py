"""The Foundation X multi-task recipe: datasets with their tasks, the cycle of units, EMA and consistency.

A recipe is a YAML file (or the dict it loads to) that says which datasets train together, which
kinds of labels each carries, in which order the (dataset, task) units run and how the EMA teacher
follows the student. Adding a dataset is a line under ``datasets``; with no ``cycle`` every task
of every dataset becomes a unit, classification before detection before segmentation per dataset,
as the reference's 20 slots (jlianglab/Foundation_X main.py L3238-3258)::

    datasets:
      nih:
        adapter: nih_cxr14            # a name of xrayfm.data.registry
        root: /data/nih
        options: {views: [PA], val_fraction: 0.1}
        tasks:
          findings: {kind: multilabel, classes: [Atelectasis, Cardiomegaly], weight: 1.0}
          lesions: {kind: detection, classes: [Nodule]}
    cycle:                            # optional; ``dataset/task`` or a mapping
      - nih/findings
      - {dataset: nih, task: detection, epochs: 1, lock_fraction: 0.5}
    cycles: 10                        # passes over the cycle
    ema: {momentum: 0.8, every: phase}
    consistency_weight: 0.5
    localizer: deformable_detr        # or faster_rcnn
    detr: {d_model: 64, encoder_layers: 1, decoder_layers: 2, num_queries: 50}  # optional, over the paper sizes

A cycle entry names its task by name or, when the dataset has one task of that kind, by kind. Its
length is ``epochs`` (passes over the unit's data, default 1) or ``steps``. A detection or
segmentation unit first runs locked on ``lock_fraction`` of that length (paper: half), then
released on all of it; classification units have no lock. ``localizer`` picks the detection heads:
``deformable_detr`` (default, the paper's DETR family: one encoder shared by every detection dataset, a
decoder each) or ``faster_rcnn`` (torchvision, a whole detector per dataset); ``detr`` sets
``DeformableDetrConfig`` fields over the paper-scale defaults (small ones for CPU runs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xrayfm.errors import XrayfmError
from xrayfm.tasks import CLASSIFICATION_KINDS, TASK_KINDS, TaskSpec

#: Units whose cycle slot starts with a locked phase (backbone and shared decoder frozen).
LOCKABLE_KINDS: tuple[str, ...] = ("detection", "segmentation")
#: When the EMA teacher follows the student: at the end of each phase (reference) or every step.
EMA_EVERY: tuple[str, ...] = ("phase", "step")
#: Order of a dataset's units in the default cycle (reference: cls, then loc, then seg).
DEFAULT_UNIT_ORDER: tuple[str, ...] = (*CLASSIFICATION_KINDS, "detection", "segmentation")
#: Dataset and task names: they key heads and state-dict entries, so no dots or slashes.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
#: Detection heads: Deformable DETR with a shared encoder (paper's family, default) or Faster R-CNN per dataset.
LOCALIZERS: tuple[str, ...] = ("deformable_detr", "faster_rcnn")

_TOP_KEYS = {"datasets", "cycle", "cycles", "ema", "consistency_weight", "localizer", "detr"}
_DATASET_KEYS = {"adapter", "root", "options", "tasks"}
_TASK_KEYS = {"kind", "classes", "weight"}
_UNIT_KEYS = {"dataset", "task", "epochs", "steps", "lock_fraction"}
_EMA_KEYS = {"momentum", "every"}


class RecipeError(XrayfmError):
    """A multi-task recipe is malformed; the message names the key at fault."""


@dataclass(frozen=True)
class RecipeTask:
    """One task of a dataset and the weight of its loss.

    Attributes:
        spec: Name, kind and ordered classes.
        weight: Factor on this task's loss.
    """

    spec: TaskSpec
    weight: float = 1.0


@dataclass(frozen=True)
class DatasetEntry:
    """A dataset, the adapter that reads it and the tasks its samples carry.

    Attributes:
        name: Key of the dataset in the recipe (and of its heads).
        adapter: Name of its adapter in :mod:`xrayfm.data.registry`.
        root: Its folder.
        options: Keyword options of the adapter.
        tasks: Its tasks by name: at most one classification, one detection and one segmentation
            task, since a Sample carries one ``labels``, one ``boxes`` and one ``mask``.
    """

    name: str
    adapter: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, RecipeTask] = field(default_factory=dict)


@dataclass(frozen=True)
class CycleUnit:
    """One slot of the cycle: a (dataset, task) pair and its length.

    Attributes:
        dataset: Dataset name.
        task: Task name within the dataset.
        kind: The task's kind.
        epochs: Length in passes over the unit's data (used when ``steps`` is None).
        steps: Length in optimiser steps.
        lock_fraction: Share of the length run locked first, in [0, 1) (0 for classification).
    """

    dataset: str
    task: str
    kind: str
    epochs: float | None = 1.0
    steps: int | None = None
    lock_fraction: float = 0.0

    @property
    def key(self) -> str:
        """``dataset/task``: the key of the unit's head."""
        return f"{self.dataset}/{self.task}"


@dataclass(frozen=True)
class EmaSettings:
    """How the teacher follows the student: ``teacher = momentum * teacher + (1 - momentum) * student``.

    Attributes:
        momentum: In [0, 1]; the reference uses 0.8 once per phase.
        every: ``phase`` (at the end of each locked / released phase) or ``step``.
    """

    momentum: float = 0.8
    every: str = "phase"


@dataclass(frozen=True)
class MultiTaskRecipe:
    """A parsed, validated recipe.

    Attributes:
        datasets: Datasets by name, in recipe order.
        cycle: Units in the order they run.
        cycles: Passes over the cycle.
        ema: Teacher settings.
        consistency_weight: ``w`` of ``(1 - w) * task + w * consistency`` (reference 0.5).
        localizer: Detection heads, one of :data:`LOCALIZERS`.
        detr: Deformable DETR settings over the paper-scale defaults (checked when parsed).
    """

    datasets: dict[str, DatasetEntry]
    cycle: tuple[CycleUnit, ...]
    cycles: int = 1
    ema: EmaSettings = EmaSettings()
    consistency_weight: float = 0.5
    localizer: str = "deformable_detr"
    detr: Mapping[str, Any] = field(default_factory=dict)

    def task(self, key: str) -> RecipeTask:
        """The task behind a ``dataset/task`` key.

        Raises:
            RecipeError: No such dataset or task.
        """
        dataset, _, name = key.partition("/")
        if dataset not in self.datasets or name not in self.datasets[dataset].tasks:
            known = [f"{d}/{t}" for d, e in self.datasets.items() for t in e.tasks]
            raise RecipeError(f"unknown unit {key!r}; the recipe has {known}")
        return self.datasets[dataset].tasks[name]

    def task_specs(self) -> dict[str, list[TaskSpec]]:
        """Task specs per dataset: what the model's heads are built from."""
        return {d: [t.spec for t in e.tasks.values()] for d, e in self.datasets.items()}


def read_recipe_yaml(path: str | Path) -> Any:
    """The YAML data of a recipe file (``yaml.safe_load``: no code runs), not yet validated.

    Raises:
        RecipeError: The file is missing or not YAML.
    """
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe {path} is not valid YAML: {exc}") from exc


def load_recipe(path: str | Path) -> MultiTaskRecipe:
    """Read and validate a recipe YAML file.

    Raises:
        RecipeError: The file is missing, not YAML, or not a valid recipe.
    """
    return parse_recipe(read_recipe_yaml(path), source=str(path))


def parse_recipe(data: Any, *, source: str = "recipe") -> MultiTaskRecipe:
    """Validate a recipe given as the mapping its YAML loads to.

    Args:
        data: The mapping.
        source: Where it came from, for error messages.

    Raises:
        RecipeError: An unknown or missing key, a bad value (unknown task kind, a dataset in the
            cycle that is not declared, a lock fraction outside [0, 1) ...); the message names it.
    """
    top = _mapping(data, source, _TOP_KEYS)
    if not top.get("datasets"):
        raise RecipeError(f"{source}: 'datasets' is missing or empty")
    datasets = {
        name: _dataset(f"{source}: datasets.{name}", name, entry)
        for name, entry in _mapping(top["datasets"], f"{source}: datasets").items()
    }
    if "cycle" in top:
        entries = top["cycle"]
        if not isinstance(entries, list) or not entries:
            raise RecipeError(f"{source}: 'cycle' must be a non-empty list of units")
        cycle = tuple(_unit(f"{source}: cycle[{i}]", e, datasets) for i, e in enumerate(entries))
    else:
        cycle = tuple(_default_unit(d, t) for d in datasets.values() for t in _ordered_tasks(d))
    return MultiTaskRecipe(
        datasets=datasets,
        cycle=cycle,
        cycles=_int(f"{source}: cycles", top.get("cycles", 1), minimum=1),
        ema=_ema(f"{source}: ema", top.get("ema", {})),
        consistency_weight=_fraction(f"{source}: consistency_weight", top.get("consistency_weight", 0.5), closed=True),
        localizer=_choice(f"{source}: localizer", top.get("localizer", "deformable_detr"), LOCALIZERS),
        detr=_detr(f"{source}: detr", top.get("detr", {})),
    )


def _detr(where: str, value: Any) -> dict[str, Any]:
    """Deformable DETR settings, checked against ``DeformableDetrConfig`` now rather than when heads are built."""
    from xrayfm.models.heads.deformable_detr import detr_config  # transformers: imported only when asked

    settings = _mapping(value, where)
    try:
        detr_config(settings)
    except XrayfmError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    return settings


def _mapping(value: Any, where: str, allowed: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if allowed is not None and k not in allowed)
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed or ())}")
    return {str(k): v for k, v in value.items()}


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise RecipeError(f"{where}: name {value!r} must be letters, digits, '_' or '-' (it keys heads)")
    return value


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RecipeError(f"{where}: expected one of {list(choices)}, got {value!r}")
    return value


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _int(where: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RecipeError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _fraction(where: str, value: Any, *, closed: bool) -> float:
    x = _number(where, value)
    if not (0.0 <= x <= 1.0 if closed else 0.0 <= x < 1.0):
        raise RecipeError(f"{where}: {x} is outside [0, 1{']' if closed else ')'}")
    return x


def _dataset(where: str, name: str, entry: Any) -> DatasetEntry:
    _name(where, name)
    e = _mapping(entry, where, _DATASET_KEYS)
    for key in ("adapter", "root"):
        if not isinstance(e.get(key), str) or not e[key]:
            raise RecipeError(f"{where}.{key}: missing or not a string")
    tasks = {t: _task(f"{where}.tasks.{t}", t, v) for t, v in _mapping(e.get("tasks") or {}, f"{where}.tasks").items()}
    if not tasks:
        raise RecipeError(f"{where}.tasks: a dataset needs at least one task")
    families: dict[str, str] = {}
    for t in tasks.values():
        family = "classification" if t.spec.kind in CLASSIFICATION_KINDS else t.spec.kind
        if family in families:
            raise RecipeError(
                f"{where}.tasks: {families[family]!r} and {t.spec.name!r} are both {family} tasks; a dataset's "
                "samples carry one label vector, one mask and one box set, so declare a second dataset entry instead"
            )
        families[family] = t.spec.name
    return DatasetEntry(name, e["adapter"], e["root"], dict(_mapping(e.get("options", {}), f"{where}.options")), tasks)


def _task(where: str, name: str, entry: Any) -> RecipeTask:
    _name(where, name)
    e = _mapping(entry, where, _TASK_KEYS)
    if e.get("kind") not in TASK_KINDS:
        raise RecipeError(f"{where}.kind: unknown task kind {e.get('kind')!r}; expected one of {TASK_KINDS}")
    classes = e.get("classes")
    if not isinstance(classes, list) or not classes:
        raise RecipeError(f"{where}.classes: expected a non-empty list of class names")
    try:
        spec = TaskSpec(name, e["kind"], tuple(str(c) for c in classes))
    except XrayfmError as exc:
        raise RecipeError(f"{where}: {exc}") from exc
    weight = _number(f"{where}.weight", e.get("weight", 1.0))
    if weight < 0:
        raise RecipeError(f"{where}.weight: must be >= 0, got {weight}")
    return RecipeTask(spec, weight)


def _ordered_tasks(dataset: DatasetEntry) -> list[RecipeTask]:
    return sorted(dataset.tasks.values(), key=lambda t: DEFAULT_UNIT_ORDER.index(t.spec.kind))


def _default_unit(dataset: DatasetEntry, task: RecipeTask) -> CycleUnit:
    lock = 0.5 if task.spec.kind in LOCKABLE_KINDS else 0.0
    return CycleUnit(dataset.name, task.spec.name, task.spec.kind, lock_fraction=lock)


def _unit(where: str, entry: Any, datasets: dict[str, DatasetEntry]) -> CycleUnit:
    if isinstance(entry, str):
        dataset, _, task = entry.partition("/")
        e: dict[str, Any] = {"dataset": dataset, "task": task or None}
    else:
        e = _mapping(entry, where, _UNIT_KEYS)
    if not isinstance(e.get("dataset"), str) or e["dataset"] not in datasets:
        raise RecipeError(f"{where}.dataset: unknown dataset {e.get('dataset')!r}; declared: {sorted(datasets)}")
    ds = datasets[e["dataset"]]
    task = _resolve_task(f"{where}.task", ds, e.get("task"))
    kind = task.spec.kind
    if "steps" in e and "epochs" in e:
        raise RecipeError(f"{where}: give 'steps' or 'epochs', not both")
    steps = _int(f"{where}.steps", e["steps"], minimum=1) if "steps" in e else None
    epochs = None if steps is not None else _number(f"{where}.epochs", e.get("epochs", 1.0))
    if epochs is not None and epochs <= 0:
        raise RecipeError(f"{where}.epochs: must be > 0, got {epochs}")
    default_lock = 0.5 if kind in LOCKABLE_KINDS else 0.0
    lock = _fraction(f"{where}.lock_fraction", e.get("lock_fraction", default_lock), closed=False)
    if lock > 0 and kind not in LOCKABLE_KINDS:
        raise RecipeError(f"{where}.lock_fraction: {kind} units have no lock phase (only {LOCKABLE_KINDS} do)")
    return CycleUnit(ds.name, task.spec.name, kind, epochs=epochs, steps=steps, lock_fraction=lock)


def _resolve_task(where: str, dataset: DatasetEntry, task: Any) -> RecipeTask:
    if task is None and len(dataset.tasks) == 1:
        return next(iter(dataset.tasks.values()))
    if isinstance(task, str) and task in dataset.tasks:
        return dataset.tasks[task]
    same_kind = [t for t in dataset.tasks.values() if t.spec.kind == task]
    if len(same_kind) == 1:
        return same_kind[0]
    raise RecipeError(
        f"{where}: dataset {dataset.name!r} has no task {task!r}; "
        f"its tasks: {[f'{t.spec.name} ({t.spec.kind})' for t in dataset.tasks.values()]}"
    )


def _ema(where: str, entry: Any) -> EmaSettings:
    e = _mapping(entry, where, _EMA_KEYS)
    every = e.get("every", "phase")
    if every not in EMA_EVERY:
        raise RecipeError(f"{where}.every: unknown value {every!r}; expected one of {EMA_EVERY}")
    return EmaSettings(momentum=_fraction(f"{where}.momentum", e.get("momentum", 0.8), closed=True), every=every)
