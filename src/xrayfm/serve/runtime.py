"""The model behind the server: decoding uploads, batched inference, heatmaps, the model card.

Uploads are decoded by :func:`xrayfm.io.read_xray` exactly as training data are (DICOM windowing,
MONOCHROME1, 16-bit PNG...), with the same size limits, straight from the uploaded bytes (no
temporary file) and reduced by the largest integer factor whose result still covers what the
model's preprocessing resizes to: a 10,000-pixel upload is never held as a full-size float image.
Plain forward passes may run side by side (the server's lanes, :mod:`xrayfm.serve.batcher`), each
with the thread count its lane set (:meth:`ModelRuntime.use_threads`; on the ``onnx`` backend, an
ONNX Runtime session per thread count); a heatmap pass holds the model alone
(:mod:`xrayfm.serve.shared_lock`): Grad-CAM hooks the model, and a forward pass must not run
through those hooks.

A batch of requests is answered with as few passes as it needs: one forward pass for all the
requests without a heatmap (ONNX Runtime's on the ``onnx`` backend), and one forward+backward
pass per (task, heatmap method) for those with one, which gives their probabilities and their
maps at once (always PyTorch's: the backward pass needs it).
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from xrayfm.errors import ImageReadError, XrayfmError
from xrayfm.explain.heatmap import explain_batch
from xrayfm.io import ImageProbe, XrayImage, probe_image, read_xray
from xrayfm.io.limits import ReadLimits
from xrayfm.models.onnx_detection import onnx_task_outputs
from xrayfm.models.onnx_model import OnnxModel, precision_record
from xrayfm.models.precision import check_precision, no_grad_at
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.task_checkpoint import WEIGHTS, find_task_model, load_task_model
from xrayfm.serve.compiled import compile_model, default_task_sets, warm_up
from xrayfm.serve.shared_lock import SharedLock
from xrayfm.tasks import probabilities

BACKENDS = ("torch", "onnx")


#: zlib level of the PNGs in answers: level 1 encodes a 512 px heatmap about 3x faster than the default 6
#: for about 1.6x the bytes (measured: 2.0 vs 5.6 ms, 25 vs 16 kB), a good trade on a LAN.
PNG_COMPRESS_LEVEL = 1


def png_base64(array: np.ndarray) -> str:
    """An 8-bit grey PNG of a [0, 1] (H, W) array (or a uint8 one), base64-encoded."""
    a = array if array.dtype == np.uint8 else np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return base64.b64encode(buf.getbuffer()).decode("ascii")


class Request(NamedTuple):
    """One image's request to the model: the prepared image (1, S, S) or the decoded pixels (H, W) as a
    numpy array (prepared by :meth:`ModelRuntime.run_batch` on the model's thread), the task (or, without a
    heatmap, several tasks answered by one forward pass), and the heatmap method wanted (None: no heatmap)."""

    image: torch.Tensor | np.ndarray
    task: str | tuple[str, ...]
    heatmap: str | None = None


@dataclass
class Answer:
    """The model's answer to one :class:`Request`.

    Attributes:
        outputs: Per task asked: probabilities (K,), mask probabilities (M, S, S), or boxes /
            scores / labels.
        heatmap: The (S, S) map in [0, 1] when one was asked.
        heatmap_class: The class the map explains (None for the class-free attention rollout).
    """

    outputs: dict[str, Any] = field(default_factory=dict)
    heatmap: np.ndarray | None = None
    heatmap_class: int | None = None


def serving_device(name: str | torch.device) -> torch.device:
    """The torch device ``--device`` names, refused in one line where this machine does not have it.

    Raises:
        XrayfmError: Not a device name, or a CUDA device that is not visible here.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise XrayfmError(f"unknown device {str(name)!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise XrayfmError(f"--device {name}: no CUDA GPU is visible on this machine (torch.cuda.is_available() "
                              "is False); serve with --device cpu")  # fmt: skip
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise XrayfmError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


class ModelRuntime:
    """A loaded fine-tuned model ready to answer requests.

    Args:
        model_dir: Finetune run folder or model folder.
        device: Torch device.
        limits: Upload decoding limits (file size, pixel count).
        backend: ``torch``, or ``onnx`` to answer with ONNX Runtime from the folder's ``model.onnx``
            (``xrayfm export onnx``); heatmaps always come from the PyTorch model, which needs gradients.
        precision: ``fp32``; ``bf16`` (torch backend, autocast; refused where the CPU / GPU lacks bf16);
            ``int8`` (onnx backend, ``model.int8.onnx``). Heatmaps stay fp32.
        loaded: A model already loaded with the fine-tuned model's interface and its sidecar (``arch``,
            ``tasks``...), served instead of reading ``model_dir``, which is then its folder: a Foundation X
            model through :mod:`xrayfm.pretrain.multitask_serving`. Torch backend only.
        lane_threads: The thread counts the callers' threads will ask for with :meth:`use_threads`
            (the server's lanes); the ``onnx`` backend opens one session per count (each holds the
            weights). Default: one session with ONNX Runtime's own thread count.

    Raises:
        XrayfmError: Unknown backend, missing or stale ONNX export, unreadable model, unsupported precision,
            a loaded model with another backend than torch, ``torch_compile`` on the onnx backend or a failed compile.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        limits: ReadLimits | None = None,
        backend: str = "torch",
        precision: str = "fp32",
        loaded: tuple[nn.Module, dict[str, Any]] | None = None,
        lane_threads: Iterable[int] = (),
        torch_compile: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise XrayfmError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
        if torch_compile and backend != "torch":
            raise XrayfmError("--compile is for the torch backend; ONNX Runtime optimises its own graph")
        if loaded is not None and backend != "torch":
            raise XrayfmError(f"{model_dir}: this model has no ONNX export; serve it with --backend torch")
        device, lane_threads = serving_device(device), tuple(lane_threads)
        check_precision(precision, backend, device)
        self.precision = precision
        if loaded is None:
            self.model_dir = find_task_model(model_dir)
            self.model, self.meta = load_task_model(self.model_dir)
        else:
            self.model_dir, (self.model, self.meta) = Path(model_dir), loaded
        self.device = device
        self.model.to(self.device).eval()
        self.preprocess = resolve_preprocess(self.model)
        self.target_size = math.ceil(self.preprocess.input_size / self.preprocess.crop_pct)
        self.limits = limits or ReadLimits()
        self.lock = SharedLock()
        self.backend = backend
        self._lane = threading.local()
        self.sessions: dict[int | None, OnnxModel] = {}
        if backend == "onnx":
            for threads in sorted(set(lane_threads), reverse=True) or [None]:
                self.sessions[threads] = OnnxModel(self.model_dir, weights=self.model_dir / WEIGHTS,
                                                   precision=precision, threads=threads)  # fmt: skip
        self.onnx = next(iter(self.sessions.values()), None)
        served = self.model.tasks if self.onnx is None else [t for t in self.model.tasks if t.name in self.onnx.tasks]
        self.tasks = {t.name: t for t in served}
        self.compiled: nn.Module | None = None
        if torch_compile:
            self.compiled = compile_model(self.model)
            warm_up(self.compiled, default_task_sets(served), self.preprocess.input_size, precision, self.device,
                    lane_threads)  # fmt: skip

    def use_threads(self, threads: int) -> None:
        """Run this thread's passes on ``threads`` intra-op threads (PyTorch's, or the ONNX Runtime
        session opened for that count); called once by each of the server's lane threads.

        On the ``onnx`` backend PyTorch only prepares inputs and lays out answers on these threads, so
        it gets one thread there (its heatmap passes get ``threads``): an OpenMP team of PyTorch's
        spinning beside ONNX Runtime's threads cost EVA-X Ti/16 at 1 client about 2 ms of p50 and a
        fifth more CPU per request on 2 cores.
        """
        torch.set_num_threads(1 if self.onnx is not None else threads)
        self._lane.threads = threads

    @contextmanager
    def _pytorch_pass(self) -> Iterator[None]:
        """A pass of the PyTorch model on the ``onnx`` backend (heatmaps) runs on the lane's threads."""
        threads = getattr(self._lane, "threads", None)
        if self.onnx is None or threads is None:
            yield
            return
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(1)

    def probe(self, data: bytes) -> ImageProbe:
        """Format and declared size of an upload from its header alone, the pixel limits applied.

        Raises:
            ImageReadError / UnsafeInputError: Empty, unknown or corrupt header, too many pixels.
        """
        if not data:
            raise ImageReadError("the upload is empty")
        return probe_image(data, limits=self.limits, name="upload")

    def decode(self, data: bytes, read: Callable[..., XrayImage] = read_xray) -> tuple[np.ndarray, dict[str, Any]]:
        """Pixels (h, w) in [0, 1] of an upload, reduced by ``meta["downscale"]`` from the stored
        ``meta["original_size"]`` (width, height), and its format facts; ``read`` is :func:`read_xray` or
        one with its signature (the server reads DICOM uploads in child processes, :mod:`xrayfm.io.sandbox`).

        Raises:
            ImageReadError / UnsafeInputError: Unknown format, corrupt or oversized content.
        """
        if not data:
            raise ImageReadError("the upload is empty")
        image = read(data, limits=self.limits, target_size=self.target_size, name="upload")
        meta = {k: v for k, v in image.meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
        width, height = image.meta.get("original_size", image.size)
        meta["original_size"] = (int(width), int(height))
        return image.pixels, meta

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """(1, S, S) model input from (H, W) pixels, as the model's preprocessing record says."""
        return self.preprocess.prepare(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)))[0]

    def read(self, data: bytes) -> tuple[np.ndarray, torch.Tensor, dict[str, Any]]:
        """:meth:`decode` and :meth:`prepare` in one call (one trip to a worker thread): the
        pixels, the model input and the format facts.

        Raises:
            ImageReadError / UnsafeInputError: As :meth:`decode`.
        """
        pixels, meta = self.decode(data)
        return pixels, self.prepare(pixels), meta

    def to_image(self, plane: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray:
        """A map (S, S) over the model input laid onto the decoded ``height`` x ``width`` image."""
        t = torch.as_tensor(plane, dtype=torch.float32)
        return self.preprocess.plane_to_original(t, height, width).numpy()

    def run_batch(self, items: Sequence[Request | tuple]) -> list[Answer | Exception]:
        """Answers to a batch of :class:`Request` (or ``(image, task[, heatmap])`` tuples), in order.

        Requests without a heatmap share one forward pass, in which only the heads some of them
        asked for run (PyTorch backend): a ``/predict`` batch never pays for a detection head's
        proposals and NMS. Requests with one share a forward+backward pass per (task, method).
        A pass that fails answers its own requests with the exception; the others are unharmed.
        Decoded pixels are prepared here, on the calling (model) thread: see :mod:`xrayfm.serve.batcher`
        for why the server keeps every PyTorch op on that one thread.
        """
        requests = [Request(*item) for item in items]
        requests = [r._replace(image=self.prepare(r.image)) if isinstance(r.image, np.ndarray) else r
                    for r in requests]  # fmt: skip
        answers: list[Answer | Exception] = [Answer() for _ in requests]
        plain = [i for i, r in enumerate(requests) if r.heatmap is None]
        if plain:
            try:
                for i, outputs in zip(plain, self._forward([requests[i] for i in plain])):
                    answers[i] = Answer(outputs)
            except Exception as exc:  # these requests get the error; the heatmap passes still run
                for i in plain:
                    answers[i] = exc
        groups: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(requests):
            if r.heatmap is not None:
                groups.setdefault((r.task, r.heatmap), []).append(i)
        for (task, method), index in groups.items():
            try:
                x = torch.stack([requests[i].image for i in index]).to(self.device)
                with self.lock.exclusive(), self._pytorch_pass():
                    batch = explain_batch(self.model, x, method=method, task=task)
                probs = probabilities(self.tasks[task].kind, batch.logits.float()).cpu().numpy()
            except Exception as exc:  # this group's requests get the error; the rest of the batch stands
                for i in index:
                    answers[i] = exc
                continue
            classes = batch.classes or [None] * len(index)
            for j, i in enumerate(index):
                answers[i] = Answer({task: probs[j]}, batch.maps[j], classes[j])
        return answers

    def _forward(self, requests: Sequence[Request]) -> list[dict[str, Any]]:
        """One forward pass for requests without a heatmap: their outputs per task asked."""
        x = torch.stack([r.image for r in requests])
        wanted = sorted({name for r in requests for name in ((r.task,) if isinstance(r.task, str) else r.task)})
        if self.onnx is not None:  # ONNX Runtime sessions are thread-safe and never hooked
            session = self.sessions.get(getattr(self._lane, "threads", None), self.onnx)
            out = onnx_task_outputs(session, self.model, x, wanted)
        else:
            compiled = self.compiled is not None and all(self.tasks[n].kind != "detection" for n in wanted)
            model = self.compiled if compiled else self.model
            with self.lock.shared(), no_grad_at(self.precision, self.device):
                out = model(x.to(self.device), tasks=wanted)
        results: list[dict[str, Any]] = [{} for _ in requests]
        for name in wanted:
            if self.tasks[name].kind == "detection":
                for i, det in enumerate(out[name]):
                    results[i][name] = {k: (v.float() if v.is_floating_point() else v).cpu().numpy()
                                        for k, v in det.items()}  # fmt: skip
            else:
                probs = probabilities(self.tasks[name].kind, out[name].float()).cpu().numpy()
                for i in range(len(requests)):
                    results[i][name] = probs[i]
        return results

    def card(self) -> dict[str, Any]:
        """The model card: architecture, tasks, preprocessing, training data, metrics."""
        prov = self.meta.get("provenance", {})
        card: dict[str, Any] = {
            "architecture": self.meta["arch"], "input_size": self.preprocess.input_size,
            "tasks": self.meta["tasks"], "preprocess": self.preprocess.to_dict(),
            "training": {k: prov.get(k) for k in ("dataset", "mode", "train_fraction", "train_images", "steps",
                                                   "pretrained", "seed")},
            "parameters": prov.get("parameters"), "metrics": {}, "backend": self.backend, "precision": self.precision,
            "intended_use": "research only; not a medical device and not for diagnosis",
        }  # fmt: skip
        if self.onnx is not None:
            card["onnx"] = {k: self.onnx.meta.get(k) for k in ("opset", "outputs", "not_exported", "check")}
        if "served_weights" in self.meta:  # a Foundation X model: its teacher or its student
            card["weights"] = self.meta["served_weights"]
        if self.precision != "fp32":  # the accuracy check of export onnx --precision, or a note that there is none
            record = precision_record(self.model_dir, self.precision)
            card["precision_check"] = (record or {}).get("check") or (
                f"not checked against fp32; run: xrayfm export onnx {self.model_dir} --precision {self.precision}"
            )
        summary = self.model_dir.parent / "summary.json"
        if summary.is_file():
            try:
                evaluations = json.loads(summary.read_text()).get("evaluations", {})
            except json.JSONDecodeError:
                evaluations = {}
            card["metrics"] = {split: {task: res.get("headline") for task, res in ev.get("tasks", {}).items()}
                               for split, ev in evaluations.items()}  # fmt: skip
        return card
