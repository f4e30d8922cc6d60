"""Exported backbones: ``backbone.safetensors`` + ``backbone.json`` (architecture, preprocessing
record, provenance), written atomically, loadable with ``create_model(name, pretrained=folder)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_path, atomic_write_json
from xrayfm.models.preprocess import Preprocess

WEIGHTS, SIDECAR = "backbone.safetensors", "backbone.json"


def export_backbone(
    model: nn.Module, out_dir: str | Path, *, arch: str, preprocess: Preprocess, info: dict[str, Any]
) -> Path:
    """Write ``model``'s weights and a JSON sidecar into ``out_dir`` (each via temp + rename).

    Args:
        model: The backbone (timm model).
        out_dir: Destination folder.
        arch: Registry name the weights belong to (checked when loading).
        preprocess: The input the weights expect (size, interpolation, mean / std...).
        info: JSON-serialisable facts: ``model_kwargs``, ``provenance``...
    """
    sidecar = {"arch": arch, "preprocess": preprocess.to_dict(), **info}
    return write_weights(model.state_dict(), out_dir, WEIGHTS, SIDECAR, sidecar)


def write_weights(
    state: dict[str, Any], out_dir: str | Path, weights_name: str, sidecar_name: str, sidecar: dict[str, Any]
) -> Path:
    """Write a state dict as safetensors and its JSON sidecar into ``out_dir``, each atomically.

    The weights go first, so a sidecar on disk always describes complete weights.
    """
    out = Path(out_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(out / weights_name) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(out / sidecar_name, sidecar)
    return out


def read_json_sidecar(path: Path, fmt: str, what: str) -> dict[str, Any]:
    """Read a JSON sidecar whose ``format`` must be ``fmt``.

    Raises:
        XrayfmError: Invalid JSON, or another format (``what`` names the expected kind of file).
    """
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise XrayfmError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise XrayfmError(f"{path}: not {what} (format {found!r})")
    return meta


def read_export(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Locate an exported backbone in ``folder`` (or ``folder/export``) and read its sidecar.

    Raises:
        XrayfmError: No export found.
    """
    folder = Path(folder)
    for cand in (folder, folder / "export"):
        if (cand / WEIGHTS).is_file() and (cand / SIDECAR).is_file():
            try:
                meta = json.loads((cand / SIDECAR).read_text())
            except json.JSONDecodeError as exc:
                raise XrayfmError(f"{cand / SIDECAR}: not valid JSON ({exc})") from None
            if not isinstance(meta, dict) or "arch" not in meta:
                raise XrayfmError(f"{cand / SIDECAR}: not an xrayfm backbone export (no 'arch')")
            return cand / WEIGHTS, meta
    raise XrayfmError(f"{folder}: no exported backbone ({WEIGHTS} + {SIDECAR}) here or in {folder / 'export'}")
