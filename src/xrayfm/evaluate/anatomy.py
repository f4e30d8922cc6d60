"""Eve: how anatomical a backbone's patch embeddings are (Adam-v1 paper, MICCAI-DART 2023).

The paper shows two properties as figures only (../shared/reference/adam-eve.md section 3); here
they are numbers on real images:

- **locality**: patches centred on anatomical landmarks (:mod:`xrayfm.evaluate.landmarks`, from
  the lung and heart masks) are embedded; a query's nearest neighbour (cosine) among the patches
  of *other* patients should carry the same landmark. Reported: that accuracy per landmark and
  overall, next to its chance level (the share of same-landmark patches among the candidates),
  and a 2-D map (t-SNE, or PCA) of the embeddings coloured by landmark;
- **compositionality**: for random patches, the cosine similarity between E(patch) and the mean of
  E(its parts), for three splits: 2 parts side by side, 3 stacked parts and a 2 x 2 grid. Each
  part is embedded as a patch of its own (resized to the model's input). Reported: the
  distribution (a KDE plot) and its median per split, next to a control: the same similarity
  with the parts of a patch of another image, the share any two patches have in common (the raw
  cosine of non-negative pooled features is high for any pair; a randomly initialised ResNet
  scores near 1 on both).

Embeddings are the backbone's pooled features (``forward_head(..., pre_logits=True)``, e.g.
ResNet-50's 2048-d average pool), not a projection head.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xrayfm.data.base import XrayDataset
from xrayfm.errors import XrayfmError
from xrayfm.evaluate.landmarks import find_landmarks
from xrayfm.io.atomic import atomic_write_json
from xrayfm.models.factory import create_model_and_transforms
from xrayfm.models.preprocess import Preprocess, resize_images, resolve_preprocess
from xrayfm.models.registry import backbone_kwargs, create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.progress import progress
from xrayfm.report.anatomy_report import write_compositionality_plot, write_locality_plot

log = logging.getLogger(__name__)

#: Grey [0, 1] patches, each (1, h, w) of any size -> embeddings (N, D).
Embed = Callable[[Sequence[torch.Tensor]], torch.Tensor]
#: Compositionality splits: name -> (rows, columns) of equal parts.
SPLITS: dict[str, tuple[int, int]] = {"side_by_side_2": (1, 2), "stacked_3": (3, 1), "grid_2x2": (2, 2)}
#: Patch sides are multiples of this, so every split has parts of equal size.
SIDE_STEP = 6
PROJECTIONS = ("tsne", "pca")


class BackboneEmbedder:
    """The pooled features of a timm backbone for grey patches, preprocessed as its record says.

    Each patch is resized (whole, no crop) to the record's input side, normalised with its
    mean / std and repeated to the stem's channels.

    Args:
        backbone: A timm backbone (``forward_features`` / ``forward_head``).
        preprocess: Its preprocessing record.
        device: Where to run it.
        batch_size: Patches per forward pass.
    """

    def __init__(
        self, backbone: nn.Module, preprocess: Preprocess, *, device: str | torch.device = "cpu", batch_size: int = 32
    ) -> None:
        self.backbone = backbone.to(device).eval()
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, patches: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, D) float32 embeddings of ``patches`` (each (1, h, w), grey [0, 1])."""
        rec, out = self.preprocess, []
        for start in range(0, len(patches), self.batch_size):
            chunk = patches[start : start + self.batch_size]
            x = torch.cat([resize_images(p[None].float(), rec.input_size, rec.interpolation, 1.0) for p in chunk])
            x = ((x.to(self.device) - rec.mean) / rec.std).expand(-1, rec.channels, -1, -1)
            feats = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)
            out.append(feats.flatten(1).float().cpu())
        return torch.cat(out)


@dataclass(frozen=True)
class AnatomySettings:
    """How Eve's patches are drawn.

    Attributes:
        patch_fraction: Patch side as a share of the image's shorter side (landmark and random
            patches alike).
        random_patches: Random patches per image for compositionality.
        max_images: Use at most this many images (a seeded random subset), None for all.
        projection: 2-D map of the locality plot: ``tsne`` or ``pca``.
        seed: Seed of the image subset, the random patches and the t-SNE.
    """

    patch_fraction: float = 0.25
    random_patches: int = 2
    max_images: int | None = None
    projection: str = "tsne"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.patch_fraction <= 1:
            raise XrayfmError(f"patch fraction must be in (0, 1], got {self.patch_fraction}")
        if self.random_patches < 0:
            raise XrayfmError(f"random patches per image must be >= 0, got {self.random_patches}")
        if self.max_images is not None and self.max_images < 2:
            raise XrayfmError(f"max images must be at least 2 (retrieval is across patients), got {self.max_images}")
        if self.projection not in PROJECTIONS:
            raise XrayfmError(f"projection must be one of {PROJECTIONS}, got {self.projection!r}")


def patch_side(height: int, width: int, fraction: float) -> int:
    """The side of a patch: ``fraction`` of the shorter side, rounded down to a multiple of 6."""
    side = int(fraction * min(height, width)) // SIDE_STEP * SIDE_STEP
    if side < SIDE_STEP:
        raise XrayfmError(f"a {fraction} patch of a {width}x{height} image is under {SIDE_STEP} pixels")
    return side


def crop_patch(image: torch.Tensor, centre: tuple[int, int], side: int) -> torch.Tensor:
    """The ``side`` x ``side`` patch of a (1, H, W) image centred on (row, column), shifted to lie
    inside the image near its borders (never padded)."""
    h, w = image.shape[-2:]
    top = min(max(centre[0] - side // 2, 0), h - side)
    left = min(max(centre[1] - side // 2, 0), w - side)
    return image[..., top : top + side, left : left + side]


def random_patches(image: torch.Tensor, side: int, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``count`` patches of ``side`` pixels at uniformly random places inside a (1, H, W) image."""
    h, w = image.shape[-2:]
    tops = torch.randint(0, h - side + 1, (count,), generator=generator).tolist()
    lefts = torch.randint(0, w - side + 1, (count,), generator=generator).tolist()
    return [image[..., y : y + side, x : x + side] for y, x in zip(tops, lefts)]


def split_patch(patch: torch.Tensor, rows: int, cols: int) -> list[torch.Tensor]:
    """Equal parts of a (1, h, w) patch, row by row (h divisible by ``rows``, w by ``cols``)."""
    h, w = patch.shape[-2:]
    if h % rows or w % cols:
        raise XrayfmError(f"a {w}x{h} patch does not split into {rows}x{cols} equal parts")
    ph, pw = h // rows, w // cols
    return [patch[..., r * ph : (r + 1) * ph, c * pw : (c + 1) * pw] for r in range(rows) for c in range(cols)]


def retrieval_accuracy(
    features: torch.Tensor, labels: Sequence[str], groups: Sequence[str], *, seed: int = 0
) -> dict[str, Any]:
    """Nearest-neighbour landmark retrieval across patients.

    Each patch queries the patches of the *other* groups (patients) by cosine similarity; it
    scores when its nearest neighbour has its label. Ties are broken at random (seeded), so an
    embedding that tells nothing apart scores the chance level.

    Args:
        features: (N, D) embeddings.
        labels: Landmark of each patch.
        groups: Patient of each patch.
        seed: Seed of the tie-breaking.

    Returns:
        ``accuracy`` (all queries), ``chance`` (mean share of same-label candidates),
        ``per_landmark`` (``{label: {"accuracy", "chance", "n"}}``), ``queries`` and ``hits``
        (per query, in input order: whether its nearest neighbour has its label; what a paired
        comparison of two embeddings on the same patches resamples).

    Raises:
        XrayfmError: Fewer than two patients, or lengths that disagree.
    """
    n = len(labels)
    if features.shape[0] != n or len(groups) != n:
        raise XrayfmError(f"retrieval: {features.shape[0]} features, {n} labels and {len(groups)} groups")
    if len(set(groups)) < 2:
        raise XrayfmError("retrieval across patients needs patches of at least two patients")
    names = sorted(set(labels))
    lab = torch.tensor([names.index(v) for v in labels])
    grp = torch.tensor(_codes(groups))
    z = F.normalize(features.double(), dim=1)
    sim = z @ z.T
    sim[grp[:, None] == grp[None, :]] = -torch.inf
    best = sim == sim.max(dim=1, keepdim=True).values
    gen = torch.Generator().manual_seed(seed)
    nearest = (torch.rand(n, n, generator=gen, dtype=torch.float64) * best).argmax(dim=1)
    hit = (lab[nearest] == lab).double()
    other = grp[:, None] != grp[None, :]
    chance = ((lab[:, None] == lab[None, :]) & other).sum(1).double() / other.sum(1).double()
    per = {
        name: {"accuracy": float(hit[lab == i].mean()), "chance": float(chance[lab == i].mean()),
               "n": int((lab == i).sum())}
        for i, name in enumerate(names)
    }  # fmt: skip
    return {"accuracy": float(hit.mean()), "chance": float(chance.mean()), "per_landmark": per, "queries": n,
            "hits": hit.bool().tolist()}  # fmt: skip


def _codes(values: Sequence[str]) -> list[int]:
    """Integer code of each value (equal values, equal codes)."""
    index: dict[str, int] = {}
    return [index.setdefault(v, len(index)) for v in values]


def composition_embeddings(patches: Sequence[torch.Tensor], embed: Embed) -> dict[str, torch.Tensor]:
    """E(patch) (under ``whole``) and, per split of :data:`SPLITS`, the mean of E(its parts).

    Args:
        patches: (1, s, s) patches, ``s`` a multiple of 6.
        embed: The embedding.

    Returns:
        ``{"whole": (N, D), split: (N, D), ...}``.
    """
    batch = list(patches)
    for rows, cols in SPLITS.values():
        batch += [part for p in patches for part in split_patch(p, rows, cols)]
    feats = embed(batch)  # one call: a backbone sees them in as few batches as its batch size allows
    out, start = {"whole": feats[: len(patches)]}, len(patches)
    for name, (rows, cols) in SPLITS.items():
        count = len(patches) * rows * cols
        out[name] = feats[start : start + count].reshape(len(patches), rows * cols, -1).mean(dim=1)
        start += count
    return out


def composition_similarity(embeddings: Mapping[str, torch.Tensor], *, shift: int = 0) -> dict[str, np.ndarray]:
    """Cosine similarity of E(patch) and the mean of E(its parts), per split.

    Args:
        embeddings: What :func:`composition_embeddings` returns, for N patches.
        shift: 0 pairs each patch with its own parts; ``k`` > 0 with the parts of patch ``i - k``
            (another patch: the control, what any two patches share).

    Returns:
        ``{split: (N,) cosines}``.
    """
    whole = embeddings["whole"].double()
    return {
        name: F.cosine_similarity(whole, embeddings[name].double().roll(shift, dims=0), dim=1).numpy()
        for name in SPLITS
    }


def project_2d(features: torch.Tensor, method: str, seed: int = 0) -> np.ndarray:
    """(N, 2) map of (N, D) embeddings: t-SNE (scikit-learn, cosine distance) or PCA."""
    if method == "tsne" and features.shape[0] > 4:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, (features.shape[0] - 1) / 3))
        tsne = TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
        return tsne.fit_transform(F.normalize(features.double(), dim=1).numpy())
    centred = features.double() - features.double().mean(0)
    q = min(2, *centred.shape)
    _, _, v = torch.pca_lowrank(centred, q=q, center=False)
    xy = (centred @ v[:, :q]).numpy()
    return np.pad(xy, ((0, 0), (0, 2 - q)))


def mask_channels(classes: Sequence[str]) -> tuple[tuple[int, ...], int | None]:
    """(lung channels, heart channel or None) of a mask task: the class named ``lungs`` / ``lung``,
    else ``left_lung`` and ``right_lung`` together (SCR's structures), else the only class; and
    ``heart``.

    Raises:
        XrayfmError: No lung class.
    """
    names = [c.lower().replace(" ", "_") for c in classes]
    pair = ("left_lung", "right_lung")
    if "lungs" in names or "lung" in names:
        lungs: tuple[int, ...] = (names.index("lungs" if "lungs" in names else "lung"),)
    elif all(n in names for n in pair):
        lungs = tuple(names.index(n) for n in pair)
    elif len(names) == 1:
        lungs = (0,)
    else:
        raise XrayfmError(f"no lung mask among the mask classes {list(classes)}; Eve needs one named 'lungs'")
    return lungs, names.index("heart") if "heart" in names else None


def evaluate_anatomy(
    embed: Embed,
    dataset: XrayDataset,
    out_dir: str | Path,
    *,
    settings: AnatomySettings = AnatomySettings(),
    model_name: str = "model",
) -> dict[str, Any]:
    """Measure locality and compositionality of ``embed`` on ``dataset`` and write the results.

    Writes, each atomically: ``anatomy.json`` (numbers, settings, model, dataset, image counts,
    and per locality query its patient, landmark and hit: ``locality.per_query``, which paired
    comparisons of two models resample), ``locality.png`` and ``compositionality.png``.

    Args:
        embed: The embedding, e.g. a :class:`BackboneEmbedder`.
        dataset: Images with lung masks (heart masks are used too), read without transform;
            images without a mask, or whose masks give no landmarks, are counted and skipped.
        out_dir: Output folder.
        settings: Patch settings.
        model_name: How the results name the model.

    Returns:
        The content of ``anatomy.json``.

    Raises:
        XrayfmError: No mask task, no lung class, or fewer than two images with landmarks.
    """
    task = dataset.task_for("mask")
    if task is None:
        raise XrayfmError(f"{dataset.name}: its samples carry no masks; Eve's landmarks come from lung masks")
    lung_ch, heart_ch = mask_channels(task.classes)
    order = np.random.default_rng(settings.seed).permutation(len(dataset))
    indices = sorted(order[: settings.max_images].tolist()) if settings.max_images else list(range(len(dataset)))
    gen = torch.Generator().manual_seed(settings.seed)
    feats, labels, groups, composed = [], [], [], {name: [] for name in ("whole", *SPLITS)}
    used = 0
    for i in progress(indices, desc="anatomy", unit="image"):
        sample = dataset.load(i)
        if sample.get("mask") is None:  # an image without a mask (e.g. a third of Shenzhen's)
            continue
        image, mask = sample["image"], sample["mask"].numpy()
        side = patch_side(*image.shape[-2:], settings.patch_fraction)
        heart = None if heart_ch is None else mask[heart_ch] == 1
        marks = find_landmarks((mask[list(lung_ch)] == 1).any(axis=0), heart)
        if not marks:
            continue
        used += 1
        feats.append(embed([crop_patch(image, point, side) for point in marks.values()]))
        labels += list(marks)
        groups += [str(sample["meta"].get("patient_id") or sample["meta"]["id"])] * len(marks)
        patches = random_patches(image, side, settings.random_patches, gen)
        if patches:
            for name, values in composition_embeddings(patches, embed).items():
                composed[name].append(values)
    if used < 2:
        raise XrayfmError(f"{dataset.name}: landmarks found on {used} of {len(indices)} images; at least 2 needed")
    features = torch.cat(feats)
    locality = retrieval_accuracy(features, labels, groups, seed=settings.seed)
    per_query = {"patient": groups, "landmark": labels, "hit": locality.pop("hits")}
    embeddings = {name: torch.cat(v) if v else torch.zeros(0, features.shape[1]) for name, v in composed.items()}
    cosines = composition_similarity(embeddings)
    control = composition_similarity(embeddings, shift=settings.random_patches)  # the previous image's patches
    out = Path(out_dir)
    method = "t-SNE" if settings.projection == "tsne" and len(labels) > 4 else "PCA"
    write_locality_plot(out / "locality.png", project_2d(features, settings.projection, settings.seed), labels,
                        f"{method} of landmark patch embeddings ({model_name})")  # fmt: skip
    write_compositionality_plot(out / "compositionality.png", cosines, control, f"compositionality ({model_name})")
    result = {
        "model": model_name,
        "dataset": dataset.name,
        "root": str(dataset.root),
        "split": dataset.split,
        "images": used,
        "images_without_landmarks": len(indices) - used,
        "embedding_dim": int(features.shape[1]),
        "settings": asdict(settings),
        "locality": {**locality, "patients": len(set(groups)), "projection": method, "per_query": per_query},
        "compositionality": {name: _summary(v, control[name]) for name, v in cosines.items()},
        "files": {"locality": "locality.png", "compositionality": "compositionality.png"},
    }
    atomic_write_json(out / "anatomy.json", result)
    return result


def _summary(values: np.ndarray, control: np.ndarray) -> dict[str, float | int | None]:
    """Median, mean and quartiles of cosines, and the median of the control's (None when empty)."""
    if values.size == 0:
        return {"n": 0, "median": None, "mean": None, "q25": None, "q75": None, "control_median": None}
    q25, median, q75 = (float(v) for v in np.quantile(values, [0.25, 0.5, 0.75]))
    return {"n": int(values.size), "median": median, "mean": float(values.mean()), "q25": q25, "q75": q75,
            "control_median": float(np.median(control))}  # fmt: skip


def anatomy_embedder(
    model: str | Path,
    pretrained: str | Path | None = None,
    *,
    img_size: int | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
) -> tuple[BackboneEmbedder, str]:
    """The embedding Eve measures, from what a user names, and how the results name it.

    Args:
        model: A registry / timm name (``resnet50``, ``eva_x_small_patch16``), a backbone export
            folder (e.g. a pretraining run) or a fine-tuned model folder (its backbone is used).
        pretrained: For a registry name: a weight file (any layout :func:`~xrayfm.models.create_model`
            reads, Adam's MoCo checkpoints included), an export folder, or ``"none"`` for random
            initialisation. Must be None for a folder, which brings its own weights.
        img_size: Input side (default: the model's).
        device: Where the backbone runs.
        batch_size: Patches per forward pass.

    Raises:
        XrayfmError: A registry name without ``pretrained``, ``pretrained`` with a folder, an
            unknown name or weights that do not fit.
    """
    if Path(model).is_dir():
        if pretrained is not None:
            raise XrayfmError(f"{model} is a model folder with its own weights; --pretrained goes with a registry name")
        net, _ = create_model_and_transforms(model, img_size=img_size)
        backbone = net.backbone if isinstance(net, XrayModel) else net
        return BackboneEmbedder(backbone, resolve_preprocess(net, img_size=img_size), device=device,
                                batch_size=batch_size), str(model)  # fmt: skip
    if pretrained is None:
        raise XrayfmError(
            f"{model}: say which weights: --pretrained FILE|DIR, or --pretrained none for random initialisation"
        )
    weights = None if str(pretrained).lower() == "none" else pretrained
    backbone = create_model(
        str(model), pretrained=weights, num_classes=0, **backbone_kwargs(str(model), img_size=img_size)
    )
    name = f"{model} ({'random init' if weights is None else weights})"
    return BackboneEmbedder(backbone, resolve_preprocess(backbone, img_size=img_size), device=device,
                            batch_size=batch_size), name  # fmt: skip
