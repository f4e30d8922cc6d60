"""Reading weight files safely and loading them into xrayfm/timm models.

Files are read without executing code: safetensors as is, PyTorch pickles with
``torch.load(weights_only=True)``. A pickle that needs arbitrary classes is refused with a clear
error unless the caller says the file is trusted. Published EVA / EVA-X layouts (``mlp.w12``,
``mlp.w3``, ``attn.inner_attn_ln``, ``mlp.ffn_ln``, MIM ``mask_token`` / ``lm_head``) are converted
by timm's EVA checkpoint filter, and every backbone key must be present after conversion.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xrayfm.errors import XrayfmError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model_ema", "model", "module", "state_dict")
HEAD_PREFIXES = ("head.",)


def read_state_dict(path: str | Path, *, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict.

    Args:
        path: ``.safetensors``, or a PyTorch file (``.pt``/``.pth``/``.bin``/``.ckpt``), possibly
            a training checkpoint whose weights sit under ``model_ema`` / ``model`` / ``module``
            / ``state_dict`` (the first present wins, as in the EVA-X release).
        allow_unsafe: Permit full unpickling for files that need it. Only for trusted files.

    Raises:
        XrayfmError: Missing or unreadable file, a pickle needing unsafe loading, or no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise XrayfmError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise XrayfmError(f"{path}: not a valid safetensors file ({exc})") from None
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise XrayfmError(f"{path}: not a readable PyTorch weight file (corrupt or another format)") from None
        detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
        raise XrayfmError(
            f"{path}: the file needs unsafe unpickling: it stores Python objects, not only tensors "
            f"({detail}). Load it only if you trust its source, with allow_unsafe=True"
        ) from None
    except Exception as exc:
        raise XrayfmError(f"{path}: not a readable PyTorch weight file ({type(exc).__name__}: {exc})") from None
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not tensors:
        raise XrayfmError(f"{path}: holds no tensors under {WRAPPER_KEYS} or at the top level")
    return tensors


def load_weights(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "weights"
) -> dict[str, list]:
    """Load converted weights; every non-head parameter of ``model`` must be provided.

    A classifier head of another shape (e.g. a fine-tuned 14-class head into a 5-class model)
    is skipped and reported rather than failing.

    Returns:
        ``{"skipped_head": [...], "missing_head": [...], "unused": [...]}``.

    Raises:
        XrayfmError: Backbone keys missing, or shapes that do not match (another architecture).
    """
    own = model.state_dict()
    sd = dict(state_dict)
    skipped = [k for k in sd if k.startswith(HEAD_PREFIXES) and k in own and own[k].shape != sd[k].shape]
    for k in skipped:
        del sd[k]
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and own[k].shape != v.shape
    ]
    if bad:
        raise XrayfmError(f"{source}: shapes do not match the model (another architecture?): {bad[:5]}")
    missing, unused = model.load_state_dict(sd, strict=False)
    missing_backbone = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
    if missing_backbone:
        raise XrayfmError(
            f"{source}: {len(missing_backbone)} backbone weights missing (first: {missing_backbone[:5]}); "
            "is this checkpoint for another architecture?"
        )
    if unused:
        log.info("%s: %d keys not used by the model: %s", source, len(unused), unused[:10])
    return {"skipped_head": skipped, "missing_head": list(missing), "unused": list(unused)}
