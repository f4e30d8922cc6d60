"""Reduced-precision inference: which precisions a backend runs, and whether this machine can.

Three precisions are offered. ``fp32`` is the reference. ``bf16`` is PyTorch autocast, worth
having only where the hardware computes in bf16 (x86 CPUs with AVX-512-BF16 or AMX-BF16, CUDA
GPUs of compute capability 8.0 or later); elsewhere autocast emulates bf16 and is slower than
fp32, so it is refused rather than silently slow. ``int8`` is an ONNX Runtime model quantized by
``xrayfm export onnx --precision int8`` (:mod:`xrayfm.models.onnx_quantize`). ONNX Runtime's CPU
provider has no bf16 kernels and PyTorch no int8 path for these models, so each reduced
precision belongs to one backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from xrayfm.errors import XrayfmError

PRECISIONS = ("fp32", "bf16", "int8")
#: The backend each reduced precision runs on.
PRECISION_BACKEND = {"bf16": "torch", "int8": "onnx"}
#: x86 CPU flags (``/proc/cpuinfo`` names) with native bf16 arithmetic; either one is enough.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: Largest accepted change of AUROC or Dice at reduced precision (issue 18: 0.005 on Kermany / JSRT).
DEFAULT_TOLERANCE = 0.005


class PrecisionError(XrayfmError):
    """A precision this machine or backend cannot run, or one that changed the model's accuracy."""


def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as Linux reports them (empty where ``/proc/cpuinfo`` is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def missing_bf16_support(device: str | torch.device = "cpu") -> str | None:
    """What ``device`` lacks to compute in bf16 natively, or None when it has it.

    Args:
        device: Torch device.

    Returns:
        The missing instruction set or hardware, named for the user; None where bf16 is native.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return None
        return "CUDA bf16 (a GPU of compute capability 8.0 or later)"
    if device.type != "cpu":
        return f"a bf16 path on {device.type} devices"
    flags = cpu_flags()
    if any(f in flags for f in BF16_CPU_FLAGS) and torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return None
    return "AVX-512-BF16 or AMX-BF16 (CPU flags avx512_bf16 / amx_bf16)"


def check_precision(precision: str, backend: str, device: str | torch.device = "cpu") -> None:
    """Refuse a precision the backend or the machine cannot run, in one line saying what to do.

    Args:
        precision: ``fp32``, ``bf16`` or ``int8``.
        backend: ``torch`` or ``onnx``.
        device: Torch device (bf16 is probed on it).

    Raises:
        PrecisionError: Unknown precision, wrong backend for it, or bf16 without native support.
    """
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    wanted = PRECISION_BACKEND.get(precision)
    if wanted is not None and backend != wanted:
        raise PrecisionError(
            f"precision {precision} runs on the {wanted} backend, not {backend}; use --backend {wanted}"
        )
    if precision == "bf16" and (missing := missing_bf16_support(device)) is not None:
        raise PrecisionError(f"bf16 refused: this machine lacks {missing}; bf16 would be emulated and slower than fp32")


def autocast(precision: str, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """The context a forward pass at ``precision`` runs in: bf16 autocast, or nothing for fp32."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@contextlib.contextmanager
def no_grad_at(precision: str, device: str | torch.device = "cpu") -> Iterator[None]:
    """``torch.no_grad`` inside :func:`autocast` (inference at ``precision``)."""
    with torch.no_grad(), autocast(precision, device):
        yield
