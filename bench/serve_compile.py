"""Benchmark: ``xrayfm serve --compile`` against the same server without it, paired, on the same machine and model.

``--compile`` runs the server's plain forward passes through ``torch.compile`` (:mod:`xrayfm.serve.compiled`).
Machine speed on a shared VM drifts by tens of percent between minutes, so the two settings are measured
in alternating rounds (eager, compiled, eager, compiled, ...; a fresh server each time, same EVA-X model,
same uploads as ``bench/serve_latency.py``: 512 px PNG, 224 px input, ``--max-batch 16``, PyTorch backend)
and compared round by round: per round, compiled requests/s / eager requests/s at the most clients and
compiled p50 - eager p50 at 1 client; the summary gives their median and range over the rounds, and the
seconds each server took from its start to its first answer (the compile happens there).

Usage: python bench/serve_compile.py [--rounds 3] [--archs eva_x_tiny_patch16,eva_x_small_patch16]
       [--precisions fp32,bf16] [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from provenance import write_result
from serve_latency import LOAD, measure, running_server, saved_model

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("eager", "compiled")


def spread(values: Sequence[float], digits: int) -> dict:
    return {"median": round(float(np.median(values)), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "rounds": [round(v, digits) for v in values]}  # fmt: skip


def paired(rows: Sequence[dict], clients: int) -> dict:
    """Round-by-round comparison of compiled with eager: throughput ratio at ``clients``, p50 difference at 1."""
    by = {(r["round"], r["setting"], r["clients"]): r for r in rows}
    rounds = sorted({r["round"] for r in rows})
    speed = [by[k, "compiled", clients]["requests_per_s"] / by[k, "eager", clients]["requests_per_s"] for k in rounds]
    p50 = [by[k, "compiled", 1]["p50_ms"] - by[k, "eager", 1]["p50_ms"] for k in rounds]
    startup = {s: [by[k, s, 1]["startup_s"] for k in rounds] for s in SETTINGS}
    return {f"requests_per_s_{clients}_clients_compiled_over_eager": spread(speed, 3),
            "p50_ms_1_client_compiled_minus_eager": spread(p50, 1),
            "startup_s": {s: spread(v, 1) for s, v in startup.items()}}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--archs", default="eva_x_tiny_patch16,eva_x_small_patch16")
    ap.add_argument("--precisions", default="fp32,bf16", help="the servers' --precision (torch backend)")
    ap.add_argument("--clients", type=int, default=16, help="the most clients (1 client is measured too)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--image", type=int, default=512)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve_compile_cpu.json")
    args = ap.parse_args(argv)
    rows, summary = [], []
    for arch in args.archs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            saved_model(model_dir, arch, args.size)
            for precision in args.precisions.split(","):
                mine = []
                for k in range(args.rounds):
                    for setting in SETTINGS:
                        started = time.perf_counter()
                        extra = ["--compile"] if setting == "compiled" else []
                        with running_server(model_dir, "torch", precision, "cpu", args.max_batch, extra=extra,
                                            startup_s=900) as (port, pid):  # fmt: skip
                            startup = round(time.perf_counter() - started, 1)
                            for clients in (1, args.clients):
                                row = {"arch": arch, "precision": precision, "round": k, "setting": setting,
                                       "startup_s": startup,
                                       **measure(port, clients, args.requests, False, pid, args.image)}  # fmt: skip
                                print(json.dumps(row), flush=True)
                                mine.append(row)
                rows += mine
                summary.append({"arch": arch, "precision": precision, **paired(mine, args.clients)})
    report = {
        "benchmark": "serve_compile",
        "device": "cpu",
        "design": "alternating rounds of xrayfm serve without and with --compile, a fresh server each; "
        "compared within rounds",
        "load": LOAD,
        "image": f"{args.image}x{args.image} 8-bit PNG upload",
        "model_input": args.size,
        "max_batch": args.max_batch,
        "backend": "torch",
        "torch_threads": torch.get_num_threads(),
        "summary": summary,
        "runs": rows,
    }
    write_result(args.out, report, packages=("fastapi", "uvicorn"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
