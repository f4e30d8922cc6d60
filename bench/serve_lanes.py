"""Benchmark: ``xrayfm serve --lanes 1`` against ``--lanes 2``, paired, on the same machine and model.

Batches under load run one at a time on all the model's threads (``--lanes 1``) or two side by side on
half of them each (``--lanes 2``, the CPU default; :mod:`xrayfm.serve.batcher`). Machine speed on a
shared VM drifts by tens of percent between minutes, so the two settings are measured in alternating
rounds (1, 2, 1, 2, ...; a fresh server each time, same EVA-X model, same uploads as
``bench/serve_latency.py``: 512 px PNG, 224 px input, ``--max-batch 16``) and compared round by round:
per round, lanes-2 requests/s / lanes-1 requests/s at the most clients and lanes-2 p50 - lanes-1 p50
at 1 client; the summary gives their median and range over the rounds.

Usage: python bench/serve_lanes.py [--rounds 3] [--archs eva_x_tiny_patch16,eva_x_small_patch16]
       [--backends torch,onnx] [--requests 300]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from paired_servers import paired_arguments, paired_report, parse_paired, saved_models, spread, within_rounds
from provenance import write_result
from serve_latency import measure, running_server


def paired(rows: Sequence[dict], clients: int) -> dict:
    """Round-by-round comparison of lanes 2 with lanes 1: throughput ratio at ``clients``, p50 difference at 1."""
    speed, p50 = within_rounds(rows, "lanes", 1, 2, clients)
    out = {f"requests_per_s_{clients}_clients_lanes2_over_lanes1": spread(speed, 3)}
    if p50:
        out["p50_ms_1_client_lanes2_minus_lanes1"] = spread(p50, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = paired_arguments(__doc__.splitlines()[0])
    ap.add_argument("--backends", default="torch,onnx")
    args = parse_paired(ap, "serve_lanes", argv)
    backends = [b for b in args.backends.split(",") if b != "onnx" or args.device == "cpu"]
    skipped = [f"onnx: ONNX Runtime runs on the CPU here; a {args.device} run measures PyTorch"] * (
        len(backends) < len(args.backends.split(","))
    )
    if not backends:
        raise SystemExit(
            f"--device {args.device}: nothing to measure (ONNX Runtime runs on the CPU; use --backends torch)"
        )
    rows, summary = [], []
    for arch, model_dir in saved_models(args):
        for backend in backends:
            mine = []
            for k in range(args.rounds):
                for lanes in (1, 2):
                    with running_server(model_dir, backend, "fp32", args.device, args.max_batch, lanes) as (port, pid):
                        for clients in (1, args.clients):
                            row = {"arch": arch, "backend": backend, "round": k, "lanes": lanes,
                                   **measure(port, clients, args.requests, False, pid, args.image)}  # fmt: skip
                            print(json.dumps(row), flush=True)
                            mine.append(row)
            rows += mine
            summary.append({"arch": arch, "backend": backend, **paired(mine, args.clients)})
    design = "alternating rounds of --lanes 1 and --lanes 2, a fresh server each; compared within rounds"
    report = paired_report("serve_lanes", design, args, summary, rows, skipped=skipped)
    write_result(args.out, report, packages=("onnxruntime", "fastapi", "uvicorn"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
