"""Dataset pools: several adapters pooled into one multi-source training set.

Pretraining at scale reads many public sets at once (EVA-X's Merged520k, Foundation X's 11 sets).
:func:`build_pool` builds each source with its adapter and pools the records into one
:class:`PooledDataset` (an :class:`~xrayfm.data.base.XrayDataset`, so everything that reads a
dataset reads a pool). On the way it:

- tags each record with its source (``meta["source"]``, the source's label) and its split;
- drops duplicates by image id (``dedupe="id"``), by file content (``"hash"``, SHA-256 of the
  file), by both (``"id+hash"``) or not at all (``"none"``); the first source listed wins;
- removes the images of every patient in the ``test`` split of the named downstream sets
  (``exclude_test``), so pretraining never sees what fine-tuning is scored on. A patient id (the
  image id where the adapter has none) is matched within the same dataset name (the same adapter
  on another copy) or the same root folder (another adapter on the same files); any record whose
  image id (or, with hash dedupe, whose content) equals a test image's is removed too;
- applies per-source weights to the ``train`` split only (val / test are never resampled):
  weight ``w`` keeps each image ``floor(w)`` times, plus once more for a seeded share
  ``w - floor(w)`` of images; ``w < 1`` therefore keeps a seeded share ``w``, ``2`` repeats each
  image twice, ``2.5`` twice plus a seeded half a third time (``meta["repeat"]`` counts copies);
- merges the sources' tasks by class name: labels become one vector over the union of label
  classes (``nan`` where a source does not annotate a class), mask channels the union of mask
  classes (255 = ignore where a source has no such channel, all 255 for a source without masks),
  box labels the union of box classes.

Sources and their command-line syntax: :mod:`xrayfm.data.pool_sources`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.pool_sources import PoolSource, parse_source
from xrayfm.data.registry import check_choice
from xrayfm.data.sample import MASK_IGNORE, Sample
from xrayfm.errors import DatasetError, MissingSplitError, XrayfmError
from xrayfm.io import XrayImage, read_xray
from xrayfm.tasks import TaskSpec

POOL_SPLITS: tuple[str, ...] = ("train", "val", "test")
DEDUPE_MODES: tuple[str, ...] = ("id", "hash", "id+hash", "none")
TARGETS: tuple[str, ...] = ("labels", "mask", "boxes")


def _labelled(sources: Sequence[PoolSource]) -> list[PoolSource]:
    """The sources with their labels filled in; two sources with one label are refused."""
    counts: dict[str, int] = {}
    for s in sources:
        counts[s.adapter] = counts.get(s.adapter, 0) + 1
    out = [replace(s, label=s.label or (s.adapter if counts[s.adapter] == 1 else f"{s.adapter}:{s.root.name}"))
           for s in sources]  # fmt: skip
    labels = [s.label for s in out]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise XrayfmError(f"two pool sources are labelled {twice}; give them distinct labels (source=NAME)")
    return out


def unit_hash(key: str) -> float:
    """A deterministic number in [0, 1) from ``key`` (seeded subsampling)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def patient_keys(ds: XrayDataset, meta: Mapping[str, Any]) -> tuple[str, str]:
    """A record's patient, scoped by its dataset's name and by its dataset's root.

    The patient id is the image id where the adapter has none. A patient matches a test patient
    when either key does: the same adapter on another copy of the data, or another adapter (the
    generic ``csv``) on the same folder.
    """
    patient = meta.get("patient_id") or meta["id"]
    return f"name:{ds.name}:{patient}", f"root:{ds.root.resolve()}:{patient}"


@dataclass(frozen=True)
class ChannelMap:
    """A source's mask placed into the pool's mask channels; absent channels are 255 (ignore)."""

    source: Callable[[], np.ndarray]
    channels: tuple[int, ...]
    total: int

    def __call__(self) -> np.ndarray:
        mask = np.asarray(self.source())
        out = np.full((self.total, *mask.shape[1:]), MASK_IGNORE, np.uint8)
        out[list(self.channels)] = mask
        return out


def _merge_tasks(datasets: Sequence[XrayDataset], targets: Sequence[str]) -> list[TaskSpec]:
    """The pool's tasks: per Sample key the one shared spec, else the union of class names."""
    tasks = []
    for key in targets:
        specs = [t for t in (ds.task_for(key) for ds in datasets) if t is not None]
        if not specs:
            continue
        if all(s == specs[0] for s in specs):
            tasks.append(specs[0])
            continue
        classes = list(dict.fromkeys(c for s in specs for c in s.classes))
        kind = specs[0].kind if key != "labels" else "multilabel"
        tasks.append(TaskSpec({"labels": "labels", "mask": "masks", "boxes": "objects"}[key], kind, tuple(classes)))
    return tasks


def _remap(rec: Record, ds: XrayDataset, tasks: dict[str, TaskSpec], meta: dict[str, Any]) -> Record:
    """``rec`` with its targets in the pool's class spaces (targets the pool does not keep dropped)."""
    out = Record(image=rec.image, box_space=rec.box_space, meta=meta, origin=rec.origin)
    if "labels" in tasks:
        own = ds.task_for("labels")
        out.labels = np.full(tasks["labels"].num_classes, np.nan, np.float32)
        if own is not None and rec.labels is not None:
            out.labels[[tasks["labels"].classes.index(c) for c in own.classes]] = rec.labels
    if "boxes" in tasks and rec.boxes is not None:
        own_classes = ds.task_for("boxes").classes  # type: ignore[union-attr]
        index = np.asarray([tasks["boxes"].classes.index(c) for c in own_classes], np.int64)
        out.boxes, out.box_labels = rec.boxes, index[np.asarray(rec.box_labels, np.int64)]
    if "mask" in tasks and rec.mask is not None:
        own = ds.task_for("mask")
        channels = tuple(tasks["mask"].classes.index(c) for c in own.classes)  # type: ignore[union-attr]
        same = channels == tuple(range(tasks["mask"].num_classes))
        out.mask = rec.mask if same else ChannelMap(rec.mask, channels, tasks["mask"].num_classes)
    return out


class PooledDataset(XrayDataset):
    """The records of several sources as one dataset (split ``all``; ``meta["split"]`` per record).

    Attributes:
        sources: The pooled sources, labels filled in.
        excluded_sets: The downstream sets whose test patients were removed.
        settings: ``dedupe``, ``splits``, ``targets`` and ``seed`` of :func:`build_pool`.
        report: Per source label: adapter, root, weight and, per split, images ``found``,
            ``duplicates`` dropped, ``excluded_test`` and ``kept`` (after weighting).
    """

    sources: list[PoolSource]
    excluded_sets: list[PoolSource]
    settings: dict[str, Any]
    report: dict[str, dict[str, Any]]

    def load(self, index: int, reader: Callable[..., XrayImage] = read_xray) -> Sample:
        """Read record ``index`` (its image with ``reader``); a record without a mask gets an all-ignore (255) one
        when the pool has masks."""
        sample = super().load(index, reader)
        task = self.task_for("mask")
        if task is not None and "mask" not in sample:
            h, w = sample["image"].shape[-2:]
            sample["mask"] = torch.full((task.num_classes, h, w), MASK_IGNORE, dtype=torch.uint8)
        return sample

    def subset(self, indices: Sequence[int], split: str | None = None) -> PooledDataset:
        """A pool over the chosen records (same tasks, transform, options and report)."""
        sub = PooledDataset([self.records[i] for i in indices], self.tasks, name=self.name, root=self.root,
                            split=split or self.split, transform=self.transform, read_options=self.read_options,
                            extra_roots=self.extra_roots)  # fmt: skip
        sub.sources, sub.excluded_sets, sub.settings, sub.report = (
            self.sources, self.excluded_sets, self.settings, self.report)  # fmt: skip
        return sub

    def split_dataset(self, split: str) -> PooledDataset:
        """The records of one split (``all``: every record) as a pool."""
        check_choice("split", split, (*POOL_SPLITS, "all"))
        keep = [i for i, r in enumerate(self.records) if split == "all" or r.meta.get("split") == split]
        return self.subset(keep, split=split)


def _test_holdout(excluded: Sequence[PoolSource], with_hash: bool) -> tuple[set[str], set[str], set[str]]:
    """Patients, image ids and (with ``with_hash``) content hashes of the downstream test splits."""
    patients: set[str] = set()
    ids: set[str] = set()
    hashes: set[str] = set()
    for src in excluded:
        try:
            test = src.build("test")
        except MissingSplitError as exc:
            raise DatasetError(f"exclude_test {src.adapter}:{src.root}: it has no test split ({exc})") from None
        for rec in test.records:
            patients.update(patient_keys(test, rec.meta))
            ids.add(str(rec.meta["id"]))
            if with_hash:
                hashes.add(file_sha256(rec.image))
    return patients, ids, hashes


def _copies(weight: float, key: str) -> int:
    whole = math.floor(weight)
    return whole + int(unit_hash(key) < weight - whole)


def build_pool(
    sources: Sequence[PoolSource | str],
    *,
    exclude_test: Sequence[PoolSource | str] = (),
    dedupe: str = "id",
    splits: Sequence[str] = POOL_SPLITS,
    targets: Sequence[str] = TARGETS,
    seed: int = 0,
) -> PooledDataset:
    """Pool several datasets into one (see the module docstring for what is done on the way).

    Args:
        sources: The sources, as :class:`PoolSource` or ``ADAPTER:ROOT[?opts]`` text, in priority
            order (a duplicate is dropped from the later source).
        exclude_test: Downstream sets (same forms) whose ``test`` patients never enter the pool.
        dedupe: ``id``, ``hash``, ``id+hash`` or ``none``.
        splits: The source splits pooled; a source without one of them (no label file for it)
            contributes none.
        targets: Which of ``labels``, ``mask``, ``boxes`` the pool keeps (``()``: images only, an
            unlabelled pool).
        seed: Seed of the weight subsampling.

    Returns:
        The pooled dataset, split ``all``.

    Raises:
        UnknownNameError: An unknown adapter, split, dedupe mode or target.
        DatasetError: A source cannot be built, or nothing is left in the pool.
    """
    check_choice("dedupe mode", dedupe, DEDUPE_MODES)
    for s in splits:
        check_choice("split", s, POOL_SPLITS)
    for t in targets:
        check_choice("target", t, TARGETS)
    if not sources:
        raise DatasetError("the pool has no source; name at least one ADAPTER:ROOT")
    pooled = _labelled([s if isinstance(s, PoolSource) else parse_source(s) for s in sources])
    held = [s if isinstance(s, PoolSource) else parse_source(s) for s in exclude_test]
    by_id, by_hash = dedupe in ("id", "id+hash"), dedupe in ("hash", "id+hash")
    test_patients, test_ids, test_hashes = _test_holdout(held, by_hash)
    built: list[tuple[PoolSource, str, XrayDataset]] = []
    for src in pooled:
        for split in splits:
            try:
                built.append((src, split, src.build(split)))
            except MissingSplitError:
                continue
    tasks = {t.sample_key: t for t in _merge_tasks([ds for _, _, ds in built], targets)}
    seen_ids: set[str] = set()
    seen_hashes: set[str] = set()
    records: list[Record] = []
    report: dict[str, dict[str, Any]] = {s.label: {**s.describe(), "splits": {}} for s in pooled}  # type: ignore[misc]
    for src, split, ds in built:
        counts = {"found": len(ds), "duplicates": 0, "excluded_test": 0, "kept": 0}
        for rec in ds.records:
            image_id = str(rec.meta.get("id", rec.image.stem))
            digest = file_sha256(rec.image) if by_hash else ""
            if (
                not test_patients.isdisjoint(patient_keys(ds, {**rec.meta, "id": image_id}))
                or image_id in test_ids
                or (by_hash and digest in test_hashes)
            ):
                counts["excluded_test"] += 1
                continue
            if (by_id and image_id in seen_ids) or (by_hash and digest in seen_hashes):
                counts["duplicates"] += 1
                continue
            seen_ids.add(image_id)
            seen_hashes.add(digest)
            meta = {**rec.meta, "id": image_id, "source": src.label, "dataset": ds.name, "split": split}
            n = _copies(src.weight, f"{seed}:{src.label}:{image_id}") if split == "train" else 1
            for k in range(n):
                records.append(_remap(rec, ds, tasks, {**meta, "repeat": k} if k else meta))
            counts["kept"] += n
        report[src.label]["splits"][split] = counts  # type: ignore[index]
    if not records:
        raise DatasetError(f"the pool of {', '.join(s.label for s in pooled)} is empty after de-duplication, "  # type: ignore[misc]
                           "test exclusion and weighting")  # fmt: skip
    pool = PooledDataset(records, list(tasks.values()), name="pool", root=Path("."), split="all",
                         extra_roots=tuple(s.root for s in pooled))  # fmt: skip
    pool.sources, pool.excluded_sets, pool.report = pooled, held, report
    pool.settings = {"dedupe": dedupe, "splits": list(splits), "targets": list(targets), "seed": seed}
    return pool
