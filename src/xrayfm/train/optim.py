"""The optimiser of a run (AdamW or SGD), built from parameter groups.

Groups are resolved to parameter *names* before the model is set up: sharding (FSDP) replaces the
parameter tensors, so the optimiser is built afterwards, from the set-up module's parameters of
the same names.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.train.config import TrainConfig


def named_param_groups(
    module: nn.Module, param_groups: list[dict[str, Any]] | None, *, weight_decay: float
) -> list[dict[str, Any]]:
    """Parameter groups of ``module`` with the parameters given by name.

    Args:
        module: The module to train.
        param_groups: Groups of ``module``'s parameter tensors, each with its options (``lr``,
            ``weight_decay``...); ``None``: every trainable parameter, ``weight_decay`` on
            matrices and none on biases and norms.
        weight_decay: Decay of the default groups.

    Returns:
        The groups, each with ``params`` a list of names from ``module.named_parameters()``.

    Raises:
        XrayfmError: A group holds a tensor that is not a parameter of ``module``, or no
            parameter in the groups requires gradients.
    """
    named = list(module.named_parameters())
    if param_groups is None:
        trainable = [(n, p) for n, p in named if p.requires_grad]
        groups = [
            {"params": [n for n, p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [n for n, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
    else:
        name_of = {id(p): n for n, p in named}
        groups = []
        for i, group in enumerate(param_groups):
            foreign = sum(id(p) not in name_of for p in group["params"])
            if foreign:
                raise XrayfmError(f"parameter group {i} holds {foreign} tensors that are not parameters of the model")
            groups.append({**group, "params": [name_of[id(p)] for p in group["params"]]})
    requires_grad = {n for n, p in named if p.requires_grad}
    if not any(n in requires_grad for g in groups for n in g["params"]):
        raise XrayfmError("nothing to train: every parameter is frozen")
    return groups


def build_optimizer(module: nn.Module, groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``cfg.optimizer`` names, over ``module``'s parameters named in ``groups``.

    A group's own ``lr`` and ``weight_decay`` win over ``cfg``'s (a layer-wise decay ratio is
    baked into the group's ``lr``); the schedule then scales every group by the same factor.

    Args:
        module: The (possibly sharded) module; its parameter names match those of the module
            the groups were made from.
        groups: Output of :func:`named_param_groups`.
        cfg: Settings: ``optimizer``, ``lr`` and ``weight_decay`` of groups without their own,
            ``betas`` (AdamW), ``momentum`` and ``nesterov`` (SGD).

    Returns:
        ``torch.optim.AdamW`` or ``torch.optim.SGD``.
    """
    params = dict(module.named_parameters())
    resolved = [{**g, "params": [params[n] for n in g["params"]]} for g in groups]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            resolved, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(resolved, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
