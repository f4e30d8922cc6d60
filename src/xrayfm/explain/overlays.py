"""Heatmaps over radiographs, as PNG-ready images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from xrayfm.errors import XrayfmError


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet") -> Image.Image:
    """Blend a [0, 1] heatmap over a grey [0, 1] image (both (H, W)); returns an RGB image.

    The heatmap is resized to the image when their sizes differ.
    """
    import matplotlib

    if image.ndim != 2 or heat.ndim != 2:
        raise XrayfmError(f"overlay needs 2-D image and heatmap, got {image.shape} and {heat.shape}")
    if not 0 <= alpha <= 1:
        raise XrayfmError(f"alpha must be in [0, 1], got {alpha}")
    if heat.shape != image.shape:
        heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.shape[::-1], Image.Resampling.BILINEAR))
    colours = matplotlib.colormaps[colormap](np.clip(heat, 0, 1))[..., :3]
    grey = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    blended = (1 - alpha) * grey + alpha * colours
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), "RGB")
