"""Heatmaps over radiographs, as PNG-ready images.

:func:`overlay_heatmap` blends a map over an image of the same frame. :func:`explanation_image`
is the picture ``xrayfm explain`` writes: the radiograph at its own resolution (shrunk only
past ``max_side``, so a 1.9k px CR film is not shown at the model's 224 px), the map laid on
it, and a colour bar in the same colour map that says what the colours mean.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from xrayfm.errors import XrayfmError

#: Default longest side (px) of the radiograph in :func:`explanation_image`: a chest film stays
#: readable and the PNG opens anywhere.
MAX_SIDE = 1024
#: Narrowest colour bar panel (px); a narrower image is padded so the bar's words still fit.
MIN_PANEL_WIDTH = 256
PANEL_BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def _blend(grey: np.ndarray, heat: np.ndarray, weight: np.ndarray | float, colormap: str) -> Image.Image:
    """RGB of ``colormap(heat)`` over ``grey`` (both (H, W) in [0, 1]) with opacity ``weight``."""
    import matplotlib

    colours = matplotlib.colormaps[colormap](np.clip(heat, 0, 1))[..., :3]
    weight = np.asarray(weight, dtype=np.float64)[..., None] if np.ndim(weight) else float(weight)
    blended = (1 - weight) * np.clip(grey, 0, 1)[..., None] + weight * colours
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), "RGB")


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise XrayfmError(f"alpha must be in [0, 1], got {alpha}")


def _resized(plane: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """A float (H, W) plane resized to ``size`` (height, width); Pillow antialiases when shrinking."""
    if plane.shape == size:
        return plane
    return np.asarray(Image.fromarray(np.asarray(plane, dtype=np.float32)).resize(size[::-1], resample))


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet") -> Image.Image:
    """Blend a [0, 1] heatmap over a grey [0, 1] image (both (H, W)); returns an RGB image.

    The heatmap is resized to the image when their sizes differ.
    """
    if image.ndim != 2 or heat.ndim != 2:
        raise XrayfmError(f"overlay needs 2-D image and heatmap, got {image.shape} and {heat.shape}")
    _check_alpha(alpha)
    return _blend(image, _resized(heat, image.shape, Image.Resampling.BILINEAR), alpha, colormap)


def display_size(height: int, width: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(height, width) of an image shown with its longer side at most ``max_side``, aspect kept.

    Raises:
        XrayfmError: ``max_side`` below 1.
    """
    if max_side < 1:
        raise XrayfmError(f"the overlay's longest side must be a positive number of pixels, not {max_side}")
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _wrapped(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` (a word longer than that keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def colour_bar(width: int, caption: str = "", *, colormap: str = "jet") -> Image.Image:
    """The legend under an explanation: ``caption`` (wrapped), the colour map from 0 to 1 left to
    right, and its ends named ``0 · low`` and ``high · 1``.

    Args:
        width: Panel width in pixels (the text size follows it).
        caption: What the map shows, e.g. ``"gradcam of labels / effusion"``.
        colormap: A Matplotlib colour map name, the one the map is drawn in.
    """
    import matplotlib

    font_size = max(10, min(18, width // 56))
    font = ImageFont.load_default(size=font_size)
    margin, line = font_size // 2 + 2, font_size + 4
    inner = max(1, width - 2 * margin)
    lines = _wrapped(caption, font, inner)
    bar_height = font_size
    panel = Image.new("RGB", (width, 2 * margin + len(lines) * line + bar_height + 2 + line), PANEL_BACKGROUND)
    draw = ImageDraw.Draw(panel)
    y = margin
    for text in lines:
        draw.text((margin, y), text, fill=TEXT_COLOUR, font=font)
        y += line
    ramp = matplotlib.colormaps[colormap](np.linspace(0.0, 1.0, inner))[:, :3]
    bar = np.round(np.repeat(ramp[None], bar_height, axis=0) * 255).astype(np.uint8)
    panel.paste(Image.fromarray(bar, "RGB"), (margin, y))
    y += bar_height + 2
    draw.text((margin, y), "0 · low", fill=TEXT_COLOUR, font=font)
    draw.text((width - margin, y), "high · 1", fill=TEXT_COLOUR, font=font, anchor="ra")
    return panel


def explanation_image(
    pixels: np.ndarray,
    heat: np.ndarray,
    *,
    coverage: np.ndarray | None = None,
    alpha: float = 0.45,
    max_side: int = MAX_SIDE,
    caption: str = "",
    colormap: str = "jet",
) -> Image.Image:
    """A radiograph with its heatmap and a colour bar below, as ``xrayfm explain`` writes it.

    The image keeps its own resolution and aspect, shrunk (antialiased) only when its longer side
    exceeds ``max_side``; the map is shrunk with it, so it must already lie on the image's frame
    (:meth:`~xrayfm.models.preprocess.Preprocess.plane_to_original` undoes the model's resize and
    crop). The bar spans the panel's width; a panel narrower than :data:`MIN_PANEL_WIDTH` is
    widened and the image left-aligned on the background.

    Args:
        pixels: The radiograph (H, W) grey [0, 1] as read (DICOM already windowed by ``read_xray``).
        heat: The map (H, W) in [0, 1] on the same frame; 0 and 1 are the map's own weakest and
            strongest (maps are scaled per image).
        coverage: (H, W) in [0, 1]: how much of each pixel the model saw (``plane_to_original`` of
            a map of ones). Parts a centre crop cut away stay plain grey instead of reading as
            cold. None: the model saw all of the image.
        alpha: Heatmap opacity in [0, 1].
        max_side: Longest side of the shown radiograph in pixels.
        caption: The bar's caption (method, task, class).
        colormap: Matplotlib colour map of the map and the bar.

    Raises:
        XrayfmError: Planes that are not 2-D or differ in shape, alpha outside [0, 1], or
            ``max_side`` below 1.
    """
    planes = (pixels, heat) if coverage is None else (pixels, heat, coverage)
    if any(p.ndim != 2 or p.shape != pixels.shape for p in planes):
        raise XrayfmError(f"explanation needs 2-D planes of one shape, got {[p.shape for p in planes]}")
    _check_alpha(alpha)
    size = display_size(*pixels.shape, max_side)
    grey = _resized(pixels, size, Image.Resampling.LANCZOS)
    shown = _resized(heat, size, Image.Resampling.BILINEAR)
    weight: np.ndarray | float = alpha
    if coverage is not None:
        cover = np.clip(_resized(coverage, size, Image.Resampling.BILINEAR), 0, 1)
        shown = np.where(cover > 1e-6, shown / np.maximum(cover, 1e-6), 0.0)  # undo the fade into the cut edge
        weight = alpha * cover
    overlay = _blend(grey, shown, weight, colormap)
    bar = colour_bar(max(size[1], MIN_PANEL_WIDTH), caption, colormap=colormap)
    picture = Image.new("RGB", (bar.width, size[0] + bar.height), PANEL_BACKGROUND)
    picture.paste(overlay, (0, 0))
    picture.paste(bar, (0, size[0]))
    return picture
