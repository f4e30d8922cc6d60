"""Models: backbones by name (registered with timm too), safe weight loading, and the
preprocessing record that travels with every weight file."""

from xrayfm.models.checkpoints import read_state_dict
from xrayfm.models.factory import create_model_and_transforms
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.models.registry import backbone_kwargs, create_model, list_models

__all__ = [
    "Preprocess",
    "backbone_kwargs",
    "create_model",
    "create_model_and_transforms",
    "list_models",
    "read_state_dict",
    "resolve_preprocess",
]
