"""Benchmark: /predict latency and throughput of ``xrayfm serve`` under concurrent clients.

For EVA-X Ti/16 and S/16 classification models (14 findings, 224 px; random weights: speed does
not depend on them), exported to ONNX as a user would (``xrayfm export onnx``), the server runs
as its own process (``xrayfm serve --backend torch|onnx``) and this process sends a bounded
number of requests over loopback from 1, 4 and 16 concurrent clients, with and without
heatmaps (Grad-CAM, computed with PyTorch on both backends). Results (p50 / p95 / p99 latency,
requests/s, batching counters from /health) go to ``bench/results/serve_latency_<device>.json``
with their provenance (``bench/provenance.py``: command, commit, date, machine, versions).

Usage: python bench/serve_latency.py [--requests 200] [--archs eva_x_tiny_patch16,eva_x_small_patch16]
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from provenance import write_result

from xrayfm.models import create_model
from xrayfm.models.onnx_export import export_onnx
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
FINDINGS = TaskSpec("findings", "multilabel", tuple(f"finding_{k}" for k in range(14)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(seed: int, size: int = 512) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def measure(url: str, clients: int, requests: int, heatmap: bool) -> dict[str, float]:
    payloads = [png(i) for i in range(8)]
    with httpx.Client(timeout=120) as client:

        def call(i: int) -> tuple[float, int]:
            t0 = time.perf_counter()
            r = client.post(f"{url}/predict", params={"heatmap": str(heatmap).lower()},
                            files={"file": ("x.png", payloads[i % 8], "image/png")})  # fmt: skip
            return time.perf_counter() - t0, r.status_code

        call(0)  # warm-up
        before = client.get(f"{url}/health").json()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(call, range(requests)))
        wall = time.perf_counter() - t0
        health = client.get(f"{url}/health").json()
    lat = np.asarray([t for t, code in results if code == 200]) * 1000
    return {
        "clients": clients, "requests": requests, "heatmap": heatmap, "ok": int(len(lat)),
        "errors": int(sum(code != 200 for _, code in results)),
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1), "requests_per_s": round(len(lat) / wall, 2),
        "mean_batch": round((health["requests"] - before["requests"]) / max(1, health["batches"] - before["batches"]),
                            2),
    }  # fmt: skip


def serve_and_measure(model_dir: Path, arch: str, backend: str, args: argparse.Namespace) -> list[dict]:
    """Start ``xrayfm serve`` on ``model_dir`` and measure each clients x heatmap setting."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "xrayfm.cli", "serve", str(model_dir), "--port", str(port), "--backend", backend,
         "--max-batch", "16", "--queue-size", "256"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for heatmap in (False, True):
            for clients in (int(c) for c in args.clients.split(",")):
                n = args.requests if not heatmap else max(clients * 2, args.requests // 4)
                row = {"arch": arch, "backend": backend, **measure(url, clients, n, heatmap)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--archs", default="eva_x_tiny_patch16,eva_x_small_patch16")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--backends", default="torch,onnx")
    args = ap.parse_args()
    runs = []
    for arch in args.archs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            model = XrayModel(create_model(arch, num_classes=0, img_size=224), [FINDINGS])  # the EVA-X record
            save_task_model(model, Path(tmp) / "model", arch=arch, model_kwargs={"img_size": 224}, info={})
            export_onnx(Path(tmp) / "model")
            for backend in args.backends.split(","):
                runs += serve_and_measure(Path(tmp) / "model", arch, backend, args)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    out = REPO / "bench" / "results" / f"serve_latency_{device}.json"
    report = {
        "benchmark": "serve_latency",
        "backends": args.backends.split(","),
        "load": "httpx threads in the benchmark process, server in its own process, same machine (loopback)",
        "image": "512x512 8-bit PNG upload",
        "model_input": 224,
        "runs": runs,
    }
    write_result(out, report, packages=("onnxruntime", "httpx", "fastapi", "uvicorn"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
