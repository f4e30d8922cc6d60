"""JSRT chest radiographs (Shiraishi et al., AJR 2000), with SCR or repository lung masks.

Two layouts are read:

* The original JSRT release: ``All247images/JPCLN001.IMG`` ... 247 raw files of 2048x2048
  pixels, 12 bits stored in 16-bit big-endian unsigned words, no header. The stored values
  are inverted with respect to the usual display: 0 is white (dense) and 4095 black, which is
  why the common conversion scripts compute ``1 - value / max`` and ImageJ's raw import needs
  "white is zero" (found by looking the format up; e.g. the ImageJ macro of
  topinfrassi01/LungSegmentation and other JSRT converters on GitHub). The raw files cannot go
  through :func:`xrayfm.io.read_xray`, so the adapter converts each one once into a 16-bit PNG
  cache (``1 - raw / 4095``, bright = dense) and points the records at the PNGs. Masks come
  from the SCR database (van Ginneken et al., MedIA 2006): ``scr/.../masks/<structure>/
  <ID>.gif``, drawn on images subsampled to 1024x1024, so with SCR masks the raw images are
  converted at 1024x1024 by 2x2 averaging.
* The PNG layout of the jsrt-segmentation repository (vfmatzkin/jsrt-segmentation-unet):
  ``{Train,Val,Test}/Images/<ID>.png`` with ``Labels/<ID>_labels.png`` (0/1 lungs); the folder
  gives the split.

The label is ``nodule``: 1 for ``JPCLN*`` (154 images with one lung nodule), 0 for ``JPCNN*``.
JSRT holds one image per patient, so the raw layout's 70/10/20 split hashes the image id.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xrayfm.data.base import Record, XrayDataset
from xrayfm.data.masks import FileMasks, UnionMask
from xrayfm.data.registry import check_choice, register_dataset
from xrayfm.data.splits import split_groups
from xrayfm.data.tables import RootCheck, needs_conversion, require_images, select_split, write_converted_png
from xrayfm.errors import DatasetError, UnknownNameError
from xrayfm.tasks import TaskSpec

RAW_SIDE = 2048
RAW_MAX = 4095
RAW_BYTES = RAW_SIDE * RAW_SIDE * 2
SCR_SIDE = 1024
SCR_STRUCTURES = ("left lung", "right lung", "heart", "left clavicle", "right clavicle")
#: Mask channel name -> SCR structure folders merged into it.
STRUCTURES: dict[str, tuple[str, ...]] = {
    "lungs": ("left lung", "right lung"),
    "clavicles": ("left clavicle", "right clavicle"),
    **{s: (s,) for s in SCR_STRUCTURES},
}
PNG_SPLITS = {"Train": "train", "Val": "val", "Test": "test"}
LAYOUTS = ("auto", "png", "raw")
LABEL_TASK = TaskSpec("nodule", "multilabel", ("nodule",))


def nodule_label(image_id: str, where: Path) -> float:
    """1 for ``JPCLN*`` (nodule), 0 for ``JPCNN*``; anything else is not a JSRT name."""
    if image_id.upper().startswith("JPCLN"):
        return 1.0
    if image_id.upper().startswith("JPCNN"):
        return 0.0
    raise DatasetError(f"{where}: {image_id!r} is not a JSRT image name (JPCLNnnn or JPCNNnnn)")


def read_jsrt_raw(path: Path) -> np.ndarray:
    """Read one JSRT ``.IMG`` file as float32 (2048, 2048) in [0, 1], bright = dense.

    Raises:
        DatasetError: The file is not exactly 2048*2048*2 bytes or holds values above 4095.
    """
    size = path.stat().st_size
    if size != RAW_BYTES:
        raise DatasetError(
            f"{path}: {size} bytes; a JSRT .IMG file is exactly {RAW_BYTES} bytes "
            f"({RAW_SIDE}x{RAW_SIDE} 16-bit big-endian words, no header)"
        )
    raw = np.fromfile(path, dtype=">u2").reshape(RAW_SIDE, RAW_SIDE)
    top = int(raw.max())
    if top > RAW_MAX:
        raise DatasetError(f"{path}: value {top} does not fit the 12 bits JSRT stores; not a JSRT raw file?")
    return 1.0 - raw.astype(np.float32) / RAW_MAX


def convert_raw(src: Path, dst: Path, side: int) -> Path:
    """Convert a JSRT raw file into a 16-bit PNG of ``side`` (2048, or 1024 by 2x2 mean).

    The PNG is written atomically (:func:`~xrayfm.io.atomic.atomic_path`: a uniquely named
    temporary renamed into place), so DataLoader workers converting the same file at once and
    interrupted runs never leave a half-written file.

    Args:
        src: The JSRT ``.IMG`` file.
        dst: The PNG to write.
        side: 2048 (as stored) or 1024 (:data:`SCR_SIDE`, the SCR masks' size).

    Returns:
        ``dst``.

    Raises:
        DatasetError: ``src`` is not a JSRT raw file, or ``dst`` cannot be written.
    """
    unit = read_jsrt_raw(src)
    if side == SCR_SIDE:
        unit = unit.reshape(SCR_SIDE, 2, SCR_SIDE, 2).mean(axis=(1, 3))
    return write_converted_png(unit, dst, "jsrt")


def _png_records(root: Path, with_masks: bool) -> list[Record]:
    records = []
    for folder, part in PNG_SPLITS.items():
        for img in sorted((root / folder / "Images").glob("*.png")):
            rec = Record(
                image=img,
                labels=np.asarray([nodule_label(img.stem, img)], np.float32),
                meta={"id": img.stem, "patient_id": img.stem, "view": "PA", "split": part},
            )
            if with_masks:
                label = root / folder / "Labels" / f"{img.stem}_labels.png"
                if not label.is_file():
                    raise DatasetError(f"jsrt: no lung label {label} for image {img}")
                rec.mask = FileMasks((label,))
            records.append(rec)
    return records


def _scr_index(root: Path) -> dict[tuple[str, str], Path]:
    """(structure, image id) -> GIF over ``scr/masks/...`` and ``scr/*/masks/...`` (SCR folds)."""
    index: dict[tuple[str, str], Path] = {}
    if (root / "scr").is_dir():
        for p in sorted((root / "scr").rglob("*.gif")):
            if p.parent.parent.name == "masks" and p.parent.name in SCR_STRUCTURES:
                index.setdefault((p.parent.name, p.stem.upper()), p)
    return index


def _raw_records(
    root: Path, split: str, structures: tuple[str, ...], with_masks: bool, size: int | None, cache: Path, seed: int
) -> tuple[list[Record], bool]:
    sources = sorted(p for p in (root / "All247images").iterdir() if p.suffix.upper() == ".IMG")
    if not sources:
        raise DatasetError(f"jsrt: no .IMG file in {root / 'All247images'}")
    for src in sources:  # cheap size check of every file before any conversion
        if src.stat().st_size != RAW_BYTES:
            read_jsrt_raw(src)
    scr = _scr_index(root) if with_masks else {}
    use_scr = bool(scr)
    side = size or (SCR_SIDE if use_scr else RAW_SIDE)
    if side not in (RAW_SIDE, SCR_SIDE):
        raise DatasetError(f"jsrt: size must be {RAW_SIDE} or {SCR_SIDE}, got {size}")
    if use_scr and side != SCR_SIDE:
        raise DatasetError(f"jsrt: SCR masks are {SCR_SIDE}x{SCR_SIDE}; use -o size={SCR_SIDE} (or -o masks=False)")
    parts = split_groups([p.stem.upper() for p in sources], seed=seed)
    out_dir = cache / str(side)
    records = []
    for src, part in zip(sources, parts):
        if split != "all" and part != split:
            continue
        image_id = src.stem.upper()
        rec = Record(
            image=out_dir / f"{image_id}.png",
            labels=np.asarray([nodule_label(image_id, src)], np.float32),
            meta={"id": image_id, "patient_id": image_id, "view": "PA", "split": part, "source_file": str(src)},
        )
        if use_scr:
            channels = []
            for name in structures:
                files = tuple(scr.get((s, image_id)) for s in STRUCTURES[name])
                if None in files:
                    absent = STRUCTURES[name][files.index(None)]
                    raise DatasetError(f"jsrt: no SCR mask scr/.../masks/{absent}/{image_id}.gif under {root}")
                channels.append(files)
            rec.mask = UnionMask(tuple(channels))  # type: ignore[arg-type]
        if needs_conversion(rec.image, src):
            convert_raw(src, rec.image, side)
        records.append(rec)
    return records, use_scr


@register_dataset(
    "jsrt",
    description="JSRT (247 PA radiographs): nodule label; lung/heart/clavicle masks from SCR or the PNG repo",
    layout="""
    Raw release:  ROOT/All247images/JPCLN001.IMG ... JPCNN093.IMG   (2048x2048, 12-bit big-endian)
                  ROOT/scr/masks/{left lung,right lung,heart,left clavicle,right clavicle}/JPCLN001.gif
                  (optional SCR masks, 1024x1024; ROOT/scr/fold1/masks/... is accepted too)
                  Raw files are converted once to 16-bit PNGs under cache_dir (default ROOT/png16),
                  at 1024x1024 (2x2 mean) when SCR masks are used.
    PNG layout:   ROOT/{Train,Val,Test}/Images/JPCLN001.png, .../Labels/JPCLN001_labels.png (0/1 lungs)
    nodule = 1 for JPCLN*, 0 for JPCNN*. Raw layout: 70/10/20 split by hashed image id.
    """,
    tasks=("multilabel", "segmentation"),
)
def build_jsrt(
    root: Path,
    split: str,
    *,
    layout: str = "auto",
    masks: bool = True,
    structures: tuple[str, ...] = ("lungs",),
    size: int | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
    missing: str = "error",
) -> XrayDataset:
    """Build JSRT.

    Args:
        root: Dataset root (layout above).
        split: ``train``, ``val``, ``test`` or ``all``.
        layout: ``auto`` (PNG layout when ``Train/Images`` exists, else raw), ``png`` or ``raw``.
        masks: Attach masks (PNG labels, or SCR GIFs when ``ROOT/scr`` exists).
        structures: Mask channels: ``lungs`` (left + right lung), ``heart``, ``clavicles`` or a
            single SCR structure (``left lung``...). The PNG layout only has ``lungs``.
        size: Raw layout: side of the converted images (2048 or 1024); default 1024 with SCR
            masks, else 2048.
        cache_dir: Raw layout: folder for the converted PNGs (default ``ROOT/png16``, which
            must not be a symlink leading out of the root); a folder named here is trusted
            like the root.
        seed: Seed of the raw layout's hashed split.
        missing: Absent images: ``error``, ``skip`` them, or ``keep`` (labels only, no check).
    """
    check_choice("layout", layout, LAYOUTS)
    if not isinstance(masks, bool):
        raise DatasetError(f"jsrt: masks must be True or False, got {masks!r}")
    structures = (structures,) if isinstance(structures, str) else tuple(structures)
    unknown = [s for s in structures if s not in STRUCTURES]
    if unknown or not structures:
        raise UnknownNameError(f"unknown structures {unknown or '()'}; choose among {', '.join(STRUCTURES)}")
    if layout == "auto":
        layout = "png" if any((root / f / "Images").is_dir() for f in PNG_SPLITS) else "raw"
    if layout == "png":
        if masks and structures != ("lungs",):
            raise DatasetError(f"jsrt: the PNG layout only has lung masks, not {list(structures)}")
        records = select_split(_png_records(root, masks), split)
        with_masks = masks
        if not records and split == "all":
            raise DatasetError(f"jsrt: no image in {root}/{{Train,Val,Test}}/Images")
    else:
        if not (root / "All247images").is_dir():
            raise DatasetError(f"jsrt: neither {root / 'All247images'} nor {root}/Train/Images found")
        cache = Path(cache_dir) if cache_dir else root / "png16"
        inside = RootCheck((root,))
        if not cache_dir and not inside.contains(inside.resolve(cache)):
            raise DatasetError(
                f"jsrt: {cache} leads outside the dataset root {root}; pass -o cache_dir=DIR (cache_dir= in Python) "
                "to convert the raw images into a folder of your choice"
            )
        records, with_masks = _raw_records(root, split, structures, masks, size, cache, seed)
    tasks = [LABEL_TASK]
    if with_masks:
        name = "lungs" if structures == ("lungs",) else "anatomy"
        tasks.append(TaskSpec(name, "segmentation", tuple(s.replace(" ", "_") for s in structures)))
    records = require_images(records, "jsrt", missing=missing)
    extra = (Path(cache_dir),) if cache_dir else ()
    return XrayDataset(records, tasks, name="jsrt", root=root, split=split, extra_roots=extra)
