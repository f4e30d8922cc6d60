"""Reading weight files safely (what :func:`xrayfm.models.create_model` hands to timm's builder).

Files are read without executing code: safetensors as is, PyTorch pickles with
``torch.load(weights_only=True)``. A pickle that needs arbitrary classes is refused with a clear
error unless the caller says the file is trusted. Published EVA / EVA-X layouts (``mlp.w12``,
``mlp.w3``, ``attn.inner_attn_ln``, ``mlp.ffn_ln``, MIM ``mask_token`` / ``lm_head``) are converted
by timm's EVA checkpoint filter inside the builder; the registry checks that every backbone key
is present after conversion.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from xrayfm.errors import XrayfmError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model_ema", "model", "module", "state_dict")


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
            f"({detail}). Load it only if you trust its source, with create_model(..., allow_unsafe=True)"
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
