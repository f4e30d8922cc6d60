"""Models: backbones by name (registered with timm too) and safe weight loading."""

from xrayfm.models.checkpoints import load_weights, read_state_dict
from xrayfm.models.registry import create_model, list_models

__all__ = ["create_model", "list_models", "load_weights", "read_state_dict"]
