"""Every model xrayfm registers with timm keeps timm's conventions, checked as timm's own tests/test_models.py
checks its models (huggingface/pytorch-image-models): pretrained cfgs that tell the truth, forward and backward at
the cfg's input size, ``torch.jit.script``, ``torch.fx`` tracing through torchvision's feature extraction with
timm's no-trace lists, ``features_only=True`` and ``forward_intermediates``.

The EVA-X models are timm ``Eva`` models: timm's test lists put ``eva_*`` in ``NON_STD_FILTERS`` (excluded from
its generic ``features_only`` hook test, because ViT-style models have no per-stage feature pyramid) and ``eva`` in
``FEAT_INTER_FILTERS`` (tested with ``feature_cls='getter'`` and ``forward_intermediates`` instead); nothing else
excludes them (not ``EXCLUDE_JIT_FILTERS`` nor ``EXCLUDE_FX_FILTERS``), so every check below applies. A fixed-size
cfg (``fixed_input_size=True``) means the cfg's input size is the one the tests use, as timm's ``_get_input_size``
does.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import timm
import torch
from timm.models import get_model_input_config, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import xrayfm  # noqa: F401  (registers the models with timm; the subprocess test shows it alone does)

NAMES = timm.list_models("eva_x_*")
#: The release's values (hustvl/EVA-X classification/utils/datasets.py build_transform(), the 'eva' branch):
#: normalisation of the grey image repeated to 3 channels; bicubic resize; test Resize(224 / (224 / 256)) +
#: CenterCrop(224) for fine-tuned classifiers. Pretrained backbones have no crop of their own (crop_pct 1).
RELEASE_MEAN, RELEASE_STD = (0.49185243,) * 3, (0.28509309,) * 3
CROP_PCT = {"mim_merged520k": 1.0, "ft_chestxray14": 224 / 256}
NUM_CLASSES = {
    "mim_merged520k": 0,
    "ft_chestxray14": 14,
}  # classification/train_files/eva_x/cxr14/*.sh: --nb_classes 14
FX_TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def _models() -> list:
    """Every registered model as registered; tiny in the default suite, the larger ones marked slow (tens of
    seconds each on 2 CPUs). B builds other layers than Ti/S (separate q/k/v projections, normed SwiGLU), so a
    3-block B also runs in the default suite: the same code paths, at a quarter of the depth."""
    cases = [pytest.param(n, {}, id=n, marks=() if "tiny" in n else pytest.mark.slow) for n in NAMES]
    return [*cases, pytest.param("eva_x_base_patch16", {"depth": 3}, id="eva_x_base_patch16-depth3")]


def _input(model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    """A random batch at the model's cfg input size (the one size a fixed-size model takes)."""
    size = model.pretrained_cfg["input_size"]
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(0))


def test_import_xrayfm_alone_registers_the_models_without_importing_timm() -> None:
    code = (
        "import sys, xrayfm\n"
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'import xrayfm imported torch/timm'\n"
        "import timm\n"
        "print(','.join(timm.list_models('eva_x_*')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [",".join(sorted(["eva_x_tiny_patch16", "eva_x_small_patch16", "eva_x_base_patch16"]))]
    assert NAMES == sorted(["eva_x_tiny_patch16", "eva_x_small_patch16", "eva_x_base_patch16"])


def test_registration_inside_a_library_that_imports_timm_first() -> None:
    """segmentation-models-pytorch imports timm half-way through its own import: registering then
    must not import xrayfm's heads, which import that half-initialised library."""
    code = (
        "import xrayfm, segmentation_models_pytorch, timm\n"
        "import xrayfm.finetune.losses, xrayfm.models.task_model\n"
        "print(len(timm.list_models('eva_x_*')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["3"]


@pytest.mark.parametrize("tagged", timm.list_pretrained("eva_x_*"))
def test_pretrained_cfg_tells_the_truth(tagged: str) -> None:
    """timm's test_model_default_cfgs(_non_std) checks, plus the values the release used, for every tag."""
    with torch.device("meta"):  # the cfg and the layer names are all this test needs
        model = timm.create_model(tagged)
    cfg, tag = model.pretrained_cfg, tagged.partition(".")[2]
    state = model.state_dict()
    assert cfg["architecture"] == tagged.partition(".")[0] and cfg["tag"] == tag
    assert cfg["num_classes"] == model.num_classes == NUM_CLASSES[tag]
    if cfg["num_classes"]:
        assert cfg["classifier"] + ".weight" in state
    else:
        assert isinstance(model.get_classifier(), torch.nn.Identity)
    first_conv = model.get_submodule(cfg["first_conv"])
    assert isinstance(first_conv, torch.nn.Conv2d) and first_conv.in_channels == cfg["input_size"][0] == 3
    assert tuple(cfg["input_size"][1:]) == tuple(model.patch_embed.img_size) == (224, 224)
    assert cfg["fixed_input_size"] is True and get_model_input_config(model)["fixed_input_size"] is True
    assert (cfg["mean"], cfg["std"]) == (RELEASE_MEAN, RELEASE_STD)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == pytest.approx(CROP_PCT[tag])
    data = timm.data.resolve_data_config(model=model)  # what timm's transforms will use
    assert data["input_size"] == cfg["input_size"] and data["crop_pct"] == pytest.approx(CROP_PCT[tag])
    assert (data["mean"], data["std"], data["interpolation"]) == (RELEASE_MEAN, RELEASE_STD, "bicubic")


@pytest.mark.parametrize("name,arch", _models())
def test_input_size_is_fixed_unless_dynamic(name: str, arch: dict) -> None:
    """Without dynamic_img_size a model takes only its cfg size; with it, any multiple of the patch size."""
    fixed = timm.create_model(name, **arch).eval()
    with torch.no_grad(), pytest.raises(AssertionError, match="Input"):
        fixed(torch.randn(1, 3, 160, 128))
    dynamic = timm.create_model(name, dynamic_img_size=True, **arch).eval()
    assert get_model_input_config(dynamic)["fixed_input_size"] is False
    with torch.no_grad():
        assert dynamic.forward_features(torch.randn(1, 3, 160, 128)).shape == (1, 1 + 10 * 8, dynamic.num_features)


@pytest.mark.parametrize("name,arch", _models())
def test_forward_and_backward_at_cfg_size(name: str, arch: dict) -> None:
    """timm's test_model_forward / test_model_backward / test_model_default_cfgs_non_std."""
    model = timm.create_model(name, num_classes=42, **arch).train()
    out = model(_input(model, batch=2))
    assert out.shape == (2, 42) and not out.isnan().any()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    model.eval()
    x = _input(model)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.shape == (1, 1 + 14 * 14, model.num_features)
        assert model.forward_head(tokens, pre_logits=True).shape == (1, model.head_hidden_size)
        logits = model.forward_head(tokens)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-5)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model.forward_head(tokens).shape == (1, model.head_hidden_size)


@pytest.mark.parametrize("name,arch", _models())
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript(name: str, arch: dict) -> None:
    """timm's test_model_forward_torchscript, compared with the eager model's output."""
    with timm.layers.set_scriptable(True):
        model = timm.create_model(name, **arch).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


@pytest.mark.parametrize("name,arch", _models())
def test_fx_trace_forward_and_backward(name: str, arch: dict) -> None:
    """timm's test_model_forward_fx / test_model_backward_fx (torchvision feature extraction, timm's no-trace lists)."""
    model = timm.create_model(name, num_classes=42, **arch).eval()
    x = _input(model, batch=2)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=FX_TRACER)
    assert any(n.startswith(f"blocks.{len(model.blocks) - 1}.") for n in eval_nodes)
    traced = create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=FX_TRACER
    )
    with torch.no_grad():
        (out,) = traced(x).values()
        assert torch.equal(out, model(x))
    traced.train()
    (out,) = traced(x).values()
    out.mean().backward()
    assert all(p.grad is not None for p in traced.parameters())
    assert sum(p.numel() for p in traced.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,arch", _models())
def test_features_only_and_forward_intermediates(name: str, arch: dict) -> None:
    """timm's test_model_forward_intermediates_features and test_model_forward_intermediates."""
    features = timm.create_model(name, features_only=True, **arch).eval()
    channels, reductions = features.feature_info.channels(), features.feature_info.reduction()
    assert len(channels) == 3  # timm's Eva default: out_indices=3, the last three blocks
    x = _input(features)
    with torch.no_grad():
        maps = features(x)
    assert len(maps) == len(channels)
    for c, r, m in zip(channels, reductions, maps):
        assert m.shape[:2] == (1, c) and not m.isnan().any()
        assert m.shape[2] <= math.ceil(x.shape[2] / r) + 1 and m.shape[3] <= math.ceil(x.shape[3] / r) + 1

    model = timm.create_model(name, **arch).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(intermediates) == len(info.channels()) == len(model.blocks)
        assert all(m.shape == (1, c, 14, 14) for c, m in zip(info.channels(), intermediates))
        torch.testing.assert_close(final, model.forward_features(x))
