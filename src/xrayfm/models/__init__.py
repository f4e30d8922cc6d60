"""Models: backbones by name (registered with timm too), safe weight loading, and the
preprocessing record that travels with every weight file.

The names below load on first use (PEP 562): ``import xrayfm`` registers the backbones with timm
by importing :mod:`xrayfm.models.backbones.eva_x` right after timm itself, possibly while a
library that imports timm (segmentation-models-pytorch) is half-initialised; importing this
package must then not pull in the heads that import that library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xrayfm.models.checkpoints import read_state_dict
    from xrayfm.models.factory import create_model_and_transforms
    from xrayfm.models.preprocess import Preprocess, resolve_preprocess
    from xrayfm.models.registry import backbone_kwargs, create_model, list_models

_HOMES = {
    "Preprocess": "preprocess",
    "backbone_kwargs": "registry",
    "create_model": "registry",
    "create_model_and_transforms": "factory",
    "list_models": "registry",
    "read_state_dict": "checkpoints",
    "resolve_preprocess": "preprocess",
}

__all__ = [
    "Preprocess",
    "backbone_kwargs",
    "create_model",
    "create_model_and_transforms",
    "list_models",
    "read_state_dict",
    "resolve_preprocess",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
