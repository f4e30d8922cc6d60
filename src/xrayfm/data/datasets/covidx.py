"""COVIDx (COVID-Net; Wang et al., Sci. Rep. 2020) in its published list-file layout.

Each split is a text file of space-separated lines ``patient_id filename class source``
(COVIDx 8/9: classes ``COVID-19`` / ``normal`` / ``pneumonia``; COVIDx CXR-3/4: ``positive`` /
``negative``); older versions have three columns ``patient_id filename class``. Images lie in
a folder named after the split. The class order is fixed per family, never read from data:
``("normal", "pneumonia", "COVID-19")`` or ``("negative", "positive")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.registry import register_dataset
from xrayfm.data.splits import holdout_fractions, split_groups
from xrayfm.data.tables import label_file_name, require_images, select_split
from xrayfm.errors import DatasetError, MissingSplitError
from xrayfm.tasks import TaskSpec

THREE_CLASS: tuple[str, ...] = ("normal", "pneumonia", "COVID-19")
BINARY: tuple[str, ...] = ("negative", "positive")
_CANONICAL = {c.lower(): c for c in THREE_CLASS + BINARY} | {"covid": "COVID-19", "covid19": "COVID-19"}


class Entry(NamedTuple):
    """One line of a list file."""

    patient_id: str
    name: str
    cls: str
    source: str | None
    line: int


def _list_file(root: Path, part: str) -> Path | None:
    """``<part>.txt``, ``<part>_split.txt`` or the newest-named ``<part>_COVIDx*.txt``."""
    for name in (f"{part}.txt", f"{part}_split.txt"):
        if (root / name).is_file():
            return root / name
    versions = sorted(root.glob(f"{part}_COVIDx*.txt")) + sorted(root.glob(f"{part}_split_v*.txt"))
    return versions[-1] if versions else None


def parse_list(path: Path) -> list[Entry]:
    """Parse one COVIDx list file.

    File names may contain spaces: the class is found as the second-to-last token (four
    columns) or the last token (three columns), and the file name is what lies between.

    Raises:
        DatasetError: A line has fewer than three tokens or no known class, naming the line.
    """
    entries = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) >= 4 and tokens[-2].lower() in _CANONICAL:
            cls, source, name = tokens[-2], tokens[-1], " ".join(tokens[1:-2])
        elif len(tokens) >= 3 and tokens[-1].lower() in _CANONICAL:
            cls, source, name = tokens[-1], None, " ".join(tokens[1:-1])
        else:
            raise DatasetError(
                f"{path}: line {n}: expected 'patient_id filename class [source]' with class in "
                f"{list(THREE_CLASS + BINARY)}, got {line.strip()[:120]!r}"
            )
        entries.append(Entry(tokens[0], name, _CANONICAL[cls.lower()], source, n))
    return entries


def _classes(found: set[str], files: list[Path]) -> tuple[str, ...]:
    for family in (THREE_CLASS, BINARY):
        if found <= set(family):
            return family
    names = ", ".join(map(str, files))
    raise DatasetError(f"{names}: classes {sorted(found)} mix the 3-class and binary COVIDx labels")


@register_dataset(
    "covidx",
    description="COVIDx: normal / pneumonia / COVID-19 (v8/v9) or negative / positive (CXR-3/4), multiclass",
    layout="""
    ROOT/train.txt, ROOT/test.txt, ROOT/val.txt (optional)   lines: patient_id filename class [source]
      (train_COVIDx9A.txt / train_split.txt style names are found too)
    ROOT/train/<filename>, ROOT/test/<filename>, ROOT/val/<filename>
    Without val.txt, val is a hashed patient split of train.
    """,
    tasks=("multiclass",),
)
def build_covidx(
    root: Path,
    split: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build COVIDx.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        val_fraction: Share of training patients held out as ``val`` when there is no val list.
        seed: Seed of that patient split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
    """
    lists = {p: _list_file(root, p) for p in ("train", "val", "test")}
    needed = {"train": ["train"], "val": ["val"] if lists["val"] else ["train"], "test": ["test"]}
    parts = ["train", "val", "test"] if split == "all" else needed[split]
    for p in parts:
        if lists[p] is None and p != "val":
            raise MissingSplitError(f"covidx: no {p} list ({p}.txt or {p}_COVIDx*.txt) in {root}")
    records: list[Record] = []
    found: set[str] = set()
    entries_by_part = {p: parse_list(lists[p]) for p in parts if lists[p] is not None}  # type: ignore[arg-type]
    for part, entries in entries_by_part.items():
        found |= {e.cls for e in entries}
        where = label_file_name(lists[part], root)  # type: ignore[arg-type]
        if part == "train" and lists["val"] is None:
            groups = [f"{e.source}:{e.patient_id}" if e.source else e.patient_id for e in entries]
            names = split_groups(groups, seed=seed, fractions=holdout_fractions(val_fraction))
        else:
            names = [part] * len(entries)
        for (pid, name, cls, src, line), s in zip(entries, names):
            meta = {"id": Path(name).stem, "patient_id": pid, "split": s, "class": cls}
            if src:
                meta["data_source"] = src
            records.append(Record(image=root / part / name, labels=None, meta=meta, origin=f"{where} line {line}"))
    classes = _classes(found, [p for p in lists.values() if p])
    for rec in records:
        rec.labels = (np.asarray(classes) == rec.meta["class"]).astype(np.float32)
    records = require_images(select_split(records, split), "covidx", missing=missing)
    return XrayDataset(records, [TaskSpec("covid", "multiclass", classes)], name="covidx", root=root, split=split)
