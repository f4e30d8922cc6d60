"""Heatmap requests share batches with the others; what lies between the bytes and the model stays off the loop.

A batch mixing plain and heatmap requests answers each as if it had been alone; a failing heatmap
pass fails its own requests only; a lone request is not held back for company; decoding,
preprocessing and PNG encoding run in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import png_bytes

from xrayfm.errors import XrayfmError
from xrayfm.explain import explain_batch
from xrayfm.serve.app import create_app
from xrayfm.serve.batcher import MicroBatcher
from xrayfm.serve.runtime import ModelRuntime, png_base64


@pytest.fixture(scope="module")
def runtime(model_dir: Path) -> ModelRuntime:
    return ModelRuntime(model_dir)


def images(runtime: ModelRuntime, n: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(3)
    return [runtime.prepare(rng.random((70 + 5 * i, 60))) for i in range(n)]


def test_a_mixed_batch_answers_each_request_as_if_alone(runtime: ModelRuntime) -> None:
    x = images(runtime, 6)
    items = [(x[0], "findings"), (x[1], "findings", "gradcam"), (x[2], "lungs"), (x[3], "findings", "gradcam++"),
             (x[4], "findings", "gradcam"), (x[5], "findings", "rollout")]  # fmt: skip
    answers = runtime.run_batch(items)
    for item, answer in zip(items, answers):
        alone = runtime.run_batch([item[:2]])[0]  # the plain answer of this image alone
        np.testing.assert_allclose(answer.outputs[item[1]], alone.outputs[item[1]], atol=1e-5)
        if len(item) == 2:
            assert answer.heatmap is None
            continue
        single = explain_batch(runtime.model, item[0][None], method=item[2], task="findings")
        np.testing.assert_allclose(answer.heatmap, single.maps[0], atol=1e-4)
        if item[2] == "rollout":
            assert answer.heatmap_class is None
        else:  # the top finding of its own probabilities
            assert answer.heatmap_class == single.classes[0] == int(np.argmax(answer.outputs["findings"]))


def test_a_failing_heatmap_pass_fails_only_its_requests(runtime: ModelRuntime) -> None:
    x = images(runtime, 3)
    answers = runtime.run_batch([(x[0], "findings", "magic"), (x[1], "findings"), (x[2], "findings", "gradcam")])
    assert isinstance(answers[0], XrayfmError) and "unknown CAM method" in str(answers[0])
    assert answers[1].outputs["findings"].shape == (3,) and answers[2].heatmap.shape == (64, 64)


def test_batcher_hands_each_caller_its_own_error() -> None:
    def run(items: list[int]) -> list[int | Exception]:
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]

    async def main() -> list[object]:
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=200)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(i) for i in (1, -2, 3)), return_exceptions=True)
        finally:
            await batcher.stop()

    got = asyncio.run(main())
    assert got[0] == 10 and got[2] == 30 and isinstance(got[1], ValueError) and str(got[1]) == "bad -2"


def test_a_lone_request_is_not_held_back_for_company() -> None:
    calls: list[int] = []

    async def main(pending: int) -> float:
        batcher = MicroBatcher(lambda items: calls.append(len(items)) or items, max_batch=8, max_wait_ms=1500,
                               pending=lambda: pending)  # fmt: skip
        batcher.start()
        t0 = time.monotonic()
        await batcher.submit(1)
        await batcher.stop()
        return time.monotonic() - t0

    assert asyncio.run(main(0)) < 0.5  # nothing else on its way: straight to the model
    assert asyncio.run(main(1)) >= 1.4  # another upload decoding: wait for it, up to max_wait
    assert calls == [1, 1]


def decoded(png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))), dtype=np.int16)


def test_concurrent_heatmap_requests_are_batched_and_equal_to_sequential_ones(model_dir: Path) -> None:
    uploads = [png_bytes(80, 64, seed=i) for i in range(8)]
    params = ["heatmap=true", "heatmap=true&method=gradcam%2B%2B", "heatmap=false", "heatmap=true&method=rollout"]

    def post(c: TestClient, i: int) -> dict:
        res = c.post(f"/predict?{params[i % 4]}", files={"file": ("x.png", uploads[i], "image/png")})
        assert res.status_code == 200, res.text
        return res.json()

    with TestClient(create_app(model_dir)) as c:
        sequential = [post(c, i) for i in range(8)]
        assert c.get("/health").json()["largest_batch"] == 1
    with TestClient(create_app(model_dir, max_batch=8, max_wait_ms=300)) as c:
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(lambda i: post(c, i), range(8)))
        health = c.get("/health").json()
    assert health["largest_batch"] > 1 and health["batches"] < 8
    for one, many in zip(sequential, concurrent):
        assert many["probabilities"] == pytest.approx(one["probabilities"], abs=1e-5)
        assert (one["heatmap"] is None) == (many["heatmap"] is None)
        if one["heatmap"] is not None:
            assert many["heatmap"]["class"] == one["heatmap"]["class"] == one["top_finding"]["class"]
            assert np.abs(decoded(many["heatmap"]["png"]) - decoded(one["heatmap"]["png"])).max() <= 1


def test_decoding_preprocessing_and_png_encoding_stay_off_the_event_loop(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop: dict[str, list[bool]] = {}

    def watched(name: str, fn):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            try:
                asyncio.get_running_loop()
                on_loop.setdefault(name, []).append(True)
            except RuntimeError:
                on_loop.setdefault(name, []).append(False)
            return fn(*args, **kwargs)

        return call

    app = create_app(model_dir)
    runtime = app.state.runtime
    for name in ("decode", "prepare", "to_image", "run_batch"):
        monkeypatch.setattr(runtime, name, watched(name, getattr(runtime, name)))
    monkeypatch.setattr("xrayfm.serve.app.png_base64", watched("png", png_base64))
    app.state.batcher.run_batch = runtime.run_batch
    with TestClient(app) as c:
        assert c.post("/predict?heatmap=true", files={"file": ("x.png", png_bytes(), "image/png")}).status_code == 200
        assert c.post("/segment", files={"file": ("x.png", png_bytes(), "image/png")}).status_code == 200
    assert set(on_loop) == {"decode", "prepare", "to_image", "run_batch", "png"}
    assert not any(any(calls) for calls in on_loop.values()), on_loop
