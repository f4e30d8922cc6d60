"""Soak test: ``xrayfm serve`` under mixed valid and hostile traffic for a bounded time (loopback only).

A tiny model with every head (EVA-X Ti/16 at 64 px, random weights: the server's limits, not the
model, are under test) is served by its own ``xrayfm serve`` process with a token, on 127.0.0.1.
A few client threads of this process then send, for ``--seconds``, a fixed rotation of request
kinds: valid PNG and DICOM uploads to /predict, /segment and /detect; wrong tokens; chunked
bodies past the upload limit with and without a token; a declared Content-Length past it;
clients trickling one byte at a time; PNG headers declaring more pixels than the read limit
(decompression bombs); corrupt and non-image files; and 8- and 16-bit PNGs of 9990 x 9990 px
that are small on the wire but 100 MP decoded. Every answer's status is counted per kind against
the statuses the kind may get; the server's resident memory is sampled, its peak (VmHWM, reset
after warm-up) compared with the bound it reports in /health, and the server must still answer
at the end. Before the traffic, one 100 MP upload at a time (8 then 16 bits) measures the
decoder's peak memory per declared pixel, the figure behind that bound. Results go to
``bench/results/serve_soak_<device>.json`` with their provenance (``bench/provenance.py``).

Usage: python bench/serve_soak.py [--seconds 60] [--clients 6]
"""

from __future__ import annotations

import argparse
import io
import itertools
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from provenance import write_result

from xrayfm.io.writers import write_dicom
from xrayfm.models import create_model
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

REPO = Path(__file__).resolve().parents[1]
TOKEN = "soak-token"
BOUNDARY = "xrayfm-soak"
MAX_UPLOAD_MB = 8
#: Server options besides the model and port (short body timeouts so trickling clients end within a run).
SERVER_OPTIONS = ["--token", TOKEN, "--max-upload-mb", str(MAX_UPLOAD_MB), "--body-timeout", "5",
                  "--body-idle-timeout", "2"]  # fmt: skip
TASKS = [
    TaskSpec("findings", "multilabel", ("effusion", "nodule", "cardiomegaly")),
    TaskSpec("lungs", "segmentation", ("lung",)),
    TaskSpec("lesions", "detection", ("nodule",)),
]


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid grey PNG of black pixels compressed row by row: small on the wire, huge decoded."""
    z, row = zlib.compressobj(9), bytes(width * bit_depth // 8 + 1)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_png(side: int = 60_000) -> bytes:
    """A PNG whose header declares ``side`` x ``side`` pixels (above the read limit) over a token body."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes(side + 1) * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def payloads(tmp: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (512, 512), dtype=np.uint8)
    dicom = write_dicom(tmp / "a.dcm", rng.random((384, 320), dtype=np.float32)).read_bytes()
    corrupt = bytearray(png(image))
    corrupt[100:140] = bytes(40)
    return {
        "png": png(image), "dicom": dicom, "corrupt_png": bytes(corrupt), "truncated_dicom": dicom[: len(dicom) // 3],
        "not_image": b"this is not an image\n" * 50, "bomb": bomb_png(),
        "huge_png8": blank_png(9990, 9990, 8), "huge_png16": blank_png(9990, 9990, 16),
    }  # fmt: skip


def raw_request(
    port: int, path: str, *, token: str | None, chunk: int = 1 << 18, cap: int = 0, pace_s: float = 0.0,
    length: int | None = None,
) -> int | None:  # fmt: skip
    """Send a multipart upload on a raw socket: chunked (endless zeros up to ``cap`` bytes, ``pace_s``
    between chunks) or with a declared ``length`` and no body; stop once an answer is readable.
    Returns the status, or None when the server closed without one."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}{framing}"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n").encode()  # fmt: skip
    part = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    data = b""
    with socket.socket() as s:
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        s.sendall(head)
        sent = 0
        try:
            if length is None:
                for piece in itertools.chain([part], itertools.repeat(b"\0" * chunk)):
                    if sent >= cap or select.select([s], [], [], 0)[0]:
                        break
                    s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    sent += len(piece)
                    if pace_s:
                        time.sleep(pace_s)
        except OSError:  # the server answered and closed while the body was still going out
            pass
        try:
            while part := s.recv(65536):
                data += part
        except OSError:
            pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


class Traffic:
    """The request kinds: name -> (send function returning a status, statuses it may get)."""

    def __init__(self, url: str, port: int, files: dict[str, bytes]) -> None:
        self.url, self.port, self.files = url, port, files
        self.client = httpx.Client(timeout=120)
        ok = {"Authorization": f"Bearer {TOKEN}"}
        limit = MAX_UPLOAD_MB << 20
        busy = {503}

        def upload(endpoint: str, name: str, headers: dict[str, str] = ok) -> Callable[[], int]:
            form = {"file": (name, files[name], "application/octet-stream")}
            return lambda: self.client.post(f"{url}{endpoint}", files=form, headers=headers).status_code

        self.kinds: dict[str, tuple[Callable[[], int | None], set[int]]] = {
            "valid_png_predict": (upload("/predict", "png"), {200} | busy),
            "valid_dicom_predict": (upload("/predict", "dicom"), {200} | busy),
            "valid_png_segment": (upload("/segment", "png"), {200} | busy),
            "valid_dicom_detect": (upload("/detect", "dicom"), {200} | busy),
            "wrong_token": (upload("/predict", "png", {"Authorization": "Bearer wrong"}), {401}),
            "chunked_oversize_no_token": (lambda: raw_request(port, "/predict", token=None, cap=4 * limit), {401}),
            "chunked_oversize": (lambda: raw_request(port, "/segment", token=TOKEN, cap=4 * limit), {413} | busy),
            "declared_oversize": (lambda: raw_request(port, "/predict", token=TOKEN, length=2 * limit), {413}),
            "slow_client": (
                lambda: raw_request(port, "/predict", token=TOKEN, chunk=1, cap=10**6, pace_s=0.5),
                {408} | busy,
            ),  # fmt: skip
            "bomb_header": (upload("/predict", "bomb"), {413} | busy),
            "corrupt_png": (upload("/predict", "corrupt_png"), {400} | busy),
            "truncated_dicom": (upload("/detect", "truncated_dicom"), {400} | busy),
            "not_image": (upload("/predict", "not_image"), {415} | busy),
            "huge_png8": (upload("/predict", "huge_png8"), {200} | busy),
            "huge_png16": (upload("/segment", "huge_png16"), {200} | busy),
        }
        # the rotation each client walks through from its own offset: every other request a valid upload
        valid = itertools.cycle(k for k in self.kinds if k.startswith("valid"))
        self.rotation = [k for hostile in self.kinds if not hostile.startswith("valid") for k in (hostile, next(valid))]


class RssSampler(threading.Thread):
    """Samples a process's resident memory every ``every_s`` seconds; keeps the largest."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak_kib, self.samples, self.stop = pid, every_s, 0, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
                self.samples += 1
            except (OSError, AssertionError):
                return
            time.sleep(self.every_s)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def decode_memory(traffic: Traffic, pid: int, idle_kib: int) -> dict[str, float]:
    """Peak memory over the idle server per declared pixel of one 9990 x 9990 upload at a time, 8 and 16 bits."""
    out = {}
    for name in ("huge_png8", "huge_png16"):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        traffic.client.post(f"{traffic.url}/predict", files={"file": ("x.png", traffic.files[name], "image/png")},
                            headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        out[name] = round((status_kib(pid, "VmHWM") - idle_kib) * 1024 / 9990**2, 2)
    return out


def soak(model_dir: Path, files: dict[str, bytes], args: argparse.Namespace) -> dict:
    port = free_port()
    command = [sys.executable, "-m", "xrayfm.cli", "serve", str(model_dir), "--port", str(port), *SERVER_OPTIONS]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None:
                    raise SystemExit(server.stderr.read().decode()) from None
                time.sleep(0.1)
        traffic = Traffic(url, port, files)
        for endpoint in ("/predict", "/segment", "/detect"):  # warm-up: first passes allocate
            traffic.client.post(f"{url}{endpoint}", files={"file": ("x.png", files["png"], "image/png")}, headers=auth)
        idle = status_kib(server.pid, "VmRSS")
        per_pixel = decode_memory(traffic, server.pid, idle)
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM restarts from the current size
        sampler = RssSampler(server.pid)
        sampler.start()
        status: dict[str, Counter] = defaultdict(Counter)
        latency: dict[str, list[float]] = defaultdict(list)
        errors: Counter = Counter()
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds

        def client(offset: int) -> None:
            for kind in itertools.islice(itertools.cycle(traffic.rotation), offset, None):
                if time.monotonic() >= deadline:
                    return
                t0 = time.perf_counter()
                try:
                    code = traffic.kinds[kind][0]()
                except httpx.HTTPError as exc:
                    with lock:
                        errors[f"{kind}: {type(exc).__name__}"] += 1
                    continue
                with lock:
                    latency[kind].append(time.perf_counter() - t0)
                    status[kind]["none" if code is None else str(code)] += 1

        t0 = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, [k * len(traffic.rotation) // args.clients for k in range(args.clients)]))
        wall = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
        health = traffic.client.get(f"{url}/health", headers=auth)
        alive = health.status_code == 200
        peak = max(status_kib(server.pid, "VmHWM"), sampler.peak_kib)
    finally:
        server.terminate()
        server.wait(timeout=30)
    detail = health.json() if alive else {}
    by_kind = {}
    for kind, (_, expected) in traffic.kinds.items():
        codes, times = status[kind], np.asarray(latency[kind] or [0.0]) * 1000
        unexpected = sum(n for code, n in codes.items() if code == "none" or int(code) not in expected)
        by_kind[kind] = {
            "requests": sum(codes.values()), "status": dict(sorted(codes.items())), "expected": sorted(expected),
            "unexpected": unexpected, "p50_ms": round(float(np.percentile(times, 50)), 1),
            "max_ms": round(float(times.max()), 1),
        }  # fmt: skip
    totals = sum((Counter(c) for c in status.values()), Counter())
    bound = detail.get("uploads", {}).get("memory_bound_bytes")
    return {
        "seconds": round(wall, 1),
        "clients": args.clients,
        "requests": sum(totals.values()),
        "status_totals": dict(sorted(totals.items())),
        "unexpected": sum(k["unexpected"] for k in by_kind.values()),
        "server_errors_5xx": sum(n for code, n in totals.items() if code.startswith("5") and code != "503"),
        "client_errors": dict(errors),
        "by_kind": by_kind,
        "server": {
            "options": SERVER_OPTIONS[2:],
            "alive_after": alive,
            "idle_rss_mib": round(idle / 1024, 1),
            "peak_rss_mib": round(peak / 1024, 1),
            "peak_over_idle_mib": round((peak - idle) / 1024, 1),
            "memory_bound_mib": round(bound / 2**20, 1) if bound else None,
            "decode_bytes_per_pixel": per_pixel,
            "rss_samples": sampler.samples,
            "health": detail,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the traffic runs (default 60)")
    ap.add_argument("--clients", type=int, default=6, help="concurrent client threads (default 6)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        backbone = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64, dynamic_img_size=True)
        model = XrayModel(backbone, TASKS, preprocess=Preprocess(64, mean=0.49, std=0.28))
        save_task_model(model, Path(tmp) / "model", arch="eva_x_tiny_patch16",
                        model_kwargs={"img_size": 64, "dynamic_img_size": True}, info={})  # fmt: skip
        result = soak(Path(tmp) / "model", payloads(Path(tmp)), args)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    out = REPO / "bench" / "results" / f"serve_soak_{device}.json"
    report = {
        "benchmark": "serve_soak",
        "load": "client threads in the benchmark process, server in its own process, same machine (loopback)",
        "model": "eva_x_tiny_patch16, 64 px input, classification + segmentation + detection heads, random weights",
        **result,
    }
    write_result(out, report, packages=("fastapi", "starlette", "uvicorn", "h11", "pillow", "pydicom"))
    s = result["server"]
    print(f"{result['requests']} requests in {result['seconds']} s: {result['status_totals']}; "
          f"unexpected {result['unexpected']}, 5xx other than 503: {result['server_errors_5xx']}; "
          f"server peak {s['peak_over_idle_mib']} MiB over idle (bound {s['memory_bound_mib']} MiB), "
          f"alive: {s['alive_after']}")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
