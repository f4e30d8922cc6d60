"""Explanations that can be checked: where a heatmap's energy lies, and whether it depends on the weights.

Two checks a user can run on any heatmap method:

* **Energy in a mask** (the lung fields): the share of a map's non-negative mass inside a binary
  mask, next to its chance level, the mask's area share (a map spread evenly over the image puts
  exactly that share inside). A pneumonia model whose Grad-CAM puts 35% of its energy in lungs
  covering 30% of the image looks at the mediastinum or the borders: a shortcut to warn about.
* **Model-parameter randomisation** (Adebayo et al., "Sanity checks for saliency maps", NeurIPS
  2018): the classification head, then the backbone's blocks from the top down, are re-initialised
  one after another on a copy of the model (cascading), and the maps of each stage are compared
  with the trained model's by Spearman rank and Pearson correlation. Maps that stay alike when the
  learned weights are gone show the image's edges or the architecture, not what the model learned.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.explain.heatmap import explain_batch
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import CLASSIFICATION_KINDS

#: A mean Spearman correlation above this after randomisation: the maps barely depend on the weights.
HIGH_CORRELATION = 0.5
#: Below this share of the energy in the lungs, most of the map lies outside them.
LOW_LUNG_SHARE = 0.5
EMPTY = "no heatmap with energy on a lung mask that has lungs"


def _on_mask_grid(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``heatmap`` bilinearly resized to ``shape`` (unchanged when it already has it)."""
    if heatmap.shape == shape:
        return heatmap
    t = torch.from_numpy(np.ascontiguousarray(heatmap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def _valid(mask: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    if valid is None:
        return np.ones(mask.shape, dtype=bool)
    if valid.shape != mask.shape:
        raise XrayfmError(f"valid-pixel mask {valid.shape} differs from the mask {mask.shape}")
    return valid.astype(bool)


def mask_fraction(mask: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """Chance level of :func:`energy_in_mask`: the share of (valid) pixels inside ``mask``."""
    keep = _valid(mask, valid)
    return float(mask.astype(bool)[keep].mean()) if keep.any() else float("nan")


def energy_in_mask(heatmap: np.ndarray, mask: np.ndarray, *, valid: np.ndarray | None = None) -> float:
    """Share of a heatmap's non-negative mass inside a binary mask.

    The map is resized to the mask (bilinear), not the mask to the map: a CAM is a smooth map
    upsampled from a coarse grid, so resizing it adds nothing, while shrinking a sharp mask
    (nearest) would move its borders by up to a grid cell. Both must cover the same field of
    view; with a centre crop, map the heatmap back to the image first
    (:meth:`~xrayfm.models.preprocess.Preprocess.plane_to_original`).

    Args:
        heatmap: (h, w) map; negative values count as 0.
        mask: (H, W) binary mask (non-zero = inside).
        valid: (H, W) pixels that count (e.g. not the mask's ignore value); default all.

    Returns:
        The share in [0, 1], or nan when the map has no positive mass on the valid pixels.

    Raises:
        XrayfmError: Not 2-D arrays, or ``valid`` not the mask's shape.
    """
    if heatmap.ndim != 2 or mask.ndim != 2:
        raise XrayfmError(f"energy_in_mask needs a 2-D heatmap and mask, got {heatmap.shape} and {mask.shape}")
    keep = _valid(mask, valid)
    energy = np.clip(_on_mask_grid(heatmap, mask.shape), 0, None)[keep]
    total = float(energy.sum())
    return float(energy[mask.astype(bool)[keep]].sum() / total) if total > 0 else float("nan")


def lung_energy_summary(shares: Sequence[float], fractions: Sequence[float]) -> dict[str, Any]:
    """Energy-in-lungs figures of one or many maps, and a plain-language reading of them.

    Args:
        shares: :func:`energy_in_mask` per map.
        fractions: :func:`mask_fraction` of the same maps' lung masks.

    Returns:
        ``images`` (maps measured), ``skipped`` (maps without energy, or whose lung mask is empty: a
        segmentation model that found no lungs), ``energy_in_lungs`` and ``lung_area`` (their means),
        ``ratio`` (energy over area: 1 = no preference for the lungs), ``below_half`` (share of
        maps with most energy outside the lungs), ``message`` and ``warning`` (None when fine).
    """
    pairs = [(s, f) for s, f in zip(shares, fractions) if np.isfinite(s) and np.isfinite(f) and f > 0]
    skipped = len(shares) - len(pairs)
    if not pairs:
        return {"images": 0, "skipped": skipped, "energy_in_lungs": None, "lung_area": None, "ratio": None,
                "below_half": None, "message": EMPTY, "warning": None}  # fmt: skip
    share, area = (float(np.mean(v)) for v in zip(*pairs))
    many = f" (mean of {len(pairs)} images)" if len(pairs) > 1 else ""
    warning = None
    if share < LOW_LUNG_SHARE:
        warning = (
            f"most of the heatmap lies outside the lungs ({share:.0%} inside): the model may use a shortcut "
            "(mediastinum, image borders, text or devices); check its heatmaps before trusting it"
        )
    return {
        "images": len(pairs),
        "skipped": skipped,
        "energy_in_lungs": share,
        "lung_area": area,
        "ratio": share / area,
        "below_half": float(np.mean([s < LOW_LUNG_SHARE for s, _ in pairs])),
        "message": f"{share:.0%} of the heatmap's energy lies in the lungs, which cover {area:.0%} of the image{many}",
        "warning": warning,
    }


def backbone_blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's blocks with weights, input side first: timm's ``feature_info`` modules.

    timm lists them for every family: a ViT's / EVA-X's ``blocks.i``, a ResNet's ``layer1``..``layer4``,
    a Swin's ``layers.i``, a ConvNeXt's ``stages.i``; weightless entries (a ResNet's ``act1``) are left out.

    Raises:
        XrayfmError: The backbone has no ``feature_info`` with weighted modules.
    """
    info = getattr(backbone, "feature_info", None) or []
    blocks = [(f["module"], backbone.get_submodule(f["module"])) for f in info]
    blocks = [(n, m) for n, m in blocks if any(True for _ in m.parameters())]
    if not blocks:
        raise XrayfmError(
            f"{type(backbone).__name__}: no timm feature_info naming its blocks, so the randomisation test "
            "cannot tell which layers are the top ones"
        )
    return blocks


def reinitialise(module: nn.Module) -> None:
    """Fresh random weights for ``module`` in place: each sub-module's ``reset_parameters`` (PyTorch's
    own initialisation; BatchNorm statistics reset too), and a truncated normal (std 0.02) for
    weights a sub-module holds without one (e.g. a ConvNeXt block's layer scale)."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
            continue
        for p in m.parameters(recurse=False):
            with torch.no_grad():
                nn.init.trunc_normal_(p, std=0.02)


def map_correlations(ref: np.ndarray, maps: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Spearman rank and Pearson correlation of each map (N, H, W) with its reference (None where either
    map is flat: a correlation is undefined there)."""
    spearman: list[float | None] = []
    pearson: list[float | None] = []
    for a, b in zip(ref, maps):
        a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            spearman.append(None)
            pearson.append(None)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            spearman.append(float(stats.spearmanr(a, b).statistic))
        pearson.append(float(np.corrcoef(a, b)[0, 1]))
    return spearman, pearson


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def randomisation_test(
    model: XrayModel,
    images: torch.Tensor,
    targets: int | Sequence[int] | None = None,
    *,
    blocks: int = 2,
    method: str = "gradcam",
    task: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Cascading model-parameter randomisation (Adebayo et al. 2018) of a heatmap method.

    The trained model's maps are the reference. On a deep copy (the model itself is untouched),
    the classification heads are re-initialised first, then the top ``blocks`` backbone blocks
    one at a time from the top down; after each stage the maps are recomputed with the same
    method and the same class per image, and compared with the reference.

    Args:
        model: The fine-tuned model.
        images: Grey [0, 1] images (N, 1, H, W) as the model takes them.
        targets: Class explained, one for all or one per image (default each image's top class
            under the trained model, kept for every stage).
        blocks: How many backbone blocks to re-initialise after the heads (at most all of them).
        method: Any :func:`~xrayfm.explain.heatmap.explain_batch` method.
        task: Classification task explained (default the first).
        seed: Seed of the re-initialisation (the caller's random state is left as it was).

    Returns:
        ``method``, ``images``, ``classes``, ``stages`` (one per stage: ``randomised`` (cumulative
        module names), per-image ``spearman`` / ``pearson`` (None for a flat map), their means),
        ``final_spearman`` (the last stage's mean), ``threshold`` and ``warning`` (None when the
        maps changed enough).

    Raises:
        XrayfmError: ``blocks`` below 0, a backbone whose blocks cannot be told, or as
            :func:`~xrayfm.explain.heatmap.explain_batch`.
    """
    all_blocks = backbone_blocks(model.backbone)
    if blocks < 0:
        raise XrayfmError(f"blocks must be 0 or more, got {blocks}")
    reference = explain_batch(model, images, method=method, task=task, class_index=targets)
    classes = reference.classes
    copied = copy.deepcopy(model).eval()
    stages_to_run: list[tuple[str, nn.Module]] = [
        (f"heads.{t.name}", copied.heads[t.name]) for t in copied.tasks if t.kind in CLASSIFICATION_KINDS
    ]
    stages_to_run += [(f"backbone.{n}", copied.backbone.get_submodule(n)) for n, _ in all_blocks[::-1][:blocks]]
    cuda = sorted({p.device.index or 0 for p in copied.parameters() if p.device.type == "cuda"})
    done: list[str] = []
    stages = []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for name, module in stages_to_run:
            reinitialise(module)
            done.append(name)
            maps = explain_batch(copied, images, method=method, task=task, class_index=classes).maps
            spearman, pearson = map_correlations(reference.maps, maps)
            stages.append({"randomised": list(done), "spearman": spearman, "pearson": pearson,
                           "mean_spearman": _mean(spearman), "mean_pearson": _mean(pearson)})  # fmt: skip
    final = stages[-1]["mean_spearman"] if stages else None
    warning = None
    if final is not None and final > HIGH_CORRELATION:
        warning = (
            f"maps barely depend on the learned weights: after re-initialising {', '.join(done)} their rank "
            f"correlation with the trained model's maps is still {final:.2f} (> {HIGH_CORRELATION}); "
            "they show the image or the architecture more than what the model learned"
        )
    return {"method": method, "images": int(images.shape[0]), "classes": classes, "stages": stages,
            "final_spearman": final, "threshold": HIGH_CORRELATION, "warning": warning}  # fmt: skip
