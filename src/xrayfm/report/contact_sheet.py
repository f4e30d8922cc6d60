"""A contact sheet: a grid of a dataset's images with their boxes, mask outlines and labels.

Looking at a few samples catches what summaries miss (inverted DICOMs, boxes in the wrong pixel
space, masks shifted against the image), so ``xrayfm demo`` and ``xrayfm inspect --sheet`` write one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from xrayfm.data.base import XrayDataset
from xrayfm.errors import XrayfmError

COLOURS = ((230, 60, 60), (60, 180, 75), (255, 200, 0), (70, 130, 230), (240, 50, 230), (0, 200, 200))


def _tile(ds: XrayDataset, index: int, side: int) -> Image.Image:
    s = ds.load(index)
    img = s["image"][0].numpy()
    h, w = img.shape
    rgb = Image.fromarray(np.round(img * 255).astype(np.uint8), "L").convert("RGB")
    if "mask" in s:
        px = np.asarray(rgb).copy()
        for c, plane in enumerate(s["mask"].numpy()):
            on = plane == 1
            edge = on & ~(np.roll(on, 1, 0) & np.roll(on, -1, 0) & np.roll(on, 1, 1) & np.roll(on, -1, 1))
            px[edge] = COLOURS[(c + 3) % len(COLOURS)]
        rgb = Image.fromarray(px)
    scale = side / max(w, h)
    rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(rgb)
    box_task = ds.task_for("boxes")
    for box, lab in zip(s.get("boxes", []), s.get("box_labels", [])):
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        colour = COLOURS[int(lab) % len(COLOURS)]
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        if box_task is not None:
            draw.text((x0 + 2, y0 + 1), box_task.classes[int(lab)], fill=colour)
    label_task = ds.task_for("labels")
    if label_task is not None and "labels" in s:
        names = [c for c, v in zip(label_task.classes, s["labels"].tolist()) if v == 1]
        draw.text((3, 3), ", ".join(names) or "no finding", fill=(255, 255, 255))
    return rgb


def contact_sheet(ds: XrayDataset, path: str | Path, *, n: int = 16, side: int = 256) -> Path:
    """Write a grid PNG of ``n`` evenly spread samples with boxes, mask outlines and labels.

    Args:
        ds: Dataset to draw from.
        path: Output PNG.
        n: Number of tiles.
        side: Tile side in pixels.

    Raises:
        XrayfmError: The dataset is empty or a sample cannot be read.
    """
    if len(ds) == 0:
        raise XrayfmError(f"{ds.name}: cannot draw a contact sheet of an empty dataset")
    n = min(n, len(ds))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = Image.new("RGB", (cols * side, rows * side), (20, 20, 20))
    for k, i in enumerate(np.linspace(0, len(ds) - 1, n).round().astype(int)):
        tile = _tile(ds, int(i), side)
        sheet.paste(tile, ((k % cols) * side, (k // cols) * side))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
