"""MoCo-v2 with Adam's purposive pruner, on one process or many.

A query encoder (any registry backbone) with a 2-layer MLP head, a momentum copy of both as the
key encoder, and a queue of past keys as negatives; InfoNCE at temperature T (He et al. 2020,
Chen et al. 2020; Eden ``Adam-v1/moco/builder.py``). The purposive pruner (Eden
``Adam-v1/engine.py:87-108``) removes from the negatives every queued key whose cosine similarity
to the query (before the temperature) is at least a threshold: at fine granularity many queued
keys show the same anatomy as the query and are not true negatives. The positive is never
pruned. Here it is one ``masked_fill`` instead of a Python loop over samples.

Differences from the official code, each a fix:

- Validation goes through :meth:`MoCo.evaluate_loss` (or ``forward`` in eval mode): no momentum
  update and no enqueue (the official ``validate`` does both).
- The queue takes any batch size: writes wrap around (no ``K % batch == 0`` assert).
- Under DDP (``torch.distributed`` initialised, world > 1) keys are all-gathered before they enter
  the queue and the key batch is shuffled across processes (shuffle-BN), as MoCo; on one process
  the BatchNorm leak (query and key statistics from the same images) is closed by normalising
  over groups of ``bn_group`` samples with the key batch shuffled between groups (MoCo's
  SplitBatchNorm idea). The official code runs under DDP only.
- Logits are computed in float32 (so mixed precision does not move the pruning threshold).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from xrayfm.errors import XrayfmError


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MoCo-v2's MLP head: Linear(in, hidden), ReLU, Linear(hidden, out)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def _world() -> int:
    """Number of processes of an initialised process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every process along dim 0, in rank order (``x`` itself on one process)."""
    world = _world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def info_nce(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    *,
    temperature: float,
    prune_threshold: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE of queries against their keys (positives) and the queue (negatives), with pruning.

    Args:
        q: L2-normalised queries (B, D).
        k: L2-normalised keys (B, D), row i the positive of query i.
        queue: L2-normalised negatives (D, K).
        temperature: Softmax temperature.
        prune_threshold: Negatives with cosine similarity to the query >= this are masked out
            (-inf logits); None prunes nothing. The positive is never pruned.
        reduction: ``mean`` or ``none`` (per-query losses).

    Returns:
        The loss (scalar, or (B,) with ``reduction="none"``).
    """
    q, k, queue = q.float(), k.float(), queue.float()
    positive = (q * k).sum(dim=1, keepdim=True)
    negatives = q @ queue
    if prune_threshold is not None:
        negatives = negatives.masked_fill(negatives >= prune_threshold, float("-inf"))
    logits = torch.cat([positive, negatives], dim=1) / temperature
    labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels, reduction=reduction)


class MoCo(nn.Module):
    """MoCo-v2 objective: ``forward((query_images, key_images))`` is one training step's loss.

    A training forward first moves the key encoder towards the query encoder (momentum update),
    then computes the loss against the queue as it was, then enqueues this step's keys (gathered
    over processes). :meth:`evaluate_loss` does neither update.

    Args:
        backbone: Query encoder mapping images to pooled features (B, ``num_features``), e.g.
            ``create_model(arch, num_classes=0)``; the key encoder is a copy.
        dim: Output width of the projection head (MoCo-v2: 128).
        hidden_dim: Hidden width of the head (default: the backbone's ``num_features``, 2048 for ResNet-50).
        queue_size: K, the number of queued negatives (MoCo: 65536).
        momentum: m of the key encoder update ``k = m k + (1 - m) q``.
        temperature: Softmax temperature (Adam: 0.2).
        prune_threshold: Purposive pruner threshold on the raw cosine similarity (None: off).
        bn_group: Samples per BatchNorm group in training (0: the whole per-process batch); with
            groups, the key batch is shuffled between them so query and key statistics differ.

    Raises:
        XrayfmError: A setting out of range, or a backbone without ``num_features``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        dim: int = 128,
        hidden_dim: int | None = None,
        queue_size: int = 65536,
        momentum: float = 0.999,
        temperature: float = 0.2,
        prune_threshold: float | None = None,
        bn_group: int = 0,
    ) -> None:
        super().__init__()
        features = getattr(backbone, "num_features", None)
        if not isinstance(features, int):
            raise XrayfmError(f"{type(backbone).__name__} has no num_features; build it with create_model(arch, ...)")
        rules = [
            ("dim", dim, dim >= 1, "at least 1"),
            ("queue_size", queue_size, queue_size >= 1, "at least 1"),
            ("momentum", momentum, 0 <= momentum <= 1, "in [0, 1]"),
            ("temperature", temperature, temperature > 0, "positive"),
            ("prune_threshold", prune_threshold, prune_threshold is None or -1 <= prune_threshold <= 1, "in [-1, 1]"),
            ("bn_group", bn_group, bn_group >= 0, "at least 0 (0: the whole batch)"),
        ]
        for name, value, ok, expected in rules:
            if not ok:
                raise XrayfmError(f"MoCo {name} must be {expected}, got {value!r}")
        self.momentum, self.temperature, self.prune_threshold, self.bn_group = (
            momentum, temperature, prune_threshold, bn_group,
        )  # fmt: skip
        self.encoder_q = backbone
        self.head_q = projection_head(features, hidden_dim or features, dim)
        self.encoder_k = copy.deepcopy(backbone).requires_grad_(False)
        self.head_k = copy.deepcopy(self.head_q).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        q = [*self.encoder_q.parameters(), *self.head_q.parameters()]
        k = [*self.encoder_k.parameters(), *self.head_k.parameters()]
        return list(zip(q, k))

    @torch.no_grad()
    def reset_queue(self) -> None:
        """Fill the queue with random unit vectors (global RNG) and point at its start."""
        self.queue.copy_(F.normalize(torch.randn(self.queue.shape, device=self.queue.device), dim=0))
        self.queue_ptr.zero_()

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``k = m k + (1 - m) q`` for every parameter of the key encoder and head."""
        for q, k in self._pairs():
            k.lerp_(q.detach(), 1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (N, D) of this process, gathered over all processes, at the queue pointer.

        Writes wrap around the end; when more keys come than the queue holds, the last K stay.
        """
        keys = gather(keys.detach().float())
        n, size = len(keys), self.queue.shape[1]
        ptr = int(self.queue_ptr)
        kept = keys[-size:]
        start = ptr + n - len(kept)
        index = (start + torch.arange(len(kept), device=keys.device)) % size
        self.queue[:, index] = kept.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % size

    def _embed(self, encoder: nn.Module, head: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised head outputs; in training BatchNorm sees groups of ``bn_group`` samples."""
        if self.training and 0 < self.bn_group < len(images):
            features = torch.cat([encoder(chunk) for chunk in images.split(self.bn_group)])
        else:
            features = encoder(images)
        return F.normalize(head(features).float(), dim=1)

    @torch.no_grad()
    def _keys(self, images: torch.Tensor) -> torch.Tensor:
        """Keys of ``images``, computed on a batch shuffled across processes (or BN groups)."""
        world = _world()
        if world == 1 and not 0 < self.bn_group < len(images):
            return self._embed(self.encoder_k, self.head_k, images)
        everything = gather(images)
        order = torch.randperm(len(everything)).to(images.device)
        rank = dist.get_rank() if world > 1 else 0
        if world > 1:
            dist.broadcast(order, src=0)
        mine = order.view(world, -1)[rank]
        keys = gather(self._embed(self.encoder_k, self.head_k, everything[mine]))
        return keys[torch.argsort(order).view(world, -1)[rank]]

    def forward(self, views: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Loss of one training step on (query, key) view batches; in eval mode :meth:`evaluate_loss`."""
        if not self.training:
            return self.evaluate_loss(views)
        query_images, key_images = views
        self.momentum_update()
        q = self._embed(self.encoder_q, self.head_q, query_images)
        k = self._keys(key_images)
        loss = info_nce(
            q, k, self.queue.clone(), temperature=self.temperature, prune_threshold=self.prune_threshold
        )  # a copy: the queue changes below, and the backward pass needs the one the loss saw
        self.enqueue(k)
        return loss

    @torch.no_grad()
    def evaluate_loss(self, views: tuple[torch.Tensor, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        """The loss on (query, key) views without side effects.

        No momentum update, no enqueue, and BatchNorm on its running statistics (the module is in
        eval mode for the call and back in its former mode after), so weights, buffers and queue
        stay bit-identical.

        Args:
            views: Query and key image batches.
            reduction: ``mean`` or ``none`` (per-pair losses).
        """
        training = self.training
        self.train(False)
        try:
            q = self._embed(self.encoder_q, self.head_q, views[0])
            k = self._embed(self.encoder_k, self.head_k, views[1])
        finally:
            self.train(training)
        return info_nce(
            q, k, self.queue, temperature=self.temperature, prune_threshold=self.prune_threshold, reduction=reduction
        )
