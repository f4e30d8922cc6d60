"""The HTTP API and web page of a fine-tuned model (FastAPI).

``POST /predict`` (classification: probabilities, decision threshold, top finding, optional
heatmap; a model with several classification heads, as a Foundation X model, also answers every
head under ``heads`` unless a ``task`` is named), ``POST /segment`` and ``POST /detect`` when the
model has those heads, ``GET /health`` (with the tasks), ``GET /model`` (model card) and the page at
``/``. A Foundation X model is served through :mod:`xrayfm.pretrain.multitask_serving` (``loaded``).
The OpenAPI schema is at ``/openapi.json``, browsable at ``/docs`` (Swagger UI) with its assets
served by the app itself: no CDN is reached.

Hostile traffic is refused as early as possible (:mod:`xrayfm.serve.guard`: token before the
body, size counted as bytes arrive, body time limits) and memory stays bounded
(:mod:`xrayfm.serve.admission`: a slot before the body is read, decode slots and a pixel budget
before decoding, 503 with ``Retry-After`` when full). Uploads are decoded from memory at the
resolution the model needs, and decoding and the encoding of maps as PNG run in worker threads,
never on the event loop, while every PyTorch op (preprocessing, the model, laying maps onto the
image) runs on the model's lane threads, and the model is loaded on a thread that then ends
(:mod:`xrayfm.serve.batcher` says why; under load two batches run side by side, each on half the
threads); heatmap requests are batched like the others (one
forward+backward pass gives their probabilities and maps). A lone upload (no other being decoded, no
batch running or waiting; at most 2048 x 2048 px, not DICOM) skips the decoding threads: the model's
thread decodes, prepares and answers it in one trip (:meth:`MicroBatcher.run_alone`), two thread
hand-offs fewer. Boxes and image sizes in answers are
in the uploaded image's pixels, and maps (heatmap, masks) cover the whole image at
``1 / downscale`` of its size. Every answer says in ``server_ms`` how long the server worked on it, from
the upload's arrival to the answer (decoding, waiting for a batch, the model, encoding maps). Bad input gets a
4xx with a message, and the server keeps running either way.

Once the model is loaded the objects alive then (the model, the imported libraries: about half a
million) are frozen out of Python's garbage collector (``gc.freeze``): otherwise every few hundred
requests a full collection walked them all, a 0.2 s pause of the event loop and of every thread
waiting for the interpreter (timed with a ``gc`` callback in the server under ``bench/serve_latency.py``'s
16-client load on its 2-core machine). They are unfrozen when the app stops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from tempfile import SpooledTemporaryFile
from typing import Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.requests import ClientDisconnect
from torch import nn

from xrayfm.errors import UnsafeInputError, XrayfmError
from xrayfm.io import read_xray, sniff_format
from xrayfm.io.sandbox import DecodeSandbox, usable_cores
from xrayfm.serve.admission import Admission, Busy
from xrayfm.serve.batcher import MicroBatcher, QueueFull, lane_threads
from xrayfm.serve.guard import BUSY, TOKEN_HINT, GuardStats, UploadGuard, token_matches
from xrayfm.serve.runtime import Answer, ModelRuntime, png_base64, serving_device
from xrayfm.serve.runtime import Request as ModelRequest
from xrayfm.serve.thread_names import name_this_thread
from xrayfm.tasks import CLASSIFICATION_KINDS, TaskSpec

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
UPLOAD_PATHS = ("/predict", "/segment", "/detect")
#: The operating-system name of the threads that decode uploads and encode maps as PNG.
CODEC_NAME = "xrayfm-codec"
#: Content types of an upload sent as the request body itself, besides ``image/*`` (the format is sniffed
#: from the bytes either way).
BODY_TYPES = ("application/dicom", "application/octet-stream")
#: An upload sent as the body is held in memory up to this size, beyond it in a temporary file, until it is
#: decoded: as Starlette holds a multipart upload, so the server's memory bound is the same either way.
SPOOL_BYTES = 1 << 20
BODY_KINDS = f"image/*, {' or '.join(BODY_TYPES)}"
UPLOAD_FIELD = f"PNG, JPEG, TIFF, BMP or DICOM radiograph (or the file itself as the body, Content-Type {BODY_KINDS})"
#: The upload routes' request body in the OpenAPI schema: a multipart form, or the image itself.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    kind: {"schema": {"type": "string", "format": "binary"}} for kind in ("image/*", *BODY_TYPES)}}}  # fmt: skip
#: Most declared pixels of an upload decoded on the model's thread when it comes alone (2048 x 2048). A
#: larger one decodes for tens of milliseconds or more, and a request arriving meanwhile would wait for the
#: model's thread, while the two hand-offs it saves cost a fraction of a millisecond; DICOM uploads never do
#: (decoded in a child process, up to --decode-timeout).
ALONE_MAX_PIXELS = 2048 * 2048
#: How a map (heatmap, mask) lies over the uploaded image.
MAP_GEOMETRY = (
    "covers the whole image at 1/downscale of its size: map pixel (x, y) is image pixels "
    "[x*downscale, (x+1)*downscale) x [y*downscale, (y+1)*downscale), clipped to the image"
)


def ms_since(started: float) -> float:
    """Milliseconds since ``started`` (a :func:`time.perf_counter` reading), to 0.1 ms."""
    return round((time.perf_counter() - started) * 1000, 1)


def default_lanes(device: torch.device, threads: int) -> int:
    """Batches run at once under load when ``--lanes`` is not given: two on a CPU with at least two
    threads (measured on 2 cores in :mod:`xrayfm.serve.batcher`), one on a GPU, whose kernels already
    fill it."""
    return 1 if device.type != "cpu" else min(2, threads)


def needs_model_alone(requests: list[ModelRequest]) -> bool:
    """Whether a batch must have the model alone: heatmap passes hook it."""
    return any(r.heatmap is not None for r in requests)


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
    precision: str = "fp32",
    max_decodes: int | None = None,
    max_pixels_in_flight: int = 200_000_000,
    body_timeout: float = 30.0,
    body_idle_timeout: float = 10.0,
    decode_wait: float = 10.0,
    decode_timeout: float = 30.0,
    loaded: tuple[nn.Module, dict[str, Any]] | None = None,
    lanes: int | None = None,
    torch_compile: bool = False,
) -> FastAPI:
    """Build the app serving the model in ``model_dir``.

    Args:
        model_dir: Finetune run folder or model folder.
        token: When set, API calls need ``Authorization: Bearer TOKEN`` (the page asks for it)
            and ``/health`` tells others only that the server is up.
        max_upload_mb: Largest accepted upload.
        max_batch: Most images per forward pass.
        max_wait_ms: How long a request may wait for others to share its batch; it waits only while
            other uploads are being decoded (a lone request goes straight to the model).
        queue_size: Most uploads admitted beyond those decoding, and most requests waiting for
            the model; beyond either the server answers 503.
        device: Torch device.
        backend: ``torch`` or ``onnx`` (ONNX Runtime on the folder's ``model.onnx``).
        precision: ``fp32``, ``bf16`` (torch backend) or ``int8`` (onnx backend); see :class:`ModelRuntime`.
        max_decodes: Most uploads decoded at once (default: the CPUs this process may use).
        max_pixels_in_flight: Most declared pixels decoded at once; at least the read limit of
            one image (100 MP by default), so every accepted image fits.
        body_timeout: Seconds an upload's body may take to arrive (408 otherwise).
        body_idle_timeout: Seconds allowed between two chunks of a body (408 otherwise).
        decode_wait: Seconds an admitted upload may wait for a decode slot and pixel budget
            before the answer is 503.
        decode_timeout: Seconds a DICOM upload's decoding may take in its child process; beyond them the child
            is stopped and the answer is 400 (:mod:`xrayfm.io.sandbox`).
        loaded: A model already loaded and its sidecar, served instead of the fine-tuned model in
            ``model_dir`` (a Foundation X model: see :class:`ModelRuntime`).
        lanes: Most batches the model runs at once under load, each on its share of the threads
            (:mod:`xrayfm.serve.batcher`); default :func:`default_lanes`.
        torch_compile: Plain forward passes through ``torch.compile`` (torch backend), compiled before this
            returns (:mod:`xrayfm.serve.compiled`).

    Raises:
        XrayfmError: A limit is not positive, the pixel budget is below one image's limit, or
            ``lanes`` is not between 1 and the model's threads.
    """
    threads = torch.get_num_threads()
    lanes = default_lanes(serving_device(device), threads) if lanes is None else lanes
    try:
        widths = lane_threads(threads, lanes)  # checked before the model loads
    except ValueError:
        raise XrayfmError(f"--lanes must be between 1 and the {threads} threads the model has, got {lanes}") from None
    with ThreadPoolExecutor(1) as loader:  # a thread that ends: it leaves no OpenMP team beside the model's
        runtime = loader.submit(ModelRuntime, model_dir, device=device, backend=backend, precision=precision,
                                loaded=loaded, lane_threads=widths, torch_compile=torch_compile).result()  # fmt: skip
    if max_upload_mb <= 0 or body_timeout <= 0 or body_idle_timeout <= 0 or decode_timeout <= 0:
        raise XrayfmError("--max-upload-mb, --body-timeout, --body-idle-timeout and --decode-timeout must be positive")
    if max_pixels_in_flight < runtime.limits.max_pixels:
        raise XrayfmError(
            f"the pixel budget (--max-megapixels-in-flight) of {max_pixels_in_flight / 1e6:g} MP is below the "
            f"{runtime.limits.max_pixels / 1e6:g} MP one accepted image may have; raise it"
        )
    admission = Admission(max_decodes=max_decodes or usable_cores(), queue_size=queue_size,
                          max_pixels=max_pixels_in_flight, wait_s=decode_wait)  # fmt: skip
    # uploads on their way to the queue: those decoding, less lone ones decoding on the model's thread
    batcher = MicroBatcher(runtime.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                           pending=lambda: admission.stats.decoding - batcher.alone_running, threads=threads,
                           lanes=lanes, set_threads=runtime.use_threads, exclusive=needs_model_alone)  # fmt: skip
    refused = GuardStats()
    max_bytes = int(max_upload_mb * (1 << 20))
    codec: ThreadPoolExecutor | None = None  # decoding uploads, encoding maps: never on the event loop
    # DICOM uploads: a decoder that crashes or hangs costs one upload
    sandbox = DecodeSandbox(admission.max_decodes, timeout=decode_timeout)

    async def in_codec(fn, *args: Any) -> Any:  # noqa: ANN001
        return await asyncio.get_running_loop().run_in_executor(codec, fn, *args)

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # noqa: ANN202
        nonlocal codec
        codec = ThreadPoolExecutor(admission.max_decodes + 1, CODEC_NAME, name_this_thread, (CODEC_NAME,))
        batcher.start()
        gc.collect()
        gc.freeze()  # what lives now lives as long as the server: no full collection walks it again
        try:
            yield
        finally:
            gc.unfreeze()
            await batcher.stop()
            codec.shutdown(wait=False)
            sandbox.close()

    app = FastAPIOffline(
        title="xrayfm model server",
        version="1",
        description=f"{runtime.meta['arch']} fine-tuned by xrayfm. Research use only, not for diagnosis.",
        lifespan=lifespan,
        static_url="/docs-assets",
        redoc_url=None,  # ReDoc's page loads its logo from redoc.ly; Swagger UI at /docs needs nothing outside
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.runtime, app.state.batcher, app.state.admission = runtime, batcher, admission
    app.add_middleware(UploadGuard, upload_paths=UPLOAD_PATHS, token=token, max_upload=max_bytes,
                       body_timeout=body_timeout, idle_timeout=body_idle_timeout, admission=admission,
                       stats=refused)  # fmt: skip

    def authorised(request: Request) -> bool:
        return token is None or token_matches(request.headers.get("authorization"), token)

    def authorise(request: Request) -> None:
        if not authorised(request):
            raise HTTPException(401, TOKEN_HINT, headers={"WWW-Authenticate": "Bearer"})

    async def body_upload(request: Request) -> UploadFile:
        """An upload sent as the request body (``Content-Type`` image/*, application/dicom or
        application/octet-stream), received as Starlette receives a multipart one: into memory up to
        ``SPOOL_BYTES``, beyond it into a temporary file. A client sending the bytes as they are spares
        the server the multipart parsing (``bench/http_parsers.py`` measures what it costs)."""
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        how = f"send the image as the multipart field 'file', or as the request body with Content-Type {BODY_KINDS}"
        if kind in ("", "multipart/form-data"):
            raise HTTPException(422, f"no upload: {how}")
        if not (kind.startswith("image/") or kind in BODY_TYPES):
            raise HTTPException(415, f"{how} (got {kind})")
        upload = UploadFile(SpooledTemporaryFile(max_size=SPOOL_BYTES))
        try:
            async for chunk in request.stream():
                await upload.write(chunk)
        except ClientDisconnect:  # the guard refused the body (too large, too slow) and has answered
            await upload.close()
            raise HTTPException(400, "upload not received") from None
        await upload.seek(0)
        return upload

    async def uploaded(
        request: Request, file: UploadFile | None = File(None, description=UPLOAD_FIELD)
    ) -> AsyncIterator[UploadFile]:
        """The upload: the multipart field ``file``, or the request body (closed after the answer)."""
        if file is not None:
            yield file
            return
        upload = await body_upload(request)
        try:
            yield upload
        finally:
            await upload.close()

    def decode_and_answer(data: bytes, read: Any, task: str | tuple[str, ...], heatmap: str | None):  # noqa: ANN202
        """A lone upload on the model's thread: decoded, prepared and answered in one trip (its pixels, format
        facts and answer, or the model's error as the answer)."""
        pixels, meta = runtime.decode(data, read)
        (answer,) = runtime.run_batch([ModelRequest(pixels, task, heatmap)])
        return pixels, meta, answer

    async def read_upload(
        file: UploadFile, task: str | tuple[str, ...] | None = None, heatmap: str | None = None
    ) -> tuple[np.ndarray, dict[str, Any], Answer | Exception | None]:
        """The decoded pixels and the format facts of an upload (prepared for the model on its thread), and,
        when a ``task`` is given, the model has nothing else to do and the upload is small and not DICOM
        (:data:`ALONE_MAX_PIXELS`), the model's answer to it, computed in the same trip to the model's thread
        as the decoding (:meth:`MicroBatcher.run_alone`); else None."""
        try:
            async with admission.decode_slot():
                data = await file.read()  # at most the upload limit: the guard cut longer bodies
                if len(data) > max_bytes:
                    raise HTTPException(413, f"upload larger than {max_upload_mb:g} MB")
                if data and sniff_format(data[:132]) is None:
                    raise HTTPException(415, "not a PNG, JPEG, TIFF, BMP or DICOM file")
                probe = runtime.probe(data)
                dicom, pixels = probe.format == "dicom", probe.width * probe.height
                read = sandbox.read if dicom else read_xray  # see io/sandbox.py
                async with admission.pixels(pixels):
                    alone = task is not None and not dicom and pixels <= ALONE_MAX_PIXELS
                    if alone and admission.stats.decoding == 1 and batcher.idle():
                        return await batcher.run_alone(partial(decode_and_answer, data, read, task, heatmap))
                    return (*await in_codec(runtime.decode, data, read), None)
        except Busy as exc:
            raise HTTPException(503, f"{exc}; retry shortly", headers={"Retry-After": "1"}) from None
        except UnsafeInputError as exc:
            raise HTTPException(413, str(exc)) from None
        except XrayfmError as exc:
            raise HTTPException(400, str(exc)) from None

    async def infer(
        pixels: np.ndarray, task: str | tuple[str, ...], heatmap: str | None = None,
        answered: Answer | Exception | None = None,
    ) -> Answer:  # fmt: skip
        """The model's answer: ``answered`` when :func:`read_upload` got it, else from a batch."""
        try:
            if isinstance(answered, Exception):
                raise answered
            return answered if answered is not None else await batcher.submit(ModelRequest(pixels, task, heatmap))
        except QueueFull:
            raise HTTPException(503, BUSY, headers={"Retry-After": "1"}) from None
        except XrayfmError as exc:  # e.g. attention rollout asked of a CNN
            raise HTTPException(422, str(exc)) from None

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

    def findings(spec: TaskSpec, probs: np.ndarray, threshold: float) -> dict[str, Any]:
        """A classification head's probabilities per class, its positive classes and its top finding."""
        ranked = sorted(zip(spec.classes, probs.tolist()), key=lambda cp: -cp[1])
        positive = [ranked[0][0]] if spec.kind == "multiclass" else [c for c, p in ranked if p >= threshold]
        return {"probabilities": {c: float(p) for c, p in zip(spec.classes, probs.tolist())}, "positive": positive,
                "top_finding": {"class": ranked[0][0], "probability": float(ranked[0][1])}}  # fmt: skip

    def image_info(meta: dict[str, Any]) -> dict[str, Any]:
        width, height = meta["original_size"]
        return {"width": width, "height": height, "format": str(meta.get("format", "")).lower(),
                "downscale": int(meta.get("downscale", 1))}  # fmt: skip

    async def on_image(planes: list[np.ndarray], pixels: np.ndarray) -> list[np.ndarray]:
        """Maps over the model input laid onto the decoded image (on the model's thread)."""
        return await batcher.call(lambda: [runtime.to_image(plane, *pixels.shape[:2]) for plane in planes])

    async def heatmap_png(plane: np.ndarray, pixels: np.ndarray) -> tuple[str, int, int]:
        """A heatmap over the model input as a PNG over the decoded image, and its width and height."""
        (heat,) = await on_image([plane], pixels)
        return await in_codec(png_base64, heat), heat.shape[1], heat.shape[0]

    async def mask_pngs(planes: np.ndarray, pixels: np.ndarray, threshold: float) -> tuple[list[str], list[float]]:
        """Mask probabilities (M, S, S) as one PNG per class over the decoded image, and their area shares."""
        inside = [m >= threshold for m in await on_image(list(planes), pixels)]
        pngs = await in_codec(lambda: [png_base64(m.astype(np.uint8) * 255) for m in inside])
        return pngs, [float(m.mean()) for m in inside]

    def to_image_boxes(boxes: np.ndarray, pixels: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
        """xyxy boxes over the model input in the uploaded image's pixels."""
        decoded = runtime.preprocess.boxes_to_original(torch.as_tensor(boxes, dtype=torch.float32), *pixels.shape[:2])
        width, height = meta["original_size"]
        bound = decoded.new_tensor([width, height, width, height])
        return torch.minimum(decoded * int(meta.get("downscale", 1)), bound).clamp(min=0)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="Liveness; with the token (or without one set), queue and limit counters")
    def health(request: Request) -> dict[str, Any]:
        if not authorised(request):
            return {"status": "ok"}
        s, a = batcher.stats, admission.stats
        return {"status": "ok", "model": runtime.meta["arch"], "backend": runtime.backend,
                "tasks": {name: t.kind for name, t in runtime.tasks.items()},
                "auth_required": token is not None, "queue": batcher.queue.qsize(), "queue_size": queue_size,
                "requests": s.requests, "batches": s.batches, "rejected": s.rejected + a.busy,
                "largest_batch": s.largest_batch, "batch_sizes": {str(b): n for b, n in sorted(s.sizes.items())},
                "lanes": batcher.lanes, "wide_batches": s.wide_batches,
                "uploads": {"admitted": a.admitted, "in_flight": a.in_flight, "max_in_flight": admission.max_requests,
                            "decoding": a.decoding, "max_decodes": admission.max_decodes,
                            "pixels_decoding": a.pixels_decoding, "peak_pixels_decoding": a.peak_pixels_decoding,
                            "max_pixels_in_flight": admission.max_pixels,
                            "memory_bound_bytes": admission.memory_bound(max_bytes)},
                "refused": {"unauthorised": refused.unauthorised, "too_large": refused.too_large,
                            "too_slow": refused.too_slow, "busy": s.rejected + a.busy}}  # fmt: skip

    @app.get("/model", summary="Model card", dependencies=[Depends(authorise)])
    def model_card() -> dict[str, Any]:
        return runtime.card()

    @app.post("/predict", summary="Findings with probabilities (and a heatmap)", openapi_extra=UPLOAD_BODY)
    async def predict(
        file: UploadFile = Depends(uploaded),
        task: str | None = Query(None, description="classification task (default: the first; all under 'heads')"),
        threshold: float = Query(0.5, ge=0.0, le=1.0, description="decision threshold for positive findings"),
        heatmap: bool = Query(False, description="include a Grad-CAM heatmap of the top finding"),
        method: str = Query("gradcam", pattern="^(gradcam|gradcam\\+\\+|xgradcam|hirescam|layercam|eigencam|rollout)$"),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        spec = task_of(CLASSIFICATION_KINDS, task, "/predict")
        # without a task, a model with several classification heads (Foundation X) answers them all
        every = [spec] if task else [t for t in runtime.tasks.values() if t.kind in CLASSIFICATION_KINDS]
        if len(every) > 1 and heatmap:  # the heatmap pass answers the first head; one plain pass the others
            pixels, meta, _ = await read_upload(file)
            others = tuple(t.name for t in every[1:])
            answer, rest = await asyncio.gather(infer(pixels, spec.name, method), infer(pixels, others))
            outputs = {**rest.outputs, **answer.outputs}
        else:
            asked = spec.name if len(every) == 1 else tuple(t.name for t in every)
            pixels, meta, answered = await read_upload(file, asked, method if heatmap else None)
            answer = await infer(pixels, asked, method if heatmap else None, answered)
            outputs = answer.outputs
        found = {t.name: findings(t, outputs[t.name], threshold) for t in every}
        result: dict[str, Any] = {
            "model": runtime.meta["arch"], "task": spec.name, "kind": spec.kind, **found[spec.name],
            "threshold": threshold, "image": image_info(meta), "heatmap": None,
        }  # fmt: skip
        if len(every) > 1:
            result["heads"] = {name: {"kind": runtime.tasks[name].kind, **f} for name, f in found.items()}
        if answer.heatmap is not None:
            top = found[spec.name]["top_finding"]["class"]
            explained = top if answer.heatmap_class is None else spec.classes[answer.heatmap_class]
            png, width, height = await heatmap_png(answer.heatmap, pixels)
            result["heatmap"] = {"png": png, "class": explained, "method": method, "width": width, "height": height,
                                 "encoding": f"8-bit grey PNG, 255 = strongest; {MAP_GEOMETRY}"}  # fmt: skip
        result["server_ms"] = ms_since(started)
        return result

    @app.post("/segment", summary="Masks per class", openapi_extra=UPLOAD_BODY)
    async def segment(
        file: UploadFile = Depends(uploaded),
        task: str | None = Query(None),
        threshold: float = Query(0.5, ge=0.0, le=1.0, description="probability above which a pixel is in"),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        spec = task_of(("segmentation",), task, "/segment")
        pixels, meta, answered = await read_upload(file, spec.name)
        answer = await infer(pixels, spec.name, answered=answered)
        pngs, shares = await mask_pngs(answer.outputs[spec.name], pixels, threshold)
        masks, areas = dict(zip(spec.classes, pngs)), dict(zip(spec.classes, shares))
        return {"model": runtime.meta["arch"], "task": spec.name, "classes": list(spec.classes), "masks": masks,
                "area_fraction": areas, "threshold": threshold, "image": image_info(meta),
                "mask_width": pixels.shape[1], "mask_height": pixels.shape[0], "server_ms": ms_since(started),
                "encoding": f"8-bit PNG per class, 255 = inside; {MAP_GEOMETRY}"}  # fmt: skip

    @app.post("/detect", summary="Boxes with classes and scores", openapi_extra=UPLOAD_BODY)
    async def detect(
        file: UploadFile = Depends(uploaded),
        task: str | None = Query(None),
        min_score: float = Query(0.3, ge=0.0, le=1.0),
    ) -> dict[str, Any]:
        started = time.perf_counter()
        spec = task_of(("detection",), task, "/detect")
        pixels, meta, answered = await read_upload(file, spec.name)
        det = (await infer(pixels, spec.name, answered=answered)).outputs[spec.name]
        original = to_image_boxes(det["boxes"], pixels, meta)
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
            "image": image_info(meta),
            "box_format": "xyxy pixels of the uploaded image",
            "server_ms": ms_since(started),
        }

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    return app
