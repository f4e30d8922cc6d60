"""Reading weight files safely (what :func:`xrayfm.models.create_model` hands to timm's builder).

Files are read without executing code: safetensors as is, PyTorch pickles with
``torch.load(weights_only=True)``, whose unpickler also accepts the classes in
:data:`SAFE_CLASSES` during that one load (training checkpoints such as the EVA-X fine-tuned
files pickle their ``argparse.Namespace`` of arguments next to the weights). A pickle that needs
any other class is refused with a clear error unless the caller says the file is trusted.
Published EVA / EVA-X layouts (``mlp.w12``, ``mlp.w3``, ``attn.inner_attn_ln``, ``mlp.ffn_ln``;
MIM-only ``mask_token`` / ``lm_head`` present or not) are converted by the EVA-X checkpoint filter
inside the builder; the registry checks that every backbone key is present after conversion.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from xrayfm.errors import XrayfmError

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("model_ema", "model", "module", "state_dict")
#: Classes a weights-only load may rebuild: plain records of values, no code runs to build them.
SAFE_CLASSES: tuple[type, ...] = (argparse.Namespace,)


def read_state_dict(path: str | Path, *, allow_unsafe: bool = False) -> dict[str, torch.Tensor]:
    """Read a weight file into a flat ``{name: tensor}`` dict.

    Args:
        path: ``.safetensors``, or a PyTorch file (``.pt``/``.pth``/``.bin``/``.ckpt``), possibly
            a training checkpoint whose weights sit under ``model_ema`` / ``model`` / ``module``
            / ``state_dict`` (the first present wins, as in the EVA-X release), next to other
            entries (``epoch``, an ``args`` namespace...) that are read and dropped. Tensors keep
            their dtype (the EVA-X pretrained files are fp16); loading casts them to the model's.
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
        with torch.serialization.safe_globals(list(SAFE_CLASSES)):
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
