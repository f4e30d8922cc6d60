"""EVA-X backbones (Yao et al., 2024): ViT-Ti/S/B, patch 16, RoPE, SwiGLU, sub-LN.

Built on timm's :class:`~timm.models.eva.Eva`, configured exactly as the EVA-X release
(``hustvl/EVA-X``, ``eva_x.py``) configures it: rotary position embedding with a 14x14 reference
grid, SwiGLU MLP with ratio 4 * 2/3, mean pooling with a final ``fc_norm``. The released Ti/S
use a fused qkv projection and a packed GLU MLP (``mlp.w12``); the released B uses separate
q/k/v projections and a normed ("scaled") SwiGLU MLP (``mlp.w1/w2`` + ``mlp.ffn_ln``), and its
classification fine-tuning used a 16x16 RoPE reference grid (``ref_feat_shape``; the
``.ft_chestxray14`` tag carries it, see :data:`TAG_KWARGS`). Importing this module registers the
three names with timm; ``import xrayfm`` arranges that it is imported together with timm.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models.eva import Eva, checkpoint_filter_fn
from torch import nn

log = logging.getLogger(__name__)

#: Mean / std of the released EVA-X fine-tuning (grey [0, 1] image repeated to 3 channels):
#: hustvl/EVA-X classification/utils/datasets.py, build_transform (the 'eva' branch).
EVA_X_MEAN = (0.49185243, 0.49185243, 0.49185243)
EVA_X_STD = (0.28509309, 0.28509309, 0.28509309)
#: Where the release keeps its files (README "Introduction" and "Classification" tables).
HF_HUB_ID = "MapleF/eva_x"

COMMON: dict[str, Any] = dict(
    img_size=224,
    patch_size=16,
    depth=12,
    mlp_ratio=4 * 2 / 3,
    swiglu_mlp=True,
    use_rot_pos_emb=True,
    ref_feat_shape=(14, 14),  # 224 / 16
)
ARCHS: dict[str, dict[str, Any]] = {
    "eva_x_tiny_patch16": dict(embed_dim=192, num_heads=3),
    "eva_x_small_patch16": dict(embed_dim=384, num_heads=6),
    "eva_x_base_patch16": dict(embed_dim=768, num_heads=12, qkv_fused=False, scale_mlp=True),
}


#: Architecture values a release tag changes. B's RoPE reference grid differs between the release's
#: two definitions of B (hustvl/EVA-X at dc4f32a):
#: - the quick-start ``eva_x.py`` (``eva_x_base_patch16()``: ``ref_feat_shape=(14, 14)  # 224/16``) is
#:   the authors' definition for the pretrained files (its ``__main__`` loads
#:   ``classification/pretrained/eva_x_b_16.pt``). The pretraining code is not released; 14x14 is the
#:   token grid of patch-16 pretraining at 224 px (``classification/tools/interpolate14to16.py``
#:   resizes EVA-02's patch-14 position embedding to it). ``.mim_merged520k`` uses 14x14.
#: - ``classification/models/models_eva.py`` defines ``eva02_base_patch16_xattn_fusedLN_NaiveSwiGLU_subln_RoPE``
#:   twice: line 749 with ``pt_hw_seq_len=14`` and line 798 with ``pt_hw_seq_len=16  # 224/14``. The
#:   later ``def`` (and its ``@register_model`` entry) replaces the first, so the B fine-tuning
#:   (``classification/train_files/eva_x/cxr14/vit_b.sh``: ``--model eva02_base_patch16_..._RoPE``)
#:   built 16x16: ``.ft_chestxray14`` uses 16x16.
#: The fine-tuning loader (``classification/utils/eva_utils.py`` load_weights_for_eva) copies every
#: tensor of the pretrained file, RoPE tables included, and ``utils/misc.py`` save_model() stores the
#: whole ``state_dict``: a file's own table (``rope.freqs_cos``) is what it ran with, and it wins
#: over the tag (:func:`file_kwargs`).
TAG_KWARGS: dict[str, dict[str, Any]] = {
    "eva_x_base_patch16.ft_chestxray14": dict(ref_feat_shape=(16, 16)),
}
#: Keys only the MIM pretraining objective uses (mask token and its pixel / feature head).
MIM_ONLY_KEYS = ("mask_token", "lm_head.")
ROPE_THETA = 10000.0  # classification/models/rope.py VisionRotaryEmbeddingFast: theta=10000


def eva_x_kwargs(name: str) -> dict[str, Any]:
    """The timm ``Eva`` keyword arguments of one EVA-X architecture or tag (the release's definition).

    Args:
        name: ``eva_x_{tiny,small,base}_patch16``, optionally with its tag (``.ft_chestxray14``).
    """
    arch = name.partition(".")[0]
    return {**COMMON, **ARCHS[arch], **TAG_KWARGS.get(name, {})}


def release_rope_table(side: int, ref: int, head_dim: int) -> torch.Tensor:
    """The cosine table the release's ``VisionRotaryEmbeddingFast`` stores for a ``side`` x ``side``
    token grid and a ``ref`` x ``ref`` reference grid: rows ``r * side + c``, columns
    ``[height part | width part]``, each frequency repeated twice."""
    quarter = head_dim // 4
    freqs = ROPE_THETA ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    angles = (torch.arange(side, dtype=torch.float64) / side * ref)[:, None] * freqs
    angles = angles.repeat_interleave(2, dim=-1)
    grid = torch.cat((angles[:, None].expand(side, side, -1), angles[None, :].expand(side, side, -1)), dim=-1)
    return grid.reshape(side * side, -1).cos()


def rope_grid_of(state: Mapping[str, torch.Tensor]) -> int | None:
    """The RoPE reference grid side a release file ran with, read from its stored table
    (``rope.freqs_cos``), or None when it stores none or one of another form."""
    table = state.get("rope.freqs_cos")
    if table is None or table.ndim != 2 or table.shape[1] % 4:
        return None
    side = math.isqrt(table.shape[0])
    if side < 2 or side * side != table.shape[0]:
        return None
    # width part, first frequency (1), column 1 of the grid: the angle is 1 / side * ref
    ref = round(math.acos(max(-1.0, min(1.0, float(table[1, table.shape[1] // 2])))) * side)
    expected = release_rope_table(side, ref, table.shape[1])
    return ref if ref > 0 and torch.allclose(table.double(), expected, atol=2e-3) else None


def file_kwargs(name: str, state: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the architecture values a release file records about itself: the RoPE
    reference grid it ran with (B fine-tuned with 16x16, the quick-start's 14x14). The file's grid
    replaces the tag's; one given explicitly in ``kwargs`` is kept, with a warning."""
    ref = rope_grid_of(state)
    if ref is None:
        return dict(kwargs)
    asked = kwargs.get("ref_feat_shape")
    if asked is not None and tuple(asked) != (ref, ref):
        log.warning("%s: ref_feat_shape=%s asked, but the file's RoPE table was computed with %dx%d",
                    name, tuple(asked), ref, ref)  # fmt: skip
        return dict(kwargs)
    if tuple(eva_x_kwargs(name)["ref_feat_shape"]) != (ref, ref):
        log.info("%s: the file's RoPE table has a %dx%d reference grid; building with it", name, ref, ref)
    return {**kwargs, "ref_feat_shape": (ref, ref)}


def checkpoint_filter(state: dict[str, torch.Tensor], model: Eva) -> dict[str, torch.Tensor]:
    """timm's EVA filter, after taking MIM-only keys out of any file (with or without them): a
    pretrained file's final ``norm`` becomes the ``fc_norm`` of a mean-pooling model, as the release
    fine-tuning starts from (``eva_x.py`` checkpoint_filter_fn)."""
    state = {k: v for k, v in state.items() if not k.startswith(MIM_ONLY_KEYS)}
    pools_with_fc_norm = isinstance(model.norm, nn.Identity) and not isinstance(model.fc_norm, nn.Identity)
    if pools_with_fc_norm and "norm.weight" in state and "fc_norm.weight" not in state:
        state = {("fc_" + k if k.startswith("norm.") else k): v for k, v in state.items()}
    return checkpoint_filter_fn(state, model)


def _cfg(file: str, *, num_classes: int, crop_pct: float) -> dict[str, Any]:
    """A release tag's pretrained cfg: where its file is and the preprocessing it expects.

    Bicubic resampling and, for fine-tuned classifiers at 224 px, Resize 256 + CenterCrop 224
    (crop_pct 224 / 256) are the release's test transform (classification/utils/datasets.py,
    build_transform).
    """
    return {
        "hf_hub_id": HF_HUB_ID,
        "hf_hub_filename": file,
        "num_classes": num_classes,
        "input_size": (3, 224, 224),
        "fixed_input_size": True,  # absolute position embedding of one grid; dynamic_img_size=True lifts it
        "interpolation": "bicubic",
        "crop_pct": crop_pct,
        "mean": EVA_X_MEAN,
        "std": EVA_X_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


_SIZES = {"eva_x_tiny_patch16": "tiny", "eva_x_small_patch16": "small", "eva_x_base_patch16": "base"}
# The first tag of each architecture is its default: the MIM backbone pretrained on Merged520k.
default_cfgs = generate_default_cfgs(
    {
        **{
            f"{name}.mim_merged520k": _cfg(f"eva_x_{size}_patch16_merged520k_mim.pt", num_classes=0, crop_pct=1.0)
            for name, size in _SIZES.items()
        },
        **{
            f"{name}.ft_chestxray14": _cfg(
                f"eva_x_{size}_patch16_merged520k_mim_cxr14_ft.pth", num_classes=14, crop_pct=0.875
            )
            for name, size in _SIZES.items()
        },
    }
)


def _create(name: str, pretrained: bool, **kwargs: Any) -> Eva:
    # xrayfm.models.create_model reads files itself (weights-only) and hands timm the tensors
    # through pretrained_cfg_overlay=dict(state_dict=...); timm then applies the filter above.
    cfg = resolve_pretrained_cfg(name, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    return build_model_with_cfg(
        Eva,
        name,
        pretrained=pretrained,
        pretrained_filter_fn=checkpoint_filter,
        feature_cfg=dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter"),
        **{**eva_x_kwargs(f"{name}.{cfg.tag}" if cfg.tag else name), **kwargs},
    )


@register_model
def eva_x_tiny_patch16(pretrained: bool = False, **kwargs: Any) -> Eva:
    """EVA-X Ti/16 (embed 192, 3 heads)."""
    return _create("eva_x_tiny_patch16", pretrained, **kwargs)


@register_model
def eva_x_small_patch16(pretrained: bool = False, **kwargs: Any) -> Eva:
    """EVA-X S/16 (embed 384, 6 heads)."""
    return _create("eva_x_small_patch16", pretrained, **kwargs)


@register_model
def eva_x_base_patch16(pretrained: bool = False, **kwargs: Any) -> Eva:
    """EVA-X B/16 (embed 768, 12 heads, separate q/k/v, normed SwiGLU)."""
    return _create("eva_x_base_patch16", pretrained, **kwargs)
