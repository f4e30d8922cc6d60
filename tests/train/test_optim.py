"""The optimiser a config names: AdamW or SGD, with its hyper-parameters, over the named groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xrayfm.train import TrainConfig
from xrayfm.train.optim import build_optimizer, named_param_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))


def test_adamw_takes_its_betas_lr_and_decay_from_the_config() -> None:
    model = _model()
    cfg = TrainConfig(lr=2e-4, weight_decay=0.1, betas=(0.9, 0.999))
    opt = build_optimizer(model, named_param_groups(model, None, weight_decay=cfg.weight_decay), cfg)
    assert type(opt) is torch.optim.AdamW
    decay, no_decay = opt.param_groups
    assert decay["betas"] == (0.9, 0.999) and decay["lr"] == 2e-4 and decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # biases and the norm


def test_sgd_takes_momentum_and_nesterov() -> None:
    model = _model()
    cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.8, nesterov=True, weight_decay=1e-4)
    opt = build_optimizer(model, named_param_groups(model, None, weight_decay=cfg.weight_decay), cfg)
    assert type(opt) is torch.optim.SGD
    assert all(g["momentum"] == 0.8 and g["nesterov"] and g["lr"] == 0.01 for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]


def test_sgd_steps_as_heavy_ball_momentum() -> None:
    w = nn.Parameter(torch.tensor([1.0]))
    module = nn.Module()
    module.w = w
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=0.0)
    opt = build_optimizer(module, [{"params": ["w"]}], cfg)
    for _ in range(2):
        opt.zero_grad()
        (2 * w).sum().backward()  # gradient 2 every step
        opt.step()
    # buffers 2 then 0.5 * 2 + 2 = 3: w = 1 - 0.1 * 2 - 0.1 * 3
    assert w.item() == pytest.approx(0.5)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_groups_keep_their_own_lr_and_decay(optimizer: str) -> None:
    model = _model()
    first, last = list(model[0].parameters()), list(model[2].parameters())
    groups = [
        {"params": first, "lr": 1e-4, "weight_decay": 0.0},  # a layer-wise decay ratio baked into lr
        {"params": last, "lr": 1e-3},
    ]
    cfg = TrainConfig(optimizer=optimizer, lr=5e-3, weight_decay=0.02)
    opt = build_optimizer(model, named_param_groups(model, groups, weight_decay=cfg.weight_decay), cfg)
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.02]  # a group without one takes the config's
    assert opt.param_groups[0]["params"][0] is model[0].weight
