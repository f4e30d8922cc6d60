"""Teachers load from the files people have, and see the student's view in their own input convention."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from xrayfm import XrayfmError
from xrayfm.models import Preprocess, create_model
from xrayfm.models.backbones.eva_x import EVA_X_MEAN
from xrayfm.models.export import export_backbone
from xrayfm.pretrain.mim import MaskedFeatureModeling, TeacherInput
from xrayfm.pretrain.teachers import LAYOUTS, load_teacher


def _same_features(a: torch.nn.Module, b: torch.nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(a.eval().forward_features(x), b.eval().forward_features(x), rtol=0, atol=0)


def test_teacher_receives_the_view_in_its_own_normalisation_and_size() -> None:
    torch.manual_seed(0)
    student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=32, depth=1)
    teacher = create_model("eva_x_tiny_patch16", num_classes=0, img_size=48, depth=1)
    view = TeacherInput(source_mean=0.49, source_std=0.28, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, size=48)
    objective = MaskedFeatureModeling(student, teacher, teacher_input=view)
    seen: list[torch.Tensor] = []
    teacher.patch_embed.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    grey = torch.rand(2, 1, 32, 32)
    student_view = ((grey - 0.49) / 0.28).repeat(1, 3, 1, 1)  # what PretrainAugment gives the student
    targets = objective.targets(student_view, (2, 2))

    resized = F.interpolate(grey, size=(48, 48), mode="bilinear", align_corners=False, antialias=False)
    expected = (resized - torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(OPENAI_CLIP_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(seen[0], expected)
    assert targets.shape == (2, 4, teacher.num_features)
    assert not any(k.startswith("teacher_s") for k in objective.state_dict())  # buffers: not in checkpoints
    assert objective.to(torch.float64).teacher_scale.dtype == torch.float64  # they follow the module


def test_teacher_input_needs_a_teacher_and_positive_stds() -> None:
    student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=32, depth=1)
    view = TeacherInput(source_mean=0.5, source_std=0.25, mean=(0.5,), std=(0.5,))
    with pytest.raises(XrayfmError, match="no teacher"):
        MaskedFeatureModeling(student, target="pixel", teacher_input=view)
    with pytest.raises(XrayfmError, match="positive"):
        TeacherInput(source_mean=0.5, source_std=0.25, mean=(0.5,), std=(0.0,))


def _lightning_checkpoint(vit: dict[str, torch.Tensor]) -> dict:
    """An MGCA Lightning checkpoint: its image ViT under ``img_encoder_q.model.``, beside the other
    modules of mgca_module.py (projection heads, BERT text encoder, attention layers, prototypes)."""
    state = {f"img_encoder_q.model.{k}": v for k, v in vit.items()}
    state.update({
        "img_encoder_q.global_embed.head.0.weight": torch.randn(16, 768),
        "img_encoder_q.local_embed.head.0.weight": torch.randn(16, 768, 1),
        "text_encoder_q.model.embeddings.word_embeddings.weight": torch.randn(8, 768),
        "text_encoder_q.global_embed.head.0.weight": torch.randn(16, 768),
        "patch_local_atten_layer.in_proj_weight": torch.randn(384, 128),
        "word_local_atten_layer.in_proj_weight": torch.randn(384, 128),
        "prototype_layer.weight": torch.randn(500, 128),
    })  # fmt: skip
    return {
        "epoch": 49, "global_step": 12000, "pytorch-lightning_version": "1.5.9", "state_dict": state,
        "hyper_parameters": {"img_encoder": "vit_base", "emb_dim": 128, "num_prototypes": 500, "learning_rate": 2e-5},
        "optimizer_states": [], "lr_schedulers": [],
    }  # fmt: skip


@pytest.mark.parametrize("depth", [2, pytest.param(12, marks=pytest.mark.slow)])
def test_mgca_vit_b_checkpoint_loads_as_a_teacher(tmp_path: Path, depth: int) -> None:
    torch.manual_seed(0)
    source = timm.create_model("vit_base_patch16_224", num_classes=0, depth=depth, dynamic_img_size=True)
    # the names of MGCA's own ViT (mgca/models/backbones/vits.py) are timm's: check a few of them
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.bias", "norm.bias"} <= set(
        source.state_dict()
    )
    torch.save(_lightning_checkpoint(source.state_dict()), tmp_path / "mgca_vit_base.ckpt")

    teacher = load_teacher(tmp_path / "mgca_vit_base.ckpt", depth=depth)
    assert (teacher.layout, teacher.arch) == ("mgca", "vit_base_patch16_224")
    assert teacher.mean == (0.5,) * 3 and teacher.std == (0.5,) * 3  # MGCA DataTransforms
    assert teacher.preprocess.input_size == 224 and teacher.record()["mean"] == [0.5] * 3
    _same_features(teacher.model, source, 64)


def _eva_clip_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm EVA02-CLIP weights in EVA-CLIP's own names (baaivision/EVA, EVA-CLIP/rei/eva_clip/eva_vit_model.py:
    ``Attention.q_bias / v_bias / inner_attn_ln``, ``SwiGLU.w1 / w2 / w3 / ffn_ln``, ``head`` the projection)."""
    renames = [("attn.q_proj.bias", "attn.q_bias"), ("attn.v_proj.bias", "attn.v_bias"), ("attn.norm.", "attn.inner_attn_ln."),
               ("mlp.fc1_g.", "mlp.w1."), ("mlp.fc1_x.", "mlp.w2."), ("mlp.fc2.", "mlp.w3."), ("mlp.norm.", "mlp.ffn_ln.")]  # fmt: skip
    out = {}
    for key, value in state.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[f"visual.{key}"] = value
    return out


@pytest.mark.parametrize("prefix", ["visual.", "visual.trunk."])
def test_eva_clip_vision_tower_loads_as_a_teacher_with_clip_normalisation(tmp_path: Path, prefix: str) -> None:
    torch.manual_seed(0)
    source = timm.create_model("eva02_base_patch16_clip_224", num_classes=512, depth=2, dynamic_img_size=True)
    source = source.half().float()  # EVA-CLIP releases are float16
    if prefix == "visual.":  # EVA-CLIP's own checkpoint: visual tower in its names, rope tables, text tower
        state = _eva_clip_names(source.state_dict())
        state["visual.rope.freqs_cos"] = state["visual.blocks.0.attn.rope.freqs_cos"] = torch.randn(196, 64)
    else:  # open_clip's: the timm trunk as is, a projection head beside it
        state = {f"visual.trunk.{k}": v for k, v in source.state_dict().items() if not k.startswith("head.")}
        state["visual.head.proj.weight"] = torch.randn(512, 768)
    state.update({"text.token_embedding.weight": torch.randn(8, 512), "logit_scale": torch.tensor(4.6)})
    torch.save({k: v.half() for k, v in state.items()}, tmp_path / "EVA02_CLIP_B_psz16.pt")

    teacher = load_teacher(tmp_path / "EVA02_CLIP_B_psz16.pt", depth=2)
    assert (teacher.layout, teacher.arch) == ("eva_clip", "eva02_base_patch16_clip_224")
    assert teacher.mean == OPENAI_CLIP_MEAN and teacher.std == OPENAI_CLIP_STD
    assert teacher.preprocess.interpolation == "bicubic" and teacher.preprocess.input_size == 224
    _same_features(teacher.model, source, 64)


def test_xrayfm_export_and_eva_x_file_load_as_teachers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = create_model("eva_x_tiny_patch16", num_classes=0, img_size=32, depth=1)
    record = Preprocess(input_size=32, mean=0.3, std=0.2)
    export_backbone(source, tmp_path / "run" / "export", arch="eva_x_tiny_patch16", preprocess=record,
                    info={"model_kwargs": {"img_size": 32, "depth": 1}})  # fmt: skip
    run = load_teacher(tmp_path / "run")
    assert (run.layout, run.arch, run.mean, run.std) == ("xrayfm", "eva_x_tiny_patch16", (0.3,) * 3, (0.2,) * 3)
    assert run.preprocess.input_size == 32
    _same_features(run.model, source, 32)

    save_file(source.state_dict(), str(tmp_path / "eva_x_ti.safetensors"))
    plain = load_teacher(tmp_path / "eva_x_ti.safetensors", default_arch="eva_x_tiny_patch16", img_size=32, depth=1)
    assert (plain.layout, plain.arch, plain.mean) == ("timm", "eva_x_tiny_patch16", EVA_X_MEAN)
    _same_features(plain.model, source, 32)
    with pytest.raises(XrayfmError, match="names no architecture"):
        load_teacher(tmp_path / "eva_x_ti.safetensors")


def test_a_file_in_no_known_layout_is_one_line_naming_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"encoder.layer.0.weight": torch.zeros(2), "encoder.layer.1.weight": torch.zeros(2),
                "decoder.out.bias": torch.zeros(2)}, path)  # fmt: skip
    with pytest.raises(XrayfmError) as err:
        load_teacher(path)
    message = str(err.value)
    assert "\n" not in message and "not a teacher layout" in message
    assert "encoder.* (2)" in message and "decoder.* (1)" in message
    with pytest.raises(XrayfmError, match="unknown teacher layout"):
        load_teacher(path, layout="dinov2")  # type: ignore[arg-type]
    with pytest.raises(XrayfmError, match="no MGCA image ViT"):
        load_teacher(path, layout="mgca")


def test_command_line_layout_choices_are_the_loaders() -> None:
    from xrayfm.cli.pretrain import LAYOUTS as CLI_LAYOUTS

    assert CLI_LAYOUTS == LAYOUTS
