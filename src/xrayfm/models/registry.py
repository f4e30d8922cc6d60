"""``create_model(name, pretrained=...)``: xrayfm backbones, also usable through timm.

Names are timm's, tags included (``resnet18.a1_in1k``, ``eva_x_small_patch16.mim_merged520k``).
Weights come from a local file, an xrayfm export folder, or (``pretrained=True``) the tag's own
download location. Files are always read without running code (:mod:`~xrayfm.models.checkpoints`:
safetensors, or ``torch.load(weights_only=True)``; a Foundation X / Ark-6 checkpoint gives its Swin,
:func:`~xrayfm.models.foundation_x_weights.read_pretrained`), then handed to timm's builder through
``pretrained_cfg_overlay=dict(state_dict=...)``, so each model family's own checkpoint filter
(EVA / EVA-X release layouts, original ViT / Swin / ConvNeXt checkpoints) and timm's input-conv
and classifier adaptation apply. The built model's ``pretrained_cfg`` is its preprocessing record
(:mod:`xrayfm.models.preprocess`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import re
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import split_model_name_tag
from torch import nn

from xrayfm.errors import UnknownNameError, XrayfmError
from xrayfm.models.adam_weights import release_backbone
from xrayfm.models.backbones import eva_x
from xrayfm.models.export import read_export
from xrayfm.models.foundation_x_weights import read_pretrained
from xrayfm.models.preprocess import Preprocess, resolve_preprocess

log = logging.getLogger(__name__)

XRAYFM_MODELS: tuple[str, ...] = tuple(eva_x.ARCHS)


def list_models() -> list[str]:
    """Names of the backbones xrayfm defines (any timm model name is accepted too)."""
    return list(XRAYFM_MODELS)


def check_model_name(name: str) -> str:
    """Return ``name`` when timm (with xrayfm's models registered) knows it, tag included.

    Raises:
        UnknownNameError: Unknown architecture or unknown pretrained tag, with close matches.
    """
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, [*XRAYFM_MODELS, *timm.list_models()], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown model {name!r}.{hint} xrayfm models: {', '.join(XRAYFM_MODELS)}")
    if tag:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag not in tags:
            raise UnknownNameError(
                f"model {arch!r} has no pretrained tag {tag!r}; its tags: {', '.join(tags) or 'none'}"
            )
    return name


@functools.lru_cache(maxsize=64)
def constructor_parameters(name: str) -> frozenset[str]:
    """Keyword arguments the model class behind ``name`` accepts (built once on the meta device)."""
    with torch.device("meta"):
        model = timm.create_model(check_model_name(name), pretrained=False)
    return frozenset(inspect.signature(type(model).__init__).parameters)


def backbone_kwargs(name: str, *, img_size: int | None = None, drop_path: float | None = None) -> dict[str, Any]:
    """Constructor arguments for a backbone at ``img_size`` with ``drop_path``, from the
    constructor's signature: models that take an input size (ViT, EVA-X, BEiT, Swin) get it,
    with ``dynamic_img_size`` where supported; CNNs take any size and get none."""
    params = constructor_parameters(name)
    kwargs: dict[str, Any] = {}
    if drop_path is not None and "drop_path_rate" in params:
        kwargs["drop_path_rate"] = drop_path
    if img_size is not None and "img_size" in params:
        kwargs["img_size"] = img_size
        if "dynamic_img_size" in params:
            kwargs["dynamic_img_size"] = True
    return kwargs


def export_kwargs(model: nn.Module) -> dict[str, Any]:
    """Constructor arguments a saved copy of ``model`` needs beyond its name and input size.

    A RoPE reference grid can come from the weight file rather than the name (an EVA-X file whose
    stored table overrides the tag's grid, see :func:`~xrayfm.models.backbones.eva_x.file_kwargs`);
    xrayfm's exports do not store that table, so their sidecar records the grid instead.
    A Swin built with ``always_partition=True`` (as Foundation X / Ark-6 weights are, whatever the
    name says) records it: without it the Swin would be rebuilt shifting windows differently.

    Args:
        model: A backbone.

    Returns:
        ``{"ref_feat_shape": [h, w]}`` for a model with a reference grid, ``{"always_partition": True}``
        for such a Swin, else ``{}``.
    """
    out: dict[str, Any] = {}
    ref = getattr(getattr(model, "rope", None), "ref_feat_shape", None)
    if ref is not None:
        out["ref_feat_shape"] = [int(v) for v in ref]
    if any(getattr(m, "always_partition", False) is True for m in model.modules()):
        out["always_partition"] = True
    return out


def _build(name: str, overlay: dict[str, Any], kwargs: dict[str, Any], *, strict: bool = True) -> nn.Module:
    """timm's builder with xrayfm's errors: a constructor that rejects the arguments or weights
    that do not fit become one-line :class:`XrayfmError` messages."""
    try:
        return timm.create_model(
            name, pretrained="state_dict" in overlay, pretrained_cfg_overlay=overlay, pretrained_strict=strict, **kwargs
        )
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        if "state_dict" in overlay and isinstance(exc, RuntimeError) and "loading state_dict" in str(exc):
            raise  # reported by _load with the file's name
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise XrayfmError(f"cannot build {name!r} with {kwargs}: {detail[:300]}") from None


def _keys(message: str, what: str) -> list[str]:
    match = re.search(rf"{what} key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)", message)
    return re.findall(r'"([^"]+)"', match.group(1)) if match else []


def _load(name: str, state: dict[str, torch.Tensor], overlay: dict[str, Any], kwargs: dict[str, Any], source: str):
    """Build ``name`` and load ``state`` through timm's builder; every backbone weight must be
    present. A classifier of another size is left out (reported), keys the model does not use
    are ignored (reported), a tensor of another shape is an error naming it."""
    cfg = timm.get_pretrained_cfg(name)
    num_classes = kwargs.get("num_classes", getattr(cfg, "num_classes", 1000) if cfg else 1000)
    classifiers = getattr(cfg, "classifier", None) or "head"
    heads = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    for prefix in heads:
        weight = state.get(f"{prefix}.weight")
        if weight is not None and (num_classes == 0 or weight.shape[0] != num_classes):
            log.info("%s: classifier %s of %d classes left out", source, prefix, weight.shape[0])
            state = {k: v for k, v in state.items() if not k.startswith(f"{prefix}.")}
    overlay = {**overlay, "state_dict": state, "num_classes": num_classes}
    try:
        return _build(name, overlay, kwargs)
    except RuntimeError as exc:
        message = str(exc)
        unused = _keys(message, "Unexpected")
        missing = [k for k in _keys(message, "Missing") if not k.startswith(tuple(f"{h}." for h in heads))]
        shapes = re.findall(r"size mismatch for ([^:]+): copying a param with shape (\S+ \S+) from checkpoint, "
                            r"the shape in current model is (\S+ \S+)", message)  # fmt: skip
        if shapes:
            bad = [
                f"{k} {a.removeprefix('torch.Size')} vs {b.removeprefix('torch.Size').rstrip('.')}"
                for k, a, b in shapes[:5]
            ]
            raise XrayfmError(f"{source}: shapes do not match {name} (another architecture?): {bad}") from None
        if missing:
            raise XrayfmError(
                f"{source}: {len(missing)} backbone weights missing (first: {missing[:5]}); "
                f"is this checkpoint for another architecture than {name}?"
            ) from None
        if not unused and not _keys(message, "Missing"):
            raise XrayfmError(f"{source}: cannot load into {name}: {message.splitlines()[0][:300]}") from None
    log.info("%s: %d keys not used by %s: %s (a new classifier stays random)", source, len(unused), name, unused[:10])
    return _build(name, overlay, kwargs, strict=False)


def _download(name: str) -> Path:
    """The file of a release tag, from its hub (cached by huggingface_hub)."""
    cfg = timm.get_pretrained_cfg(name)
    repo, filename = getattr(cfg, "hf_hub_id", None), getattr(cfg, "hf_hub_filename", None)
    if not repo:
        raise XrayfmError(f"{name!r} names no downloadable weights; pass pretrained=PATH to a local file")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename or "open_clip_pytorch_model.bin"))
    except Exception as exc:  # offline, missing file, hub error: say where to get it by hand
        raise XrayfmError(
            f"cannot download {name} ({repo}/{filename}): {type(exc).__name__}; download it and pass pretrained=PATH"
        ) from None


def create_model(
    name: str, pretrained: str | Path | bool | None = None, *, allow_unsafe: bool = False, **kwargs: Any
) -> nn.Module:
    """Create a backbone by name, optionally with weights; its ``pretrained_cfg`` is its
    preprocessing record.

    Args:
        name: An xrayfm model (``eva_x_small_patch16``, tags such as ``.mim_merged520k``) or any
            timm model name, tags included (``resnet18.a1_in1k``).
        pretrained: Weight file (.safetensors / .pt; EVA-X release files as published: fp16
            under ``module``, or under ``model`` with a pickled ``args`` namespace, with or
            without the MIM-only ``mask_token`` / ``lm_head``; built with the RoPE grid their
            stored table records; contrastive releases such as Adam's MoCo ``checkpoint.pth``,
            with ``module.encoder_q.`` / ``encoder.`` / ``backbone.`` prefixes, see
            :mod:`~xrayfm.models.adam_weights`; Foundation X and Ark-6 checkpoints for a Swin:
            the EMA teacher's Swin, built with ``always_partition=True``, see
            :mod:`~xrayfm.models.foundation_x_weights`), a folder
            holding an xrayfm export (e.g. a finished pretraining run: its architecture,
            preprocessing and constructor arguments come with it; a model exported at one input
            size also takes any other multiple of its patch size, and ``img_size`` here sets the
            size it is built at), ``True`` for the tag's download, or None / False.
        allow_unsafe: Permit unpickling a trusted file that is not weights-only.
        **kwargs: Passed to the model constructor (``num_classes``, ``img_size``, ``drop_path_rate``...).

    Raises:
        UnknownNameError: Neither xrayfm nor timm knows ``name`` (or its tag).
        XrayfmError: The constructor rejects ``kwargs``, or the weights cannot be read or do not
            fit the architecture.
    """
    check_model_name(name)
    overlay: dict[str, Any] = {}
    if pretrained is True:
        pretrained = _download(name)
    if pretrained is not None and pretrained is not False and Path(pretrained).is_dir():
        pretrained, sidecar = read_export(pretrained)
        if split_model_name_tag(sidecar.get("arch", ""))[0] != split_model_name_tag(name)[0]:
            raise XrayfmError(f"{pretrained}: exported for {sidecar.get('arch')!r}, not {name!r}")
        exported = dict(sidecar.get("model_kwargs", {}))
        if exported.get("img_size"):  # the run's size, but any multiple of the patch works (timm's dynamic size)
            exported.update(backbone_kwargs(name, img_size=exported["img_size"]))
        kwargs = {**exported, **kwargs}
        overlay.update(resolve_preprocess(sidecar).timm_overlay())
    if kwargs.get("img_size"):
        size = kwargs["img_size"]
        cfg = timm.get_pretrained_cfg(name)
        base = Preprocess.from_timm_cfg({**(cfg.to_dict() if cfg else {}), **overlay})
        overlay.update(base.with_size(size if isinstance(size, int) else size[0]).timm_overlay())
    if pretrained is None or pretrained is False:
        model = _build(name, overlay, kwargs)
    else:
        state, kwargs = read_pretrained(pretrained, name, kwargs, allow_unsafe=allow_unsafe)  # Foundation X, Ark-6
        state = release_backbone(state, name, source=str(pretrained))  # MoCo / Adam layouts
        if split_model_name_tag(name)[0] in XRAYFM_MODELS:  # a release file's own RoPE grid
            kwargs = eva_x.file_kwargs(name, state, kwargs)
        model = _load(name, state, overlay, kwargs, str(pretrained))
    _check_input_size(model, name, kwargs.get("img_size"))
    return model


def _check_input_size(model: nn.Module, name: str, img_size: int | tuple[int, int] | None) -> None:
    """A patch model's input side must be a multiple of its patch (else pixels are cut off silently)."""
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if img_size is None or patch is None:
        return
    sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if any(s % p for s, p in zip(sizes, patch)):
        raise XrayfmError(f"{name}: input size {img_size} is not a multiple of its patch size {tuple(patch)}")
