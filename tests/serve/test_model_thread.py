"""Every PyTorch op of the server runs on the model's lane threads, and the model loads on a thread that ends.

With OpenMP each thread running a parallel op keeps its own worker team; a second team beside the
model's made a forward pass on 2 cores twice as slow (see xrayfm.serve.batcher).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serve_helpers import png_bytes

from xrayfm.serve import app as app_module
from xrayfm.serve.app import create_app
from xrayfm.serve.runtime import ModelRuntime


def test_torch_work_stays_on_the_model_thread(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded_on: list[threading.Thread] = []

    class Recorded(ModelRuntime):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            loaded_on.append(threading.current_thread())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(app_module, "ModelRuntime", Recorded)
    app = create_app(model_dir)
    assert loaded_on[0] is not threading.main_thread() and not loaded_on[0].is_alive()

    runtime, threads = app.state.runtime, {}
    for name in ("prepare", "to_image", "run_batch"):

        def watched(*args, _name=name, _fn=getattr(runtime, name), **kwargs):  # noqa: ANN002, ANN003, ANN202
            threads.setdefault(_name, set()).add(threading.current_thread().name)
            return _fn(*args, **kwargs)

        monkeypatch.setattr(runtime, name, watched)
    app.state.batcher.run_batch = runtime.run_batch
    with TestClient(app) as c:
        for path in ("/predict", "/predict?heatmap=true", "/segment"):
            assert c.post(path, files={"file": ("x.png", png_bytes(), "image/png")}).status_code == 200
    assert set(threads) == {"prepare", "to_image", "run_batch"}
    assert all(name.startswith(("xrayfm-wide", "xrayfm-lane")) for name in set().union(*threads.values())), threads
