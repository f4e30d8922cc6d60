"""Serving with ONNX Runtime: same answers as PyTorch, heatmaps still available, clear refusals."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import png_bytes

from xrayfm.errors import XrayfmError
from xrayfm.explain.heatmap import explain_batch
from xrayfm.serve import runtime as runtime_module
from xrayfm.serve.app import create_app
from xrayfm.serve.runtime import ModelRuntime

pytest.importorskip("onnxruntime", reason="the ONNX backend needs the [onnx] extra")


@pytest.fixture(scope="module")
def onnx_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xrayfm.models.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "deploy"
    export_onnx(model_dir, out)
    return out


def upload(data: bytes) -> dict:
    return {"file": ("x.png", data, "image/png")}


def test_onnx_and_torch_backends_give_the_same_answers(onnx_dir: Path) -> None:
    with TestClient(create_app(onnx_dir, backend="onnx")) as fast, TestClient(create_app(onnx_dir)) as ref:
        assert fast.get("/health").json()["backend"] == "onnx"
        card = fast.get("/model").json()
        assert card["backend"] == "onnx" and card["onnx"]["not_exported"] == []
        for seed in range(3):
            data = png_bytes(90, 70, seed=seed)
            a = fast.post("/predict", files=upload(data)).json()["probabilities"]
            b = ref.post("/predict", files=upload(data)).json()["probabilities"]
            assert a.keys() == b.keys()
            np.testing.assert_allclose(list(a.values()), list(b.values()), atol=1e-5)
            sa = fast.post("/segment", files=upload(data)).json()["area_fraction"]
            sb = ref.post("/segment", files=upload(data)).json()["area_fraction"]
            assert abs(sa["lung"] - sb["lung"]) < 0.01

        res = fast.post("/predict?heatmap=true", files=upload(png_bytes(90, 70)))
        assert res.status_code == 200, res.text
        assert Image.open(io.BytesIO(base64.b64decode(res.json()["heatmap"]["png"]))).size == (90, 70)
        data = png_bytes(80, 64, seed=5)
        da, db = fast.post("/detect", files=upload(data)), ref.post("/detect", files=upload(data))
        assert da.status_code == db.status_code == 200, da.text
        ba, bb = da.json()["boxes"], db.json()["boxes"]
        assert len(ba) == len(bb) > 0 and [b["class"] for b in ba] == [b["class"] for b in bb]
        np.testing.assert_allclose([b["box"] for b in ba], [b["box"] for b in bb], atol=0.05)
        np.testing.assert_allclose([b["score"] for b in ba], [b["score"] for b in bb], atol=1e-3)


def test_onnx_backend_needs_an_export(model_dir: Path) -> None:
    with pytest.raises(XrayfmError, match="run: xrayfm export onnx"):
        ModelRuntime(model_dir, backend="onnx")
    with pytest.raises(XrayfmError, match="unknown backend 'tensorrt'"):
        ModelRuntime(model_dir, backend="tensorrt")


def test_onnx_lanes_each_use_a_session_of_their_thread_count(onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's lanes ask for 2 and 1 threads: each lane's passes run in the session opened for its
    count, PyTorch's own work there on one thread, and a heatmap pass (PyTorch) on the lane's threads."""
    runtime = ModelRuntime(onnx_dir, backend="onnx", lane_threads=(2, 1))
    assert sorted(runtime.sessions) == [1, 2]
    assert [runtime.sessions[n].session.get_session_options().intra_op_num_threads for n in (1, 2)] == [1, 2]
    used, answers = [], []
    for n, model in runtime.sessions.items():

        def spy(*args, _n=n, _run=model.session.run, **kwargs):  # noqa: ANN002, ANN003, ANN202
            used.append((threading.current_thread().name, _n, torch.get_num_threads()))
            return _run(*args, **kwargs)

        model.session.run = spy

    def explain(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        used.append((threading.current_thread().name, "heatmap", torch.get_num_threads()))
        return explain_batch(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "explain_batch", explain)
    x = runtime.prepare(np.random.default_rng(0).random((80, 70)))

    def lane(threads: int) -> None:
        runtime.use_threads(threads)
        answers.append(runtime.run_batch([(x, "findings")])[0].outputs["findings"])
        runtime.run_batch([(x, "findings", "gradcam")])
        used.append((threading.current_thread().name, "after", torch.get_num_threads()))

    for threads in (1, 2):
        worker = threading.Thread(target=lane, args=(threads,), name=f"lane{threads}")
        worker.start()
        worker.join()
    assert used == [("lane1", 1, 1), ("lane1", "heatmap", 1), ("lane1", "after", 1),
                    ("lane2", 2, 1), ("lane2", "heatmap", 2), ("lane2", "after", 1)]  # fmt: skip
    assert np.allclose(answers[0], answers[1], atol=1e-5)
