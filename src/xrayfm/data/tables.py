"""Helpers adapters share: reading label tables, locating files, choosing splits, keeping
every file a dataset reads inside its root.

Published label files are read whole with pandas; a missing file or column becomes a
:class:`~xrayfm.errors.DatasetError` naming the file and the columns that were expected.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xrayfm.data.base import Record
from xrayfm.errors import DatasetError
from xrayfm.io.atomic import atomic_path
from xrayfm.io.writers import write_png


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


def label_file_name(path: Path, root: Path) -> str:
    """How messages name a label file: relative to ``root`` when it lies under it."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


class RootCheck:
    """Tells whether paths resolve (symlinks followed) inside one of a few folders.

    Each distinct directory is resolved and judged once, with one ``lstat`` per directory, and
    each file costs one ``lstat`` (a symlink is then resolved in full), so a table of 100k rows
    costs little more than checking that its files exist. A path holding ``..`` is resolved in
    full with :func:`os.path.realpath`, as ``..`` after a symlink leaves the link's target, not
    its folder.

    Args:
        roots: Allowed folders; compared by their resolved paths, so a root that is itself a
            symlink (``ROOT -> /data/nih``) holds what its target holds.
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        self.roots = tuple(os.path.realpath(r) for r in roots)
        self._prefixes = tuple(r if r.endswith(os.sep) else r + os.sep for r in self.roots)
        self._dirs: dict[str, str] = {}
        self._dir_inside: dict[str, bool] = {}

    def resolve(self, path: str | os.PathLike[str]) -> str:
        """The absolute path ``path`` names once every symlink is followed."""
        text = os.fspath(path)
        if ".." in text and ".." in text.split(os.sep):
            return os.path.realpath(text)
        text = text if text.startswith(os.sep) else os.path.abspath(text)
        head, tail = os.path.split(text)
        return os.path.realpath(text) if _is_link(text) else os.path.join(self._resolve_dir(head), tail)

    def outside(self, path: str | os.PathLike[str]) -> str | None:
        """``path`` resolved when it lies outside every folder, else None (the fast question)."""
        text = os.fspath(path)
        if ".." not in text:
            text = text if text.startswith(os.sep) else os.path.abspath(text)
            head = os.path.dirname(text)
            inside = self._dir_inside.get(head)
            if inside is None:
                inside = self._dir_inside[head] = self.contains(self._resolve_dir(head))
            if inside and not _is_link(text):
                return None
        real = self.resolve(text)
        return None if self.contains(real) else real

    def _resolve_dir(self, path: str) -> str:
        real = self._dirs.get(path)
        if real is None:
            head, tail = os.path.split(path)
            if not tail:
                real = path
            elif _is_link(path):
                real = os.path.realpath(path)
            else:
                real = os.path.join(self._resolve_dir(head), tail)
            self._dirs[path] = real
        return real

    def contains(self, real: str) -> bool:
        """Whether a resolved path (see :meth:`resolve`) is one of the folders or lies under one."""
        return real in self.roots or real.startswith(self._prefixes)


def _is_link(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:  # absent (or unreadable): nothing to follow
        return False


def check_inside_root(records: Iterable[Record], root: Path, name: str, *, extra_roots: Sequence[Path] = ()) -> None:
    """Refuse a record whose image or mask file resolves outside the dataset root.

    Label files are data: a row naming ``../../home/user/x.png``, ``/etc/x.png`` or a symlink
    that leads out of the root would make training, inspection or a served report read files
    the dataset's author chose. :func:`xrayfm.data.registry.build_dataset` runs this on every
    adapter's records unless ``allow_outside_root=True``.

    Args:
        records: The adapter's records.
        root: The dataset root (may itself be a symlink).
        name: Adapter name for the message.
        extra_roots: Further folders the user named (JSRT's ``cache_dir``).

    Raises:
        DatasetError: The first file outside; the message names the adapter, the label file and
            row (:attr:`Record.origin`) and the path, and how to allow it.
    """
    check = RootCheck((root, *extra_roots))
    for rec in records:
        real = check.outside(rec.image)
        what, path = "image", rec.image
        if real is None and rec.mask is not None:
            what = "mask"
            path = next((p for p in getattr(rec.mask, "files", ()) if check.outside(p) is not None), None)
            real = None if path is None else check.resolve(path)
        if real is not None:
            where = f" {rec.origin}:" if rec.origin else ""
            raise DatasetError(
                f"{name}:{where} {what} {path} resolves to {real}, outside the dataset root {root}; "
                "pass -o allow_outside_root=true (allow_outside_root=True in Python) if the label file is trusted"
            )


def needs_conversion(png: Path, source: Path) -> bool:
    """Whether the PNG converted from ``source`` is absent or older than it (so it must be written again)."""
    return not png.is_file() or png.stat().st_mtime < source.stat().st_mtime


def write_converted_png(unit: np.ndarray, dst: Path, name: str) -> Path:
    """Write an image converted from a format the readers lack (JSRT raw, NODE21 MetaImage) as a 16-bit PNG.

    Written atomically (:func:`~xrayfm.io.atomic.atomic_path`: a uniquely named temporary renamed
    into place), so DataLoader workers converting the same file at once and interrupted runs never
    leave a half-written file.

    Args:
        unit: The image scaled to [0, 1].
        dst: The PNG to write.
        name: The adapter, named in the error.

    Returns:
        ``dst``.

    Raises:
        DatasetError: ``dst`` cannot be written.
    """
    try:
        with atomic_path(dst) as tmp:
            write_png(tmp, unit, bits=16)
    except OSError as exc:
        raise DatasetError(
            f"{name}: cannot write the converted image {dst} ({exc}); pass -o cache_dir=DIR (cache_dir= in Python) "
            "to write it elsewhere"
        ) from None
    return dst
