"""Fine-tuning modes (what trains), LoRA merging, and layer-wise lr decay groups."""

from __future__ import annotations

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.finetune.modes import LoraSettings, apply_mode, merge_lora
from xrayfm.finetune.objective import FinetuneObjective
from xrayfm.finetune.optim import finetune_param_groups
from xrayfm.models import create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

FINDINGS = TaskSpec("findings", "multilabel", ("a", "b"))
LUNGS = TaskSpec("lungs", "segmentation", ("lung",))


def model(arch: str = "eva_x_tiny_patch16", tasks=(FINDINGS,)) -> XrayModel:
    torch.manual_seed(0)
    kw = {"img_size": 32} if "eva" in arch else {}
    return XrayModel(create_model(arch, num_classes=0, **kw), list(tasks))


def trainable(m: XrayModel) -> set[str]:
    return {n for n, p in m.named_parameters() if p.requires_grad}


def test_full_mode_trains_everything() -> None:
    m = model()
    stats = apply_mode(m, "full")
    assert stats["trainable"] == stats["total"] and stats["trainable_percent"] == 100.0


def test_linear_probe_trains_only_heads_and_keeps_backbone_in_eval() -> None:
    m = model(tasks=(FINDINGS, LUNGS))
    stats = apply_mode(m, "linear")
    names = trainable(m)
    assert names and all(n.startswith(("heads.", "pyramid.")) for n in names)
    assert stats["trainable"] < stats["total"]
    FinetuneObjective(m).train()
    assert not m.backbone.training and m.heads.training


def test_lora_trains_adapters_and_heads_only() -> None:
    m = model()
    stats = apply_mode(m, "lora", LoraSettings(rank=4))
    names = trainable(m)
    backbone = {n for n in names if n.startswith("backbone.")}
    assert backbone and all("lora_" in n for n in backbone)
    assert {n for n in names if n.startswith("heads.")}
    # 12 blocks x qkv (A: r x 192, B: 576 x r)
    assert sum(p.numel() for n, p in m.named_parameters() if "lora_" in n) == 12 * (4 * 192 + 576 * 4)
    assert 0 < stats["trainable_percent"] < 10


def test_lora_targets_resnet_convolutions_by_default() -> None:
    m = model("resnet18")
    apply_mode(m, "lora")
    assert any("layer1.0.conv2.lora_A" in n for n in trainable(m))


def test_lora_with_targets_matching_nothing_is_a_clear_error() -> None:
    with pytest.raises(XrayfmError, match="LoRA target_modules"):
        apply_mode(model(), "lora", LoraSettings(target_modules=r".*no_such_layer"))


def test_unknown_mode() -> None:
    with pytest.raises(XrayfmError, match="unknown fine-tuning mode"):
        apply_mode(model(), "partial")


def test_merged_lora_model_gives_the_same_outputs_as_plain_modules() -> None:
    m = model()
    apply_mode(m, "lora", LoraSettings(rank=4, dropout=0.0))
    with torch.no_grad():  # make the adapters non-zero (B starts at zero)
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    m.eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        before = m(x)["findings"]
        merge_lora(m)
        after = m(x)["findings"]
    assert not any("lora" in k for k in m.state_dict())
    assert torch.allclose(before, after, atol=1e-5)
    fresh = model()  # the merged state dict loads into a plain model
    fresh.load_state_dict(m.state_dict())


def test_layer_decay_groups_scale_by_depth() -> None:
    m = model()
    apply_mode(m, "full")
    groups = finetune_param_groups(m, lr=1e-3, weight_decay=0.05, layer_decay=0.55)
    by_param = {id(p): g for g in groups for p in g["params"]}
    named = dict(m.named_parameters())
    top = by_param[id(named["backbone.blocks.11.attn.qkv.weight"])]["lr"]
    lower = by_param[id(named["backbone.blocks.10.attn.qkv.weight"])]["lr"]
    embed = by_param[id(named["backbone.patch_embed.proj.weight"])]["lr"]
    head = by_param[id(named["heads.findings.fc.weight"])]["lr"]
    assert head == pytest.approx(1e-3)
    assert lower == pytest.approx(top * 0.55)
    assert embed == pytest.approx(1e-3 * 0.55**13)  # 12 blocks + embedding + head levels
    assert by_param[id(named["backbone.blocks.0.norm1.weight"])]["weight_decay"] == 0.0
    assert by_param[id(named["heads.findings.fc.weight"])]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_frozen_parameters_are_left_out_of_the_groups() -> None:
    m = model()
    apply_mode(m, "linear")
    groups = finetune_param_groups(m, lr=1e-3, weight_decay=0.05, layer_decay=0.55)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in m.parameters() if p.requires_grad
    )


@pytest.mark.parametrize("mode", ["linear", "lora"])
def test_frozen_modes_train_every_head_kind_and_leave_the_backbone_weights(mode: str) -> None:
    tasks = (FINDINGS, LUNGS, TaskSpec("lesions", "detection", ("nodule",)))
    m = model(tasks=tasks)
    apply_mode(m, mode, LoraSettings(rank=2))
    base = {n: p.detach().clone() for n, p in m.backbone.named_parameters() if "lora_" not in n}
    objective = FinetuneObjective(m).train()
    batch = {
        "image": torch.rand(2, 1, 32, 32), "labels": torch.tensor([[1.0, 0.0], [0.0, float("nan")]]),
        "mask": torch.randint(0, 2, (2, 1, 32, 32), dtype=torch.uint8),
        "boxes": [torch.tensor([[2.0, 2.0, 20.0, 20.0]]), torch.zeros(0, 4)],
        "box_labels": [torch.tensor([0]), torch.zeros(0, dtype=torch.long)], "meta": [{}, {}],
    }  # fmt: skip
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    loss = objective(batch)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.equal(base[n], p) for n, p in m.backbone.named_parameters() if "lora_" not in n)
    for name in ("findings", "lungs", "lesions"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.heads[name].parameters()), name
