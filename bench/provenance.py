"""What every benchmark result records about itself: command, code, date, machine, software.

Shared by the scripts in ``bench/`` (run as ``python bench/NAME.py``, so this folder is on the
import path). ``write_result`` adds :func:`provenance` to a result and writes it atomically;
``config_hash`` names cached artefacts and result parts after the settings that produced them,
so a cache is never reused for another configuration; ``start_real_data`` is the common start of
the benchmarks on ../shared/datasets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from xrayfm.io.atomic import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
# /proc/cpuinfo flags that decide which CPU kernels (and so which speeds) are possible.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def config_hash(cfg: dict[str, Any]) -> str:
    """Short SHA-256 of ``cfg`` as canonical JSON (sorted keys; unknown types as strings)."""
    text = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpuinfo() -> tuple[str | None, set[str]]:
    """CPU model name and flags from ``/proc/cpuinfo`` (None and no flags where it is absent)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None, set()
    fields = [line.split(":", 1) for line in lines if ":" in line]
    model = next((v.strip() for k, v in fields if k.strip() == "model name"), None)
    flags = next((set(v.split()) for k, v in fields if k.strip() == "flags"), set())
    return model, flags


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The hardware and OS: CPU model, cores (all, and usable by this process), vector / matrix
    flags, memory, OS, GPU."""
    import torch

    model, flags = _cpuinfo()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS} if flags else None,
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def provenance(packages: Sequence[str] = ()) -> dict[str, Any]:
    """Where a result comes from.

    Args:
        packages: Distributions whose versions matter to this benchmark, besides python, torch,
            timm and xrayfm (e.g. ``pillow``, ``onnxruntime``).

    Returns:
        ``command`` (``sys.argv``), ``git`` (``commit``, ``dirty``), ``date`` (UTC, ISO 8601),
        ``machine`` (see :func:`machine`), ``software`` (versions) and ``torch_threads``.
    """
    import torch

    status = _git("status", "--porcelain")
    return {
        "command": list(sys.argv),
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "software": {
            "python": platform.python_version(),
            "torch": torch.__version__,  # with its build tag (+cu130, +cpu), which the metadata lacks
            **{name: _version(name) for name in ("timm", "xrayfm", *packages)},
        },
        "torch_threads": torch.get_num_threads(),
    }


def torch_device(choice: str) -> str:
    """A benchmark's ``--device`` (``auto``, ``cpu`` or ``cuda``) as a torch device; refuses ``cuda`` without CUDA."""
    import torch

    from xrayfm.errors import XrayfmError

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise XrayfmError("--device cuda: CUDA is not available here (use --device cpu or auto)")
    return choice


def start_real_data(args: Any, benchmark: str, *, gpu: bool) -> tuple[Path, Path, Path]:
    """A real-data benchmark's start: logging on, ``args.shared`` checked, ``args.work`` resolved, and
    its results file (``args.out``, else ``bench/results/<benchmark>_<cpu|gpu>.json``).

    Returns:
        (shared datasets folder, work folder, results file).

    Raises:
        SystemExit: The shared datasets are not there.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    shared, work = Path(args.shared), Path(args.work).resolve()
    if not shared.is_dir():
        raise SystemExit(f"real datasets not found at {shared}; pass --shared")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"{benchmark}_{'gpu' if gpu else 'cpu'}.json"
    return shared, work, out


def write_result(path: str | Path, payload: dict[str, Any], *, packages: Sequence[str] = ()) -> Path:
    """Write ``payload`` plus its ``provenance`` as JSON to ``path`` atomically; returns ``path``.

    Args:
        path: Destination (parent folders are created).
        payload: The benchmark's result; must not have a ``provenance`` key of its own.
        packages: Extra distributions whose versions are recorded (see :func:`provenance`).
    """
    if "provenance" in payload:
        raise ValueError("the payload already has a 'provenance' key")
    return atomic_write_json(path, {**payload, "provenance": provenance(packages)})


def earlier_part(path: Path, name: str, key: str) -> dict[str, Any] | None:
    """Experiment ``name`` of the results file ``path`` when it was measured with config ``key``.

    A benchmark run with ``--only`` keeps the other experiments of its earlier results file, but
    only those whose recorded ``config_hash`` equals what the current settings give; a stale one is
    dropped with a warning, so a results file never mixes settings.
    """
    old = (json.loads(path.read_text()).get("experiments", {}) if path.is_file() else {}).get(name)
    if old is not None and old.get("config_hash") != key:
        logging.getLogger("bench").warning(
            "dropping %s from %s: it was measured with config %s, these settings give %s",
            name, path, old.get("config_hash", "(none recorded)"), key,
        )  # fmt: skip
        return None
    return old
