"""``create_model(name, pretrained=...)``: xrayfm backbones, also usable through timm."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import timm
from timm.models.eva import Eva, checkpoint_filter_fn
from torch import nn

from xrayfm.errors import UnknownNameError, XrayfmError
from xrayfm.models.backbones import eva_x
from xrayfm.models.checkpoints import load_weights, read_state_dict
from xrayfm.models.export import read_export

XRAYFM_MODELS: tuple[str, ...] = tuple(eva_x.ARCHS)


def list_models() -> list[str]:
    """Names of the backbones xrayfm defines (any timm model name is accepted too)."""
    return list(XRAYFM_MODELS)


def create_model(
    name: str, pretrained: str | Path | None = None, *, allow_unsafe: bool = False, **kwargs: Any
) -> nn.Module:
    """Create a backbone by name, optionally loading weights from a local file.

    Args:
        name: An xrayfm model (``eva_x_small_patch16``...) or any timm model name.
        pretrained: Weight file (.safetensors / .pt, EVA-X release layout accepted), a folder
            holding an xrayfm export (e.g. a finished pretraining run), or None.
        allow_unsafe: Permit unpickling a trusted file that is not weights-only.
        **kwargs: Passed to the model constructor (``num_classes``, ``img_size``, ``drop_path_rate``...).

    Raises:
        UnknownNameError: Neither xrayfm nor timm knows ``name``.
        XrayfmError: The weights cannot be read or do not fit the architecture.
    """
    if name not in XRAYFM_MODELS and name not in timm.list_models():
        close = difflib.get_close_matches(name, [*XRAYFM_MODELS, *timm.list_models()], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown model {name!r}.{hint} xrayfm models: {', '.join(XRAYFM_MODELS)}")
    if pretrained is not None and Path(pretrained).is_dir():
        pretrained, sidecar = read_export(pretrained)
        if sidecar.get("arch") != name:
            raise XrayfmError(f"{pretrained}: exported for {sidecar.get('arch')!r}, not {name!r}")
        kwargs = {**sidecar.get("model_kwargs", {}), **kwargs}
    model = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained is not None:
        state = read_state_dict(pretrained, allow_unsafe=allow_unsafe)
        if isinstance(model, Eva):
            state = checkpoint_filter_fn(state, model)
        load_weights(model, state, source=str(pretrained))
    return model
