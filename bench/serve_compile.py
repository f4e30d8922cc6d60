"""Benchmark: ``xrayfm serve --compile`` against the same server without it, paired, on the same machine and model.

``--compile`` runs the server's plain forward passes through ``torch.compile`` (:mod:`xrayfm.serve.compiled`).
Machine speed on a shared VM drifts by tens of percent between minutes, so the two settings are measured
in alternating rounds (eager, compiled, eager, compiled, ...; a fresh server each time, same EVA-X model,
same uploads as ``bench/serve_latency.py``: 512 px PNG, 224 px input, ``--max-batch 16``, PyTorch backend)
and compared round by round: per round, compiled requests/s / eager requests/s at the most clients and
compiled p50 - eager p50 at 1 client; the summary gives their median and range over the rounds, and the
seconds each server took from its start to its first answer (the compile happens there).

Usage: python bench/serve_compile.py [--rounds 3] [--archs eva_x_tiny_patch16,eva_x_small_patch16]
       [--precisions fp32,bf16] [--requests 300] [--device auto|cpu|cuda]

On a GPU (``--device cuda``, or ``auto`` where one is visible) the servers run the model there and the
results go to ``serve_compile_gpu.json``; ``--device cuda`` without CUDA stops with a one-line message.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from paired_servers import paired_arguments, paired_report, parse_paired, saved_models, spread, within_rounds
from provenance import write_result
from serve_latency import measure, running_server

SETTINGS = ("eager", "compiled")


def paired(rows: Sequence[dict], clients: int) -> dict:
    """Round-by-round comparison of compiled with eager: throughput ratio at ``clients``, p50 difference at 1."""
    speed, p50 = within_rounds(rows, "setting", "eager", "compiled", clients)
    startup = {s: [r["startup_s"] for r in sorted(rows, key=lambda r: r["round"]) if r["setting"] == s
                   and r["clients"] == 1] for s in SETTINGS}  # fmt: skip
    return {f"requests_per_s_{clients}_clients_compiled_over_eager": spread(speed, 3),
            "p50_ms_1_client_compiled_minus_eager": spread(p50, 1),
            "startup_s": {s: spread(v, 1) for s, v in startup.items()}}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = paired_arguments(__doc__.splitlines()[0])
    ap.add_argument("--precisions", default="fp32,bf16", help="the servers' --precision (torch backend)")
    args = parse_paired(ap, "serve_compile", argv)
    rows, summary = [], []
    for arch, model_dir in saved_models(args):
        for precision in args.precisions.split(","):
            mine = []
            for k in range(args.rounds):
                for setting in SETTINGS:
                    started = time.perf_counter()
                    extra = ["--compile"] if setting == "compiled" else []
                    with running_server(model_dir, "torch", precision, args.device, args.max_batch, extra=extra,
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
    design = ("alternating rounds of xrayfm serve without and with --compile, a fresh server each; "
              "compared within rounds")  # fmt: skip
    report = paired_report("serve_compile", design, args, summary, rows, backend="torch")
    write_result(args.out, report, packages=("fastapi", "uvicorn"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
