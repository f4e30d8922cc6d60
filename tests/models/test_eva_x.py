"""EVA-X backbones: architecture, timm registration, and parity with the official release.

The reference is an independent re-statement, in plain PyTorch, of the model the EVA-X release
defines (``hustvl/EVA-X`` at commit ``dc4f32a``): ``classification/models/models_eva.py``
(``VisionTransformer``, ``Block``, ``Attention``, ``SwiGLU``), ``classification/models/rope.py``
(``VisionRotaryEmbeddingFast``) and the xformers packed ``SwiGLU`` that Ti/S use. Every
architecture value is a literal copied from the release, with the file and function it comes
from; nothing is read from xrayfm's own tables. The reference's ``state_dict`` therefore has the
release's own key layout (``mlp.w12`` / ``mlp.w1,w2,w3`` + ``mlp.ffn_ln``, ``attn.q_bias`` /
``v_bias``, ``attn.rope.freqs_*`` buffers); it is saved as a release checkpoint, loaded through
``xrayfm.models.create_model(name, pretrained=...)``, and both models must give the same outputs.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.eva import Eva
from torch import nn

from xrayfm import UnknownNameError, XrayfmError
from xrayfm.models import create_model, list_models
from xrayfm.models.backbones.eva_x import rope_grid_of

WIDTH = {"eva_x_tiny_patch16": 192, "eva_x_small_patch16": 384, "eva_x_base_patch16": 768}

# ---------------------------------------------------------------- literal values of the release
# Files are those of hustvl/EVA-X at commit dc4f32a700527a3c5ba0728620da7c601416e20a.
# "models_eva.py" is classification/models/models_eva.py; "eva_x.py" is the quick-start eva_x.py.


@dataclass(frozen=True)
class ReleaseArch:
    """One EVA-X size as the release defines it."""

    embed_dim: int
    num_heads: int
    subln: bool  # True: separate q/k/v projections and a normed SwiGLU (naiveswiglu); False: fused qkv + packed SwiGLU
    pt_hw_seq_len: int  # RoPE reference grid (timm's ref_feat_shape)


RELEASE: dict[str, ReleaseArch] = {
    "eva_x_tiny_patch16": ReleaseArch(
        embed_dim=192,  # eva_x.py eva_x_tiny_patch16(): embed_dim=192; models_eva.py eva02_tiny_patch16_xattn_fusedLN_SwiGLU_preln_RoPE(): embed_dim=192
        num_heads=3,  # eva_x.py eva_x_tiny_patch16(): num_heads=3; models_eva.py eva02_tiny_patch16_xattn_fusedLN_SwiGLU_preln_RoPE(): num_heads=3
        subln=False,  # models_eva.py eva02_tiny_patch16_xattn_fusedLN_SwiGLU_preln_RoPE(): swiglu=True, no subln; eva_x.py eva_x_tiny_patch16(): swiglu_mlp=True, fused qkv
        pt_hw_seq_len=14,  # models_eva.py eva02_tiny_patch16_xattn_fusedLN_SwiGLU_preln_RoPE(): pt_hw_seq_len=14; eva_x.py eva_x_tiny_patch16(): ref_feat_shape=(14, 14)
    ),
    "eva_x_small_patch16": ReleaseArch(
        embed_dim=384,  # eva_x.py eva_x_small_patch16(): embed_dim=384; models_eva.py eva02_small_patch16_xattn_fusedLN_SwiGLU_preln_RoPE(): embed_dim=384
        num_heads=6,  # eva_x.py eva_x_small_patch16(): num_heads=6; models_eva.py eva02_small_patch16_xattn_fusedLN_SwiGLU_preln_RoPE(): num_heads=6
        subln=False,  # models_eva.py eva02_small_patch16_xattn_fusedLN_SwiGLU_preln_RoPE(): swiglu=True, no subln; eva_x.py eva_x_small_patch16(): swiglu_mlp=True, fused qkv
        pt_hw_seq_len=14,  # models_eva.py eva02_small_patch16_xattn_fusedLN_SwiGLU_preln_RoPE(): pt_hw_seq_len=14; eva_x.py eva_x_small_patch16(): ref_feat_shape=(14, 14)
    ),
    "eva_x_base_patch16": ReleaseArch(
        embed_dim=768,  # eva_x.py eva_x_base_patch16(): embed_dim=768; models_eva.py eva02_base_patch16_xattn_fusedLN_NaiveSwiGLU_subln_RoPE(): embed_dim=768
        num_heads=12,  # eva_x.py eva_x_base_patch16(): num_heads=12; models_eva.py eva02_base_patch16_xattn_fusedLN_NaiveSwiGLU_subln_RoPE(): num_heads=12
        subln=True,  # models_eva.py eva02_base_patch16_xattn_fusedLN_NaiveSwiGLU_subln_RoPE(): subln=True, naiveswiglu=True; eva_x.py eva_x_base_patch16(): qkv_fused=False, scale_mlp=True
        # the pretrained file's definition: eva_x.py eva_x_base_patch16(): ref_feat_shape=(14, 14); models_eva.py,
        # first eva02_base_patch16_xattn_fusedLN_NaiveSwiGLU_subln_RoPE() (line 749): pt_hw_seq_len=14
        pt_hw_seq_len=14,
    ),
}
#: The B fine-tuning's grid: models_eva.py redefines eva02_base_patch16_xattn_fusedLN_NaiveSwiGLU_subln_RoPE() at
#: line 798 with pt_hw_seq_len=16 ("# 224/14", copied from the patch-14 model); the later def replaces the first (and
#: its @register_model entry), and classification/train_files/eva_x/cxr14/vit_b.sh fine-tunes with that name.
B_FINETUNE_PT_HW_SEQ_LEN = 16
IMG_SIZE = (
    224  # eva_x.py eva_x_{tiny,small,base}_patch16(): img_size=224; classification/train.py: --input_size default 224
)
PATCH_SIZE = (
    16  # eva_x.py eva_x_{tiny,small,base}_patch16(): patch_size=16; models_eva.py eva02_*_patch16_*(): patch_size=16
)
DEPTH = 12  # eva_x.py eva_x_{tiny,small,base}_patch16(): depth=12; models_eva.py eva02_*_patch16_*(): depth=12
MLP_RATIO = (
    4 * 2 / 3
)  # eva_x.py eva_x_{tiny,small,base}_patch16(): mlp_ratio=4 * 2 / 3; models_eva.py eva02_*_patch16_*(): mlp_ratio=4*2/3
NORM_EPS = 1e-6  # models_eva.py eva02_*_patch16_*(): norm_layer=partial(FusedLayerNorm, eps=1e-6)
# qkv_bias: models_eva.py eva02_*_patch16_*(): qkv_bias=True -> Attention.__init__ q_bias and v_bias, no k bias
ROPE_THETA = (
    10000.0  # classification/models/rope.py VisionRotaryEmbeddingFast.__init__(): theta=10000, freqs_for='lang'
)
# intp_freq: models_eva.py eva02_*_patch16_*(): intp_freq=True -> VisionTransformer.__init__ ft_seq_len = img_size // patch_size
# use_mean_pooling: classification/train_files/eva_x/cxr14/vit_{ti,s,b}.sh: --use_mean_pooling (norm = Identity, fc_norm on the
#   mean of the patch tokens: models_eva.py VisionTransformer.forward_features; eva_x.py EVA_X.forward_head)
NUM_CLASSES = 14  # classification/train_files/eva_x/cxr14/vit_{ti,s,b}.sh: --nb_classes 14

#: Same weights, same input: the outputs agree to float32 rounding (measured <= 2e-5 on B, whose tokens reach ~10);
#: one wrong architecture value moves them by > 1e-2 (see test_parity_test_sees_a_wrong_value).
ATOL = 1e-4


# ---------------------------------------------------------------- the release's model, re-stated


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """rope.py rotate_half(): interleaved pairs (x1, x2) -> (-x2, x1)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class ReleaseRope(nn.Module):
    """rope.py VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len, ft_seq_len), freqs_for='lang'."""

    def __init__(self, dim: int, pt_seq_len: int, ft_seq_len: int) -> None:
        super().__init__()
        freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        t = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
        freqs = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # repeat '... n -> ... (n r)', r=2
        n = ft_seq_len
        grid = torch.cat((freqs[:, None, :].expand(n, n, -1), freqs[None, :, :].expand(n, n, -1)), dim=-1)  # broadcat
        self.register_buffer("freqs_cos", grid.cos().view(-1, grid.shape[-1]))
        self.register_buffer("freqs_sin", grid.sin().view(-1, grid.shape[-1]))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.freqs_cos + rotate_half(t) * self.freqs_sin


class ReleaseAttention(nn.Module):
    """models_eva.py Attention (qkv_bias=True, rope on the patch tokens, softmax(q k^T / sqrt(d)) v)."""

    def __init__(self, dim: int, num_heads: int, subln: bool, rope: ReleaseRope) -> None:
        super().__init__()
        self.num_heads, self.scale, self.subln = num_heads, (dim // num_heads) ** -0.5, subln
        if subln:
            self.q_proj = nn.Linear(dim, dim, bias=False)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        if self.subln:
            q = F.linear(x, self.q_proj.weight, self.q_bias)
            k = F.linear(x, self.k_proj.weight)
            v = F.linear(x, self.v_proj.weight, self.v_bias)
            q, k, v = (t.reshape(b, n, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        else:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q = torch.cat((q[:, :, :1], self.rope(q[:, :, 1:])), dim=2)  # the class token is not rotated
        k = torch.cat((k[:, :, :1], self.rope(k[:, :, 1:])), dim=2)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class PackedSwiGLU(nn.Module):
    """xformers.ops.SwiGLU (Ti/S, ``swiglu=True``): w12 packs [w1; w2] (xformers/ops/swiglu_op.py _ordered_params)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class NormedSwiGLU(nn.Module):
    """models_eva.py SwiGLU with subln=True (B, ``naiveswiglu=True``): w3(ffn_ln(silu(w1 x) * w2 x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.ffn_ln = nn.LayerNorm(hidden, eps=NORM_EPS)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(F.silu(self.w1(x)) * self.w2(x)))


class ReleaseBlock(nn.Module):
    """models_eva.py Block, pre-norm, no layer scale (init_values=None)."""

    def __init__(self, arch: ReleaseArch, rope: ReleaseRope) -> None:
        super().__init__()
        dim, hidden = arch.embed_dim, int(arch.embed_dim * MLP_RATIO)  # Block.__init__: int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = ReleaseAttention(dim, arch.num_heads, arch.subln, rope)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = NormedSwiGLU(dim, hidden) if arch.subln else PackedSwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ReleaseViT(nn.Module):
    """models_eva.py VisionTransformer with use_mean_pooling=True, abs. pos. embedding and RoPE."""

    def __init__(self, arch: ReleaseArch, num_classes: int, img_size: int = IMG_SIZE) -> None:
        super().__init__()
        dim, grid = arch.embed_dim, img_size // PATCH_SIZE
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.rope = ReleaseRope(dim // arch.num_heads // 2, arch.pt_hw_seq_len, grid)  # intp_freq=True
        self.blocks = nn.ModuleList(ReleaseBlock(arch, self.rope) for _ in range(DEPTH))
        self.fc_norm = nn.LayerNorm(dim, eps=NORM_EPS)  # self.norm is nn.Identity() with mean pooling
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the last block (the release's ``self.norm`` is the identity)."""
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x

    def pool_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """fc_norm of the mean patch token, then the head (VisionTransformer.forward_features + forward)."""
        return self.head(self.fc_norm(tokens[:, 1:].mean(dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_head(self.tokens(x))


def release_model(
    name: str, num_classes: int, img_size: int = IMG_SIZE, pt_hw_seq_len: int | None = None
) -> ReleaseViT:
    """The release's model (``name`` may carry a tag; ``pt_hw_seq_len`` replaces the size's RoPE grid) with
    random, non-trivial weights (norms, biases and embeddings included)."""
    torch.manual_seed(1)
    arch = RELEASE[name.partition(".")[0]]
    arch = arch if pt_hw_seq_len is None else replace(arch, pt_hw_seq_len=pt_hw_seq_len)
    model = ReleaseViT(arch, num_classes, img_size).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
        for key, p in model.named_parameters():
            if key.endswith(("q_bias", "v_bias", "cls_token", "pos_embed")):
                p.normal_(0.0, 0.5)
    return model


def mim_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A MIM-pretraining file's keys: final ``norm`` (not ``fc_norm``), no head, mask token and ``lm_head``."""
    out = {k.replace("fc_norm.", "norm."): v for k, v in sd.items() if not k.startswith("head.")}
    dim = sd["cls_token"].shape[-1]
    out |= {
        "mask_token": torch.zeros(1, 1, dim),
        "lm_head.weight": torch.randn(512, dim),
        "lm_head.bias": torch.zeros(512),
    }
    return out


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(WIDTH))
def test_architecture_and_timm_registration(name: str) -> None:
    model = timm.create_model(name)
    assert isinstance(model, Eva) and name in list_models()
    assert model.num_features == WIDTH[name] and len(model.blocks) == 12
    assert model.patch_embed.patch_size == (16, 16) and model.rope is not None
    assert model.global_pool == "avg"  # mean pooling + fc_norm, as EVA-X fine-tunes
    blk = model.blocks[0]
    if name == "eva_x_base_patch16":
        assert blk.attn.qkv is None and blk.attn.q_proj is not None and hasattr(blk.mlp, "fc1_g")
        assert isinstance(blk.mlp.norm, torch.nn.LayerNorm)  # sub-LN in the SwiGLU MLP
    else:
        assert blk.attn.qkv is not None and blk.mlp.fc1.out_features == 2 * blk.mlp.fc2.in_features


def test_reference_has_the_release_key_layout() -> None:
    """The re-statement's keys are the release's, so the parity test really reads release-layout files."""
    small = release_model("eva_x_small_patch16", NUM_CLASSES).state_dict().keys()
    base = release_model("eva_x_base_patch16", NUM_CLASSES).state_dict().keys()
    assert {
        "blocks.0.mlp.w12.weight",
        "blocks.0.mlp.w3.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.q_bias",
    } <= small
    assert {"blocks.0.mlp.w1.weight", "blocks.0.mlp.w2.weight", "blocks.0.mlp.ffn_ln.weight"} <= base
    assert {
        "blocks.0.attn.q_proj.weight",
        "blocks.0.attn.v_bias",
        "blocks.11.attn.rope.freqs_cos",
        "fc_norm.bias",
    } <= base
    assert not any(k.startswith("norm.") or ".k_bias" in k for k in base)


@pytest.mark.parametrize(
    "name,layout,img_size,grid,rope_in_file",
    [
        pytest.param("eva_x_tiny_patch16", "finetuned", IMG_SIZE, 14, True, id="Ti-finetuned"),
        pytest.param("eva_x_tiny_patch16", "mim", IMG_SIZE, 14, True, id="Ti-mim"),
        pytest.param("eva_x_small_patch16", "finetuned", IMG_SIZE, 14, True, id="S-finetuned"),
        # the release fine-tunes at other sizes too (covidx*/vit_s.sh: --input_size 480): RoPE is rescaled to 14x14
        pytest.param("eva_x_small_patch16", "finetuned", 112, 14, True, id="S-finetuned-112"),
        # the tag alone gives B's fine-tuning grid (this file stores no RoPE table)
        pytest.param(
            "eva_x_base_patch16.ft_chestxray14",
            "finetuned",
            IMG_SIZE,
            B_FINETUNE_PT_HW_SEQ_LEN,
            False,
            id="B-finetuned",
        ),
        # a file's stored RoPE table sets the grid, whatever the name's default (14x14 here)
        pytest.param("eva_x_tiny_patch16", "finetuned", 112, 16, True, id="Ti-16-from-file"),
        pytest.param(
            "eva_x_base_patch16.mim_merged520k", "mim", IMG_SIZE, 14, True, id="B-mim", marks=pytest.mark.slow
        ),  # ~10-20 s on 2 CPUs
    ],
)
def test_release_checkpoint_parity(
    tmp_path: Path, name: str, layout: str, img_size: int, grid: int, rope_in_file: bool
) -> None:
    """A file in the release's layout, loaded by xrayfm without any unsafe flag, computes exactly what the
    release's model computes."""
    mim = layout == "mim"
    reference = release_model(name, 0 if mim else NUM_CLASSES, img_size, grid)
    weights = (
        reference.state_dict()
        if rope_in_file
        else {k: v for k, v in reference.state_dict().items() if "rope." not in k}
    )
    if mim:  # pretrained files: fp16 weights under "module" (see ../shared/reference/eva-x.md)
        with torch.no_grad():
            for p in reference.parameters():
                p.copy_(p.half().float())
        checkpoint = {"module": {k: v.half() for k, v in mim_layout(weights).items()}}
    else:  # fine-tuned files: classification/utils/misc.py save_model() also pickles `args`
        checkpoint = {"model": weights, "epoch": 9, "args": argparse.Namespace(model=name, input_size=img_size)}
    torch.save(checkpoint, tmp_path / "release.pth")
    ours = create_model(
        name, pretrained=tmp_path / "release.pth", num_classes=0 if mim else NUM_CLASSES, img_size=img_size
    ).eval()
    assert tuple(ours.rope.ref_feat_shape) == (grid, grid)
    x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # timm's Eva.forward is forward_head(forward_features(x)): one pass serves both checks
        ours_tokens, ref_tokens = ours.forward_features(x), reference.tokens(x)
        torch.testing.assert_close(ours_tokens, ref_tokens, rtol=0, atol=ATOL)
        torch.testing.assert_close(ours.forward_head(ours_tokens), reference.pool_head(ref_tokens), rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "name,grid",
    [
        ("eva_x_tiny_patch16", 14),
        ("eva_x_small_patch16.ft_chestxray14", 14),
        ("eva_x_base_patch16", 14),  # its default tag is the pretrained file's
        ("eva_x_base_patch16.mim_merged520k", 14),
        ("eva_x_base_patch16.ft_chestxray14", B_FINETUNE_PT_HW_SEQ_LEN),
    ],
)
def test_each_tag_builds_the_rope_grid_its_file_was_trained_with(name: str, grid: int) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    assert tuple(model.rope.ref_feat_shape) == (grid, grid)
    assert RELEASE[name.partition(".")[0]].pt_hw_seq_len == 14  # the quick-start's grid for every size


def test_rope_grid_is_read_only_from_a_release_table() -> None:
    table = release_model("eva_x_tiny_patch16", 0, 112, 16).state_dict()["rope.freqs_cos"]
    assert rope_grid_of({"rope.freqs_cos": table}) == 16
    assert rope_grid_of({"rope.freqs_cos": table.half()}) == 16  # pretrained files are fp16
    assert rope_grid_of({"rope.freqs_cos": torch.rand_like(table)}) is None
    assert rope_grid_of({"rope.freqs_cos": table[:-1]}) is None
    assert rope_grid_of({"pos_embed": torch.zeros(1, 50, 192)}) is None


def test_parity_test_sees_a_wrong_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The comparison is sharp enough to catch one wrong architecture value (the RoPE reference grid); an explicit
    grid that contradicts the file's is used as asked, with a warning."""
    reference = release_model("eva_x_tiny_patch16", 0)
    torch.save({"model": reference.state_dict()}, tmp_path / "release.pth")
    with caplog.at_level(logging.WARNING, logger="xrayfm.models.backbones.eva_x"):
        wrong_grid = create_model(
            "eva_x_tiny_patch16", pretrained=tmp_path / "release.pth", ref_feat_shape=(16, 16)
        ).eval()
    assert "computed with 14x14" in caplog.text
    x = torch.randn(1, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (wrong_grid.forward_features(x) - reference.tokens(x)).abs().max() > 100 * ATOL


def test_mim_only_keys_are_optional_backbone_keys_are_not(tmp_path: Path) -> None:
    """A pretrained file without mask token and lm_head loads (its final norm becomes fc_norm); a missing backbone
    tensor is a one-line error naming it."""
    reference = release_model("eva_x_tiny_patch16", 0, 112)
    weights = {k: v for k, v in mim_layout(reference.state_dict()).items() if not k.startswith(("mask_token", "lm_"))}
    assert "norm.weight" in weights and "fc_norm.weight" not in weights
    torch.save({"module": weights}, tmp_path / "backbone_only.pt")
    ours = create_model("eva_x_tiny_patch16", pretrained=tmp_path / "backbone_only.pt", img_size=112).eval()
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=ATOL)
    del weights["blocks.3.attn.proj.weight"]
    torch.save({"module": weights}, tmp_path / "incomplete.pt")
    with pytest.raises(XrayfmError, match=r"blocks\.3\.attn\.proj\.weight") as err:
        create_model("eva_x_tiny_patch16", pretrained=tmp_path / "incomplete.pt", img_size=112)
    assert "\n" not in str(err.value)


def test_own_safetensors_roundtrip_and_head_swap(tmp_path: Path, image: torch.Tensor) -> None:
    src = create_model("eva_x_tiny_patch16", num_classes=14).eval()
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    same = create_model("eva_x_tiny_patch16", pretrained=tmp_path / "w.safetensors", num_classes=14).eval()
    other_head = create_model("eva_x_tiny_patch16", pretrained=tmp_path / "w.safetensors", num_classes=5).eval()
    with torch.no_grad():
        torch.testing.assert_close(same(image), src(image))
        torch.testing.assert_close(other_head.forward_features(image), src.forward_features(image))


def test_any_multiple_of_16_input(image: torch.Tensor) -> None:
    model = create_model("eva_x_tiny_patch16", dynamic_img_size=True).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 320, 256)).shape == (1, 1 + 20 * 16, 192)


def test_wrong_architecture_and_bad_names(tmp_path: Path) -> None:
    small = create_model("eva_x_small_patch16")
    torch.save(small.state_dict(), tmp_path / "s.pt")
    with pytest.raises(XrayfmError, match="do not match"):
        create_model("eva_x_tiny_patch16", pretrained=tmp_path / "s.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(XrayfmError, match="not a readable"):
        create_model("eva_x_tiny_patch16", pretrained=tmp_path / "junk.pt")
    with pytest.raises(UnknownNameError, match="eva_x_small_patch16"):
        create_model("eva_x_smal_patch16")


@pytest.mark.parametrize("name", list_models())
def test_attention_runs_on_pytorch_scaled_dot_product_attention(name: str, monkeypatch) -> None:
    model = create_model(name, img_size=32).eval()
    assert all(blk.attn.fused_attn for blk in model.blocks)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    assert len(calls) == len(model.blocks)


def test_exports_record_the_rope_grid_the_model_was_built_with() -> None:
    """The grid may come from a file rather than the name: sidecars record it (exports hold no RoPE table)."""
    from xrayfm.models.registry import export_kwargs

    with torch.device("meta"):
        tagged = timm.create_model("eva_x_base_patch16.ft_chestxray14")
        plain = timm.create_model("eva_x_tiny_patch16", ref_feat_shape=(16, 16))
        resnet = timm.create_model("resnet18")
    assert export_kwargs(tagged) == {"ref_feat_shape": [16, 16]}
    assert export_kwargs(plain) == {"ref_feat_shape": [16, 16]}
    assert export_kwargs(resnet) == {}
