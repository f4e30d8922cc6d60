"""``create_model_and_transforms``: a model and the exact evaluation transform it was trained with.

Like open_clip's function of the same name: the caller names a model (registry name with tag, a
backbone export folder, or a fine-tuned model folder) and gets back the model and the Sample
transform its preprocessing record prescribes, so nobody re-types an input size, a mean or an
interpolation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from xrayfm.data.transforms import EvalResize
from xrayfm.models.export import SIDECAR as BACKBONE_SIDECAR
from xrayfm.models.export import read_export
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.registry import backbone_kwargs, create_model
from xrayfm.models.task_checkpoint import SIDECAR as MODEL_SIDECAR
from xrayfm.models.task_checkpoint import load_task_model


def create_model_and_transforms(
    name_or_path: str | Path, *, img_size: int | None = None, **kwargs: Any
) -> tuple[nn.Module, EvalResize]:
    """The model behind ``name_or_path`` and its evaluation transform.

    Args:
        name_or_path: A fine-tuned model (run folder or ``model/`` folder: an
            :class:`~xrayfm.models.task_model.XrayModel` in eval mode), a backbone export folder
            (e.g. a pretraining run), or a registry / timm name with optional tag.
        img_size: Another input side for a backbone (fine-tuned models keep theirs).
        **kwargs: Passed to :func:`~xrayfm.models.create_model` for backbones.

    Returns:
        (model, transform): the transform maps a Sample of a grey [0, 1] image to the model's
        input size as its record says (masks and boxes follow).

    Raises:
        XrayfmError: Unknown name, unreadable files or weights that do not fit.
    """
    path = Path(name_or_path)
    if (path / MODEL_SIDECAR).is_file() or (path / "model" / MODEL_SIDECAR).is_file():
        model, _ = load_task_model(path)
        return model, resolve_preprocess(model).eval_transform()
    if (path / BACKBONE_SIDECAR).is_file() or (path / "export" / BACKBONE_SIDECAR).is_file():
        arch, pretrained = read_export(path)[1]["arch"], path
    else:
        arch, pretrained = str(name_or_path), None
    size = backbone_kwargs(arch, img_size=img_size) if img_size else {}
    model = create_model(arch, pretrained=pretrained, **size, **kwargs)
    return model, resolve_preprocess(model, img_size=img_size).eval_transform()
