"""xrayfm: a toolkit for X-ray foundation models.

The core (``xrayfm.io``, ``xrayfm.data``) imports no training or serving extras and downloads
nothing at import time. ``import xrayfm`` registers xrayfm's models with timm (``eva_x_*``)
without importing timm itself: they are registered when timm is imported, or at once if it
already is, so ``timm.create_model("eva_x_small_patch16")`` works and the import stays instant.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from xrayfm.errors import (
    DatasetError,
    ImageReadError,
    UnknownNameError,
    UnsafeInputError,
    XrayfmError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

_MODELS_MODULE = "xrayfm.models.backbones.eva_x"  # importing it registers the models with timm


class _RegisterAfterTimm:
    """Import hook (a meta path finder and loader; ``importlib.abc`` is left out, its import costs
    more than the rest of ``import xrayfm``): once timm's own module has run, import xrayfm's model
    definitions, which register themselves with timm's registry; it then leaves ``sys.meta_path``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """timm's own spec, with this hook as its loader; None for every other module."""
        if fullname != "timm":
            return None
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if finder is not self else None
            if spec is not None and spec.loader is not None:
                self._loader, spec.loader = spec.loader, self
                return spec
        return None

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        """timm's loader creates the module."""
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        """Run timm as usual (its loader restored), then register xrayfm's models."""
        module.__spec__.loader = module.__loader__ = self._loader
        self._loader.exec_module(module)
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        importlib.import_module(_MODELS_MODULE)


if "timm" in sys.modules:
    importlib.import_module(_MODELS_MODULE)
elif not any(isinstance(finder, _RegisterAfterTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())

__all__ = [
    "DatasetError",
    "ImageReadError",
    "UnknownNameError",
    "UnsafeInputError",
    "XrayfmError",
    "__version__",
]
