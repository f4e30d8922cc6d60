"""What the paired server benchmarks share (``bench/serve_lanes.py``, ``bench/serve_compile.py``): two server
settings measured in alternating rounds on one model and load, compared within each round."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import torch_device
from serve_latency import LOAD, saved_model

from xrayfm.errors import XrayfmError

RESULTS = Path(__file__).resolve().parent / "results"


def paired_arguments(description: str) -> argparse.ArgumentParser:
    """The options every paired benchmark takes (rounds, models, load, sizes, device, result file); read them
    with :func:`parse_paired`."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--archs", default="eva_x_tiny_patch16,eva_x_small_patch16")
    ap.add_argument("--clients", type=int, default=16, help="the most clients (1 client is measured too)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--image", type=int, default=512)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda: where the servers run their model")
    ap.add_argument("--out", type=Path, help="result file (default bench/results/<benchmark>_<cpu|gpu>.json)")
    return ap


def parse_paired(ap: argparse.ArgumentParser, benchmark: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed options, ``--device`` resolved (``cuda`` without CUDA stops here in one line) and ``--out``
    defaulting to ``results/<benchmark>_<cpu|gpu>.json``."""
    args = ap.parse_args(argv)
    try:
        args.device = torch_device(args.device)
    except XrayfmError as exc:
        raise SystemExit(str(exc)) from None
    args.out = args.out or RESULTS / f"{benchmark}_{'cpu' if args.device == 'cpu' else 'gpu'}.json"
    return args


def saved_models(args: argparse.Namespace) -> Iterator[tuple[str, Path]]:
    """Each of ``args.archs`` saved as a served model (``args.size`` px input) in a temporary folder, removed
    when the next one comes."""
    for arch in args.archs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            saved_model(model_dir, arch, args.size)
            yield arch, model_dir


def spread(values: Sequence[float], digits: int) -> dict[str, Any]:
    """Median, range and the per-round values, rounded to ``digits``."""
    return {"median": round(float(np.median(values)), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "rounds": [round(v, digits) for v in values]}  # fmt: skip


def within_rounds(
    rows: Sequence[dict], field: str, base: Any, other: Any, clients: int
) -> tuple[list[float], list[float]]:
    """Per round, ``other`` against ``base`` (the values of ``field`` in the rows): requests/s ratio at
    ``clients``, and p50 difference at 1 client for the rounds that measured both at 1 client."""
    by = {(r["round"], r[field], r["clients"]): r for r in rows}
    rounds = sorted({r["round"] for r in rows})
    speed = [by[k, other, clients]["requests_per_s"] / by[k, base, clients]["requests_per_s"] for k in rounds]
    p50 = [by[k, other, 1]["p50_ms"] - by[k, base, 1]["p50_ms"] for k in rounds
           if (k, base, 1) in by and (k, other, 1) in by]  # fmt: skip
    return speed, p50


def paired_report(
    benchmark: str, design: str, args: argparse.Namespace, summary: list, rows: list, **extra: Any
) -> dict[str, Any]:
    """The result file's content: what was measured and how, the round-by-round summary and every row."""
    return {
        "benchmark": benchmark,
        "device": args.device,
        "design": design,
        "load": LOAD,
        "image": f"{args.image}x{args.image} 8-bit PNG upload",
        "model_input": args.size,
        "max_batch": args.max_batch,
        **extra,
        "torch_threads": torch.get_num_threads(),
        "summary": summary,
        "runs": rows,
    }
