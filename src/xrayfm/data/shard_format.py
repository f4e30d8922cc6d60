"""The on-disk sample of xrayfm shards, and :class:`ShardDataset`, which streams them back as Samples.

Shards are LitData chunked datasets (``litdata.StreamingDataset`` reads them), one per split under
``OUT/<split>/``, next to ``OUT/manifest.json`` (see :mod:`xrayfm.data.shards`). Every sample is
the same flat record of plain bytes and one JSON string, so every part of a build has one LitData
schema and the chunks stay readable without xrayfm:

- ``image``: the pre-resized grey image as a PNG (8- or 16-bit, lossless) or as raw little-endian
  ``uint8`` / ``uint16`` pixels (``encoding="raw"``: larger, no decode cost);
- ``labels``: float32 (K,) little-endian, ``nan`` = unknown; empty when the set has no label task;
- ``mask``: the (M, H, W) uint8 mask stacked into one (M*H, W) 8-bit PNG; empty when absent;
- ``boxes``: float32 (N, 4) xyxy in pixels of the stored image; ``box_labels``: int64 (N,);
- ``meta``: JSON: the Sample's meta (``id``, ``source``, ``patient_id``, ``split``,
  ``original_size`` [w, h], ``size`` [w, h] stored...) plus ``_shard``, the layout the decoder
  needs (shape, encoding, bits, mask channels, box count or null for "not box-annotated").
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataset
from PIL import Image

from xrayfm.data.sample import Sample
from xrayfm.errors import DatasetError, MissingSplitError
from xrayfm.tasks import TaskSpec

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "xrayfm-shards"
FORMAT_VERSION = 1
ENCODINGS: tuple[str, ...] = ("png", "raw")
BITS: tuple[int, ...] = (8, 16)
_DTYPES = {8: np.dtype("<u1"), 16: np.dtype("<u2")}


def _png(array: np.ndarray) -> bytes:
    """A 2-D uint8 / uint16 array as PNG bytes (Pillow)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _unpng(data: Any) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def encode_sample(sample: Sample, *, bits: int = 8, encoding: str = "png") -> dict[str, Any]:
    """One resized Sample as the shard record (see the module docstring).

    Args:
        sample: A Sample whose image is float32 (1, H, W) in [0, 1].
        bits: 8 or 16 bits per pixel.
        encoding: ``png`` or ``raw``.

    Returns:
        The record LitData writes.
    """
    image = sample["image"][0].numpy()
    top = (1 << bits) - 1
    pixels = np.round(np.clip(image, 0.0, 1.0) * top).astype(_DTYPES[bits])
    layout: dict[str, Any] = {"shape": list(pixels.shape), "encoding": encoding, "bits": bits, "mask": None,
                              "boxes": None}  # fmt: skip
    record = {"image": _png(pixels) if encoding == "png" else pixels.tobytes(), "labels": b"", "mask": b"",
              "boxes": b"", "box_labels": b""}  # fmt: skip
    if "labels" in sample:
        record["labels"] = sample["labels"].numpy().astype("<f4").tobytes()
    if "mask" in sample:
        mask = sample["mask"].numpy().astype(np.uint8)
        layout["mask"] = int(mask.shape[0])
        record["mask"] = _png(mask.reshape(-1, mask.shape[-1]))
    if "boxes" in sample:
        layout["boxes"] = int(len(sample["boxes"]))
        record["boxes"] = sample["boxes"].numpy().astype("<f4").tobytes()
        record["box_labels"] = sample["box_labels"].numpy().astype("<i8").tobytes()
    meta = {k: v for k, v in sample.get("meta", {}).items() if k != "resized_from"}
    record["meta"] = json.dumps({**meta, "_shard": layout}, default=str)
    return record


def decode_sample(record: dict[str, Any]) -> Sample:
    """The Sample of a shard record: image float32 (1, H, W) in [0, 1], targets, meta.

    Args:
        record: What LitData read (bytes or memoryviews, and the meta JSON).

    Returns:
        The Sample, as the adapter would give it after resizing.
    """
    meta = json.loads(record["meta"])
    layout = meta.pop("_shard")
    h, w = layout["shape"]
    if layout["encoding"] == "png":
        pixels = _unpng(record["image"])
    else:
        pixels = np.frombuffer(record["image"], dtype=_DTYPES[layout["bits"]]).reshape(h, w)
    image = torch.from_numpy(pixels.astype(np.float32) / ((1 << layout["bits"]) - 1))[None]
    sample: Sample = {"image": image, "meta": meta}
    if len(record["labels"]):
        sample["labels"] = torch.from_numpy(np.frombuffer(record["labels"], "<f4").astype(np.float32))
    if layout["mask"] is not None:
        sample["mask"] = torch.from_numpy(_unpng(record["mask"]).reshape(layout["mask"], h, w).copy())
    if layout["boxes"] is not None:
        sample["boxes"] = torch.from_numpy(np.frombuffer(record["boxes"], "<f4").astype(np.float32).reshape(-1, 4))
        sample["box_labels"] = torch.from_numpy(np.frombuffer(record["box_labels"], "<i8").astype(np.int64))
    return sample


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of a shard folder (local path or any fsspec URL).

    Raises:
        DatasetError: No manifest, or not an xrayfm shard manifest.
    """
    import fsspec

    url = f"{str(out).rstrip('/')}/{MANIFEST_NAME}"
    try:
        with fsspec.open(url, "r", encoding="utf-8") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise DatasetError(
            f"{out}: no {MANIFEST_NAME}; not a shard folder (build one with xrayfm shards build)"
        ) from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{url}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{url}: not an xrayfm shard manifest")
    return manifest


class ShardDataset(StreamingDataset):
    """A split of an xrayfm shard folder as a LitData ``StreamingDataset`` of Samples.

    Indexing (``ds[i]``) and iteration both give Samples (the adapter's Sample after the
    build's resize), with ``transform`` applied. Being a ``StreamingDataset``, it keeps LitData's
    streaming behaviour: shuffling (``shuffle``, ``seed``, ``set_epoch``), rank and worker
    sharding under ``litdata.StreamingDataLoader``, ``state_dict`` / ``load_state_dict`` for exact
    mid-epoch resume, and remote folders (``s3://...``) read through a local ``cache_dir``.

    Args:
        out: The shard folder (``xrayfm shards build`` output), local or a URL.
        split: ``train``, ``val`` or ``test``.
        transform: Callable applied to each Sample.
        shuffle: Shuffle chunks and samples each epoch (LitData's shuffle).
        seed: Shuffle seed.
        drop_last: LitData's ``drop_last`` (True by default under DDP).
        cache_dir: Local cache of a remote folder.
        storage_options: fsspec / cloud options of a remote folder.

    Attributes:
        manifest: The folder's manifest.
        tasks: The task specs of the samples' targets.

    Raises:
        DatasetError: Not a shard folder, or a build that has not finished.
        MissingSplitError: The folder holds no sample of ``split``.
    """

    def __init__(
        self,
        out: str | Path,
        split: str = "train",
        *,
        transform: Callable[[Sample], Sample] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool | None = None,
        cache_dir: str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        manifest = read_manifest(out)
        if not manifest.get("complete"):
            raise DatasetError(f"{out}: the shard build has not finished; run the same xrayfm shards build again")
        counts = manifest["counts"]
        if not counts.get(split, {}).get("total"):
            have = ", ".join(s for s, c in counts.items() if c.get("total")) or "none"
            raise MissingSplitError(f"{out}: no {split!r} sample in these shards (splits: {have})")
        self.manifest = manifest
        self.tasks = [TaskSpec.from_dict(t) for t in manifest["tasks"]]
        self.name, self.root, self.split = "shards", str(out), split
        fns: list[Callable[..., Any]] = [decode_sample] + ([transform] if transform is not None else [])
        super().__init__(f"{str(out).rstrip('/')}/{split}", cache_dir=cache_dir, shuffle=shuffle, seed=seed,
                         drop_last=drop_last, storage_options=storage_options, transform=fns)  # fmt: skip

    def task_for(self, key: str) -> TaskSpec | None:
        """The task whose targets live under Sample ``key`` (labels / mask / boxes), if any."""
        return next((t for t in self.tasks if t.sample_key == key), None)

    def __repr__(self) -> str:
        tasks = ", ".join(f"{t.name}:{t.kind}[{t.num_classes}]" for t in self.tasks)
        return f"ShardDataset({self.root!r}, split={self.split!r}, n={len(self)}, tasks=[{tasks}])"
