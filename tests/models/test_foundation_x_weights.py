"""Foundation X and Ark-6 checkpoints (../shared/reference/foundation-x.md sections 1 and 6) load into timm's Swin
and into a multi-task model.

Each layout is written from random weights of a small Swin under Swin-B's names: the reference's old layout
(downsample at the end of a stage, ``relative_position_index`` / ``attn_mask`` buffers) under ``backbone.0.``
with its extra parts (classification heads, Locnorm / Segnorm, PSP + FPN segmentation, DINO encoder and
decoders), or Ark's ``module.``-prefixed Swin with its classifier.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xrayfm import XrayfmError
from xrayfm.models import create_model
from xrayfm.models.export import export_backbone
from xrayfm.models.foundation_x_multitask import CLASSIFICATION_HEADS, ENCODER_RENAMES, load_foundation_x
from xrayfm.models.foundation_x_weights import FOUNDATION_X_ARCH, load_foundation_x_backbone
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.registry import export_kwargs
from xrayfm.models.task_checkpoint import load_task_model, save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.tasks import TaskSpec

#: Outputs of the reference's classification heads 0..10.
HEAD_CLASSES = (1, 1, 1, 3, 13, 1, 14, 14, 6, 1, 14)
DETR = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_queries": 5}  # fmt: skip


def tiny_swin(always_partition: bool = True, embed_dim: int = 16) -> nn.Module:
    """A Swin with Swin-B's names at 64 px, window 2: stage 4 is one window, where always_partition matters."""
    return create_model(FOUNDATION_X_ARCH, num_classes=0, always_partition=always_partition, embed_dim=embed_dim,
                        depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), img_size=64, window_size=2)  # fmt: skip


def random_swin_state(seed: int) -> dict[str, torch.Tensor]:
    """timm-layout weights of :func:`tiny_swin`, all random (LayerNorms too, so a swap shows)."""
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) * 0.1 for k, v in tiny_swin().state_dict().items()}


def old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's Swin names: downsample at the end of the previous stage, non-persistent buffers saved."""
    out = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k): v
           for k, v in state.items()}  # fmt: skip
    for k in [k for k in out if k.endswith("relative_position_bias_table")]:
        out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(4, 4, dtype=torch.long)
    out["layers.3.blocks.0.attn_mask"] = torch.zeros(1, 4, 4)
    return out


def dino_encoder_state(seed: int) -> dict[str, torch.Tensor]:
    """The DINO encoder, input_proj and level_embed under the reference's names, shaped as :data:`DETR`."""
    torch.manual_seed(seed)
    names = {new: old for old, new in ENCODER_RENAMES.items()}
    model = MultiTaskModel(tiny_swin(), {"les": [TaskSpec("les", "detection", ["a"])]}, detr=DETR)
    out = {}
    for k, v in model.loc_encoder.state_dict().items():
        if k.startswith("encoder.layers."):
            index, rest = k.removeprefix("encoder.layers.").split(".", 1)
            rest = next((names[new] + rest[len(new) :] for new in names if rest.startswith(new)), rest)
            k = f"transformer.encoder.layers.{index}.{rest}"
        elif k == "level_embed":
            k = "transformer.level_embed"
        out[k] = torch.randn_like(v) * 0.2 + (1.0 if k.endswith("norm1.weight") or k.endswith("norm2.weight") else 0.0)
    return out


def foundation_x_model(seed: int) -> dict[str, torch.Tensor]:
    """A whole Foundation X state dict in the reference's layout."""
    swin = old_layout(random_swin_state(seed))
    dim = swin["norm.weight"].shape[0]
    torch.manual_seed(seed + 100)
    extra = {f"classification_heads.{i}.{p}": torch.randn(n, dim) if p == "weight" else torch.randn(n)
             for i, n in enumerate(HEAD_CLASSES) for p in ("weight", "bias")}  # fmt: skip
    extra |= {f"Locnorm{i}.weight": torch.randn(16 * 2**i) for i in (1, 2, 3)}
    extra |= {f"Segnorm{i}.weight": torch.randn(16 * 2**i) for i in range(4)}
    extra |= {"head.weight": torch.randn(1000, dim), "segmentation_PPN.stages.0.1.weight": torch.randn(8, dim, 1, 1),
              "segmentation_FPN.conv_fusion.0.weight": torch.randn(8, 32, 3, 3),
              "segmentation_heads.4.weight": torch.randn(13, 8, 3, 3)}  # fmt: skip
    state = {f"backbone.0.{k}": v for k, v in (swin | extra).items()}
    state |= dino_encoder_state(seed)
    state |= {"transformer.decoder.0.layers.0.linear1.weight": torch.randn(32, 32), "transformer.tgt_embed.weight":
              torch.randn(5, 32), "label_enc.weight": torch.randn(15, 32), "class_embed_.0.weight": torch.randn(14, 32),
              "transformer.enc_outputMem_LinearProjection.0.weight": torch.randn(32, 32)}  # fmt: skip
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The published layouts, each teacher with different weights from its student."""
    folder = tmp_path_factory.mktemp("foundation_x")
    teacher, student = foundation_x_model(0), foundation_x_model(1)
    ark_teacher = {f"module.{k}": v for k, v in old_layout(random_swin_state(2)).items()}
    ark_teacher |= {"module.head.weight": torch.randn(19, 128), "module.head.bias": torch.randn(19)}
    ark_student = {f"module.{k}": v for k, v in old_layout(random_swin_state(3)).items()}
    objects = {
        "fx": {"model": student, "teacher_model": teacher, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
               "epoch": 380},
        "ark": {"epoch": 200, "state_dict": ark_student, "teacher": ark_teacher, "optimizer": {"state": {}}},
        "ark_flat": {"state_dict": ark_student},
        "resnet": {"model": {"conv1.weight": torch.randn(4, 3, 3, 3), "fc.weight": torch.randn(2, 4)}},
        "entries": {"student": ark_student, "ema": ark_teacher},
    }  # fmt: skip
    paths = {name: folder / f"{name}.pth" for name in objects}
    for name, obj in objects.items():
        torch.save(obj, paths[name])
    return paths


def reference_swin(seed: int) -> nn.Module:
    """The source weights loaded directly (timm layout), to compare against."""
    model = tiny_swin()
    model.load_state_dict(random_swin_state(seed))
    return model.eval()


def pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.mark.parametrize(("name", "teacher", "seed"), [("fx", True, 0), ("fx", False, 1), ("ark", True, 2),
                                                       ("ark", False, 3), ("ark_flat", True, 3)])  # fmt: skip
def test_backbone_loads_with_the_source_features(files: dict[str, Path], name: str, teacher: bool, seed: int) -> None:
    model = load_foundation_x_backbone(files[name], teacher=teacher, model=tiny_swin()).eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(pooled(model, x), pooled(reference_swin(seed), x), atol=1e-6)
    assert not torch.allclose(pooled(model, x), pooled(reference_swin(seed ^ 1), x), atol=1e-3)


def test_backbone_errors_name_the_problem(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(XrayfmError, match="not a Foundation X or Ark checkpoint.*conv1.weight"):
        load_foundation_x_backbone(files["resnet"], model=tiny_swin())
    with pytest.raises(XrayfmError, match=r"does not fit SwinTransformer: 0 weights missing.*another shape"):
        load_foundation_x_backbone(files["fx"], model=tiny_swin(embed_dim=32))
    with pytest.raises(XrayfmError, match="always_partition=True"):
        load_foundation_x_backbone(files["fx"], model=tiny_swin(always_partition=False))
    with pytest.raises(XrayfmError, match=r"no teacher weights .*\['ema', 'student'\]"):
        load_foundation_x_backbone(files["entries"], model=tiny_swin())
    torch.save({"teacher_model": {}, "args": PickledArgs()}, tmp_path / "unsafe.pth")
    with pytest.raises(XrayfmError, match="needs unsafe unpickling"):
        load_foundation_x_backbone(tmp_path / "unsafe.pth", model=tiny_swin())


class PickledArgs:
    """A class a weights-only load refuses."""


def multitask(detection: bool = True) -> MultiTaskModel:
    tasks = {"tbx11k": [TaskSpec("tb", "multilabel", ["tb"])],
             "nih_cxr14": [TaskSpec("findings", "multilabel", [f"f{i}" for i in range(14)])],
             "rsna_pneumonia": [TaskSpec("pneumonia", "multilabel", ["pneumonia"])],
             "organs": [TaskSpec("organs", "segmentation", ["lungs", "heart"])]}  # fmt: skip
    if detection:
        tasks["lesions"] = [TaskSpec("lesions", "detection", ["nodule"])]
    return MultiTaskModel(tiny_swin(), tasks, detr=DETR)


def test_whole_load_maps_heads_and_reports_the_rest(files: dict[str, Path]) -> None:
    model = multitask()
    report = load_foundation_x(model, files["fx"])
    model.eval()
    state = foundation_x_model(0)
    x = torch.rand(2, 1, 64, 64)
    features = pooled(reference_swin(0), model.normalize(x))
    for unit, index in (("tbx11k/tb", 0), ("nih_cxr14/findings", 7)):
        head = f"backbone.0.classification_heads.{index}"
        expected = F.linear(features, state[f"{head}.weight"], state[f"{head}.bias"])
        with torch.no_grad():
            assert torch.allclose(model(x, unit).prediction, expected, atol=1e-5), unit
    loaded = {p.source: p.target for p in report.loaded}
    assert loaded["backbone.0.classification_heads.0"] == "heads.tbx11k.tb"
    assert loaded["backbone.0.classification_heads.7"] == "heads.nih_cxr14.findings"
    assert loaded["transformer.encoder, input_proj, level_embed"] == "loc_encoder"
    skipped = {p.source: p.note for p in report.skipped}
    assert "another class list" in skipped["backbone.0.classification_heads.3"]  # RSNA: 3 outputs vs 1
    assert "no classifier for 'chexpert'" in skipped["backbone.0.classification_heads.6"]
    assert {"backbone.0.Locnorm1-3", "backbone.0.Segnorm0-3", "backbone.0.head", "backbone.0.segmentation_*",
            "DINO decoders and heads"} <= set(skipped)  # fmt: skip
    n_file = len(state)
    assert sum(p.tensors for p in report.loaded + report.skipped) == n_file - 5  # the dropped buffers
    assert {"seg_decoder.decoder", "heads.organs", "heads.lesions", "heads.rsna_pneumonia"} <= set(report.untouched)
    assert any(line.startswith("skipped  backbone.0.segmentation_*") for line in report.lines())


def test_shared_encoder_computes_as_dino(files: dict[str, Path]) -> None:
    """The mapped encoder layers against DINO's own computation (MSDeformAttn with ms_deform_attn_core_pytorch)."""
    model = multitask()
    load_foundation_x(model, files["fx"], teacher=False)
    state = foundation_x_model(1)
    shapes = [(8, 8), (4, 4), (2, 2), (1, 1)]
    tokens = sum(h * w for h, w in shapes)
    src, pos = torch.randn(2, tokens, 32), torch.randn(2, tokens, 32)
    spatial = torch.tensor(shapes)
    starts = torch.cat((spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]))
    with torch.no_grad():
        out = model.loc_encoder.encoder(
            inputs_embeds=src, attention_mask=torch.ones(2, tokens, dtype=torch.bool), spatial_position_embeddings=pos,
            spatial_shapes=spatial, spatial_shapes_list=shapes, level_start_index=starts, valid_ratios=torch.ones(2, 4, 2),
        ).last_hidden_state  # fmt: skip
    assert torch.allclose(out, dino_encoder(state, src, pos, shapes), atol=1e-5)


def dino_encoder(state: dict[str, torch.Tensor], src: torch.Tensor, pos: torch.Tensor, shapes: list) -> torch.Tensor:
    """jlianglab/Foundation_X ``TransformerEncoder`` + ``DeformableTransformerEncoderLayer`` (post-norm, ReLU)."""
    refs = []
    for h, w in shapes:  # get_reference_points with valid ratios 1
        ys, xs = torch.meshgrid(torch.linspace(0.5, h - 0.5, h), torch.linspace(0.5, w - 0.5, w), indexing="ij")
        refs.append(torch.stack((xs.reshape(-1) / w, ys.reshape(-1) / h), -1))
    ref = torch.cat(refs)[None, :, None].expand(src.shape[0], -1, len(shapes), -1)
    heads, levels = DETR["encoder_attention_heads"], len(shapes)
    n, length, d = src.shape
    for i in range(DETR["encoder_layers"]):
        p = {k.removeprefix(f"transformer.encoder.layers.{i}."): v for k, v in state.items()
             if k.startswith(f"transformer.encoder.layers.{i}.")}  # fmt: skip
        lin = lambda x, name: F.linear(x, p[f"{name}.weight"], p[f"{name}.bias"])  # noqa: E731
        query = src + pos
        value = lin(src, "self_attn.value_proj").view(n, length, heads, d // heads)
        offsets = lin(query, "self_attn.sampling_offsets").view(n, length, heads, levels, -1, 2)
        points = offsets.shape[4]
        weights = lin(query, "self_attn.attention_weights").view(n, length, heads, levels * points).softmax(-1)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=src.dtype)
        locations = ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        attended = ms_deform_attn_core_pytorch(value, shapes, locations, weights.view(n, length, heads, levels, points))
        src = F.layer_norm(src + lin(attended, "self_attn.output_proj"), (d,), p["norm1.weight"], p["norm1.bias"])
        ffn = lin(F.relu(lin(src, "linear1")), "linear2")
        src = F.layer_norm(src + ffn, (d,), p["norm2.weight"], p["norm2.bias"])
    return src


def ms_deform_attn_core_pytorch(value, shapes, locations, weights) -> torch.Tensor:  # noqa: ANN001
    """The reference's pure-PyTorch multi-scale deformable attention (ops/functions/ms_deform_attn_func.py)."""
    n, _, m, d = value.shape
    _, lq, m, levels, points, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(n * m, 1, lq, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2)


def test_whole_load_without_detection_skips_the_encoder(files: dict[str, Path]) -> None:
    report = load_foundation_x(multitask(detection=False), files["fx"], heads={0: "tbx11k/tb", 7: "nih_cxr14"})
    skipped = {p.source: p.note for p in report.skipped}
    assert "no Deformable DETR encoder" in skipped["transformer.encoder, input_proj, level_embed"]
    assert skipped["backbone.0.classification_heads.1"] == "not in the head mapping"
    assert len([p for p in report.loaded if "classification_heads" in p.source]) == 2
    assert set(CLASSIFICATION_HEADS) == set(range(11))


def test_whole_load_needs_the_released_swin(files: dict[str, Path]) -> None:
    model = MultiTaskModel(create_model("resnet18", num_classes=0), {"nih": [TaskSpec("f", "multilabel", ["a"])]})
    with pytest.raises(XrayfmError, match="for a timm Swin, not ResNet"):
        load_foundation_x(model, files["fx"])


@pytest.mark.parametrize("unit", ["tbx11k/tb", "organs/organs"])
def test_multitask_model_trains_on_a_swin(unit: str) -> None:
    """Swin's NHWC final features and NCHW stage maps feed classification and the shared segmentation decoder."""
    model = multitask(detection=False).train()
    out = model(torch.rand(2, 1, 64, 64), unit)
    expected = (2, 1) if unit == "tbx11k/tb" else (2, 2, 64, 64)
    assert tuple(out.prediction.shape) == expected
    out.prediction.square().mean().backward()
    grads = [p.grad for name, p in model.backbone.named_parameters() if name.startswith(("patch_embed.", "layers."))]
    assert all(g is not None for g in grads) and all(g.abs().sum() > 0 for g in grads[:4])
    assert all(p.grad is not None for p in model.head(unit).parameters())


#: :func:`tiny_swin`'s size, as ``create_model`` keyword arguments (the name gives Swin-B's).
TINY_SWIN = {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "img_size": 64, "window_size": 2}


def partitions(model: nn.Module) -> bool:
    return all(b.always_partition for layer in model.layers for b in layer.blocks)


@pytest.mark.parametrize(("name", "seed"), [("fx", 0), ("ark", 2)])
def test_create_model_reads_the_teacher_swin_and_builds_it_as_released(
    files: dict[str, Path], name: str, seed: int
) -> None:
    model = create_model(FOUNDATION_X_ARCH, pretrained=files[name], num_classes=0, **TINY_SWIN).eval()
    assert partitions(model)  # added for the file, not asked
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(pooled(model, x), pooled(reference_swin(seed), x), atol=1e-6)
    assert export_kwargs(model) == {"always_partition": True}
    assert export_kwargs(create_model(FOUNDATION_X_ARCH, num_classes=0, **TINY_SWIN)) == {}


def test_create_model_refuses_a_foundation_x_file_for_another_build(files: dict[str, Path]) -> None:
    with pytest.raises(XrayfmError, match="holds a Swin .*not weights for 'resnet18'"):
        create_model("resnet18", pretrained=files["fx"], num_classes=0)
    with pytest.raises(XrayfmError, match="always_partition=False would change"):
        create_model(FOUNDATION_X_ARCH, pretrained=files["fx"], num_classes=0, always_partition=False, **TINY_SWIN)


def test_exports_and_fine_tuned_models_rebuild_the_swin_that_always_partitions(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """What a pretraining export and ``xrayfm finetune --pretrained fx.pth`` record (their model_kwargs)."""
    backbone = create_model(FOUNDATION_X_ARCH, pretrained=files["fx"], num_classes=0, **TINY_SWIN).eval()
    model_kwargs = {**TINY_SWIN, **export_kwargs(backbone)}
    export_backbone(backbone, tmp_path / "export", arch=FOUNDATION_X_ARCH, preprocess=resolve_preprocess(backbone),
                    info={"model_kwargs": model_kwargs})  # fmt: skip
    again = create_model(FOUNDATION_X_ARCH, pretrained=tmp_path, num_classes=0).eval()
    x = torch.randn(2, 3, 64, 64)
    assert partitions(again) and torch.allclose(pooled(again, x), pooled(backbone, x), atol=1e-6)
    tuned = XrayModel(backbone, [TaskSpec("tb", "multilabel", ["tb"])]).eval()
    save_task_model(tuned, tmp_path / "model", arch=FOUNDATION_X_ARCH, model_kwargs=model_kwargs, info={})
    loaded, _ = load_task_model(tmp_path / "model")
    image = torch.rand(2, 1, 64, 64)
    assert partitions(loaded.backbone)
    with torch.no_grad():
        assert torch.allclose(loaded(image)["tb"], tuned(image)["tb"], atol=1e-6)


@pytest.mark.slow  # Swin-B at 224 px with a paper-sized Deformable DETR: about 30 s on 2 CPU cores
def test_swin_b_at_full_size_trains_every_task_kind_with_its_teacher() -> None:
    """The paper's backbone as released (Swin-B, window 7, 224 px, always_partition) under the multi-task
    objective: one step per task kind, each with the EMA teacher's consistency term, reaches the backbone."""
    from xrayfm.pretrain.multitask import MultiTaskObjective

    torch.manual_seed(0)
    backbone = create_model(FOUNDATION_X_ARCH, num_classes=0, always_partition=True)
    assert sum(p.numel() for p in backbone.parameters()) > 86e6  # Swin-B, not a tiny stand-in
    tasks = {"tbx11k": [TaskSpec("tb", "multilabel", ["active", "latent"]),
                        TaskSpec("lesions", "detection", ["active", "latent"])],
             "jsrt": [TaskSpec("organs", "segmentation", ["lungs", "heart"])]}  # fmt: skip
    model = MultiTaskModel(backbone, tasks).train()  # the paper-sized Deformable DETR (DETR_DEFAULTS)
    objective = MultiTaskObjective(model, consistency_weight=0.5)
    image = torch.rand(2, 1, 224, 224)
    batches = {
        "tbx11k/tb": {"image": image, "labels": torch.tensor([[1.0, 0.0], [0.0, 1.0]])},
        "tbx11k/lesions": {"image": image, "boxes": [torch.tensor([[30.0, 40.0, 90.0, 120.0]]), torch.zeros(0, 4)],
                           "box_labels": [torch.tensor([0]), torch.zeros(0, dtype=torch.long)]},
        "jsrt/organs": {"image": image, "mask": (torch.rand(2, 2, 224, 224) > 0.5).to(torch.uint8)},
    }  # fmt: skip
    for unit, batch in batches.items():
        model.zero_grad(set_to_none=True)
        losses = objective.losses(batch, unit)
        assert all(torch.isfinite(v) for v in losses.values()), unit
        losses["loss"].backward()
        stem = model.backbone.patch_embed.proj.weight.grad
        assert stem is not None and stem.abs().sum() > 0, unit
        assert all(p.grad is None for p in objective.teacher.parameters()), unit  # the teacher never learns
