"""Figure of Adam's anatomy decomposer on a real radiograph: the grid, the chosen cell, pairs of views.

Usage: python bench/decomposer_figure.py [--image ../shared/datasets/nih_cxr14_sample/images/00005869_001.png]
       [--name "an NIH ChestX-ray14 radiograph (00005869_001)"] [--seed 0] [--out docs/img/adam_decomposer.png]

One row per granularity n (0, 2, 4): the radiograph (read with ``xrayfm.io.read_xray``) with the
n x n grid and the cell drawn for this row, then pairs of views of that cell made by the real
:class:`~xrayfm.pretrain.anatomy.AnatomyDecomposer` (its ``cell`` then two ``view`` calls, which is
what ``pair`` does) at xrayfm's default settings. Each row draws from its own ``torch.Generator``
seeded with ``seed`` and n, so the same seed gives the same pixels; the PNG is written through a
256-colour palette with no timestamp, so the same software gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from PIL import Image  # noqa: E402

from xrayfm.io import read_xray  # noqa: E402
from xrayfm.io.atomic import atomic_path  # noqa: E402
from xrayfm.pretrain.anatomy import AnatomyDecomposer, cell_of, grid_shape  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO.parent / "shared" / "datasets" / "nih_cxr14_sample" / "images" / "00005869_001.png"
OUT = REPO / "docs" / "img" / "adam_decomposer.png"
CELL_COLOUR, GRID_COLOUR = "#ff3b30", "#ffd60a"


def _grey(view: torch.Tensor, decomposer: AnatomyDecomposer) -> np.ndarray:
    """A normalised view's first channel back in grey [0, 1], for display."""
    return (view[0] * decomposer.std + decomposer.mean).clamp(0, 1).numpy()


def decomposer_figure(
    pixels: np.ndarray,
    *,
    name: str,
    granularities: Sequence[int] = (0, 2, 4),
    pairs: int = 3,
    size: int = 224,
    seed: int = 0,
) -> Figure:
    """The figure: per granularity, the image with its grid and chosen cell, then ``pairs`` view pairs.

    Args:
        pixels: Grey (H, W) image in [0, 1].
        name: What the title calls the image.
        granularities: Rows, one granularity n each.
        pairs: Pairs of views per row (all of the row's cell).
        size: Side of each view.
        seed: Seed of the rows' generators (row n uses ``seed * 1000 + n``).

    Returns:
        The matplotlib figure.
    """
    image = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
    height, width = pixels.shape
    ratios = [1.0] + [r for _ in range(pairs) for r in (0.1, 1.0, 1.0)]
    fig, axes = plt.subplots(
        len(granularities), len(ratios), figsize=(1.5 * sum(ratios), 1.62 * len(granularities) + 0.5),
        gridspec_kw={"width_ratios": ratios, "wspace": 0.04, "hspace": 0.16}, squeeze=False,
    )  # fmt: skip
    for row, n in zip(axes, granularities):
        decomposer = AnatomyDecomposer(size, granularity=n)
        g = torch.Generator().manual_seed(seed * 1000 + n)
        cell = decomposer.cell(height, width, g)
        row[0].imshow(pixels, cmap="gray", vmin=0, vmax=1)
        rows, cols = grid_shape(n)
        for r in range(1, rows):
            row[0].axhline(cell_of(height, width, rows, cols, r, 0).top - 0.5, color=GRID_COLOUR, lw=0.8)
        for c in range(1, cols):
            row[0].axvline(cell_of(height, width, rows, cols, 0, c).left - 0.5, color=GRID_COLOUR, lw=0.8)
        row[0].add_patch(
            Rectangle((cell.left - 0.5, cell.top - 0.5), cell.width, cell.height, fill=False, ec=CELL_COLOUR, lw=2)
        )
        row[0].set_ylabel("n = 0: whole image" if n == 0 else f"n = {n}: {rows}x{cols} grid", fontsize=9)
        for k in range(pairs):
            for j, title in enumerate(("query", "key")):
                ax = row[2 + 3 * k + j]
                ax.imshow(_grey(decomposer.view(image, cell, g), decomposer), cmap="gray", vmin=0, vmax=1)
                ax.set_title(f"pair {k + 1}: {title}", fontsize=8, pad=3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[:, 1::3].flat:
        ax.set_visible(False)
    fig.suptitle(
        f"Adam's anatomy decomposer on {name}: at granularity n one cell of the n x n grid is drawn (red); "
        f"both views of a positive pair\nare random crops of that cell ({size} px; xrayfm defaults: crop area "
        f"0.2-1 of the cell, rotation up to 30 degrees, blur p 0.5, no flip). Seed {seed}.",
        fontsize=9,
    )
    fig.subplots_adjust(left=0.03, right=0.995, bottom=0.01, top=0.86)
    return fig


def save_png(fig: Figure, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a 256-colour palette PNG without metadata (small, and byte-stable); returns ``path``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    rgb = Image.open(buffer).convert("RGB")
    palette = rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_path(path) as tmp:
        palette.save(tmp, format="PNG", optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    """Make the figure from one real radiograph."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=IMAGE, help="a radiograph any format read_xray reads")
    ap.add_argument(
        "--name", default="an NIH ChestX-ray14 radiograph (00005869_001)", help="what the title calls the image"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    xray = read_xray(args.image)
    fig = decomposer_figure(xray.pixels, name=args.name, seed=args.seed)
    out = save_png(fig, args.out)
    plt.close(fig)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
