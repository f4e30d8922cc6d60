"""Benchmark: what HTTP parsing and the upload's framing cost the server, per request, paired.

``xrayfm serve`` runs uvicorn with httptools (:mod:`xrayfm.serve.http_protocol`, which bounds request
heads) instead of the pure-Python h11, and accepts an upload as the request body itself besides a
multipart form's field. This measures both choices on a bare FastAPI endpoint that reads the upload
and answers a small JSON (no decoding, no model), so the figures are the HTTP server's and
Starlette's alone: per (parser, upload) setting, the server's CPU per request (``/proc``) and the p50
of sequential requests from one keep-alive connection carrying the same 512 px PNG as
``bench/serve_latency.py``. Settings are measured in alternating rounds (the VM's speed drifts between
minutes) and compared within each round against h11 + multipart, uvicorn's and FastAPI's defaults.

Usage: python bench/http_parsers.py [--rounds 3] [--requests 400]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Request, UploadFile
from provenance import write_result
from serve_latency import UPLOADS, Connection, cpu_seconds, free_port, png, predict_request

REPO = Path(__file__).resolve().parents[1]
PARSERS = ("h11", "httptools")
BASELINE = ("h11", "multipart")


def bare_app() -> FastAPI:
    """A FastAPI app whose ``/predict`` takes an upload the way ``xrayfm serve`` does (multipart field or
    body) and answers its size: what is left is HTTP, framing and FastAPI."""
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request, file: UploadFile | None = File(None)) -> dict[str, int]:
        data = await file.read() if file is not None else await request.body()
        return {"bytes": len(data), "server_ms": 0}

    return app


def serve(port: int, parser: str) -> None:
    """Run :func:`bare_app` on ``port`` with ``parser`` (blocks)."""
    import uvicorn

    from xrayfm.serve.http_protocol import BoundedHttpToolsProtocol

    http = BoundedHttpToolsProtocol if parser == "httptools" else "h11"
    uvicorn.run(bare_app(), host="127.0.0.1", port=port, log_level="warning", http=http)


@contextmanager
def server(parser: str) -> Iterator[tuple[int, int]]:
    """:func:`serve` in its own process, answering: its port and process id."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--parser", parser])
    try:
        for _ in range(600):
            try:
                Connection(port).request(predict_request(b"x", False, "body"))
                break
            except OSError:
                time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(port: int, pid: int, upload: str, requests: int, image: bytes) -> dict[str, float]:
    """p50 and the server's CPU per request over ``requests`` sequential uploads on one connection."""
    conn, raw = Connection(port), predict_request(image, False, upload)
    for _ in range(20):
        conn.request(raw)
    cpu0, times = cpu_seconds(pid), []
    for _ in range(requests):
        t0 = time.perf_counter()
        status, _ = conn.request(raw)
        times.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"the bare server answered {status}")
    cpu = cpu_seconds(pid) - cpu0
    conn.close()
    return {"p50_ms": round(float(np.median(times)) * 1000, 3), "server_cpu_ms": round(cpu * 1000 / requests, 3)}


def summary(rows: Sequence[dict]) -> list[dict]:
    """Per setting: median p50 and CPU, and their paired ratio to h11 + multipart within each round."""
    by = {(r["round"], r["parser"], r["upload"]): r for r in rows}
    rounds = sorted({r["round"] for r in rows})
    out = []
    for parser, upload in itertools.product(PARSERS, UPLOADS):
        mine = [by[k, parser, upload] for k in rounds]
        entry: dict = {"parser": parser, "upload": upload}
        for key in ("p50_ms", "server_cpu_ms"):
            entry[key] = round(float(np.median([r[key] for r in mine])), 3)
            # CPU is counted in 10 ms ticks: a run too short to register any has no ratio
            base = [by[(k, *BASELINE)][key] for k in rounds]
            ratios = [by[k, parser, upload][key] / b for k, b in zip(rounds, base) if b]
            entry[f"{key}_vs_h11_multipart"] = None if not ratios else {
                "median": round(float(np.median(ratios)), 3), "min": round(min(ratios), 3),
                "max": round(max(ratios), 3)}  # fmt: skip
        out.append(entry)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400, help="sequential requests per setting and round")
    ap.add_argument("--image", type=int, default=512, help="side of the uploaded PNG (px)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "http_parsers_cpu.json")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the bare server on this port
    ap.add_argument("--parser", choices=PARSERS, default="h11", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.parser)
        return 0
    image, rows = png(0, args.image), []
    with ExitStack() as stack:
        servers = {p: stack.enter_context(server(p)) for p in PARSERS}
        for k in range(args.rounds):
            for parser, upload in itertools.product(PARSERS, UPLOADS):
                port, pid = servers[parser]
                rows.append({"round": k, "parser": parser, "upload": upload,
                             **measure(port, pid, upload, args.requests, image)})  # fmt: skip
                print(rows[-1], flush=True)
    report = {"benchmark": "http_parsers", "image": f"{args.image}x{args.image} 8-bit PNG ({len(image)} bytes)",
              "requests": args.requests, "rounds": args.rounds, "baseline": "+".join(BASELINE),
              "summary": summary(rows), "runs": rows}  # fmt: skip
    write_result(args.out, report, packages=("fastapi", "uvicorn", "httptools", "h11", "python-multipart"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
