"""Plots of Eve's two measures (:mod:`xrayfm.evaluate.anatomy`), written as PNG files atomically.

- locality: a 2-D map of landmark patch embeddings, one colour per landmark;
- compositionality: a kernel density estimate (``scipy.stats.gaussian_kde``) of the cosine
  similarities per split, the median marked, and of its control, on the range the values span.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import gaussian_kde

from xrayfm.io.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend (loaded on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _density(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian KDE of ``values`` on ``grid``; None when they have no spread to estimate from."""
    if values.size < 2 or np.ptp(values) < 1e-9:
        return None
    try:
        return gaussian_kde(values)(grid)
    except np.linalg.LinAlgError:  # all but identical values: a singular bandwidth
        return None


def write_locality_plot(path: str | Path, xy: np.ndarray, labels: Sequence[str], title: str) -> Path:
    """Scatter (N, 2) points coloured by landmark label, with a legend.

    Args:
        path: The PNG file.
        xy: 2-D coordinates (t-SNE / PCA) of the embeddings.
        labels: Landmark of each point.
        title: Plot title (says which projection).

    Returns:
        ``path``.
    """
    plt = _pyplot()
    names = sorted(set(labels))
    colours = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(7, 5.5), dpi=100)
    lab = np.asarray(labels)
    for i, name in enumerate(names):
        pts = xy[lab == name]
        ax.scatter(pts[:, 0], pts[:, 1], s=10, color=colours(i % colours.N), label=f"{name} ({len(pts)})")
    ax.set(title=title, xticks=[], yticks=[])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return atomic_write_bytes(path, _png(fig))


def write_compositionality_plot(
    path: str | Path, cosines: Mapping[str, np.ndarray], control: Mapping[str, np.ndarray], title: str
) -> Path:
    """Density of cosine similarities per split (solid, median dashed) and of its control (dotted);
    values that are all equal (no spread for a KDE) are drawn as a vertical line.

    Args:
        path: The PNG file.
        cosines: ``{split: (N,) cosines}`` of each patch with its own parts.
        control: The same with another patch's parts.
        title: Plot title.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    every = [v for v in (*cosines.values(), *control.values()) if v.size]
    low = max(-1.0, min((float(v.min()) for v in every), default=-1.0) - 0.1)
    grid = np.linspace(low, 1.0, 801)
    for i, (name, values) in enumerate(cosines.items()):
        if values.size == 0:
            continue
        median = float(np.median(values))
        label = f"{name}: median {median:.3f} (n={values.size})"
        _curve(ax, grid, values, label, color=f"C{i}", ls="-")
        ax.axvline(median, color=f"C{i}", ls="--", lw=0.8)
        other = control.get(name, np.zeros(0))
        if other.size:
            _curve(ax, grid, other, f"  control: median {float(np.median(other)):.3f}", color=f"C{i}", ls=":")
    ax.set(title=title, xlabel="cosine(E(patch), mean E(parts))", ylabel="density", xlim=(low, 1.0 + 0.02 * (1 - low)))
    if any(v.size for v in cosines.values()):
        ax.legend(fontsize=7, loc="upper left")
    return atomic_write_bytes(path, _png(fig))


def _curve(ax: Axes, grid: np.ndarray, values: np.ndarray, label: str, *, color: str, ls: str) -> None:
    """A KDE line of ``values``, or a vertical line at their value when they have no spread."""
    density = _density(values, grid)
    if density is None:
        ax.axvline(float(np.median(values)), color=color, ls=ls, lw=2, label=label)
    else:
        ax.plot(grid, density, color=color, ls=ls, label=label)
