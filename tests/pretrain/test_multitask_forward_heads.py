"""MultiTaskModel.forward_heads: several heads on one backbone pass, each as the per-unit forward runs it."""

from __future__ import annotations

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.tasks import TaskSpec

TINY_DETR = {
    "d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
    "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_queries": 6,
}  # fmt: skip
TASKS = {
    "a": [TaskSpec("f", "multilabel", ("x", "y")), TaskSpec("s", "segmentation", ("lung",))],
    "b": [TaskSpec("c", "multiclass", ("n", "p", "q")), TaskSpec("s", "segmentation", ("heart", "lung"))],
    "c": [TaskSpec("d", "detection", ("nodule",))],
    "d": [TaskSpec("d", "detection", ("ptx", "mass"))],
}


@pytest.fixture(scope="module")
def model() -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(create_model("resnet18", num_classes=0), TASKS, detr=TINY_DETR)


def _passes(module: torch.nn.Module) -> list[int]:
    """A counter of the module's forward calls (the list's length)."""
    calls: list[int] = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_every_head_from_one_pass_of_each_shared_module_equals_each_unit_alone(model: MultiTaskModel) -> None:
    model.eval()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    stem, decoder, encoder = _passes(model.backbone.conv1), _passes(model.seg_decoder), _passes(model.loc_encoder)
    with torch.no_grad():
        together = model.forward_heads(x, list(model.tasks))
        assert (len(stem), len(decoder), len(encoder)) == (1, 1, 1)
        alone = {unit: model(x, unit).prediction for unit in model.tasks}
    assert list(together) == list(model.tasks)
    for unit, kind in ((u, s.kind) for u, s in model.tasks.items()):
        if kind == "detection":
            for a, b in zip(together[unit], alone[unit]):
                assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in ("boxes", "scores"))
        else:
            assert torch.allclose(together[unit], alone[unit], atol=1e-5)
    assert together["b/s"].shape == (2, 2, 64, 64) and together["b/c"].shape == (2, 3)


def test_classification_heads_alone_skip_the_dense_parts_and_targets_go_to_their_unit(model: MultiTaskModel) -> None:
    decoder, encoder = _passes(model.seg_decoder), _passes(model.loc_encoder)
    model.eval()
    with torch.no_grad():
        out = model.forward_heads(torch.rand(2, 1, 64, 64), ["a/f", "b/c"])
    assert set(out) == {"a/f", "b/c"} and (len(decoder), len(encoder)) == (0, 0)
    model.train()
    targets = {"d/d": [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2}
    losses = model.forward_heads(torch.rand(2, 1, 64, 64), ["c/d", "d/d"], targets)
    assert isinstance(losses["d/d"], dict) and all(v.requires_grad for v in losses["d/d"].values())
    assert isinstance(losses["c/d"], list)  # no targets: boxes per image
    with pytest.raises(XrayfmError, match="a/f"):
        model.forward_heads(torch.rand(1, 1, 64, 64), ["a/nope"])
