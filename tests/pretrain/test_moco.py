"""MoCo-v2 with the purposive pruner: pruning, the queue, the key encoder, side-effect-free validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.pretrain.moco import MoCo, info_nce


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_pruner_drops_negatives_close_to_the_query_and_keeps_the_rest() -> None:
    q = _unit([1.0, 0.0, 0.0])
    k = _unit([1.0, 0.0, 0.0])  # the positive: cosine 1, far above the threshold
    queue = _unit([1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]).T  # same, close, 2 far
    t = 0.2
    pruned = info_nce(q, k, queue, temperature=t, prune_threshold=0.8)
    far = math.exp(0.0 / t)
    assert float(pruned) == pytest.approx(-math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * far)), rel=1e-5)
    full = info_nce(q, k, queue, temperature=t)  # n = 0: nothing pruned
    close = float(q @ queue[:, 1])
    expected = -math.log(math.exp(1 / t) / (2 * math.exp(1 / t) + math.exp(close / t) + 2 * far))
    assert float(full) == pytest.approx(expected, rel=1e-5)
    assert float(info_nce(q, k, queue, temperature=t, prune_threshold=0.99)) < float(full)  # only the identical one


def test_the_positive_is_never_pruned_even_when_every_negative_is() -> None:
    q = _unit([1.0, 0.0])
    queue = _unit([1.0, 0.0], [1.0, 0.01]).T
    loss = info_nce(q, _unit([0.0, 1.0]), queue, temperature=0.2, prune_threshold=0.5)
    assert float(loss) == 0.0  # a lone positive logit, not nan or inf
    per_query = info_nce(torch.cat([q, q]), _unit([1.0, 0.0], [0.6, 0.8]), queue, temperature=0.2,
                         prune_threshold=-1.0, reduction="none")  # fmt: skip
    assert per_query.shape == (2,) and torch.equal(per_query, torch.zeros(2))


def _moco(queue_size: int = 6, **kwargs) -> MoCo:
    torch.manual_seed(0)
    return MoCo(create_model("resnet18", num_classes=0), dim=8, hidden_dim=16, queue_size=queue_size, **kwargs)


def _views(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.randn(batch, 3, 32, 32, generator=g)


def test_enqueue_wraps_around_without_a_batch_size_assert() -> None:
    m = _moco(queue_size=5)
    keys = F.normalize(torch.randn(3, 8), dim=1)
    m.enqueue(keys)
    m.enqueue(keys * -1)
    assert int(m.queue_ptr) == 1
    torch.testing.assert_close(m.queue[:, [3, 4, 0]].T, -keys)  # the second batch wrapped past the end
    torch.testing.assert_close(m.queue[:, [1, 2]].T, keys[1:])
    m.enqueue(F.normalize(torch.randn(12, 8), dim=1))  # more keys than the queue holds: the last 5 stay
    assert int(m.queue_ptr) == (1 + 12) % 5


def test_a_training_step_moves_the_key_encoder_by_momentum_and_fills_the_queue() -> None:
    m = _moco(momentum=0.9, bn_group=2)
    assert all(not p.requires_grad for p in [*m.encoder_k.parameters(), *m.head_k.parameters()])
    for q, k in zip(m.encoder_q.parameters(), m.encoder_k.parameters()):
        assert torch.equal(q, k)  # a copy at the start
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(0.5)
    before = [p.clone() for p in m.encoder_k.parameters()]
    queue = m.queue.clone()
    loss = m(_views())
    loss.backward()
    for q, k, k0 in zip(m.encoder_q.parameters(), m.encoder_k.parameters(), before):
        torch.testing.assert_close(k, 0.9 * k0 + 0.1 * q)
        assert k.grad is None
    assert int(m.queue_ptr) == 4 and not torch.equal(m.queue[:, :4], queue[:, :4])
    assert torch.equal(m.queue[:, 4:], queue[:, 4:])
    assert all(p.grad is not None for p in m.head_q.parameters())


def test_validation_leaves_the_key_encoder_the_queue_and_batchnorm_bit_identical() -> None:
    m = _moco(prune_threshold=0.8)
    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    per_pair = m.evaluate_loss(_views(), reduction="none")
    m.eval()
    mean = m(_views())  # forward in eval mode is the same side-effect-free loss
    assert per_pair.shape == (4,) and float(mean) == pytest.approx(float(per_pair.mean()), rel=1e-6)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed during validation"


def test_settings_are_checked() -> None:
    with pytest.raises(XrayfmError, match="temperature"):
        _moco(temperature=0.0)
    with pytest.raises(XrayfmError, match="num_features"):
        MoCo(nn.Linear(3, 3))


@pytest.mark.parametrize(
    "arch, kwargs",
    [("eva_x_tiny_patch16", {"img_size": 32}), ("swin_tiny_patch4_window7_224", {"img_size": 56, "window_size": 7})],
)
def test_any_registry_backbone_trains_with_the_pruner(arch: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    size = kwargs["img_size"]
    m = MoCo(create_model(arch, num_classes=0, **kwargs), dim=8, hidden_dim=16, queue_size=6, prune_threshold=0.8)
    g = torch.Generator().manual_seed(3)
    loss = m((torch.randn(2, 3, size, size, generator=g), torch.randn(2, 3, size, size, generator=g)))
    loss.backward()
    assert torch.isfinite(loss) and int(m.queue_ptr) == 2
    assert all(p.grad is not None for p in m.encoder_q.parameters() if p.requires_grad)
