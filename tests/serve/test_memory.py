"""Memory under hostile pixel counts, measured on a real ``xrayfm serve`` process.

Twelve clients upload at once a 9990 x 9990 px PNG (97 KB on the wire, 100 MP decoded, just
under the read limit). The server must answer each with 200 or a fast 503 (never a 5xx), and
its peak resident memory over its idle size must stay under the bound it reports in /health
(:meth:`xrayfm.serve.admission.Admission.memory_bound`). Before admission control the same
traffic took the server from 1.0 GB to 8.4 GB and its 503s took 55 s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serve_helpers import blank_png, free_port

httpx = pytest.importorskip("httpx")


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture(scope="module")
def server(model_dir: Path):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to read and reset a process's peak memory")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "xrayfm.cli", "serve", str(model_dir), "--port", str(port), "--max-decodes", "2",
         "--queue-size", "4", "--max-upload-mb", "4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise AssertionError(proc.stderr.read().decode()) from None
                time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_concurrent_huge_pixel_uploads_keep_memory_bounded(server) -> None:  # noqa: ANN001
    url, proc = server
    data = blank_png(9990, 9990)
    with httpx.Client(timeout=120) as client:
        client.post(f"{url}/predict", files={"file": ("x.png", blank_png(640, 640), "image/png")})  # warm-up
        idle = status_kib(proc.pid, "VmRSS")
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # the peak (VmHWM) restarts from now

        def call(_: int) -> tuple[int, float, str | None]:
            t0 = time.monotonic()
            res = client.post(f"{url}/predict", files={"file": ("big.png", data, "image/png")})
            return res.status_code, time.monotonic() - t0, res.headers.get("retry-after")

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(call, range(12)))
        peak = status_kib(proc.pid, "VmHWM")
        health = client.get(f"{url}/health").json()
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 503} and codes.count(200) >= 2, codes
    busy = [(seconds, retry) for code, seconds, retry in results if code == 503]
    assert all(retry == "1" and seconds < 2.0 for seconds, retry in busy), busy  # refused before any decode
    uploads = health["uploads"]
    assert uploads["peak_pixels_decoding"] <= uploads["max_pixels_in_flight"]
    grown = (peak - idle) * 1024
    assert grown <= uploads["memory_bound_bytes"], f"peak {peak / 1024:.0f} MiB, idle {idle / 1024:.0f} MiB"
