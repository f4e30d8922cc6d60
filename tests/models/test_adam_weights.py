"""Adam's released ResNet-50 layouts (MoCo v2 files, see ../shared/reference/adam-eve.md section 5) load into
xrayfm's ResNet-50, xrayfm's segmentation model and a segmentation-models-pytorch U-Net encoder.

Each layout is written from random weights: a torchvision ResNet-50 with the 2048-2048-128 MLP head
(``fc.0`` / ``fc.2``) as query encoder, another as key encoder, a queue and an SGD state after one step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torchvision
from torch import nn

from xrayfm import XrayfmError
from xrayfm.models import create_model, read_state_dict
from xrayfm.models.adam_weights import backbone_state, load_backbone_weights
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec


def moco_encoder(seed: int) -> nn.Module:
    """torchvision ResNet-50 with MoCo v2's MLP head and random BN statistics (so a copy is told apart)."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet50(num_classes=128)
    net.fc = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU(), net.fc)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(seed + 7)
    return net


@pytest.fixture(scope="module")
def encoder_q() -> dict[str, torch.Tensor]:
    return moco_encoder(0).state_dict()


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory, encoder_q: dict[str, torch.Tensor]) -> dict[str, Path]:
    """One file per published layout."""
    folder = tmp_path_factory.mktemp("adam")
    key_encoder = moco_encoder(1)
    query = moco_encoder(0)
    optimizer = torch.optim.SGD(query.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    sum(p.sum() for p in query.parameters()).backward()
    optimizer.step()
    state = {f"module.encoder_q.{k}": v for k, v in encoder_q.items()}
    state |= {f"module.encoder_k.{k}": v for k, v in key_encoder.state_dict().items()}
    state |= {"module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    files = {
        "checkpoint": {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": optimizer.state_dict(),
                       "best_loss": 6.25},
        "encoder_q": encoder_q,
        "encoder": {f"encoder.{k}": v for k, v in encoder_q.items()},
        "backbone": {"state_dict": {f"backbone.{k}": v for k, v in encoder_q.items()}},
    }  # fmt: skip
    paths = {}
    for name, obj in files.items():
        paths[name] = folder / f"{name}.pth"
        torch.save(obj, paths[name])
    return paths


def assert_backbone_equal(model: nn.Module, encoder_q: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``model`` (parameters and BN buffers) is the file's backbone tensor of that name."""
    loaded = model.state_dict()
    backbone = {k: v for k, v in encoder_q.items() if not k.startswith("fc.")}
    assert loaded.keys() == backbone.keys()
    for k, v in backbone.items():
        assert torch.equal(loaded[k], v), k


def xrayfm_resnet(path: Path) -> nn.Module:
    return create_model("resnet50", pretrained=path, num_classes=0)


def unet_encoder(path: Path) -> nn.Module:
    return load_backbone_weights(smp.Unet("resnet50", encoder_weights=None, classes=2).encoder, path)


def xrayfm_segmentation(path: Path) -> nn.Module:
    backbone = create_model("resnet50", pretrained=path, num_classes=0)
    model = XrayModel(backbone, [TaskSpec("lungs", "segmentation", ("lungs",))])
    return model.backbone


TARGETS: dict[str, Callable[[Path], nn.Module]] = {
    "xrayfm resnet50": xrayfm_resnet,
    "smp unet encoder": unet_encoder,
    "xrayfm segmentation": xrayfm_segmentation,
}


#: xrayfm's segmentation model takes its backbone from create_model like the plain ResNet: one layout suffices.
CASES = [(t, lay) for t in ("xrayfm resnet50", "smp unet encoder") for lay in ("checkpoint", "encoder_q", "encoder",
         "backbone")] + [("xrayfm segmentation", "checkpoint")]  # fmt: skip


@pytest.mark.parametrize("target, layout", CASES)
def test_every_layout_loads_every_backbone_tensor(
    layouts: dict[str, Path], encoder_q: dict[str, torch.Tensor], layout: str, target: str
) -> None:
    assert_backbone_equal(TARGETS[target](layouts[layout]), encoder_q)


def test_full_checkpoint_reads_weights_only_with_its_optimizer(layouts: dict[str, Path]) -> None:
    """The resumable file pickles an SGD state (ints, floats, bools, None, tensors): no unsafe unpickling."""
    obj = torch.load(layouts["checkpoint"], weights_only=True)
    assert obj["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert read_state_dict(layouts["checkpoint"]).keys() == obj["state_dict"].keys()


def test_classifier_model_gets_a_new_head_from_the_projection_file(
    layouts: dict[str, Path], encoder_q: dict[str, torch.Tensor]
) -> None:
    model = create_model("resnet50", pretrained=layouts["checkpoint"], num_classes=3)
    assert model.fc.weight.shape == (3, 2048)
    torch.testing.assert_close(model.layer4[2].conv3.weight, encoder_q["layer4.2.conv3.weight"])


def test_prefixes_are_stripped_at_the_start_of_names_only() -> None:
    """The reference README's str.replace would also turn ``layer1.encoder.w`` into ``layer1.w``."""
    t = torch.zeros(1)
    state = {"module.encoder_q.layer1.encoder.w": t, "module.encoder_q.backbone.x": t, "module.encoder_k.layer1.w": t,
             "module.queue": t, "module.encoder_q.fc.0.weight": t, "module.encoder_q.fc.2.bias": t}  # fmt: skip
    out = backbone_state(state, modules={"layer1", "backbone", "fc"}, head_keys={"fc.weight", "fc.bias"})
    assert sorted(out) == ["backbone.x", "layer1.encoder.w"]


def test_a_module_named_like_a_prefix_is_not_unwrapped() -> None:
    t = torch.zeros(1)
    state = {"encoder.layer.w": t, "decoder.w": t}
    assert backbone_state(state, modules={"encoder", "decoder"}).keys() == state.keys()
    assert backbone_state(state, modules={"layer"}).keys() == {"layer.w"}


def test_a_plain_classifier_is_kept_for_the_caller_but_dropped_for_an_encoder_without_one() -> None:
    t = torch.zeros(1)
    state = {"conv1.weight": t, "fc.weight": t, "fc.bias": t}
    assert backbone_state(state, modules={"conv1", "fc"}, head_keys=()).keys() == state.keys()
    assert backbone_state(state, modules={"conv1"}).keys() == {"conv1.weight"}


@pytest.mark.parametrize("target", ["xrayfm resnet50", "smp unet encoder"])
def test_a_file_missing_a_layer_is_a_clear_error(
    tmp_path: Path, encoder_q: dict[str, torch.Tensor], target: str
) -> None:
    path = tmp_path / "no_layer4.pth"
    torch.save({f"module.encoder_q.{k}": v for k, v in encoder_q.items() if not k.startswith("layer4.")}, path)
    with pytest.raises(XrayfmError, match=r"no_layer4\.pth: .*missing.*layer4\.0\.conv1\.weight") as info:
        TARGETS[target](path)
    assert "\n" not in str(info.value)


def test_a_file_for_another_architecture_names_the_shapes(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save({f"encoder.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}, path)
    with pytest.raises(XrayfmError, match=r"resnet18\.pth: does not fit ResNetEncoder: .*missing"):
        unet_encoder(path)
