"""Benchmark: the raw engine beside ``xrayfm serve``: what the server adds to the model's own time.

For EVA-X Ti/16 and S/16 classification models (14 findings, 224 px; random weights: speed does
not depend on them), exported to ONNX as a user would (``xrayfm export onnx``), one run measures
per backend and precision (fp32 on PyTorch and on ONNX Runtime; bf16 autocast on PyTorch where the
CPU has native bf16, else the row is skipped with the reason; int8 on ONNX Runtime, exported with
``xrayfm export onnx --precision int8``'s quantizer, statically calibrated on a small phantom set
recorded as the model's training data):

- the raw engine, called directly in this process: the exported model (PyTorch forward without
  gradients, or the ONNX Runtime session) at batch 1 and at the server's ``--max-batch``, and,
  for heatmaps (always PyTorch), a full forward+backward pass and xrayfm's own batched Grad-CAM
  call (:func:`xrayfm.explain.explain_batch`) at the same two sizes;
- the server, in its own process, over loopback from 1, 4 and 16 concurrent clients, with and
  without heatmaps: p50 / p95 / p99 latency, requests/s, the batches it formed and how many ran on
  the wide lane (``/health``; ``--lanes`` sets the server's) and the p50 of the server's own answer
  time (``server_ms``: from the parsed upload to the answer), so that HTTP and transport (client p50
  - server_ms p50) are told apart from decoding, batching and the model; the PNG goes as the request
  body (``Content-Type: image/png``; ``--upload multipart`` for a form's field), and plain fp32 ``/predict``
  at 1 and the most clients is measured the other way too, on the same server; each row also splits the
  server's CPU per request by thread role (``server_cpu_ms_per_request``: the model's lanes, the decoding
  threads, the event loop, others such as ONNX Runtime's workers), read from ``/proc`` by the names
  :mod:`xrayfm.serve.thread_names` gives the threads;
- where the server ran batches side by side (lanes), the raw engine run the same way at the most
  clients: that many passes at once, each on its share of the threads (``ratio_to_raw_lanes``).

Heatmaps stay fp32 at every precision (the server's rule), so reduced-precision rows are plain
``/predict`` only, and each reduced configuration also gets ``speed_vs_fp32``: fp32 time / its time for
the raw forward pass (bs 1 and max batch) and the server (1-client p50, most-clients requests/s), all
from the same run.

Each target of issue 18 is then checked in paired rounds (``--rounds``, default 3): the server
measured again, and the raw engine timed right after it, so each ratio divides numbers taken seconds
apart (this VM's speed drifts by up to 20% between minutes); the median over the rounds is reported
with the ratio's range (``engine[].ratios``). The targets: at 1 client, p50 <= raw single-image
latency + 3 ms (heatmap: <= 1.3x a raw forward+backward); at the most clients, throughput >= 0.9x
the raw engine's at the batch sizes the server formed (heatmap: >= 0.8x a raw batched
forward+backward): the server counts its batches per size (``/health`` ``batch_sizes``), the raw engine
is timed at each size the round formed, and its images/s are those of the same batches run one after
another (:func:`rate_at_sizes`); ``ratio_at_mean_batch`` keeps the yardstick of earlier runs, the raw
engine at the round's mean batch size only. The load comes from this process: keep-alive HTTP/1.1 connections on
plain sockets sending prebuilt requests (the cheapest load Python makes); its share of the CPU
time spent by load and server together is recorded with every row, so a load generator that
steals the server's cores does not go unnoticed. Results go to
``bench/results/serve_latency_<device>.json`` with their provenance (``bench/provenance.py``).

On a GPU (``--device cuda``, or ``auto`` where one is visible) server and raw engine run PyTorch on it
(fp32 and bf16; ONNX Runtime runs on the CPU here, so its rows are skipped with that reason) and the
results go to ``serve_latency_gpu.json``; ``--device cuda`` on a machine without CUDA stops with a
one-line message.

Usage: python bench/serve_latency.py [--requests 200] [--archs eva_x_tiny_patch16,eva_x_small_patch16]
       [--device auto|cpu|cuda] [--precisions fp32,bf16,int8]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from provenance import torch_device, write_result

from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.errors import XrayfmError
from xrayfm.explain import explain_batch
from xrayfm.models import create_model
from xrayfm.models.onnx_export import export_onnx
from xrayfm.models.onnx_model import OnnxModel
from xrayfm.models.precision import PrecisionError, check_precision, no_grad_at
from xrayfm.models.task_checkpoint import load_task_model, save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
FINDINGS = TaskSpec("findings", "multilabel", tuple(f"finding_{k}" for k in range(14)))
BOUNDARY = "xrayfm-bench"
#: How the benchmark sends the PNG: as the request body (image/png) or as a multipart form's field.
UPLOADS = ("body", "multipart")
LOAD = ("keep-alive HTTP/1.1 connections on plain sockets sending prebuilt requests, one thread per client, in the "
        "benchmark process; server in its own process, same machine (loopback); client_cpu_share = the load's CPU "
        "time / (load + server CPU time) during the row; requests_per_s = answers completed while every client "
        "was busy (after each client's first answer, before the first client ran out of requests), "
        "requests_per_s_overall = all answers / the row's wall time")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(seed: int, size: int = 512) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def predict_request(image: bytes, heatmap: bool, upload: str = "body") -> bytes:
    """The bytes of one ``POST /predict`` with ``image`` sent as the request body (``upload="body"``,
    ``Content-Type: image/png``) or as a multipart form's ``file`` field (``"multipart"``)."""
    if upload == "body":
        body, kind = image, "image/png"
    else:
        body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
                "Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()  # fmt: skip
        kind = f"multipart/form-data; boundary={BOUNDARY}"
    head = (f"POST /predict?heatmap={str(heatmap).lower()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection that sends prebuilt requests and reads whole answers."""

    def __init__(self, port: int) -> None:
        self.port, self.sock, self.buf = port, None, bytearray()

    def _connect(self) -> socket.socket:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf.clear()
        return self.sock

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send ``raw``, return the status and body; reconnects once when the idle connection was closed."""
        for attempt in (0, 1):
            try:
                (self.sock or self._connect()).sendall(raw)
                while (end := self.buf.find(b"\r\n\r\n")) < 0:
                    self._fill()
                break
            except (ConnectionError, OSError):
                self.sock = None
                if attempt:
                    raise
        head = bytes(self.buf[:end]).lower()
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        while len(self.buf) < end + 4 + length:
            self._fill()
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        if b"connection: close" in head:
            self.close()
        return int(head.split(b" ", 2)[1]), body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all threads) from ``/proc``; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: Roles of the server's threads, by the operating-system names :mod:`xrayfm.serve.thread_names` gives them
#: (the main thread runs the event loop: HTTP, multipart, JSON; "other" holds ONNX Runtime's workers).
ROLES = {"xrayfm-wide": "model", "xrayfm-lane": "model", "xrayfm-codec": "decode"}


def thread_cpu(pid: int) -> dict[str, float] | None:
    """CPU seconds of process ``pid`` per thread role (model, decode, event loop, other) from ``/proc``;
    None where there is none."""
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return None
    out = dict.fromkeys(("model", "decode", "event loop", "other"), 0.0)
    for task in tasks.iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        role = "event loop" if task.name == str(pid) else ROLES.get(name, "other")
        out[role] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def steady_rate(results: Sequence[tuple], firsts: Sequence[float], quits: Sequence[float], wall: float) -> float:
    """Answers per second while every client was busy: the successful ones completed after the last client's
    first answer and before the first client found no request left (``results``: (latency, status, server ms,
    completion time)). The ramp-up and the drain of a fixed request count are left out, as a fixed-duration
    load generator leaves them out. The overall rate when the window holds fewer than 4 answers per client
    (or 8 in all): answers come in batches, so a window of a few batches would count them by chance."""
    start, end = max(firsts, default=0.0), min(quits, default=0.0)
    ok = sum(1 for r in results if r[1] == 200 and start < r[3] <= end)
    if end <= start or ok < max(8, 4 * len(firsts)):
        return round(sum(r[1] == 200 for r in results) / wall, 2)
    return round(ok / (end - start), 2)


def get_json(port: int, path: str) -> dict[str, Any]:
    conn = Connection(port)
    try:
        status, body = conn.request(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}")
    return json.loads(body)


def measure(
    port: int, clients: int, requests: int, heatmap: bool, server_pid: int, image: int = 512, upload: str = "body"
) -> dict:
    """Send ``requests`` /predict calls from ``clients`` concurrent connections, the PNG sent as ``upload``
    (:func:`predict_request`); latency, rate, batching, CPU."""
    payloads = [predict_request(png(i, image), heatmap, upload) for i in range(8)]
    warm = Connection(port)
    warm.request(payloads[0])
    warm.close()
    counter, results, firsts, quits, lock = itertools.count(), [], [], [], threading.Lock()

    def client() -> None:
        conn, mine = Connection(port), []
        while (i := next(counter)) < requests:
            t0 = time.perf_counter()
            status, body = conn.request(payloads[i % 8])
            done = time.perf_counter()
            mine.append((done - t0, status, json.loads(body)["server_ms"] if status == 200 else None, done))
        quit_at = time.perf_counter()
        conn.close()
        with lock:
            results.extend(mine)
            quits.append(quit_at)
            if mine:
                firsts.append(mine[0][3])

    before = get_json(port, "/health")
    roles0 = thread_cpu(server_pid)
    cpu0, server0, t0 = time.process_time(), cpu_seconds(server_pid), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    load_cpu, server1, roles1 = time.process_time() - cpu0, cpu_seconds(server_pid), thread_cpu(server_pid)
    health = get_json(port, "/health")
    server_cpu = None if server0 is None or server1 is None else server1 - server0
    lat = np.asarray([t for t, code, _, _ in results if code == 200]) * 1000
    inside = np.asarray([ms for _, code, ms, _ in results if code == 200])
    return {
        "clients": clients, "requests": requests, "heatmap": heatmap, "upload": upload, "ok": int(len(lat)),
        "errors": int(sum(code != 200 for _, code, _, _ in results)),
        "server_ms_p50": round(float(np.percentile(inside, 50)), 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1), "requests_per_s": steady_rate(results, firsts, quits, wall),
        "requests_per_s_overall": round(len(lat) / wall, 2),
        "mean_batch": round((health["requests"] - before["requests"]) / max(1, health["batches"] - before["batches"]),
                            2),
        "lanes": health.get("lanes", 1), "wide_batches": health.get("wide_batches", 0) - before.get("wide_batches", 0),
        "batches": health["batches"] - before["batches"],
        "batch_sizes": formed_sizes(before, health),
        "client_cpu_s": round(load_cpu, 3), "server_cpu_s": None if server_cpu is None else round(server_cpu, 3),
        "client_cpu_share": None if not server_cpu else round(load_cpu / (load_cpu + server_cpu), 3),
        "server_cpu_ms_per_request": None if roles0 is None or roles1 is None or not len(lat) else
        {k: round((roles1[k] - roles0[k]) * 1000 / len(lat), 2) for k in roles1},
    }  # fmt: skip


def formed_sizes(before: dict, after: dict) -> dict[str, int]:
    """Batches the server ran per batch size between two ``/health`` answers (servers without the counter: {})."""
    sizes0, sizes1 = before.get("batch_sizes", {}), after.get("batch_sizes", {})
    return {b: n - sizes0.get(b, 0) for b, n in sorted(sizes1.items(), key=lambda bn: int(bn[0]))
            if n > sizes0.get(b, 0)}  # fmt: skip


def rate_at_sizes(sizes: dict[int, int], ms: Callable[[int], float]) -> float:
    """Images/s of a raw engine running the batches ``sizes`` ({batch size: batches}) one after another, each
    taking ``ms(batch size)``: the images over the summed time, so each size weighs as much as its batches
    took (not the images/s at their mean size, which a mix of small and large batches does not reach)."""
    if not sizes:
        raise ValueError("no batches")
    images = sum(b * n for b, n in sizes.items())
    return round(images * 1000 / sum(n * ms(b) for b, n in sizes.items()), 2)


def timed_ms(fn: Callable[[], object], repeats: int, device: str = "cpu") -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls after one warm-up call (on a GPU, until its
    queued work is done)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000, 2)


class Engine:
    """The exported model called directly: forward (PyTorch or ONNX Runtime), forward+backward and
    Grad-CAM (PyTorch), timed per batch size and remembered."""

    def __init__(
        self, model_dir: Path, backend: str, size: int, repeats: int, precision: str = "fp32", device: str = "cpu"
    ) -> None:
        self.model, _ = load_task_model(model_dir)
        self.model_dir = model_dir
        self.model.to(device).eval()
        self.onnx = OnnxModel(model_dir, precision=precision) if backend == "onnx" else None
        self.size, self.repeats, self.precision, self.device, self.times = size, repeats, precision, device, {}

    def _run(self, kind: str, x: torch.Tensor) -> None:
        if kind == "forward" and self.onnx is not None:
            self.onnx(x)
        elif kind == "forward":
            with no_grad_at(self.precision, self.device):  # the server's forward: autocast at bf16
                self.model(x)
        elif kind == "forward_backward":  # what a plain training step of the classifier costs
            self.model.zero_grad(set_to_none=True)
            self.model(x)["findings"].sum().backward()
        else:  # xrayfm's batched heatmap call, as the server makes it
            explain_batch(self.model, x, method="gradcam", task="findings")

    def ms(self, kind: str, batch: int, fresh: bool = False) -> float:
        """Median ms of one call of ``kind`` (forward | forward_backward | heatmap) on ``batch`` images, timed
        once and remembered (``fresh``: timed again now, as a paired round needs; the first time is kept)."""
        if fresh or (kind, batch) not in self.times:
            x = torch.rand(batch, 1, self.size, self.size, generator=torch.Generator().manual_seed(batch))
            x = x if self.onnx is not None and kind == "forward" else x.to(self.device)
            ms = timed_ms(lambda: self._run(kind, x), self.repeats, self.device)
            self.times.setdefault((kind, batch), ms)
            return ms
        return self.times[kind, batch]

    def lanes_per_s(self, batch: int, lanes: int, fresh: bool = False) -> float:
        """Images/s of ``lanes`` forward passes of ``batch`` images running side by side, each on its share
        of the threads, as the server's narrow lanes run them under load (``repeats`` passes each); remembered
        as :meth:`ms` is."""
        if fresh or ("lanes", batch) not in self.times:
            threads = max(1, torch.get_num_threads() // lanes)
            onnx = OnnxModel(self.model_dir, precision=self.precision, threads=threads) if self.onnx else None
            x = torch.rand(batch, 1, self.size, self.size, generator=torch.Generator().manual_seed(batch))
            start, ends = threading.Barrier(lanes), []

            def lane() -> None:
                torch.set_num_threads(threads)
                call = (lambda: onnx(x)) if onnx is not None else (lambda: self._run("forward", x.to(self.device)))
                call()  # warm-up
                start.wait()
                t0 = time.perf_counter()
                for _ in range(self.repeats):
                    call()
                ends.append((t0, time.perf_counter()))

            workers = [threading.Thread(target=lane) for _ in range(lanes)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            wall = max(e for _, e in ends) - min(s for s, _ in ends)
            ms = round(1000 * wall / (lanes * self.repeats * batch), 2)  # ms per image
            self.times.setdefault(("lanes", batch), ms)
            return round(1000 / ms, 2)
        return round(1000 / self.times["lanes", batch], 2)

    def table(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for (kind, batch), ms in sorted(self.times.items()):
            out.setdefault(kind, {})[f"bs{batch}_ms" if kind != "lanes" else f"bs{batch}_ms_per_image"] = ms
        return out


def paired_round(row: dict, engine: Engine, max_batch: int) -> dict:
    """One round of a target: the server's ``row`` beside the raw engine timed right after it (the VM's speed
    drifts between minutes, so each ratio divides numbers taken seconds apart). At 1 client the p50 against a
    raw single-image call; at more clients the requests/s against the raw engine's images/s at the batch sizes
    the server formed (:func:`rate_at_sizes`; and at the mean batch and at ``max_batch``; plain requests on a
    server with lanes: also against the raw engine run as its lanes run, :meth:`Engine.lanes_per_s`)."""
    heatmap, raw = row["heatmap"], "forward_backward" if row["heatmap"] else "forward"
    if row["clients"] == 1:
        ref = engine.ms(raw, 1, fresh=True)
        out = {"raw_ms": ref, "server_p50_ms": row["p50_ms"], "server_minus_raw_ms": round(row["p50_ms"] - ref, 1),
               "ratio": round(row["p50_ms"] / ref, 3)}  # fmt: skip
        if heatmap:
            out["ratio_to_engine_heatmap"] = round(row["p50_ms"] / engine.ms("heatmap", 1, fresh=True), 3)
        return out
    formed = min(max_batch, max(1, round(row["mean_batch"])))
    sizes = {int(b): n for b, n in row.get("batch_sizes", {}).items()} or {formed: 1}
    timed = {b: engine.ms(raw, b, fresh=True) for b in sorted({*sizes, formed, max_batch})}
    per_s = {b: round(b * 1000 / ms, 2) for b, ms in timed.items()}
    at_sizes = rate_at_sizes(sizes, timed.__getitem__)
    out = {"server_requests_per_s": row["requests_per_s"], "server_mean_batch": row["mean_batch"],
           "batch_sizes": {str(b): n for b, n in sorted(sizes.items())},
           "raw_images_per_s": {f"bs{b}": v for b, v in per_s.items()}, "raw_images_per_s_at_sizes": at_sizes,
           "ratio": round(row["requests_per_s"] / at_sizes, 3),
           "ratio_at_mean_batch": round(row["requests_per_s"] / per_s[formed], 3),
           "ratio_at_max_batch": round(row["requests_per_s"] / per_s[max_batch], 3)}  # fmt: skip
    if not heatmap and row.get("lanes", 1) > 1:  # the same passes side by side, as the server's lanes run them
        lanes_per_s = engine.lanes_per_s(formed, row["lanes"], fresh=True)
        out.update(raw_lanes=row["lanes"], raw_lanes_images_per_s=lanes_per_s,
                   ratio_to_raw_lanes=round(row["requests_per_s"] / lanes_per_s, 3))  # fmt: skip
    if heatmap:
        engine_per_s = formed * 1000 / engine.ms("heatmap", formed, fresh=True)
        out["ratio_to_engine_heatmap"] = round(row["requests_per_s"] / engine_per_s, 3)
    return out


def target(heatmap: bool, clients: int, rounds: Sequence[dict]) -> dict:
    """A target of issue 18 from its paired rounds: the median of each figure over the rounds (the ratio's
    range too), met or not on the median ratio."""

    def median(values: Sequence[float]) -> float:
        return round(float(np.median(values)), 3)

    raw, ratios = "forward_backward" if heatmap else "forward", [r["ratio"] for r in rounds]
    entry: dict[str, Any] = {"heatmap": heatmap, "clients": clients, "rounds": list(rounds),
                             "ratio_range": [min(ratios), max(ratios)]}  # fmt: skip
    numbers = [k for k, v in rounds[0].items() if isinstance(v, (int, float)) and k != "raw_lanes"]
    entry.update({k: median([r[k] for r in rounds]) for k in numbers})
    if "raw_images_per_s" in rounds[0]:  # per batch size: the batch formed may differ between rounds
        sizes = sorted({b for r in rounds for b in r["raw_images_per_s"]}, key=lambda b: int(b[2:]))
        entry["raw_images_per_s"] = {b: median([r["raw_images_per_s"][b] for r in rounds if b in r["raw_images_per_s"]])
                                     for b in sizes}  # fmt: skip
    if clients == 1:
        entry.update(measure="p50 latency", raw=f"{raw} bs1")
        entry["server_minus_raw_ms"] = round(entry["server_minus_raw_ms"], 1)
        if heatmap:
            entry.update(target="<= 1.3", met=entry["ratio"] <= 1.3)
        else:
            entry.update(target="<= raw + 3 ms", met=entry["server_minus_raw_ms"] <= 3.0)
        return entry
    floor = 0.8 if heatmap else 0.9
    entry.update(measure="throughput", raw=f"{raw} at the batch sizes the server formed", target=f">= {floor}",
                 met=entry["ratio"] >= floor)  # fmt: skip
    if "raw_lanes" in rounds[0]:
        entry["raw_lanes"] = rounds[0]["raw_lanes"]
    return entry


def saved_model(model_dir: Path, arch: str, size: int, int8: bool = False) -> dict[str, Any]:
    """An EVA-X classifier of the 14 findings (random weights: speed does not depend on them) saved in
    ``model_dir`` and exported to ONNX as a user would, with its int8 graph too if ``int8``: the export's sidecar."""
    # int8 calibration reads the model's recorded training images: a small phantom set stands in
    phantom = write_phantom_dataset(model_dir.parent / "phantom", n=32, size=256) if int8 else None
    info = {"provenance": {"dataset": "phantom", "root": str(phantom)}} if phantom else {}
    torch.manual_seed(0)
    model = XrayModel(create_model(arch, num_classes=0, img_size=size), [FINDINGS])  # the EVA-X record
    save_task_model(model, model_dir, arch=arch, model_kwargs={"img_size": size}, info=info)
    return export_onnx(model_dir, precision="int8" if int8 else "fp32")


@contextmanager
def running_server(
    model_dir: Path,
    backend: str,
    precision: str,
    device: str,
    max_batch: int,
    lanes: int | None = None,
    extra: Sequence[str] = (),
    startup_s: float = 120.0,
) -> Iterator[tuple[int, int]]:
    """``xrayfm serve`` on ``model_dir`` (with ``extra`` options) in its own process, up and answering within
    ``startup_s``: its port and process id."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "xrayfm.cli", "serve", str(model_dir), "--port", str(port), "--backend", backend,
         "--precision", precision, "--device", device, "--max-batch", str(max_batch), "--queue-size", "256",
         *(["--lanes", str(lanes)] if lanes else []), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(int(startup_s * 10)):
            try:
                get_json(port, "/health")
                break
            except (OSError, RuntimeError):
                if server.poll() is not None:
                    raise RuntimeError(f"xrayfm serve exited: {server.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.1)
        yield port, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def serve_and_measure(
    model_dir: Path, arch: str, backend: str, args: argparse.Namespace, precision: str = "fp32"
) -> tuple[list, dict]:
    """Time the raw engine, start ``xrayfm serve`` on ``model_dir``, measure each clients x heatmap setting
    (plain ``/predict`` only below fp32: heatmaps stay fp32)."""
    engine = Engine(model_dir, backend, args.size, args.repeats, precision, args.device)
    kinds = ("forward", "forward_backward", "heatmap") if precision == "fp32" else ("forward",)
    for b in sorted({1, args.max_batch}):
        for kind in kinds:
            engine.ms(kind, b)
    rows, clients = [], [int(c) for c in args.clients.split(",")]
    # every setting in the benchmark's upload style; at fp32, plain /predict at 1 and the most clients in the other
    other = next(u for u in UPLOADS if u != args.upload)
    settings = [(heatmap, c, args.upload) for heatmap in ((False, True) if precision == "fp32" else (False,))
                for c in clients]  # fmt: skip
    settings += [(False, c, other) for c in sorted({1, max(clients)})] if precision == "fp32" else []
    targets = [(heatmap, c) for heatmap, c, upload in settings if upload == args.upload and c in (1, max(clients))]
    checks = []
    with running_server(model_dir, backend, precision, args.device, args.max_batch, args.lanes) as (port, pid):
        for heatmap, c, upload in settings:
            n = args.requests if not heatmap else max(c * 2, args.requests // 4)
            row = {"arch": arch, "backend": backend, "precision": precision,
                   **measure(port, c, n, heatmap, pid, args.image, upload)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
        for heatmap, c in targets:  # each target: rounds of the server, then the raw engine at once
            # under load, a round of --requests: the first hundred answers of 16 clients are mostly ramp-up
            # (formed batches of 2 instead of 4, a tenth fewer requests/s than in a round of 200 or more)
            n = (args.requests if c > 1 else args.requests // 2) if not heatmap else max(c * 4, args.requests // 8)
            rounds = [paired_round(measure(port, c, n, heatmap, pid, args.image, args.upload), engine, args.max_batch)
                      for _ in range(args.rounds)]  # fmt: skip
            checks.append(target(heatmap, c, rounds))
            print(json.dumps({k: v for k, v in checks[-1].items() if k != "rounds"}), flush=True)
    side = {"arch": arch, "backend": backend, "precision": precision, "ratios": checks}
    return rows, {**side, "engine": engine.table()}


def configurations(
    backends: Sequence[str], precisions: Sequence[str], device: str = "cpu"
) -> tuple[list[tuple[str, str]], list[str]]:
    """(backend, precision) pairs to measure on ``device``, and why any asked for is left out (no native bf16;
    ONNX Runtime, which runs on the CPU here, in a GPU run)."""
    configs, skipped = [], []
    for precision in precisions:
        wanted = backends if precision == "fp32" else ["torch" if precision == "bf16" else "onnx"]
        for backend in wanted:
            if backend == "onnx" and device != "cpu":
                skipped.append(f"onnx/{precision}: ONNX Runtime runs on the CPU here; a {device} run measures PyTorch")
                continue
            try:
                check_precision(precision, backend, device)
            except PrecisionError as exc:
                skipped.append(f"{backend}/{precision}: {exc}")
                continue
            configs.append((backend, precision))
    return configs, skipped


def speed_vs_fp32(sides: dict[tuple[str, str], dict]) -> list[dict]:
    """The engine entries, each reduced precision with fp32 time / its time (raw forward, server) from this run."""
    out = []
    for (backend, precision), side in sides.items():
        base = sides.get((backend, "fp32")) or sides.get(("torch", "fp32"))
        if precision != "fp32" and base is not None:
            fast, ref = side["engine"]["forward"], base["engine"]["forward"]
            one = {r["clients"]: r for r in side["ratios"]}
            one_ref = {r["clients"]: r for r in base["ratios"] if not r["heatmap"]}
            speed = {f"raw_forward_{k[:-3]}": round(ref[k] / fast[k], 3) for k in fast if k in ref}
            if 1 in one and 1 in one_ref:
                speed["server_p50_1_client"] = round(one_ref[1]["server_p50_ms"] / one[1]["server_p50_ms"], 3)
            top = max(one)
            if top > 1 and top in one_ref:
                speed[f"server_requests_per_s_{top}_clients"] = round(
                    one[top]["server_requests_per_s"] / one_ref[top]["server_requests_per_s"], 3
                )
            side = {**side, "speed_vs_fp32": {"against": f"{base['backend']}/fp32", **speed}}
        out.append(side)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--archs", default="eva_x_tiny_patch16,eva_x_small_patch16")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--backends", default="torch,onnx", help="backends measured at fp32")
    ap.add_argument(
        "--precisions",
        default="fp32,bf16,int8",
        help="fp32 (each backend), bf16 (PyTorch autocast), int8 (ONNX Runtime)",
    )
    ap.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch and the raw engine's batch")
    ap.add_argument("--size", type=int, default=224, help="model input (px)")
    ap.add_argument("--image", type=int, default=512, help="side of the uploaded PNG (px)")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per raw-engine measurement")
    ap.add_argument("--rounds", type=int, default=3,
                    help="paired rounds per target: the server, then the raw engine (medians reported)")  # fmt: skip
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda: the server's and the raw engine's device")
    ap.add_argument("--lanes", type=int, help="the server's --lanes (default: its own default)")
    ap.add_argument("--upload", choices=UPLOADS, default="body",
                    help="how the PNG is sent: as the request body (default) or as a multipart form's field; plain "
                         "fp32 /predict is also measured the other way at 1 and the most clients")  # fmt: skip
    ap.add_argument("--out", type=Path, help="result file (default bench/results/serve_latency_<cpu|gpu>.json)")
    args = ap.parse_args(argv)
    try:
        args.device = torch_device(args.device)
    except XrayfmError as exc:
        raise SystemExit(str(exc)) from None
    precisions = args.precisions.split(",")
    configs, skipped = configurations(args.backends.split(","), precisions, args.device)
    runs, engines = [], []
    for arch in args.archs.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            sidecar = saved_model(model_dir, arch, args.size, int8="int8" in precisions)
            sides = {}
            for backend, precision in configs:
                rows, side = serve_and_measure(model_dir, arch, backend, args, precision)
                if precision == "int8":
                    side["quantization"] = {k: v for k, v in sidecar["precisions"]["int8"].items() if k != "file"}
                runs += rows
                sides[backend, precision] = side
            engines += speed_vs_fp32(sides)
    out = args.out or REPO / "bench" / "results" / f"serve_latency_{'cpu' if args.device == 'cpu' else 'gpu'}.json"
    report = {
        "benchmark": "serve_latency",
        "device": args.device,
        "backends": args.backends.split(","),
        "precisions": [f"{b}/{p}" for b, p in configs],
        "skipped": skipped,
        "load": LOAD,
        "image": f"{args.image}x{args.image} 8-bit PNG upload",
        "upload": args.upload,
        "model_input": args.size,
        "max_batch": args.max_batch,
        "lanes": args.lanes or "server default",
        "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(),
        "engine": engines,
        "runs": runs,
    }
    write_result(out, report, packages=("onnxruntime", "fastapi", "uvicorn"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
