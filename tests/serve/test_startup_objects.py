"""What the server loads once stays out of Python's garbage collector while it runs, and the server
process does not carry the evaluation stack it never uses.

A full collection walking the half million objects of the model and its libraries paused the event
loop and every thread waiting for the interpreter for 0.2 s every few hundred requests (measured on
the benchmark's 2-core machine); ``gc.freeze`` at startup takes them out of every later collection.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from serve_helpers import png_bytes

from xrayfm.serve.app import create_app


def test_objects_alive_at_startup_are_frozen_while_serving_and_released_after(model_dir: Path) -> None:
    before = gc.get_freeze_count()  # 0 unless an app of another test in this process still runs
    with TestClient(create_app(model_dir, max_batch=4)) as c:
        frozen = gc.get_freeze_count()
        assert c.post("/predict", files={"file": ("x.png", png_bytes(), "image/png")}).is_success
        assert gc.get_freeze_count() <= frozen  # requests add nothing (frozen objects freed by refcount leave it)
    assert frozen > before + 10_000  # the model, the app and the libraries imported by then
    assert gc.get_freeze_count() == 0  # unfrozen when the app stops: a process serving twice frees the first


def test_the_server_does_not_import_the_evaluation_stack() -> None:
    """torchmetrics (and through it transformers and matplotlib) took 2.5 s to import and a fifth of the
    objects a full collection walks; the server needs none of it."""
    code = ("import sys, xrayfm.serve.app, xrayfm.cli.deploy; "
            "print(sorted(m for m in ('torchmetrics', 'xrayfm.evaluate', 'transformers') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
