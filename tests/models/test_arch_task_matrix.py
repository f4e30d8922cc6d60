"""Every architecture family x every task kind either works or fails with one line.

Constructor arguments come from :func:`xrayfm.models.backbone_kwargs` (the constructor's own
signature), never from name prefixes, so BEiT, a patch-8 ViT and Swin get the input size the
way a user's ``--arch`` would. Depth is cut to 4 blocks where the family allows it, to keep the
suite fast; the classes and code paths are the real ones.
"""

from __future__ import annotations

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models import backbone_kwargs, create_model, resolve_preprocess
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

SIZE = 64
#: (architecture, constructor overrides that only shrink it)
FAMILIES = [
    ("eva_x_tiny_patch16", {"depth": 4}),
    ("vit_tiny_patch16_224", {"depth": 4}),
    ("vit_small_patch8_224", {"depth": 4}),
    ("beit_base_patch16_224", {"depth": 4, "embed_dim": 192, "num_heads": 3}),
    ("swin_tiny_patch4_window7_224", {"depths": (1, 1, 1, 1)}),
    ("convnext_atto", {}),
    ("resnet18", {}),
]
TASKS = {
    "classification": TaskSpec("findings", "multilabel", ("a", "b", "c")),
    "segmentation": TaskSpec("lungs", "segmentation", ("left", "right")),
    "detection": TaskSpec("lesions", "detection", ("nodule",)),
}


#: Detection on these runs in the slow suite only (Faster R-CNN costs seconds per family on 2 cores);
#: the default suite keeps one plain ViT, the patch-8 pyramid and one CNN.
SLOW_DETECTION = {"vit_tiny_patch16_224", "beit_base_patch16_224", "swin_tiny_patch4_window7_224", "convnext_atto"}


def build(arch: str, overrides: dict, task: TaskSpec, size: int = SIZE) -> XrayModel:
    """What fine-tuning does: constructor arguments from the signature, the record at ``size``."""
    kwargs = {**backbone_kwargs(arch, img_size=size, drop_path=0.1), **overrides}
    backbone = create_model(arch, num_classes=0, **kwargs)
    return XrayModel(backbone, [task], preprocess=resolve_preprocess(backbone, img_size=size))


CASES = [
    pytest.param(arch, overrides, kind, id=f"{arch}-{kind}",
                 marks=[pytest.mark.slow] if kind == "detection" and arch in SLOW_DETECTION else [])
    for arch, overrides in FAMILIES
    for kind in TASKS
]  # fmt: skip


@pytest.mark.parametrize(("arch", "overrides", "kind"), CASES)
def test_family_and_task_kind_work(arch: str, overrides: dict, kind: str) -> None:
    torch.manual_seed(0)
    task = TASKS[kind]
    model = build(arch, overrides, task)
    assert model.preprocess.input_size == SIZE
    x = torch.rand(2, 1, SIZE, SIZE)
    if kind == "detection":
        model.train()
        boxes = [{"boxes": torch.tensor([[8.0, 8.0, 30.0, 28.0]]), "labels": torch.tensor([0])}] * 2
        losses = model(x, targets={task.name: boxes})[task.name]
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        return
    model.eval()
    with torch.no_grad():
        out = model(x)[task.name]
    expected = (2, 3) if kind == "classification" else (2, 2, SIZE, SIZE)
    assert tuple(out.shape) == expected and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["segmentation", "detection"])
def test_patch_14_vit_dense_heads_get_one_line_error(kind: str) -> None:
    with pytest.raises(XrayfmError, match="power of two.*got 14") as info:
        build("vit_small_patch14_dinov2", {"depth": 4}, TASKS[kind], size=56)
    assert "\n" not in str(info.value)


def test_patch_14_vit_still_classifies() -> None:
    model = build("vit_small_patch14_dinov2", {"depth": 4}, TASKS["classification"], size=56).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 56, 56))["findings"].shape == (1, 3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: create_model("vit_small_patch8_224", img_size=60), "not a multiple of its patch size"),
        (lambda: create_model("beit_base_patch16_224x"), "unknown model .*Did you mean beit_base_patch16_224"),
        (lambda: create_model("resnet18.not_a_tag"), "has no pretrained tag 'not_a_tag'; its tags: .*a1_in1k"),
        (lambda: create_model("resnet18", img_sz=64), "cannot build 'resnet18'"),
        (lambda: backbone_kwargs("no_such_model"), "unknown model"),
    ],
    ids=["patch-multiple", "unknown-arch", "unknown-tag", "bad-kwarg", "kwargs-of-unknown"],
)
def test_user_mistakes_are_one_line_xrayfm_errors(call, message: str) -> None:
    with pytest.raises(XrayfmError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_tagged_timm_name_builds_with_its_own_preprocessing() -> None:
    model = create_model("resnet18.a1_in1k", num_classes=0)
    assert model.pretrained_cfg["tag"] == "a1_in1k"
    assert model.pretrained_cfg["crop_pct"] == pytest.approx(0.95)
    assert XrayModel(model, [TASKS["classification"]]).preprocess.interpolation == "bicubic"
