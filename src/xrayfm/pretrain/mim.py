"""EVA-X masked image modeling: a student ViT regresses a frozen teacher's features.

The student's patch tokens at a random 30% of positions are replaced by a learnable mask
token; a linear head maps the student's output to the teacher's width; the loss is
``1 - cos(prediction, teacher feature)`` averaged over the *masked* tokens only. The teacher
sees the unmasked image, has no gradients and stays in eval mode. It receives the student's
augmented view in its own input convention (:class:`TeacherInput`: its mean / std per channel
and its input side), not the student's. A ``pixel`` target (normalised pixels of each masked
patch, as in MAE / Medical-MAE) lets a user start without a teacher; that baseline is not EVA-X,
but its run can be the teacher of the next (iterated distillation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.eva import Eva
from torch import nn
from torch.utils.checkpoint import checkpoint

from xrayfm.errors import XrayfmError

Target = Literal["teacher", "pixel"]


@dataclass(frozen=True)
class TeacherInput:
    """How the teacher's input is made from the student's view.

    The student sees a grey [0, 1] image normalised with ``source_mean`` / ``source_std`` and
    repeated to its channels; the teacher gets that same view with the normalisation undone, then
    resized to ``size`` and normalised with its own ``mean`` / ``std`` per teacher channel.

    Attributes:
        source_mean: Mean the student's view was normalised with (grey).
        source_std: Std the student's view was normalised with (grey, positive).
        mean: The teacher's mean, one per teacher input channel.
        std: The teacher's std, one per teacher input channel (positive).
        size: The teacher's input side (None: the student's view size).
        interpolation: Resampling to ``size`` (``bilinear``, ``bicubic`` or ``nearest``).
    """

    source_mean: float
    source_std: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise XrayfmError(f"teacher mean {self.mean} and std {self.std} must have one value per channel")
        if self.source_std <= 0 or any(s <= 0 for s in self.std):
            raise XrayfmError(f"normalisation std must be positive, got {self.source_std} and {self.std}")


def random_patch_mask(
    batch: int, num_patches: int, ratio: float = 0.3, *, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """Boolean (batch, num_patches) mask with exactly ``round(ratio * num_patches)`` True per row."""
    if not 0.0 < ratio < 1.0:
        raise XrayfmError(f"mask ratio must be in (0, 1), got {ratio}")
    k = max(1, round(ratio * num_patches))
    noise = torch.rand(batch, num_patches, generator=generator, device=device)
    idx = noise.argsort(dim=1)[:, :k]
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    return mask.scatter_(1, idx, True)


def masked_cosine_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``1 - cos`` between ``pred`` and ``target`` (B, N, D) over tokens where ``mask``."""
    if not mask.any():
        raise XrayfmError("mask selects no token; nothing to learn from")
    cos = F.cosine_similarity(pred[mask].float(), target[mask].float(), dim=-1)
    return (1.0 - cos).mean()


def masked_mse_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked tokens only."""
    if not mask.any():
        raise XrayfmError("mask selects no token; nothing to learn from")
    return F.mse_loss(pred[mask].float(), target[mask].float())


def patch_pixels(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C), each patch normalised to zero mean, unit variance."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    x = x.reshape(b, (h // patch) * (w // patch), patch * patch * c)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
    return (x - mean) / (var + 1e-6).sqrt()


def _patch_tokens(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens (B, N, D) of any timm ViT, without prefix (class/register) tokens."""
    feats = model.forward_features(images)
    return feats[:, getattr(model, "num_prefix_tokens", 0) :]


def _resize_grid(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample (B, N, D) tokens on a square grid to ``size`` (teacher with another patch size)."""
    b, n, d = tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise XrayfmError(f"teacher gives {n} patch tokens, not a square grid")
    if (side, side) == size:
        return tokens
    grid = tokens.transpose(1, 2).reshape(b, d, side, side)
    return F.interpolate(grid, size=size, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)


class MaskedFeatureModeling(nn.Module):
    """Student + mask token + prediction head (+ frozen teacher) computing the MIM loss.

    Args:
        student: An EVA-X / timm ``Eva`` model; its final ``norm`` is applied (create it with
            ``global_pool="token"`` so that norm is a LayerNorm, as in MIM).
        teacher: Frozen feature model for ``target="teacher"`` (any timm ViT xrayfm can load).
        target: ``teacher`` (cosine loss on features) or ``pixel`` (normalised-pixel MSE).
        mask_ratio: Share of patch tokens masked (EVA-X: 0.3).
        teacher_input: The teacher's input convention (None: it takes the student's view as is).
            Kept as non-persistent buffers, so it follows the module to any device and process.
    """

    def __init__(
        self,
        student: Eva,
        teacher: nn.Module | None = None,
        *,
        target: Target = "teacher",
        mask_ratio: float = 0.3,
        teacher_input: TeacherInput | None = None,
    ) -> None:
        super().__init__()
        if target == "teacher" and teacher is None:
            raise XrayfmError("target='teacher' needs a teacher model; use target='pixel' to start without one")
        if target not in ("teacher", "pixel"):
            raise XrayfmError(f"unknown MIM target {target!r}; choose 'teacher' or 'pixel'")
        self.student, self.target, self.mask_ratio = student, target, mask_ratio
        dim = student.embed_dim
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.patch = student.patch_embed.patch_size[0]
        if target == "teacher":
            self.teacher = teacher.eval().requires_grad_(False)
            out_dim = getattr(teacher, "num_features", None) or teacher.embed_dim
        else:
            self.teacher = None
            out_dim = self.patch * self.patch * student.patch_embed.proj.in_channels
        self.head = nn.Linear(dim, out_dim)
        self.teacher_size, self.teacher_interpolation = None, "bilinear"
        self.renormalise = teacher_input is not None
        if teacher_input is not None:
            if self.teacher is None:
                raise XrayfmError("teacher_input describes a teacher's input, but this objective has no teacher")
            t = teacher_input
            std = torch.tensor(t.std, dtype=torch.float32).view(1, -1, 1, 1)
            mean = torch.tensor(t.mean, dtype=torch.float32).view(1, -1, 1, 1)
            # (x * source_std + source_mean - mean) / std as one affine map per teacher channel
            self.register_buffer("teacher_scale", t.source_std / std, persistent=False)
            self.register_buffer("teacher_shift", (t.source_mean - mean) / std, persistent=False)
            self.teacher_size, self.teacher_interpolation = t.size, t.interpolation

    def train(self, mode: bool = True) -> MaskedFeatureModeling:
        """Switch the student and head; the teacher always stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def student_tokens(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Student patch tokens (B, N, D) with masked positions replaced by the mask token."""
        s = self.student
        x = s.patch_embed(images)
        w = mask.unsqueeze(-1).to(x.dtype)
        x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w
        x, rope = s._pos_embed(x)
        x = s.norm_pre(x)
        for blk in s.blocks:
            if s.grad_checkpointing and self.training:  # set_grad_checkpointing(True) on the student
                x = checkpoint(blk, x, rope=rope, use_reentrant=False)
            else:
                x = blk(x, rope=rope)
        x = s.norm(x)
        return x[:, s.num_prefix_tokens :]

    def teacher_view(self, images: torch.Tensor) -> torch.Tensor:
        """The student's view (B, C, H, W) in the teacher's input convention (see :class:`TeacherInput`)."""
        if not self.renormalise:
            return images
        grey = images[:, :1]  # the view is one grey channel repeated
        size = self.teacher_size
        if size is not None and tuple(grey.shape[-2:]) != (size, size):
            mode = self.teacher_interpolation
            shrink = size < max(grey.shape[-2:])
            kw = {} if mode == "nearest" else {"align_corners": False, "antialias": shrink}
            grey = F.interpolate(grey, size=(size, size), mode=mode, **kw)
        return grey * self.teacher_scale + self.teacher_shift

    def targets(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Regression targets (B, N, D_t) from the unmasked image."""
        if self.teacher is None:
            return patch_pixels(images, self.patch)
        with torch.no_grad():
            return _resize_grid(_patch_tokens(self.teacher, self.teacher_view(images)), grid)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """MIM loss of a batch; ``mask`` (B, N) is drawn at ``mask_ratio`` when not given."""
        grid = self.student.patch_embed.dynamic_feat_size(images.shape[-2:])
        n = grid[0] * grid[1]
        if mask is None:
            mask = random_patch_mask(images.shape[0], n, self.mask_ratio, device=images.device)
        pred = self.head(self.student_tokens(images, mask))
        target = self.targets(images, grid)
        if self.target == "teacher":
            return masked_cosine_loss(pred, target, mask)
        return masked_mse_loss(pred, target, mask)
