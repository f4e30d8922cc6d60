"""Adam's anatomy decomposer: two views of one random part of the anatomy, at granularity n.

At granularity ``n`` the image is split into a grid of parts and one part (cell) is drawn at
random; both views of a positive pair are independent random crops of that same cell (n = 0:
the whole image), so the contrastive task moves from whole chests to ever finer anatomy as n
grows (Hosseinzadeh Taher et al. 2023, arXiv:2309.15358; Eden ``Adam-v1/data_loader.py:50-65``).

Grids: ``nxn`` is the official code's n x n grid; ``pow2`` is the paper's figure (2^n parts:
``2^floor(n/2)`` rows by ``2^ceil(n/2)`` columns). The two agree for n in {0, 2, 4}. Where the
official code drops the remainder rows and columns (``H // n``), cells here tile the whole image:
cell ``i`` of ``k`` spans ``[floor(i H / k), floor((i + 1) H / k))``, so sizes differ by at most one
pixel and no border strip is left out.

Each view is the official pipeline (``data_loader.py:17-29``) on the grey image: random resized
crop (scale 0.2-1, ratio 3/4-4/3), brightness / contrast jitter (off unless asked: X-ray
intensities carry meaning; the official ``ColorJitter(0.4, 0.4, 0.4, 0.1)``, p 0.8, acts on a grey
image through brightness and contrast only), Gaussian blur (sigma 0.1-2 px, p 0.5), rotation up to
30 degrees, no flip (laterality is anatomy). Rotation is bilinear (the official one is nearest,
which makes jagged edges on a grey image) and fills the uncovered corners with black (0, as the
official one; a collimated border looks the same). Views are normalised with the backbone's grey
mean / std and repeated to its channels.

Randomness comes from a ``torch.Generator`` passed in, or torch's default one (the official code
draws cells from NumPy's global RNG, unseeded). As a dataset transform (:meth:`AnatomyDecomposer.__call__`)
it runs in the engine's reader, which seeds the RNGs before every sample from the run's seed, the
rank and the sample's position in the run (:class:`~xrayfm.train.seeding.SeededSamples`): views differ
between samples, workers and ranks, and replay exactly on resume, whatever the number of workers.
Cells are cut from the image at its own resolution, as the official code does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torchvision.transforms.v2 import functional as TF

from xrayfm.data.sample import Sample
from xrayfm.errors import XrayfmError

Grid = Literal["nxn", "pow2"]
GRIDS: tuple[str, ...] = ("nxn", "pow2")


class Cell(NamedTuple):
    """A rectangle of an image in pixels: top-left corner and size."""

    top: int
    left: int
    height: int
    width: int


def grid_shape(granularity: int, grid: Grid = "nxn") -> tuple[int, int]:
    """Rows and columns of the grid at ``granularity``.

    Args:
        granularity: n >= 0 (0: the whole image).
        grid: ``nxn`` (n x n, the official code) or ``pow2`` (2^n parts, the paper's figure).

    Returns:
        ``(rows, cols)``.

    Raises:
        XrayfmError: A negative granularity or an unknown grid.
    """
    if granularity < 0:
        raise XrayfmError(f"granularity must be at least 0, got {granularity}")
    if grid not in GRIDS:
        raise XrayfmError(f"grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    if granularity == 0:
        return 1, 1
    if grid == "nxn":
        return granularity, granularity
    return 2 ** (granularity // 2), 2 ** ((granularity + 1) // 2)


def cell_of(height: int, width: int, rows: int, cols: int, row: int, col: int) -> Cell:
    """Cell ``(row, col)`` of a ``rows`` x ``cols`` grid tiling a ``height`` x ``width`` image.

    Raises:
        XrayfmError: The image has fewer pixels than the grid has cells along a side.
    """
    if height < rows or width < cols:
        raise XrayfmError(f"a {height}x{width} image cannot be split into a {rows}x{cols} grid")
    top, bottom = row * height // rows, (row + 1) * height // rows
    left, right = col * width // cols, (col + 1) * width // cols
    return Cell(top, left, bottom - top, right - left)


def _uniform(g: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator | None, high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=g))


def random_crop_box(
    cell: Cell, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator | None = None
) -> Cell:
    """A random resized crop inside ``cell`` (torchvision's ``RandomResizedCrop`` rule, drawn from ``g``).

    Ten tries at an area share in ``scale`` and an aspect ratio log-uniform in ``ratio``; if none fits,
    the centre crop of the cell with its aspect clamped to ``ratio``.
    """
    area = cell.height * cell.width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= cell.width and 0 < h <= cell.height:
            top, left = _randint(g, cell.height - h + 1), _randint(g, cell.width - w + 1)
            return Cell(cell.top + top, cell.left + left, h, w)
    aspect = cell.width / cell.height
    if aspect < min(ratio):
        w, h = cell.width, round(cell.width / min(ratio))
    elif aspect > max(ratio):
        w, h = round(cell.height * max(ratio)), cell.height
    else:
        w, h = cell.width, cell.height
    return Cell(cell.top + (cell.height - h) // 2, cell.left + (cell.width - w) // 2, h, w)


@dataclass(frozen=True)
class AnatomyDecomposer:
    """Pairs of views of one random cell of a grey [0, 1] image (see the module docstring).

    Attributes:
        size: Side of each square view.
        granularity: n: 0 the whole image, else the grid of :func:`grid_shape`.
        grid: ``nxn`` (official code) or ``pow2`` (paper figure).
        scale: Crop area share of the cell.
        ratio: Crop aspect-ratio range.
        degrees: Largest rotation (uniform in +-degrees).
        blur_p: Probability of a Gaussian blur.
        blur_sigma: Range of the blur's sigma, in view pixels.
        brightness: Brightness factor range ``1 +- brightness`` (0: off).
        contrast: Contrast factor range ``1 +- contrast`` (0: off).
        jitter_p: Probability of the brightness / contrast jitter (when either is on).
        mean: Normalisation mean of the grey image (the backbone's).
        std: Normalisation std (positive).
        channels: Channels of the backbone's input (the grey view repeated).
        interpolation: ``bilinear`` or ``bicubic`` for crop resizing and rotation.
        fill: Grey [0, 1] value of the corners a rotation uncovers.

    Raises:
        XrayfmError: A setting out of range.
    """

    size: int
    granularity: int = 0
    grid: Grid = "nxn"
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 30.0
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    brightness: float = 0.0
    contrast: float = 0.0
    jitter_p: float = 0.8
    mean: float = 0.449
    std: float = 0.226
    channels: int = 3
    interpolation: str = "bilinear"
    fill: float = 0.0

    def __post_init__(self) -> None:
        grid_shape(self.granularity, self.grid)
        rules = [
            ("size", self.size >= 1, "at least 1"),
            ("scale", 0 < self.scale[0] <= self.scale[1] <= 1, "0 < min <= max <= 1"),
            ("ratio", 0 < self.ratio[0] <= self.ratio[1], "0 < min <= max"),
            ("degrees", 0 <= self.degrees <= 180, "in [0, 180]"),
            ("blur_p", 0 <= self.blur_p <= 1, "in [0, 1]"),
            ("blur_sigma", 0 < self.blur_sigma[0] <= self.blur_sigma[1], "0 < min <= max"),
            ("brightness", 0 <= self.brightness < 1, "in [0, 1)"),
            ("contrast", 0 <= self.contrast < 1, "in [0, 1)"),
            ("jitter_p", 0 <= self.jitter_p <= 1, "in [0, 1]"),
            ("std", self.std > 0, "positive"),
            ("channels", self.channels >= 1, "at least 1"),
            ("interpolation", self.interpolation in ("bilinear", "bicubic"), "bilinear or bicubic"),
            ("fill", 0 <= self.fill <= 1, "in [0, 1]"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise XrayfmError(f"anatomy decomposer: {name} must be {expected}, got {getattr(self, name)!r}")

    def cell(self, height: int, width: int, generator: torch.Generator | None = None) -> Cell:
        """One cell of the grid, uniformly at random (the whole image at granularity 0)."""
        rows, cols = grid_shape(self.granularity, self.grid)
        return cell_of(height, width, rows, cols, _randint(generator, rows), _randint(generator, cols))

    def view(self, image: torch.Tensor, cell: Cell, generator: torch.Generator | None = None) -> torch.Tensor:
        """One augmented view (channels, size, size) of ``cell`` of a grey (1, H, W) image."""
        g = generator
        box = random_crop_box(cell, self.scale, self.ratio, g)
        mode = TF.InterpolationMode(self.interpolation)
        x = TF.resized_crop(image, *box, [self.size, self.size], interpolation=mode, antialias=True)
        if (self.brightness or self.contrast) and _uniform(g, 0, 1) < self.jitter_p:
            factors = [(TF.adjust_brightness, self.brightness), (TF.adjust_contrast, self.contrast)]
            for k in torch.randperm(2, generator=g).tolist():  # ColorJitter applies its ops in random order
                adjust, amount = factors[k]
                if amount:
                    x = adjust(x, _uniform(g, 1 - amount, 1 + amount))
        if _uniform(g, 0, 1) < self.blur_p:
            sigma = _uniform(g, *self.blur_sigma)
            kernel = min(2 * math.ceil(3 * sigma) + 1, self.size - 1 + self.size % 2)
            x = TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])
        if self.degrees:
            x = TF.rotate(x, _uniform(g, -self.degrees, self.degrees), interpolation=mode, fill=[self.fill])
        x = (x.clamp(0.0, 1.0) - self.mean) / self.std
        return x.expand(self.channels, -1, -1).contiguous()

    def pair(self, image: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of one random cell of a grey (1, H, W) image (``generator`` None: torch's default).

        Raises:
            XrayfmError: ``image`` is not one grey channel.
        """
        if image.ndim != 3 or image.shape[0] != 1:
            raise XrayfmError(f"the anatomy decomposer takes a grey (1, H, W) image, got shape {tuple(image.shape)}")
        cell = self.cell(image.shape[-2], image.shape[-1], generator)
        return self.view(image, cell, generator), self.view(image, cell, generator)

    def pairs(
        self, images: Sequence[torch.Tensor], generators: Sequence[torch.Generator]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of several grey (1, H, W) images, each from its own generator (fixed validation views).

        Returns:
            Query and key batches (B, channels, size, size).
        """
        if len(generators) != len(images):
            raise XrayfmError(f"{len(generators)} generators for {len(images)} images")
        views = [self.pair(image, g) for image, g in zip(images, generators)]
        return torch.stack([v[0] for v in views]), torch.stack([v[1] for v in views])

    def __call__(self, sample: Sample) -> Sample:
        """Dataset transform: the Sample's ``image`` becomes its two views stacked, (2, channels, size, size).

        Draws from torch's default generator (seeded per sample by the engine's reader).
        """
        query, key = self.pair(sample["image"][:1])
        return {"image": torch.stack([query, key]), "meta": sample.get("meta", {})}
