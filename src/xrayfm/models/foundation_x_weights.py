"""Foundation X and Ark-6 released weights: reading their checkpoints and loading their Swin-B backbone.

Foundation X (jlianglab/Foundation_X, ``utils_segmentation.py::save_model``) saves ``torch.save``
dicts ``{"model", "teacher_model", "optimizer", "epoch"}`` holding the whole DINO model: the Swin-B
under ``backbone.0.`` with its 11 classification heads (``classification_heads.{0..10}``), the
PSP + FPN segmentation decoder (``segmentation_*``), the LayerNorms before the localizer
(``Locnorm1-3``) and the DINO localizer (``transformer.*``, ``input_proj.*`` ...). Its Ark-6
initialisation holds the Swin-B alone under ``teacher`` (or ``state_dict`` / ``model``), names
prefixed ``module.``. Both Swins downsample at the end of a stage and always shift windows, so they
load into timm's ``swin_base_patch4_window7_224`` built with ``always_partition=True``
(:data:`SWIN_KWARGS`; without it timm skips the shift at stage 4 and the features differ) after
timm's own ``checkpoint_filter_fn`` (../shared/reference/foundation-x.md section 6).

Files are read with ``torch.load(weights_only=True)`` (no code runs; memory-mapped, so the
optimizer state of a 2.8 GB checkpoint is never read). :func:`load_foundation_x_backbone` loads the
backbone strictly. :func:`read_pretrained` is how :func:`~xrayfm.models.create_model` reads every weight
file: it tells these layouts (:func:`is_foundation_x`) from others, so
``create_model("swin_base_patch4_window7_224", pretrained="ckpt_E380_TH1.pth")`` gives the teacher's Swin,
built with ``always_partition=True``. What of the whole model loads into a multi-task model is
:mod:`~xrayfm.models.foundation_x_multitask`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import is_model_in_modules, split_model_name_tag
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.checkpoints import load_weights_file, read_state_dict, state_tensors

#: The released backbone and the constructor arguments that reproduce its features.
FOUNDATION_X_ARCH = "swin_base_patch4_window7_224"
SWIN_KWARGS: dict[str, Any] = {"always_partition": True}
#: Entries holding the weights: Foundation X's teacher / student, Ark's teacher / student.
TEACHER_ENTRIES, STUDENT_ENTRIES = ("teacher_model", "teacher"), ("model", "state_dict")
BACKBONE_PREFIX = "backbone.0."
#: Names under the Swin that are not part of timm's Swin.
NOT_SWIN = ("Locnorm", "Segnorm", "segmentation_", "classification_heads.", "head.")


def read_foundation_x(
    path: str | Path, *, teacher: bool = True, allow_unsafe: bool = False
) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a Foundation X or Ark checkpoint, ``module.`` stripped.

    Args:
        path: ``ckpt_E*_TH*.pth`` (Foundation X), an Ark ``.pth.tar``, or a flat weight file.
        teacher: Read the EMA teacher (``teacher_model`` / ``teacher``) rather than the student
            (``model`` / ``state_dict``). A file holding only one of them gives that one.
        allow_unsafe: Permit unpickling a trusted file that is not weights-only.

    Returns:
        (``{name: tensor}``, the entry read; empty for a flat file).

    Raises:
        XrayfmError: Missing or unsafe file, or no weights under the entries above.
    """
    path = Path(path)
    if path.suffix == ".safetensors" or not path.is_file():
        return _strip_parallel(read_state_dict(path)), ""
    return _entry_state(load_weights_file(path, allow_unsafe=allow_unsafe, mmap=True), path, teacher=teacher)


def _entry_state(obj: Any, path: Path, *, teacher: bool) -> tuple[dict[str, torch.Tensor], str]:
    """:func:`read_foundation_x` on the loaded file ``obj``."""
    if not isinstance(obj, Mapping):
        raise XrayfmError(f"{path}: holds a {type(obj).__name__}, not a checkpoint dict")
    entries = [k for k in (*TEACHER_ENTRIES, *STUDENT_ENTRIES) if isinstance(obj.get(k), Mapping)]
    wanted = [k for k in (TEACHER_ENTRIES if teacher else STUDENT_ENTRIES) if k in entries]
    if wanted or len(entries) == 1:
        entry = (wanted or entries)[0]
        state = {k: v for k, v in obj[entry].items() if isinstance(v, torch.Tensor)}
    elif not entries and any(isinstance(v, torch.Tensor) for v in obj.values()):
        entry, state = "", {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    else:
        which = "teacher" if teacher else "student"
        raise XrayfmError(f"{path}: no {which} weights under {TEACHER_ENTRIES if teacher else STUDENT_ENTRIES}; "
                          f"the file holds {sorted(map(str, obj))}")  # fmt: skip
    if not state:
        raise XrayfmError(f"{path}: entry {entry!r} holds no tensors")
    return _strip_parallel(state), entry


def is_foundation_x(obj: Any) -> bool:
    """Whether a loaded weight file is a Foundation X or Ark-6 checkpoint.

    Foundation X: a ``teacher_model`` or ``model`` entry with the Swin under ``backbone.0.`` (DINO's layout,
    whose Swin shifts windows at every stage too). Ark-6: a ``teacher`` entry holding a bare Swin. Names may
    carry ``module.``. A flat Ark file (``state_dict`` alone) looks like any other Swin file and is not detected.
    """
    if not isinstance(obj, Mapping):
        return False
    for key, swin in (("teacher_model", BACKBONE_PREFIX), ("model", BACKBONE_PREFIX), ("teacher", "")):
        entry = obj.get(key)
        first = f"{swin}patch_embed.proj.weight"
        if isinstance(entry, Mapping) and (first in entry or f"module.{first}" in entry):
            return True
    return False


def read_pretrained(
    path: str | Path, name: str, kwargs: Mapping[str, Any], *, allow_unsafe: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors ``create_model(name, pretrained=path, **kwargs)`` loads, and the arguments it builds with.

    The file is read once. A Foundation X or Ark-6 checkpoint (:func:`is_foundation_x`) gives its EMA
    teacher's Swin (the student when it holds no teacher) in the file's names with the parts timm's Swin
    lacks left out (timm's ``checkpoint_filter_fn`` converts the rest in the builder) and ``kwargs`` with
    :data:`SWIN_KWARGS`; any other file gives ``read_state_dict``'s tensors and ``kwargs`` as they are.

    Raises:
        XrayfmError: An unreadable file; a Foundation X / Ark-6 file for an architecture that is not a
            timm Swin, or with ``always_partition=False`` asked.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_state_dict(path), dict(kwargs)
    obj = load_weights_file(path, allow_unsafe=allow_unsafe, mmap=True)
    if not is_foundation_x(obj):
        return state_tensors(obj, path), dict(kwargs)
    state, _ = _entry_state(obj, path, teacher=True)
    return _swin_only(state, str(path)), release_kwargs(name, kwargs, source=str(path))


def release_kwargs(name: str, kwargs: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """``kwargs`` with :data:`SWIN_KWARGS`: how to build ``name`` for Foundation X / Ark-6 weights.

    Args:
        name: The architecture (a timm Swin, tag allowed).
        kwargs: Its other constructor arguments.
        source: The weights, for errors.

    Raises:
        XrayfmError: ``name`` is not a timm Swin, or ``kwargs`` asks ``always_partition=False``.
    """
    if not is_model_in_modules(split_model_name_tag(name)[0], ["swin_transformer"]):
        raise XrayfmError(f"{source}: a Foundation X / Ark-6 checkpoint holds a Swin ({FOUNDATION_X_ARCH}), "
                          f"not weights for {name!r}")  # fmt: skip
    if kwargs.get("always_partition") is False:
        raise XrayfmError(f"{source}: Foundation X / Ark-6 Swins shift windows at every stage; "
                          "always_partition=False would change their features")  # fmt: skip
    return {**kwargs, **SWIN_KWARGS}


def _strip_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the DataParallel ``module.`` prefix, when every name has it."""
    if state and all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}
    return state


def swin_state(state: Mapping[str, torch.Tensor], model: nn.Module, *, source: str) -> dict[str, torch.Tensor]:
    """The Swin weights of a Foundation X (``backbone.0.*``) or Ark (bare Swin) state, in ``model``'s names.

    Strips ``backbone.0.``, drops the parts timm's Swin lacks (:data:`NOT_SWIN`) and applies timm's
    ``checkpoint_filter_fn`` (old downsample layout, non-persistent buffers).

    Raises:
        XrayfmError: The state is in neither layout, or its Swin does not fit ``model`` (keys named).
    """
    swin = checkpoint_filter_fn(_swin_only(state, source), model)
    target = model.state_dict()
    missing = [k for k in target if k not in swin]
    unused = [k for k in swin if k not in target]
    shapes = [f"{k} {tuple(swin[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
              if k in swin and swin[k].shape != v.shape]  # fmt: skip
    if missing or unused or shapes:
        raise XrayfmError(
            f"{source}: its Swin does not fit {type(model).__name__}: {len(missing)} weights missing {missing[:4]}, "
            f"{len(unused)} not used {unused[:4]}, {len(shapes)} of another shape {shapes[:2]} (another Swin size?)"
        )
    return swin


def _swin_only(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The Swin's tensors of a Foundation X (``backbone.0.*``) or Ark (bare Swin) state, in the file's layout
    without the parts timm's Swin lacks (:data:`NOT_SWIN`).

    Raises:
        XrayfmError: The state is in neither layout.
    """
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        swin = {k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    elif "patch_embed.proj.weight" in state:
        swin = dict(state)
    else:
        raise XrayfmError(f"{source}: not a Foundation X or Ark checkpoint: no 'backbone.0.*' (Foundation X) or "
                          f"'patch_embed.*' (Ark Swin) weights; its first names: {list(state)[:4]}")  # fmt: skip
    return {k: v for k, v in swin.items() if not k.startswith(NOT_SWIN)}


def check_swin(model: nn.Module, source: str) -> None:
    """Check that ``model`` can take the released Swin: a timm Swin that always partitions windows, as it does.

    Called before any weight is read, so a wrong backbone fails with what to build instead.

    Args:
        model: The backbone to load into.
        source: The weights, for errors.

    Raises:
        XrayfmError: Another backbone, or a Swin without ``always_partition``.
    """
    if not isinstance(model, SwinTransformer):
        raise XrayfmError(f"{source}: Foundation X weights are for a timm Swin, not {type(model).__name__}")
    if not all(getattr(b, "always_partition", False) for layer in model.layers for b in layer.blocks):
        raise XrayfmError(f"{source}: build the Swin with always_partition=True (create_model({FOUNDATION_X_ARCH!r}, "
                          "always_partition=True)): Foundation X shifts windows at every stage")  # fmt: skip


def load_foundation_x_backbone(
    path: str | Path, *, teacher: bool = True, model: nn.Module | None = None, allow_unsafe: bool = False
) -> nn.Module:
    """The Swin-B of a Foundation X or Ark-6 checkpoint, loaded strictly.

    Args:
        path: The checkpoint (see :func:`read_foundation_x`).
        teacher: The EMA teacher's weights (default) or the student's.
        model: A timm Swin to load into (default: Swin-B with :data:`SWIN_KWARGS`, ``num_classes=0``).
        allow_unsafe: Permit unpickling a trusted file that is not weights-only.

    Returns:
        The backbone (final ``norm`` included: pooled features are Foundation X's classification features).

    Raises:
        XrayfmError: Unreadable file, another layout, or weights that do not fit (named).
    """
    model = model if model is not None else timm.create_model(FOUNDATION_X_ARCH, num_classes=0, **SWIN_KWARGS)
    check_swin(model, str(path))
    state, _ = read_foundation_x(path, teacher=teacher, allow_unsafe=allow_unsafe)
    model.load_state_dict(swin_state(state, model, source=str(path)), strict=True)
    return model
