"""A trained Foundation X model on disk: student and teacher with every head, rebuilt without the recipe.

``OUT/model/`` holds ``multitask.safetensors`` (the student: backbone, pyramid, shared
segmentation decoder, a head per ``dataset/task``), ``teacher.safetensors`` (its EMA teacher, the
same tensors) and ``multitask.json``: the architecture and its keyword arguments, the task specs
per dataset (class order), the dense-head settings, the preprocessing record and the run's
provenance. :func:`load_multitask_model` rebuilds either model from these files alone, loading
strictly, with safetensors (no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_path
from xrayfm.models import create_model
from xrayfm.models.export import read_json_sidecar, write_weights
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.tasks import TaskSpec

MODEL_DIR, STUDENT, TEACHER, SIDECAR = "model", "multitask.safetensors", "teacher.safetensors", "multitask.json"
FORMAT = "xrayfm-multitask-model-1"


def model_settings(model: MultiTaskModel) -> dict[str, Any]:
    """The constructor settings that rebuild ``model``'s heads: tasks per dataset, decoder, pyramid layers."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for key, spec in model.tasks.items():
        tasks.setdefault(key.split("/")[0], []).append(spec.to_dict())
    return {
        "tasks": tasks,
        "decoder": model.seg_decoder.kind if model.seg_decoder is not None else None,
        "localizer": model.localizer,
        "detr": model.detr_settings,
        "layers": list(model.pyramid.layers) if model.pyramid is not None else None,
    }


def save_multitask_model(
    student: MultiTaskModel,
    teacher: MultiTaskModel,
    out_dir: str | Path,
    *,
    arch: str,
    model_kwargs: dict[str, Any],
    preprocess: Preprocess,
    info: dict[str, Any],
) -> Path:
    """Write student, teacher and sidecar into ``out_dir`` (each file atomically, the sidecar last).

    Args:
        student: The trained model (released: its lock state is not saved).
        teacher: Its EMA teacher.
        out_dir: Destination folder (``OUT/model``).
        arch: Backbone registry name.
        model_kwargs: The backbone's constructor arguments (``img_size``...).
        preprocess: The input the weights expect.
        info: Further JSON facts (``provenance``, ``recipe``...).

    Returns:
        The folder.
    """
    with atomic_path(Path(out_dir) / TEACHER) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in teacher.state_dict().items()}, str(tmp))
    sidecar = {"format": FORMAT, "arch": arch, "model_kwargs": model_kwargs, "preprocess": preprocess.to_dict(),
               **model_settings(student), "teacher": TEACHER, **info}  # fmt: skip
    return write_weights(student.state_dict(), out_dir, STUDENT, SIDECAR, sidecar)


def find_multitask_model(path: str | Path) -> Path:
    """The folder holding ``multitask.json``: ``path`` itself or ``path/model`` (a run folder).

    Raises:
        XrayfmError: Neither holds a saved multi-task model.
    """
    path = Path(path)
    for cand in (path, path / MODEL_DIR):
        if (cand / SIDECAR).is_file() and (cand / STUDENT).is_file():
            return cand
    raise XrayfmError(f"{path}: no multi-task model ({STUDENT} + {SIDECAR}) here or in {path / MODEL_DIR}")


def load_multitask_model(path: str | Path, *, teacher: bool = False) -> tuple[MultiTaskModel, dict[str, Any]]:
    """Rebuild a saved multi-task model and load its weights strictly.

    Args:
        path: A run folder or its ``model/`` folder.
        teacher: Load the EMA teacher's weights instead of the student's.

    Returns:
        (the model in eval mode, the sidecar).

    Raises:
        XrayfmError: Missing or corrupt files, or weights that do not fit the recorded model.
    """
    folder = find_multitask_model(path)
    meta = read_json_sidecar(folder / SIDECAR, FORMAT, "an xrayfm multi-task model")
    backbone = create_model(meta["arch"], num_classes=0, **meta.get("model_kwargs", {}))
    tasks = {d: [TaskSpec.from_dict(t) for t in specs] for d, specs in meta["tasks"].items()}
    model = MultiTaskModel(backbone, tasks, preprocess=resolve_preprocess(meta), decoder=meta.get("decoder"),
                           layers=meta.get("layers"), localizer=meta.get("localizer", "deformable_detr"),
                           detr=meta.get("detr"))  # fmt: skip
    weights = folder / (TEACHER if teacher else STUDENT)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise XrayfmError(f"{weights}: cannot read weights ({exc})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise XrayfmError(f"{weights}: weights do not fit {meta['arch']} with heads {sorted(model.tasks)}: "
                          f"{str(exc)[:300]}") from None  # fmt: skip
    return model.eval(), meta
