"""Frozen MIM teachers from the files people have, each with its own input convention.

:func:`load_teacher` reads a teacher in one of these layouts and returns it with the input it was
trained on (side, channels, interpolation, mean / std per channel), which the MIM objective
applies to the student's view (:class:`~xrayfm.pretrain.mim.TeacherInput`):

- ``xrayfm``: an xrayfm export folder (``backbone.safetensors`` + ``backbone.json``), e.g. a
  previous pretraining run; architecture and preprocessing come from its sidecar.
- ``timm``: a plain backbone file (timm, EVA-X release, xrayfm weights); architecture named by
  the caller, mean / std from that architecture's timm ``pretrained_cfg``.
- ``mgca``: the Lightning checkpoint of MGCA (Wang et al., 2022; HKU-MedAI/MGCA), EVA-X's paper
  teacher: weights under ``state_dict``, the image ViT under ``img_encoder_q.model.`` (the text
  encoder, prototypes and projection heads are ignored); a timm ViT-B/16 (or L/16) with MGCA's
  normalisation.
- ``eva_clip``: an EVA-CLIP checkpoint (``visual.`` keys of baaivision/EVA's EVA-CLIP, or
  ``visual.trunk.`` of open_clip); timm's EVA checkpoint filter renames the vision tower onto
  timm's ``eva02_*_clip_*`` models, with CLIP's mean / std.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models import eva, vision_transformer
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models import Preprocess, backbone_kwargs, create_model, read_state_dict, resolve_preprocess
from xrayfm.models.export import read_export
from xrayfm.pretrain.mim import TeacherInput

Layout = Literal["auto", "mgca", "eva_clip", "timm", "xrayfm"]
LAYOUTS: tuple[str, ...] = ("auto", "mgca", "eva_clip", "timm", "xrayfm")

#: Key prefix of MGCA's image ViT in its Lightning module (mgca/models/mgca/mgca_module.py:
#: ``self.img_encoder_q = ImageEncoder(...)``; mgca/models/backbones/encoder.py: ``self.model``).
MGCA_PREFIX = "img_encoder_q.model."
#: MGCA's input: images resized to 256 (pretrain_dataset.py ``imsize=256``, utils.py ``resize_img``,
#: cv2 INTER_AREA), cropped to 224 and normalised with mean 0.5, std 0.5 per channel
#: (mgca/datasets/transforms.py ``DataTransforms``); ViTs from vits.py ``create_vit`` (patch 16).
MGCA_PREPROCESS = Preprocess(
    input_size=224, channels=3, interpolation="bilinear", crop_pct=224 / 256, mean=0.5, std=0.5
)
#: MGCA ViT width -> timm architecture (vits.py ``create_vit``: base 768 / 12 blocks, large 1024 / 24).
MGCA_ARCHS = {768: "vit_base_patch16_224", 1024: "vit_large_patch16_224"}
#: EVA-CLIP vision tower (width, patch, grid side) -> timm architecture.
EVA_CLIP_ARCHS = {
    (768, 16, 14): "eva02_base_patch16_clip_224",
    (1024, 14, 16): "eva02_large_patch14_clip_224",
    (1024, 14, 24): "eva02_large_patch14_clip_336",
    (1792, 14, 16): "eva02_enormous_patch14_clip_224",
}
EVA_CLIP_PREFIXES = ("visual.trunk.", "visual.")


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher and the input it expects.

    Attributes:
        model: The backbone (timm ViT, ``num_classes=0``), not yet frozen.
        preprocess: Its input side, channels and interpolation (grey mean / std: the channel average).
        mean: Its normalisation mean, one per input channel.
        std: Its normalisation std, one per input channel.
        layout: The file layout it was read as (see :data:`LAYOUTS`).
        arch: Its timm / xrayfm architecture.
        source: The file or folder it came from.
    """

    model: nn.Module
    preprocess: Preprocess
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str
    arch: str
    source: str

    def input_from(self, mean: float, std: float) -> TeacherInput:
        """The :class:`TeacherInput` that turns a student view normalised with grey ``mean`` /
        ``std`` into this teacher's input."""
        return TeacherInput(
            source_mean=mean, source_std=std, mean=self.mean, std=self.std, size=self.preprocess.input_size,
            interpolation=self.preprocess.interpolation,
        )  # fmt: skip

    def record(self) -> dict[str, Any]:
        """JSON facts for a run's provenance: file, layout, architecture and normalisation."""
        p = self.preprocess
        return {
            "source": self.source, "layout": self.layout, "arch": self.arch, "input_size": p.input_size,
            "channels": p.channels, "interpolation": p.interpolation, "mean": list(self.mean), "std": list(self.std),
        }  # fmt: skip


def load_teacher(
    source: str | Path,
    *,
    arch: str | None = None,
    layout: Layout = "auto",
    img_size: int | None = None,
    default_arch: str | None = None,
    allow_unsafe: bool = False,
    **kwargs: Any,
) -> Teacher:
    """Load a MIM teacher from a file or an export folder, with its own input convention.

    Args:
        source: An xrayfm export folder or a weight file (safetensors, or a PyTorch / Lightning
            checkpoint read weights-only).
        arch: Its architecture; default: the export's, else inferred from MGCA / EVA-CLIP
            weights, else ``default_arch``.
        layout: ``auto`` (detected from the folder or the weight names) or one of ``mgca``,
            ``eva_clip``, ``timm``, ``xrayfm``.
        img_size: The teacher's input side (default: the one it was trained at, from its record).
        default_arch: Architecture of a plain ``timm`` file when ``arch`` is not given (e.g. the student's).
        allow_unsafe: Permit unpickling a trusted file that is not weights-only.
        **kwargs: Constructor overrides (e.g. ``depth`` of a reduced model).

    Returns:
        The :class:`Teacher`.

    Raises:
        XrayfmError: An unknown layout, a file in no known layout (naming what it holds), an
            architecture that cannot be inferred, or weights that do not fit it.
    """
    if layout not in LAYOUTS:
        raise XrayfmError(f"unknown teacher layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    path = Path(source)
    if layout == "xrayfm" or (layout == "auto" and path.is_dir()):
        return _from_export(path, arch, img_size, kwargs)
    if path.is_dir():
        raise XrayfmError(f"{path}: a folder, but --teacher-layout {layout} reads a weight file")
    state = None
    if layout == "auto" or layout in ("mgca", "eva_clip"):
        state = read_state_dict(path, allow_unsafe=allow_unsafe)
        layout = detect_layout(state, str(path)) if layout == "auto" else layout
    if layout == "timm":
        return _from_timm_file(path, arch or default_arch, img_size, allow_unsafe, kwargs)
    if layout == "mgca":
        return _from_mgca(path, state, arch, img_size, kwargs)
    return _from_eva_clip(path, state, arch, img_size, kwargs)


def detect_layout(state: Mapping[str, torch.Tensor], source: str) -> str:
    """The layout of a weight file from its tensor names: ``mgca``, ``eva_clip`` or ``timm``.

    Raises:
        XrayfmError: None matches; the message names the top-level prefixes found.
    """
    if any(k.startswith(MGCA_PREFIX) for k in state):
        return "mgca"
    if any(k.startswith(f"{p}pos_embed") for p in EVA_CLIP_PREFIXES for k in state):
        return "eva_clip"
    if "patch_embed.proj.weight" in state:
        return "timm"
    found = collections.Counter(k.split(".")[0] for k in state).most_common(6)
    held = ", ".join(f"{name}.* ({n})" for name, n in found)
    raise XrayfmError(
        f"{source}: not a teacher layout xrayfm knows (MGCA {MGCA_PREFIX}*, EVA-CLIP visual.*, or a ViT with "
        f"patch_embed.proj.weight); it holds {len(state)} tensors: {held}"
    )


def _from_export(folder: Path, arch: str | None, img_size: int | None, kwargs: dict[str, Any]) -> Teacher:
    """An xrayfm export: architecture and preprocessing from its sidecar."""
    _, sidecar = read_export(folder)
    arch = arch or sidecar["arch"]
    record = resolve_preprocess(sidecar, img_size=img_size)
    model = create_model(arch, pretrained=folder, num_classes=0, img_size=record.input_size, **kwargs)
    mean, std = (record.mean,) * record.channels, (record.std,) * record.channels
    return Teacher(model, record, mean, std, "xrayfm", arch, str(folder))


def _from_timm_file(
    path: Path, arch: str | None, img_size: int | None, allow_unsafe: bool, kwargs: dict[str, Any]
) -> Teacher:
    """A plain backbone file; mean / std from the architecture's timm ``pretrained_cfg``."""
    if arch is None:
        raise XrayfmError(f"{path}: a plain weight file names no architecture; give it (--teacher-arch NAME)")
    cfg = timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    record = Preprocess.from_timm_cfg(cfg).with_size(img_size)
    size_kwargs = backbone_kwargs(arch, img_size=record.input_size)
    model = create_model(arch, pretrained=path, allow_unsafe=allow_unsafe, num_classes=0, **size_kwargs, **kwargs)
    mean = tuple(float(m) for m in cfg.get("mean") or (record.mean,) * record.channels)
    std = tuple(float(s) for s in cfg.get("std") or (record.std,) * record.channels)
    return Teacher(model, record, mean, std, "timm", arch, str(path))


def _from_mgca(
    path: Path, state: Mapping[str, torch.Tensor], arch: str | None, img_size: int | None, kwargs: dict[str, Any]
) -> Teacher:
    """MGCA's image ViT (``img_encoder_q.model.*``) on a timm ViT with MGCA's normalisation."""
    vit = {k.removeprefix(MGCA_PREFIX): v for k, v in state.items() if k.startswith(MGCA_PREFIX)}
    if "pos_embed" not in vit:
        raise XrayfmError(f"{path}: no MGCA image ViT ({MGCA_PREFIX}pos_embed missing; a ResNet-50 MGCA?)")
    width = vit["pos_embed"].shape[-1]
    arch = arch or MGCA_ARCHS.get(width)
    if arch is None:
        raise XrayfmError(f"{path}: MGCA ViT of width {width} is not one of {sorted(MGCA_ARCHS)}; name its timm arch")
    record = MGCA_PREPROCESS.with_size(img_size)
    model = _load_converted(arch, vit, vision_transformer.checkpoint_filter_fn, record.input_size, kwargs, path)
    return Teacher(model, record, (0.5,) * 3, (0.5,) * 3, "mgca", arch, str(path))


def _from_eva_clip(
    path: Path, state: Mapping[str, torch.Tensor], arch: str | None, img_size: int | None, kwargs: dict[str, Any]
) -> Teacher:
    """An EVA-CLIP vision tower on timm's ``eva02_*_clip_*`` with CLIP's mean / std."""
    prefix = next((p for p in EVA_CLIP_PREFIXES if f"{p}pos_embed" in state), None)
    if prefix is None:
        raise XrayfmError(f"{path}: no EVA-CLIP vision tower (no visual.pos_embed or visual.trunk.pos_embed)")
    if arch is None:
        pos, proj = state[f"{prefix}pos_embed"], state.get(f"{prefix}patch_embed.proj.weight")
        side = round((pos.shape[1] - 1) ** 0.5)
        key = (pos.shape[-1], proj.shape[-1] if proj is not None else 0, side)
        arch = EVA_CLIP_ARCHS.get(key)
        if arch is None:
            raise XrayfmError(f"{path}: EVA-CLIP tower (width, patch, grid) {key} unknown; name its timm arch")
    cfg = timm.get_pretrained_cfg(arch)
    record = Preprocess.from_timm_cfg(
        {**(cfg.to_dict() if cfg else {}), "mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD}
    )
    record = record.with_size(img_size)
    model = _load_converted(arch, state, eva.checkpoint_filter_fn, record.input_size, kwargs, path)
    return Teacher(model, record, tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD), "eva_clip", arch, str(path))


def _load_converted(
    arch: str,
    state: Mapping[str, torch.Tensor],
    convert: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]],
    img_size: int,
    kwargs: dict[str, Any],
    path: Path,
) -> nn.Module:
    """Build ``arch`` at ``img_size`` and load ``state`` through timm's checkpoint filter ``convert``;
    every backbone weight must be there (a classifier or CLIP projection ``head`` is left out)."""
    model = create_model(arch, num_classes=0, **backbone_kwargs(arch, img_size=img_size), **kwargs)
    weights = {k: v for k, v in convert(dict(state), model).items() if not k.startswith("head.")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        shapes = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise XrayfmError(f"{path}: weights do not fit {arch}: {(shapes or [str(exc)])[0][:300]}") from None
    if missing or unexpected:
        raise XrayfmError(
            f"{path}: weights do not fit {arch}: {len(missing)} missing (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]})"
        )
    return model
