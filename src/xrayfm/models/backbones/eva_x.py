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

#: Mean / std of the released EVA-X fine-tuning (grey [0, 1] image repeated to 3 channels).
EVA_X_MEAN = (0.4919, 0.4919, 0.4919)
EVA_X_STD = (0.2851, 0.2851, 0.2851)

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


def _cfg() -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 224, 224),
        "mean": EVA_X_MEAN,
        "std": EVA_X_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
    }


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in ARCHS})


def _create(name: str, pretrained: bool, **kwargs: Any) -> Eva:
    # Weights never come from a hub here: xrayfm.models.create_model(pretrained=PATH) loads files.
    return build_model_with_cfg(
        Eva,
        name,
        pretrained=False,
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
