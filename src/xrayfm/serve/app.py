"""The HTTP API and web page of a fine-tuned model (FastAPI).

``POST /predict`` (classification: probabilities, decision threshold, top finding, optional
heatmap), ``POST /segment`` and ``POST /detect`` when the model has those heads, ``GET /health``,
``GET /model`` (model card) and the page at ``/``. The OpenAPI schema is at ``/openapi.json``
(browsable at ``/docs``). Uploads are size-limited before they are parsed, decoded like
training data, and batched with concurrent requests; bad input gets a 4xx with a message, an
overloaded server a 503, and the server keeps running either way.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from xrayfm.errors import UnsafeInputError, XrayfmError
from xrayfm.serve.batcher import MicroBatcher, QueueFull
from xrayfm.serve.runtime import ModelRuntime, png_base64
from xrayfm.tasks import CLASSIFICATION_KINDS

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
CHUNK = 1 << 20


def _to_image(runtime: ModelRuntime, plane: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A map over the model input back onto the uploaded image's pixels (the record's geometry)."""
    t = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))
    return runtime.preprocess.plane_to_original(t, shape[0], shape[1]).numpy()


def create_app(
    model_dir: str | Path,
    *,
    token: str | None = None,
    max_upload_mb: float = 32.0,
    max_batch: int = 8,
    max_wait_ms: float = 5.0,
    queue_size: int = 64,
    device: str = "cpu",
    backend: str = "torch",
) -> FastAPI:
    """Build the app serving the model in ``model_dir``.

    Args:
        model_dir: Finetune run folder or model folder.
        token: When set, API calls need ``Authorization: Bearer TOKEN`` (the page asks for it).
        max_upload_mb: Largest accepted upload.
        max_batch: Most images per forward pass.
        max_wait_ms: How long a request waits for others to share its batch.
        queue_size: Most requests waiting; beyond it the server answers 503.
        device: Torch device.
        backend: ``torch`` or ``onnx`` (ONNX Runtime on the folder's ``model.onnx``).
    """
    runtime = ModelRuntime(model_dir, device=device, backend=backend)
    batcher = MicroBatcher(runtime.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size)
    max_bytes = int(max_upload_mb * (1 << 20))

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # noqa: ANN202
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="xrayfm model server",
        version="1",
        description=f"{runtime.meta['arch']} fine-tuned by xrayfm. Research use only, not for diagnosis.",
        lifespan=lifespan,
    )
    app.state.runtime, app.state.batcher = runtime, batcher

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # noqa: ANN001, ANN202
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_bytes + 65536):
            return JSONResponse({"detail": f"upload larger than {max_upload_mb:g} MB"}, status_code=413)
        return await call_next(request)

    def authorise(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "missing or wrong API token (Authorization: Bearer TOKEN)")

    async def read_upload(file: UploadFile) -> tuple[np.ndarray, dict[str, Any]]:
        data = bytearray()
        while chunk := await file.read(CHUNK):
            data.extend(chunk)
            if len(data) > max_bytes:
                raise HTTPException(413, f"upload larger than {max_upload_mb:g} MB")
        try:
            return await asyncio.to_thread(runtime.decode, bytes(data))
        except UnsafeInputError as exc:
            raise HTTPException(413, str(exc)) from None
        except XrayfmError as exc:
            raise HTTPException(415 if "not a PNG" in str(exc) else 400, str(exc)) from None

    async def infer(pixels: np.ndarray, task: str) -> tuple[torch.Tensor, dict[str, Any]]:
        x = runtime.prepare(pixels)
        try:
            return x, await batcher.submit((x, task))
        except QueueFull:
            raise HTTPException(503, "server busy: too many requests waiting; retry shortly",
                                headers={"Retry-After": "1"}) from None  # fmt: skip

    def task_of(kind: tuple[str, ...], name: str | None, endpoint: str):  # noqa: ANN202
        tasks = [t for t in runtime.tasks.values() if t.kind in kind]
        if not tasks and any(t.kind in kind for t in runtime.model.tasks):
            raise HTTPException(404, f"the ONNX export has no {'/'.join(kind)} head; serve with --backend torch "
                                     f"for {endpoint}")  # fmt: skip
        if not tasks:
            raise HTTPException(404, f"this model has no {'/'.join(kind)} head, so {endpoint} is not available")
        if name is None:
            return tasks[0]
        match = next((t for t in tasks if t.name == name), None)
        if match is None:
            raise HTTPException(422, f"no task {name!r}; choose from {[t.name for t in tasks]}")
        return match

    def image_info(pixels: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
        fmt = str(meta.get("format", "")).lower()
        return {"width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "format": fmt}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="Liveness, queue and batching counters")
    def health() -> dict[str, Any]:
        s = batcher.stats
        return {"status": "ok", "model": runtime.meta["arch"], "backend": runtime.backend,
                "auth_required": token is not None, "queue": batcher.queue.qsize(), "queue_size": queue_size,
                "requests": s.requests, "batches": s.batches, "rejected": s.rejected,
                "largest_batch": s.largest_batch}  # fmt: skip

    @app.get("/model", summary="Model card", dependencies=[Depends(authorise)])
    def model_card() -> dict[str, Any]:
        return runtime.card()

    @app.post("/predict", summary="Findings with probabilities (and a heatmap)", dependencies=[Depends(authorise)])
    async def predict(
        file: UploadFile = File(..., description="PNG, JPEG, TIFF, BMP or DICOM radiograph"),
        task: str | None = Query(None, description="classification task (default the first)"),
        threshold: float = Query(0.5, ge=0.0, le=1.0, description="decision threshold for positive findings"),
        heatmap: bool = Query(False, description="include a Grad-CAM heatmap of the top finding"),
        method: str = Query("gradcam", pattern="^(gradcam|gradcam\\+\\+|xgradcam|hirescam|layercam|eigencam|rollout)$"),
    ) -> dict[str, Any]:
        spec = task_of(CLASSIFICATION_KINDS, task, "/predict")
        pixels, meta = await read_upload(file)
        x, out = await infer(pixels, spec.name)
        probs = out[spec.name]
        ranked = sorted(zip(spec.classes, probs.tolist()), key=lambda cp: -cp[1])
        if spec.kind == "multiclass":
            positive = [ranked[0][0]]
        else:
            positive = [c for c, p in ranked if p >= threshold]
        result: dict[str, Any] = {
            "model": runtime.meta["arch"], "task": spec.name, "kind": spec.kind,
            "probabilities": {c: float(p) for c, p in zip(spec.classes, probs.tolist())},
            "threshold": threshold, "positive": positive,
            "top_finding": {"class": ranked[0][0], "probability": float(ranked[0][1])},
            "image": image_info(pixels, meta), "heatmap": None,
        }  # fmt: skip
        if heatmap:
            k = spec.classes.index(ranked[0][0])
            try:
                heat = await asyncio.to_thread(runtime.heatmap, x, spec.name, k, method)
            except XrayfmError as exc:
                raise HTTPException(422, str(exc)) from None
            full = _to_image(runtime, heat, pixels.shape)
            result["heatmap"] = {"png": png_base64(full), "class": ranked[0][0], "method": method,
                                 "encoding": "8-bit grey PNG, 255 = strongest, image size"}  # fmt: skip
        return result

    @app.post("/segment", summary="Masks per class", dependencies=[Depends(authorise)])
    async def segment(
        file: UploadFile = File(...),
        task: str | None = Query(None),
        threshold: float = Query(0.5, ge=0.0, le=1.0, description="probability above which a pixel is in"),
    ) -> dict[str, Any]:
        spec = task_of(("segmentation",), task, "/segment")
        pixels, meta = await read_upload(file)
        _, out = await infer(pixels, spec.name)
        masks, areas = {}, {}
        for c, plane in zip(spec.classes, out[spec.name]):
            full = _to_image(runtime, plane, pixels.shape) >= threshold
            masks[c] = png_base64(full.astype(np.uint8) * 255)
            areas[c] = float(full.mean())
        return {"model": runtime.meta["arch"], "task": spec.name, "classes": list(spec.classes), "masks": masks,
                "area_fraction": areas, "threshold": threshold, "image": image_info(pixels, meta),
                "encoding": "8-bit PNG per class, 255 = inside, image size"}  # fmt: skip

    @app.post("/detect", summary="Boxes with classes and scores", dependencies=[Depends(authorise)])
    async def detect(
        file: UploadFile = File(...),
        task: str | None = Query(None),
        min_score: float = Query(0.3, ge=0.0, le=1.0),
    ) -> dict[str, Any]:
        spec = task_of(("detection",), task, "/detect")
        pixels, meta = await read_upload(file)
        _, out = await infer(pixels, spec.name)
        det = out[spec.name]
        original = runtime.preprocess.boxes_to_original(torch.as_tensor(det["boxes"]), *pixels.shape[:2])
        boxes = [
            {"class": spec.classes[int(lab)], "score": float(score), "box": [float(v) for v in b]}
            for b, score, lab in zip(original, det["scores"], det["labels"]) if score >= min_score
        ]  # fmt: skip
        return {
            "model": runtime.meta["arch"],
            "task": spec.name,
            "classes": list(spec.classes),
            "boxes": boxes,
            "min_score": min_score,
            "image": image_info(pixels, meta),
            "box_format": "xyxy image pixels",
        }

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    return app
