"""EVA-X backbones: architecture, timm registration, and parity after loading release checkpoints.

The reference is timm's ``Eva`` built with the EVA-X release's own arguments (``hustvl/EVA-X``
``eva_x.py``). A checkpoint in the release's key layout (``mlp.w12`` / ``mlp.w1,w2,w3``,
``mlp.ffn_ln``, ``attn.q_bias``, MIM ``mask_token`` / ``lm_head``, wrapped in ``model``) is written
from the reference's random weights; loading it through xrayfm must reproduce its outputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.eva import Eva

from xrayfm import UnknownNameError, XrayfmError
from xrayfm.models import create_model, list_models, read_state_dict
from xrayfm.models.backbones.eva_x import eva_x_kwargs

WIDTH = {"eva_x_tiny_patch16": 192, "eva_x_small_patch16": 384, "eva_x_base_patch16": 768}


def to_release_layout(sd: dict[str, torch.Tensor], *, mim: bool) -> dict[str, torch.Tensor]:
    """timm EVA keys -> the EVA / EVA-X release's key names (the inverse of timm's filter)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2").replace("mlp.fc1", "mlp.w12")
        k = k.replace("mlp.fc2", "mlp.w3").replace("mlp.norm", "mlp.ffn_ln").replace("attn.norm", "attn.inner_attn_ln")
        k = k.replace("attn.q_proj.bias", "attn.q_bias").replace("attn.v_proj.bias", "attn.v_bias")
        if mim and k.startswith("fc_norm."):
            k = k.replace("fc_norm.", "norm.")  # the MIM model ends in `norm`, fine-tuning moves it
        if mim and k.startswith("head."):
            continue
        out[k] = v
    if mim:
        dim = sd["cls_token"].shape[-1]
        out["mask_token"] = torch.zeros(1, 1, dim)
        out["lm_head.weight"] = torch.randn(512, dim)
        out["lm_head.bias"] = torch.zeros(512)
        out["rope.freqs_cos"] = torch.randn(196, dim)  # buffers the release saves; recomputed here
    return out


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


@pytest.mark.parametrize(
    "name,mim", [("eva_x_tiny_patch16", True), ("eva_x_small_patch16", False), ("eva_x_base_patch16", True)]
)
def test_release_checkpoint_parity(tmp_path: Path, image: torch.Tensor, name: str, mim: bool) -> None:
    torch.manual_seed(1)
    reference = Eva(**eva_x_kwargs(name), num_classes=0 if mim else 14).eval()
    with torch.no_grad():  # non-trivial norms so a dropped or misplaced LayerNorm shows
        for mod in reference.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    path = tmp_path / "release.pt"
    torch.save({"model": to_release_layout(reference.state_dict(), mim=mim), "epoch": 10}, path)
    ours = create_model(name, pretrained=path, num_classes=0 if mim else 14).eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(image), reference.forward_features(image), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(image), reference(image), rtol=0, atol=1e-5)


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


def test_unsafe_pickle_refused_by_default(tmp_path: Path) -> None:
    torch.save(
        {"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)},
        tmp_path / "u.pt",
    )
    with pytest.raises(XrayfmError, match="unsafe unpickling"):
        read_state_dict(tmp_path / "u.pt")
    assert read_state_dict(tmp_path / "u.pt", allow_unsafe=True).keys() == {"w"}  # trusted: loads


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
