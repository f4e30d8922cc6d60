"""Fine-tuned models on disk: ``model.safetensors`` + ``model.json``.

The sidecar records everything needed to rebuild the model without the training code's
arguments: architecture and its keyword arguments, task specs (class order), the preprocessing
record (input size, interpolation, crop, mean / std), head settings, and provenance (backbone
weights, data, mode, metrics). LoRA adapters are merged into the backbone before saving, so a
saved model is a plain backbone + heads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from xrayfm.errors import XrayfmError
from xrayfm.models.export import read_json_sidecar, write_weights
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.registry import create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

WEIGHTS, SIDECAR = "model.safetensors", "model.json"
FORMAT = "xrayfm-task-model-1"


def save_task_model(
    model: XrayModel, out_dir: str | Path, *, arch: str, model_kwargs: dict[str, Any], info: dict[str, Any]
) -> Path:
    """Save ``model`` (plain, LoRA already merged) into ``out_dir``; returns the folder."""
    sidecar = {"format": FORMAT, "arch": arch, "model_kwargs": model_kwargs, **model.head_config(), **info}
    return write_weights(model.state_dict(), out_dir, WEIGHTS, SIDECAR, sidecar)


def find_task_model(path: str | Path) -> Path:
    """The folder holding ``model.json`` (``path`` itself or ``path/model``)."""
    path = Path(path)
    for cand in (path, path / "model"):
        if (cand / SIDECAR).is_file() and (cand / WEIGHTS).is_file():
            return cand
    raise XrayfmError(f"{path}: no fine-tuned model ({WEIGHTS} + {SIDECAR}) here or in {path / 'model'}")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar of a saved model (path = run folder or model folder)."""
    return read_json_sidecar(find_task_model(path) / SIDECAR, FORMAT, "an xrayfm fine-tuned model")


def load_task_model(path: str | Path) -> tuple[XrayModel, dict[str, Any]]:
    """Rebuild a saved model and load its weights (strictly); returns (model in eval mode, sidecar).

    Raises:
        XrayfmError: Missing / corrupt files, or weights that do not fit the recorded architecture.
    """
    folder = find_task_model(path)
    meta = read_sidecar(folder)
    backbone = create_model(meta["arch"], num_classes=0, **meta.get("model_kwargs", {}))
    tasks = [TaskSpec.from_dict(t) for t in meta["tasks"]]
    model = XrayModel(
        backbone, tasks, preprocess=resolve_preprocess(meta), dropout=meta.get("dropout", 0.0),
        decoder=meta.get("decoder"), layers=meta.get("layers"),
    )  # fmt: skip
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise XrayfmError(f"{folder / WEIGHTS}: cannot read weights ({exc})") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise XrayfmError(f"{folder / WEIGHTS}: weights do not fit {meta['arch']}: {str(exc)[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise XrayfmError(
            f"{folder / WEIGHTS}: weights do not fit {meta['arch']} with tasks {[t.name for t in tasks]} "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    return model.eval(), meta
