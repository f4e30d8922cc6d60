"""The distinctive parts of EVA-X MIM: masking, masked-only loss, frozen teacher, pixel target."""

from __future__ import annotations

import pytest
import torch

from xrayfm import XrayfmError
from xrayfm.models import create_model
from xrayfm.pretrain.mim import (
    MaskedFeatureModeling,
    masked_cosine_loss,
    patch_pixels,
    random_patch_mask,
)


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=64)
    teacher = create_model("eva_x_small_patch16", num_classes=0, img_size=64)
    return student, teacher


def test_mask_has_exact_ratio_and_is_seeded() -> None:
    g = torch.Generator().manual_seed(3)
    m = random_patch_mask(4, 196, 0.3, generator=g)
    assert m.shape == (4, 196) and (m.sum(1) == 59).all()
    assert torch.equal(m, random_patch_mask(4, 196, 0.3, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(m[0], m[1])
    with pytest.raises(XrayfmError, match="ratio"):
        random_patch_mask(1, 10, 1.0)


def test_cosine_loss_hand_computed() -> None:
    pred = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]]])
    mask = torch.tensor([[True, True, False]])
    # token 0: cos 0 -> 1; token 1: cos 1 -> 0; token 2 is unmasked and must not count
    assert masked_cosine_loss(pred, target, mask).item() == pytest.approx(0.5)


def test_only_masked_tokens_reach_the_loss(models) -> None:
    student, teacher = models
    mim = MaskedFeatureModeling(student, teacher)
    images = torch.randn(2, 3, 64, 64)
    mask = random_patch_mask(2, 16, 0.3, generator=torch.Generator().manual_seed(0))
    tokens = mim.student_tokens(images, mask).detach().requires_grad_(True)
    loss = masked_cosine_loss(mim.head(tokens), mim.targets(images, (4, 4)), mask)
    loss.backward()
    per_token = tokens.grad.abs().sum(-1)
    assert (per_token[~mask] == 0).all() and (per_token[mask] > 0).all()


def test_mask_token_replaces_masked_patches(models) -> None:
    student, teacher = models
    mim = MaskedFeatureModeling(student, teacher).eval()
    images = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, :5] = True
    altered = images.clone()
    altered[..., :16, :16] += 3.0  # changes patch 0 only, which is masked
    with torch.no_grad():
        torch.testing.assert_close(mim.student_tokens(images, mask), mim.student_tokens(altered, mask))


def test_teacher_frozen_and_in_eval_mode(models) -> None:
    student, teacher = models
    mim = MaskedFeatureModeling(student, teacher).train()
    assert not mim.teacher.training and mim.student.training
    assert not any(p.requires_grad for p in mim.teacher.parameters())
    loss = mim(torch.randn(2, 3, 64, 64))
    loss.backward()
    assert all(p.grad is None for p in mim.teacher.parameters())
    assert mim.mask_token.grad is not None and mim.head.weight.grad is not None
    assert mim.head.out_features == teacher.num_features


def test_pixel_target_needs_no_teacher(models) -> None:
    student, _ = models
    mim = MaskedFeatureModeling(student, target="pixel")
    assert mim.head.out_features == 16 * 16 * 3
    loss = mim(torch.rand(2, 3, 64, 64))
    assert loss.item() > 0
    px = patch_pixels(torch.rand(2, 3, 64, 64), 16)
    assert px.shape == (2, 16, 768)
    torch.testing.assert_close(px.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    with pytest.raises(XrayfmError, match="needs a teacher"):
        MaskedFeatureModeling(student)


def test_loss_falls_when_optimised(models) -> None:
    student, teacher = models
    torch.manual_seed(0)
    mim = MaskedFeatureModeling(student, teacher)
    opt = torch.optim.AdamW([p for p in mim.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.98))
    images = torch.randn(4, 3, 64, 64)
    mask = random_patch_mask(4, 16, 0.3, generator=torch.Generator().manual_seed(1))
    first = mim(images, mask).item()
    for _ in range(15):
        opt.zero_grad()
        loss = mim(images, mask)
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.1


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=64)
    objective = MaskedFeatureModeling(student, None, target="pixel")
    x, mask = torch.randn(2, 3, 64, 64), torch.rand(2, 16) < 0.3
    plain = objective(x, mask)
    plain.backward()
    grad = student.blocks[0].attn.qkv.weight.grad.clone()
    student.zero_grad()
    student.set_grad_checkpointing(True)
    checkpointed = objective(x, mask)
    checkpointed.backward()
    assert torch.equal(plain.detach(), checkpointed.detach())
    assert torch.allclose(grad, student.blocks[0].attn.qkv.weight.grad)


def test_teacher_with_another_patch_size_loaded_from_a_timm_file(tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch14_dinov2", img_size=112, num_classes=0)  # 8x8 patch grid
    save_file(source.state_dict(), str(tmp_path / "dinov2_s14.safetensors"))
    teacher = create_model(
        "vit_small_patch14_dinov2", pretrained=tmp_path / "dinov2_s14.safetensors", img_size=112, num_classes=0
    )
    student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=112)  # 7x7
    objective = MaskedFeatureModeling(student, teacher).train()
    x = torch.randn(2, 3, 112, 112)
    target = objective.targets(x, (7, 7))
    assert target.shape == (2, 49, 384)  # teacher's 8x8 tokens resampled onto the student's grid
    loss = objective(x)
    loss.backward()
    assert torch.isfinite(loss) and not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert student.blocks[0].attn.qkv.weight.grad is not None
