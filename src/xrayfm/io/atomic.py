"""Atomic writes: the one way xrayfm puts a file or a folder on disk.

A reader (or a resumed run after a kill) sees either the old complete file or the new complete
one, never a partial write: the content goes to a uniquely named temporary sibling in the same
folder, is flushed, and is renamed over the destination. Temporaries get the permissions a plain
``open(path, "w")`` would have (0666 minus the umask), not ``mkstemp``'s 0600, so exported
weights stay readable by the colleagues the umask allows. Folders (e.g. sharded distributed
checkpoints) are swapped in with two renames; the old folder is removed only after the new one
is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The caller (or a library it calls: safetensors, ``torch.save``, Pillow, ONNX) writes to the
    yielded path, which ends in the destination's extension (Pillow chooses the format by it)
    and is unique, so concurrent writers of one destination do not collide (the last rename
    wins). On an exception the temporary is removed and ``path`` is left untouched.

    Args:
        path: The destination file or folder. Parent folders are created.
        directory: The content is a folder (the yielded path does not exist yet; create it).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".tmp{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    if directory:
        tmp.unlink()
    try:
        yield tmp
        if directory:
            _replace_dir(tmp, dest)
        else:
            if tmp.exists():
                os.chmod(tmp, _umask_mode())
            os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Put folder ``tmp`` at ``dest``; an existing ``dest`` (folder or file) is moved aside first, then removed."""
    if not (dest.exists() or dest.is_symlink()):
        os.replace(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    os.replace(dest, old)
    os.replace(tmp, dest)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (unknown types as strings) atomically; returns ``path``."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
