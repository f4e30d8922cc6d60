"""EVA-X backbones (Yao et al., 2024): ViT-Ti/S/B, patch 16, RoPE, SwiGLU, sub-LN.

Built on timm's :class:`~timm.models.eva.Eva`, configured exactly as the EVA-X release
(``hustvl/EVA-X``, ``eva_x.py``) configures it: rotary position embedding with a 14x14 reference
grid, SwiGLU MLP with ratio 4 * 2/3, mean pooling with a final ``fc_norm``. The released Ti/S
use a fused qkv projection and a packed GLU MLP (``mlp.w12``); the released B uses separate
q/k/v projections and a normed ("scaled") SwiGLU MLP (``mlp.w1/w2`` + ``mlp.ffn_ln``). Importing
this module registers the three names with timm, so ``timm.create_model("eva_x_small_patch16")``
works after ``import xrayfm.models``.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.eva import Eva, checkpoint_filter_fn

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


def eva_x_kwargs(name: str) -> dict[str, Any]:
    """The timm ``Eva`` keyword arguments of one EVA-X architecture (the release's definition)."""
    return {**COMMON, **ARCHS[name]}


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
    # through pretrained_cfg_overlay=dict(state_dict=...); timm then applies the filter below.
    return build_model_with_cfg(
        Eva,
        name,
        pretrained=pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter"),
        **{**eva_x_kwargs(name), **kwargs},
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
