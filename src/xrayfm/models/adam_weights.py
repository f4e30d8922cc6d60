"""Backbone weights in the layouts contrastive pretraining releases use (Adam-v1, MoCo v2).

Adam's code (jlianglab Eden, ``Adam-v1``) writes the query encoder in three forms, all read by
:func:`xrayfm.models.checkpoints.read_state_dict` without unpickling code:

- ``checkpoint.pth``, the resumable MoCo checkpoint: ``{"epoch", "arch", "state_dict",
  "optimizer", "best_loss"}`` whose ``state_dict`` holds ``module.encoder_q.*`` (the backbone and
  its 2-layer projection head ``fc.0`` / ``fc.2``), ``module.encoder_k.*`` (the momentum copy),
  ``module.queue`` and ``module.queue_ptr``;
- ``best_checkpoint.pth`` / ``last_checkpoint.pth``: the bare ``encoder_q`` state dict
  (torchvision ResNet-50 names plus ``fc.0`` / ``fc.2``);
- files re-saved by other code with ``encoder.`` or ``backbone.`` before every name.

:func:`backbone_state` takes the backbone out of any of them: it strips those prefixes at the
start of names only (the reference README's ``str.replace`` also rewrites them inside names)
and drops the key encoder, the queue and the projection head. :func:`xrayfm.models.create_model`
applies it to every file, so ``create_model("resnet50", pretrained="checkpoint.pth")`` works;
:func:`load_backbone_weights` loads a file strictly into any other module with torchvision
names, e.g. a segmentation-models-pytorch U-Net's ``encoder``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Collection, Mapping
from pathlib import Path

import timm
import torch
from timm.models import split_model_name_tag
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models.checkpoints import read_state_dict

log = logging.getLogger(__name__)

#: A DistributedDataParallel wrapper's prefix, stripped when every name carries it.
PARALLEL_PREFIX = "module."
#: Prefixes under which a release stores the backbone, tried in this order; names outside the
#: first one found (key encoder, queue, decoder...) are dropped.
BACKBONE_PREFIXES = ("encoder_q.", "encoder.", "backbone.")


def backbone_state(
    state: Mapping[str, torch.Tensor],
    *,
    modules: Collection[str] = (),
    head: str = "fc",
    head_keys: Collection[str] = (),
    source: str = "weights",
) -> dict[str, torch.Tensor]:
    """The backbone weights of a contrastive-pretraining file, under the backbone's own names.

    Args:
        state: Tensors as read from the file.
        modules: Top-level module names of the target model: a prefix naming one of them is a
            real part of the model, not a wrapper, and is kept.
        head: The target's classifier module.
        head_keys: Classifier weights the target has (e.g. ``fc.weight``, ``fc.bias``). Names
            under ``head`` that it lacks are dropped when they belong to numbered sub-modules
            (the MoCo projection head ``fc.0`` / ``fc.2``) or when the target has no ``head``
            (an encoder without classifier); a plain classifier is kept for the caller to judge.
        source: Name of the file, for the log.

    Returns:
        ``{name: tensor}`` with prefixes stripped from the start of names and the key encoder,
        queue and projection head left out (logged in one line).
    """
    out = dict(state)
    dropped: list[str] = []
    wrapper = PARALLEL_PREFIX.rstrip(".")
    if out and wrapper not in modules and all(k.startswith(PARALLEL_PREFIX) for k in out):
        out = {k.removeprefix(PARALLEL_PREFIX): v for k, v in out.items()}
    for prefix in BACKBONE_PREFIXES:
        if prefix.rstrip(".") in modules or not any(k.startswith(prefix) for k in out):
            continue
        dropped += [k for k in out if not k.startswith(prefix)]
        out = {k.removeprefix(prefix): v for k, v in out.items() if k.startswith(prefix)}
        break
    has_head = head.split(".")[0] in modules
    projection = [
        k for k in out if k.startswith(f"{head}.") and k not in head_keys
        and (not has_head or k[len(head) + 1 :].split(".")[0].isdigit())
    ]  # fmt: skip
    dropped += projection
    out = {k: v for k, v in out.items() if k not in projection}
    if dropped:
        log.info("%s: %d tensors that are not the backbone left out: %s", source, len(dropped), _names(dropped))
    return out


def _names(keys: list[str]) -> str:
    """Key names grouped by their first two parts, e.g. ``encoder_k.layer1.* (30), queue``."""
    groups: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        group = k if len(parts) == 1 else ".".join(parts[:2]) + (".*" if len(parts) > 2 else "")
        groups[group] = groups.get(group, 0) + 1
    shown = [g if n == 1 else f"{g} ({n})" for g, n in list(groups.items())[:8]]
    return ", ".join(shown) + (", ..." if len(groups) > 8 else "")


@functools.lru_cache(maxsize=32)
def _structure(arch: str) -> tuple[frozenset[str], str, frozenset[str]]:
    """(top-level modules, classifier name, classifier weights) of a timm architecture, built on
    the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    head = str(getattr(model, "pretrained_cfg", {}).get("classifier") or "head")
    names = frozenset(n for n, _ in model.named_children())
    return names, head, frozenset(k for k in model.state_dict() if k.startswith(f"{head}."))


def release_backbone(state: Mapping[str, torch.Tensor], name: str, *, source: str) -> dict[str, torch.Tensor]:
    """:func:`backbone_state` for the timm architecture ``name`` (what ``create_model`` loads).

    Args:
        state: Tensors read from ``source``.
        name: A timm / xrayfm architecture, tag allowed.
        source: The file, for the log.

    Returns:
        The backbone weights (``state`` unchanged when it is in no release layout).
    """
    modules, head, head_keys = _structure(split_model_name_tag(name)[0])
    return backbone_state(state, modules=modules, head=head, head_keys=head_keys, source=source)


def load_backbone_weights(
    module: nn.Module, path: str | Path, *, head: str = "fc", allow_unsafe: bool = False
) -> nn.Module:
    """Load a weight file in any layout above into ``module``, strictly: every weight of the
    module must come from the file and every backbone weight of the file must be used.

    Made for encoders with torchvision ResNet names, e.g. Adam's checkpoint into a
    segmentation-models-pytorch U-Net: ``load_backbone_weights(smp.Unet("resnet50",
    encoder_weights=None).encoder, "checkpoint.pth")`` (the U-Net's own ``load_state_dict``
    would find no key: its encoder's names start with ``encoder.``).

    Args:
        module: The target, e.g. ``unet.encoder`` or a torchvision ``resnet50()``.
        path: Weight file (.pth / .pt / .safetensors).
        head: Name of the module's classifier (see :func:`backbone_state`).
        allow_unsafe: Permit unpickling a trusted file that is not weights-only.

    Returns:
        ``module``, loaded.

    Raises:
        XrayfmError: Unreadable file, or weights that are missing, left over or of another shape
            (named in one line).
    """
    target = module.state_dict()
    state = backbone_state(
        read_state_dict(path, allow_unsafe=allow_unsafe),
        modules=[n for n, _ in module.named_children()],
        head=head,
        head_keys=[k for k in target if k.startswith(f"{head}.")],
        source=str(path),
    )
    missing = [k for k in target if k not in state]
    unused = [k for k in state if k not in target]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in target.items() if k in state
              and state[k].shape != v.shape]  # fmt: skip
    if missing or unused or shapes:
        what = type(module).__name__
        raise XrayfmError(
            f"{path}: does not fit {what}: {len(missing)} weights missing {missing[:4]}, {len(unused)} not used "
            f"{unused[:4]}, {len(shapes)} of another shape {shapes[:2]} (a file for another architecture?)"
        )
    module.load_state_dict(state, strict=True)
    return module
