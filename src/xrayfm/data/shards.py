"""Pre-resized shards of a dataset pool, written with LitData: :func:`build_shards`, :func:`inspect_shards`.

Raw radiographs are too slow to feed a GPU (full-size PNG / DICOM decodes); shards hold every
image already resized, with its targets and metadata, in LitData's chunked format
(``litdata.StreamingDataset`` streams it with shuffling, rank / worker sharding and exact
resume: :class:`~xrayfm.data.shard_format.ShardDataset`). Layout of ``OUT``::

    OUT/manifest.json          what was built: config, sources, tasks, counts, versions, parts and
                               the SHA-256 of every chunk file
    OUT/<split>/index.json     LitData's index of the split (train, val, test)
    OUT/<split>/chunk-P-K.bin  chunk K of part P

Resumable builds. The pool is cut into parts (per split, per source, ``part_size`` samples).
Each part is written by a LitData ``BinaryWriter`` into a hidden staging folder, its chunks are
then renamed into the split folder and the part is recorded in the manifest (written
atomically). A rerun of the same build skips the recorded parts that cover the same images
(paths and repeats) and whose chunk files are present, and rewrites the others. LitData's own
``optimize(use_checkpoint=True)`` resume works per worker process and is not used, so that a
build needs no worker pool and resumes by content. A split's
``index.json`` is written (atomically) once all its parts are done, and ``complete`` is set last.

Images are resized with :class:`~xrayfm.data.transforms.Resize` (antialiased bilinear; masks
nearest, boxes scaled): ``resize="shorter"`` brings the shorter side to ``size`` keeping the
aspect ratio (never enlarging), which every training view of xrayfm (random resized crops, the
evaluation resize and crop) reads as it would the original; ``"square"`` squashes to
``size`` x ``size`` so that samples batch without a transform.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xrayfm import __version__
from xrayfm.data.base import XrayDataset
from xrayfm.data.pool import POOL_SPLITS, TARGETS, PooledDataset, build_pool, file_sha256
from xrayfm.data.pool_sources import PoolSource
from xrayfm.data.registry import check_choice
from xrayfm.data.sample import Sample
from xrayfm.data.shard_format import (
    BITS,
    ENCODINGS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    encode_sample,
    read_manifest,
)
from xrayfm.data.transforms import Resize
from xrayfm.errors import LIST_UNREADABLE, DatasetError, ImageReadError, XrayfmError
from xrayfm.io.atomic import atomic_write_json
from xrayfm.progress import progress

log = logging.getLogger(__name__)

RESIZE_MODES: tuple[str, ...] = ("shorter", "square")
#: What to do about an unreadable file, told with the error that stops a build.
UNREADABLE_HINT = (
    "leave such files out with --skip-unreadable (skip_unreadable=True), or list them all first with: "
    f"{LIST_UNREADABLE}"
)
INDEX_NAME = "index.json"


def shard_shape(height: int, width: int, size: int, resize: str) -> tuple[int, int]:
    """(height, width) an image is stored at (see the module docstring)."""
    if resize == "square":
        return size, size
    short = min(height, width)
    if short <= size:
        return height, width
    scale = size / short
    return (size, max(1, round(width * scale))) if height <= width else (max(1, round(height * scale)), size)


def _resized(sample: Sample, size: int, resize: str) -> Sample:
    h, w = sample["image"].shape[-2:]
    out = Resize(shard_shape(h, w, size, resize))(sample)
    meta = dict(out.get("meta", {}))
    meta["original_size"] = meta.get("size", [int(w), int(h)])
    meta["size"] = [int(out["image"].shape[-1]), int(out["image"].shape[-2])]
    out["meta"] = meta
    return out


def _plan(pool: PooledDataset, splits: Sequence[str], part_size: int) -> dict[str, list[dict[str, Any]]]:
    """Per split, its parts: one source's consecutive records, at most ``part_size`` of them."""
    plan: dict[str, list[dict[str, Any]]] = {}
    for split in splits:
        rows = [(i, r.meta["source"]) for i, r in enumerate(pool.records) if r.meta["split"] == split]
        parts: list[dict[str, Any]] = []
        start = 0
        while start < len(rows):
            source = rows[start][1]
            stop = start
            while stop < len(rows) and stop - start < part_size and rows[stop][1] == source:
                stop += 1
            indices = [i for i, _ in rows[start:stop]]
            ids = "\n".join(f"{pool.records[i].image}|{pool.records[i].meta.get('repeat', 0)}" for i in indices)
            parts.append({"split": split, "source": source, "indices": indices, "samples": len(indices),
                          "key": hashlib.sha256(ids.encode("utf-8")).hexdigest()})  # fmt: skip
            start = stop
        if parts:
            plan[split] = parts
    return plan


def _write_part(
    pool: XrayDataset, part: dict[str, Any], number: int, split_dir: Path, cfg: dict[str, Any], skip_unreadable: bool
) -> dict[str, Any]:
    """Write one part's samples as LitData chunks ``chunk-<number>-K.bin``; returns their index entries, the
    samples written and, with ``skip_unreadable``, the files left out (``skipped``: image and error).

    Raises:
        ImageReadError: A sample's image or mask cannot be read, without ``skip_unreadable``.
    """
    from litdata.streaming.writer import BinaryWriter

    for stale in split_dir.glob(f"chunk-{number}-*.bin"):
        stale.unlink()
    staging = split_dir / f".part-{number}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    writer = BinaryWriter(str(staging), chunk_bytes=cfg["chunk_bytes"])
    desc = f"shards {part['split']} part {number} ({part['source']})"
    written, skipped = 0, []
    for i in progress(part["indices"], desc=desc, unit="img"):
        try:
            sample = pool[i]
        except ImageReadError as exc:
            if not skip_unreadable:
                raise ImageReadError(f"{exc}; {UNREADABLE_HINT}") from exc
            skipped.append({"image": str(pool.records[i].image), "error": str(exc)})
            continue
        writer[written] = encode_sample(_resized(sample, cfg["size"], cfg["resize"]), bits=cfg["bits"],
                                        encoding=cfg["encoding"])  # fmt: skip
        written += 1
    entry: dict[str, Any] = {"samples": written, **({"skipped": skipped} if skipped else {})}
    if not written:  # every file of the part was left out: no chunk, no index entry
        shutil.rmtree(staging, ignore_errors=True)
        return {**entry, "chunks": [], "litdata_config": None}
    writer.done()
    (index_file,) = staging.glob(f"*.{INDEX_NAME}")
    index = json.loads(index_file.read_text(encoding="utf-8"))
    chunks = []
    for k, chunk in enumerate(index["chunks"]):
        name = f"chunk-{number}-{k}.bin"
        os.replace(staging / chunk["filename"], split_dir / name)
        chunks.append({**chunk, "filename": name, "sha256": file_sha256(split_dir / name)})
    shutil.rmtree(staging)
    return {**entry, "chunks": chunks, "litdata_config": index["config"]}


def _write_index(split_dir: Path, parts: list[dict[str, Any]]) -> None:
    """LitData's ``index.json`` of a split: its parts' chunks in order, under their shared config (none when no
    part has a sample)."""
    parts = [p for p in parts if p["chunks"]]
    chunks = [{k: v for k, v in c.items() if k != "sha256"} for p in parts for c in p["chunks"]]
    keep = {c["filename"] for c in chunks}
    for path in split_dir.glob("chunk-*.bin"):
        if path.name not in keep:
            path.unlink()
    if not parts:
        (split_dir / INDEX_NAME).unlink(missing_ok=True)
        return
    config = parts[0]["litdata_config"]
    if any(p["litdata_config"]["data_format"] != config["data_format"] for p in parts):
        raise DatasetError(f"{split_dir}: parts were written with different sample layouts; rebuild into a new OUT")
    atomic_write_json(split_dir / INDEX_NAME, {"chunks": chunks, "config": config})


def _versions() -> dict[str, str]:
    import litdata

    return {"xrayfm": __version__, "litdata": litdata.__version__}


def _start(out: Path, config: dict[str, Any], digest: str) -> dict[str, Any]:
    """The manifest to continue from: the earlier one of the same build, else a new one."""
    if (out / MANIFEST_NAME).is_file():
        old = read_manifest(out)
        if old.get("config_hash") != digest:
            changed = sorted(k for k in config if old.get("config", {}).get(k) != config[k])
            raise XrayfmError(
                f"{out} holds shards of another build (different {', '.join(changed) or 'format'}); "
                "choose a new OUT, or delete it to rebuild"
            )
        return old
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise XrayfmError(f"{out} exists and is not a shard folder; choose a new or empty OUT")
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": config, "config_hash": digest,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "parts": {}}  # fmt: skip


def build_shards(
    sources: PooledDataset | Sequence[PoolSource | str],
    out: str | Path,
    *,
    size: int = 512,
    bits: int = 8,
    resize: str = "shorter",
    encoding: str = "png",
    exclude_test: Sequence[PoolSource | str] = (),
    dedupe: str = "id",
    splits: Sequence[str] = POOL_SPLITS,
    targets: Sequence[str] = TARGETS,
    seed: int = 0,
    chunk_mb: float = 64.0,
    part_size: int = 5000,
    skip_unreadable: bool = False,
) -> dict[str, Any]:
    """Write a pool (or the pool of ``sources``) as pre-resized LitData shards; resumes an earlier build.

    Args:
        sources: A :class:`~xrayfm.data.pool.PooledDataset`, or sources for
            :func:`~xrayfm.data.pool.build_pool` (with ``exclude_test``, ``dedupe``, ``splits``,
            ``targets`` and ``seed``, which are ignored when a pool is given).
        out: Output folder: new, empty, or an earlier (possibly interrupted) build of the same config.
        size: Shorter side (``resize="shorter"``) or side (``"square"``) in pixels.
        bits: 8 or 16 bits per stored pixel.
        resize: ``shorter`` or ``square``.
        encoding: ``png`` (lossless, compact) or ``raw`` (pixels as stored, fastest to read).
        exclude_test: See :func:`~xrayfm.data.pool.build_pool`.
        dedupe: See :func:`~xrayfm.data.pool.build_pool`.
        splits: See :func:`~xrayfm.data.pool.build_pool`.
        targets: See :func:`~xrayfm.data.pool.build_pool`.
        seed: See :func:`~xrayfm.data.pool.build_pool`.
        chunk_mb: Target size of a chunk file in MB.
        part_size: Samples per resumable part.
        skip_unreadable: Leave out the samples whose image or mask cannot be read (damaged, truncated, of an
            unsupported kind) instead of stopping at the first: each part lists its own (``skipped``), the
            manifest counts them (``skipped``), and a rerun writes such parts again, so that files repaired
            meanwhile get in. Not part of the build's identity: a build stopped by a damaged file resumes with it.

    Returns:
        The manifest written to ``OUT/manifest.json``.

    Raises:
        XrayfmError: A bad size, bits, resize or encoding; ``out`` holds another build or other files.
        DatasetError: A source cannot be read, or the pool is empty.
        ImageReadError: A sample cannot be read, without ``skip_unreadable``.
    """
    if bits not in BITS:
        raise XrayfmError(f"bits must be 8 or 16, not {bits}")
    check_choice("resize mode", resize, RESIZE_MODES)
    check_choice("encoding", encoding, ENCODINGS)
    if size < 1 or part_size < 1 or chunk_mb <= 0:
        raise XrayfmError(f"size ({size}), part_size ({part_size}) and chunk_mb ({chunk_mb}) must be positive")
    pool = sources if isinstance(sources, PooledDataset) else build_pool(
        sources, exclude_test=exclude_test, dedupe=dedupe, splits=splits, targets=targets, seed=seed)  # fmt: skip
    config = {"size": size, "bits": bits, "resize": resize, "encoding": encoding, **pool.settings,
              "chunk_bytes": int(chunk_mb * 2**20), "part_size": part_size,
              "sources": [s.describe() for s in pool.sources],
              "exclude_test": [s.describe() for s in pool.excluded_sets]}  # fmt: skip
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8")).hexdigest()
    out = Path(out)
    manifest = _start(out, config, digest)
    plan = _plan(pool, pool.settings["splits"], part_size)
    manifest.update(complete=False, tasks=[t.to_dict() for t in pool.tasks], pool=pool.report, versions=_versions())
    atomic_write_json(out / MANIFEST_NAME, manifest)  # from here on, a rerun resumes this build
    done = manifest["parts"]
    for split, parts in plan.items():
        split_dir = out / split
        split_dir.mkdir(parents=True, exist_ok=True)
        for number, part in enumerate(parts):
            name = f"{split}/{number}"
            old = done.get(name)
            if (old and old["key"] == part["key"] and not old.get("skipped")
                    and all((split_dir / c["filename"]).is_file() for c in old["chunks"])):  # fmt: skip
                continue
            log.info("writing %s (%d samples of %s)", name, part["samples"], part["source"])
            entry = {k: v for k, v in part.items() if k != "indices"}
            done[name] = {**entry, **_write_part(pool, part, number, split_dir, config, skip_unreadable)}
            atomic_write_json(out / MANIFEST_NAME, manifest)
        _write_index(split_dir, [done[f"{split}/{n}"] for n in range(len(parts))])
    manifest["parts"] = {f"{s}/{n}": done[f"{s}/{n}"] for s, parts in plan.items() for n in range(len(parts))}
    counts: dict[str, dict[str, Any]] = {}
    for split, parts in plan.items():
        per_source: dict[str, int] = {}
        for n, p in enumerate(parts):
            per_source[p["source"]] = per_source.get(p["source"], 0) + done[f"{split}/{n}"]["samples"]
        counts[split] = {"total": sum(per_source.values()), "per_source": per_source}
    skipped = sum(len(p.get("skipped", ())) for p in manifest["parts"].values())
    manifest.update(counts=counts, total=sum(c["total"] for c in counts.values()), skipped=skipped, complete=True,
                    updated=datetime.now(timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
    atomic_write_json(out / MANIFEST_NAME, manifest)
    return manifest


def inspect_shards(out: str | Path, *, verify: bool = False) -> dict[str, Any]:
    """Summarise a shard folder; with ``verify``, check every chunk file against its SHA-256.

    Args:
        out: The shard folder (local).
        verify: Re-hash every chunk file (reads all of them).

    Returns:
        ``out``, ``complete``, the image settings, ``counts`` per split and source, ``sources``,
        ``tasks``, ``versions``, ``chunks``, ``bytes`` and ``skipped`` (the files left out as unreadable: image,
        error, part); with ``verify`` also ``verified``
        (files checked) and ``problems`` (missing or altered files, missing split indexes).

    Raises:
        DatasetError: ``out`` is not a shard folder.
    """
    out = Path(out)
    m = read_manifest(out)
    cfg = m["config"]
    chunks = [(name.split("/")[0], c) for name, part in m.get("parts", {}).items() for c in part["chunks"]]
    summary: dict[str, Any] = {
        "out": str(out), "complete": bool(m.get("complete")), "size": cfg["size"], "resize": cfg["resize"],
        "bits": cfg["bits"], "encoding": cfg["encoding"], "dedupe": cfg["dedupe"], "counts": m.get("counts", {}),
        "total": m.get("total", 0), "sources": cfg["sources"], "exclude_test": cfg["exclude_test"],
        "tasks": m.get("tasks", []), "versions": m.get("versions", {}),
        "chunks": len(chunks), "bytes": sum(int(c["chunk_bytes"]) for _, c in chunks),
        "skipped": [dict(s, part=name) for name, part in m.get("parts", {}).items() for s in part.get("skipped", ())],
    }  # fmt: skip
    if verify:
        problems = [f"{split}/{INDEX_NAME} is missing" for split in summary["counts"]
                    if not (out / split / INDEX_NAME).is_file()]  # fmt: skip
        for split, c in chunks:
            path = out / split / c["filename"]
            if not path.is_file():
                problems.append(f"{split}/{c['filename']} is missing")
            elif file_sha256(path) != c["sha256"]:
                problems.append(f"{split}/{c['filename']} does not match its SHA-256 (altered or truncated)")
        summary.update(verified=len(chunks), problems=problems)
    return summary
