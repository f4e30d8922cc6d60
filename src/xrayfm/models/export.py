"""Exported backbones: ``backbone.safetensors`` + ``backbone.json`` (architecture, normalisation,
provenance), written atomically, loadable with ``create_model(name, pretrained=folder)``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from xrayfm.errors import XrayfmError

WEIGHTS, SIDECAR = "backbone.safetensors", "backbone.json"


def export_backbone(model: nn.Module, out_dir: str | Path, *, arch: str, info: dict[str, Any]) -> Path:
    """Write ``model``'s weights and a JSON sidecar into ``out_dir`` (each via temp + rename).

    Args:
        model: The backbone (timm model).
        out_dir: Destination folder.
        arch: Registry name the weights belong to (checked when loading).
        info: JSON-serialisable facts: ``model_kwargs``, ``normalization``, ``provenance``...
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, out / WEIGHTS)
    tmp = out / (SIDECAR + ".tmp")
    tmp.write_text(json.dumps({"arch": arch, **info}, indent=2, default=str))
    os.replace(tmp, out / SIDECAR)
    return out


def read_export(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Locate an exported backbone in ``folder`` (or ``folder/export``) and read its sidecar.

    Raises:
        XrayfmError: No export found.
    """
    folder = Path(folder)
    for cand in (folder, folder / "export"):
        if (cand / WEIGHTS).is_file() and (cand / SIDECAR).is_file():
            return cand / WEIGHTS, json.loads((cand / SIDECAR).read_text())
    raise XrayfmError(f"{folder}: no exported backbone ({WEIGHTS} + {SIDECAR}) here or in {folder / 'export'}")
