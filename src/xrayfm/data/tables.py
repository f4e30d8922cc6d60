"""Helpers adapters share: reading label tables, locating files, choosing splits.

Published label files are read whole with pandas; a missing file or column becomes a
:class:`~xrayfm.errors.DatasetError` naming the file and the columns that were expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from xrayfm.data.base import Record
from xrayfm.errors import DatasetError


def read_table(path: Path, *, required: Sequence[str] = (), **kwargs: Any) -> pd.DataFrame:
    """Read a CSV (optionally .gz/.zip) label file and check its columns.

    Args:
        path: Label file.
        required: Columns that must be present (after stripping surrounding spaces).
        **kwargs: Passed to :func:`pandas.read_csv`.

    Raises:
        DatasetError: Missing, unreadable, or lacking a required column.
    """
    if not Path(path).is_file():
        raise DatasetError(f"label file {path} not found")
    try:
        df = pd.read_csv(path, **kwargs)
    except Exception as exc:  # pandas raises ParserError, UnicodeDecodeError, BadZipFile...
        raise DatasetError(f"{path}: cannot parse as CSV ({type(exc).__name__}: {exc})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def find_first(root: Path, candidates: Iterable[str], what: str) -> Path:
    """Return the first existing ``root / candidate``.

    Raises:
        DatasetError: None exists; the message lists every place looked at.
    """
    tried = []
    for rel in candidates:
        p = root / rel
        if p.exists():
            return p
        tried.append(rel)
    raise DatasetError(f"{root}: no {what} found; looked for {', '.join(tried)}")


def select_split(records: Sequence[Record], split: str, key: str = "split") -> list[Record]:
    """Keep the records whose ``meta[key]`` equals ``split`` (``all`` keeps everything)."""
    if split == "all":
        return list(records)
    return [r for r in records if r.meta.get(key) == split]


def require_images(records: Sequence[Record], name: str, *, missing: str = "error") -> list[Record]:
    """Check that each record's image exists.

    Args:
        records: Records to check.
        name: Adapter name for messages.
        missing: ``error`` (default); ``skip`` (drop label rows whose image is absent, e.g. a
            partial download); or ``keep`` (no check: label statistics of a dataset whose
            images are not downloaded yet, as ``xrayfm inspect ROOT -o missing=keep --check 0``).

    Raises:
        DatasetError: An image is missing and ``missing="error"``, or none is present at all
            with ``missing="skip"``.
    """
    if missing not in ("error", "skip", "keep"):
        raise DatasetError(f"missing must be 'error', 'skip' or 'keep', got {missing!r}")
    if missing == "keep":
        return list(records)
    kept = [r for r in records if os.path.isfile(r.image)]
    absent = len(records) - len(kept)
    if absent and missing == "error":
        first = next(r.image for r in records if not os.path.isfile(r.image))
        raise DatasetError(
            f"{name}: {absent} of {len(records)} labelled images are missing (first: {first}); "
            "pass -o missing=skip (missing='skip' in Python) to use the images that are present"
        )
    if records and not kept:
        raise DatasetError(f"{name}: none of the {len(records)} labelled images exist under the root")
    return kept
