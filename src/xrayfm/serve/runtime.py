"""The model behind the server: decoding uploads, batched inference, heatmaps, the model card.

Uploads are decoded by :func:`xrayfm.io.read_xray` exactly as training data are (DICOM windowing,
MONOCHROME1, 16-bit PNG...), with the same size limits, straight from the uploaded bytes (no
temporary file) and reduced by the largest integer factor whose result still covers what the
model's preprocessing resizes to: a 10,000-pixel upload is never held as a full-size float image.
Every model call holds one lock: Grad-CAM hooks the model, and a batched forward pass must not
run through those hooks.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xrayfm.errors import ImageReadError, XrayfmError
from xrayfm.evaluate.predict import probabilities
from xrayfm.io import ImageProbe, probe_image, read_xray
from xrayfm.io.limits import ReadLimits
from xrayfm.models.onnx_model import OnnxModel
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.task_checkpoint import WEIGHTS, find_task_model, load_task_model

BACKENDS = ("torch", "onnx")


def png_base64(array: np.ndarray) -> str:
    """An 8-bit grey PNG of a [0, 1] (H, W) array (or a uint8 one), base64-encoded."""
    a = array if array.dtype == np.uint8 else np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ModelRuntime:
    """A loaded fine-tuned model ready to answer requests.

    Args:
        model_dir: Finetune run folder or model folder.
        device: Torch device.
        limits: Upload decoding limits (file size, pixel count).
        backend: ``torch``, or ``onnx`` to answer with ONNX Runtime from the folder's ``model.onnx``
            (``xrayfm export onnx``); heatmaps always come from the PyTorch model, which needs gradients.

    Raises:
        XrayfmError: Unknown backend, missing or stale ONNX export, unreadable model.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        limits: ReadLimits | None = None,
        backend: str = "torch",
    ) -> None:
        if backend not in BACKENDS:
            raise XrayfmError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
        self.model_dir = find_task_model(model_dir)
        self.model, self.meta = load_task_model(self.model_dir)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.preprocess = resolve_preprocess(self.model)
        self.target_size = math.ceil(self.preprocess.input_size / self.preprocess.crop_pct)
        self.limits = limits or ReadLimits()
        self.lock = threading.Lock()
        self.backend = backend
        self.onnx = OnnxModel(self.model_dir, weights=self.model_dir / WEIGHTS) if backend == "onnx" else None
        served = (
            self.model.tasks if self.onnx is None else [t for t in self.model.tasks if t.name in self.onnx.output_names]
        )
        self.tasks = {t.name: t for t in served}

    def probe(self, data: bytes) -> ImageProbe:
        """Format and declared size of an upload from its header alone, the pixel limits applied.

        Raises:
            ImageReadError / UnsafeInputError: Empty, unknown or corrupt header, too many pixels.
        """
        if not data:
            raise ImageReadError("the upload is empty")
        return probe_image(data, limits=self.limits, name="upload")

    def decode(self, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
        """Pixels (h, w) in [0, 1] of an upload, reduced by ``meta["downscale"]`` from the stored
        ``meta["original_size"]`` (width, height), and its format facts.

        Raises:
            ImageReadError / UnsafeInputError: Unknown format, corrupt or oversized content.
        """
        if not data:
            raise ImageReadError("the upload is empty")
        image = read_xray(data, limits=self.limits, target_size=self.target_size, name="upload")
        meta = {k: v for k, v in image.meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
        width, height = image.meta.get("original_size", image.size)
        meta["original_size"] = (int(width), int(height))
        return image.pixels, meta

    def prepare(self, pixels: np.ndarray) -> torch.Tensor:
        """(1, S, S) model input from (H, W) pixels, as the model's preprocessing record says."""
        return self.preprocess.prepare(torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)))[0]

    def run_batch(self, items: Sequence[tuple[torch.Tensor, str]]) -> list[dict[str, Any]]:
        """Outputs of ``(image, task)`` requests: probabilities (K,) per classification task, mask
        probabilities (M, S, S) per segmentation task, boxes / scores / labels per detection task.

        Only the heads some request of the batch asked for run (PyTorch backend): a ``/predict``
        batch never pays for a detection head's proposals and NMS.
        """
        x = torch.stack([image for image, _ in items])
        wanted = sorted({task for _, task in items})
        if self.onnx is not None:  # ONNX Runtime sessions are thread-safe and never hooked
            out = self.onnx(x)
        else:
            with self.lock, torch.no_grad():
                out = self.model(x.to(self.device), tasks=wanted)
        results: list[dict[str, Any]] = [{} for _ in items]
        for name in wanted:
            if self.tasks[name].kind == "detection":
                for i, det in enumerate(out[name]):
                    results[i][name] = {k: v.cpu().numpy() for k, v in det.items()}
            else:
                probs = probabilities(self.tasks[name].kind, out[name].float()).cpu().numpy()
                for i in range(len(items)):
                    results[i][name] = probs[i]
        return results

    def heatmap(self, x: torch.Tensor, task: str, class_index: int, method: str = "gradcam") -> np.ndarray:
        """(S, S) heatmap in [0, 1] of one class for one prepared image."""
        from xrayfm.explain.heatmap import compute_heatmap

        with self.lock:
            maps = compute_heatmap(self.model, x[None].to(self.device), method=method, task=task,
                                   class_index=class_index)  # fmt: skip
        return maps[0]

    def card(self) -> dict[str, Any]:
        """The model card: architecture, tasks, preprocessing, training data, metrics."""
        prov = self.meta.get("provenance", {})
        card: dict[str, Any] = {
            "architecture": self.meta["arch"], "input_size": self.preprocess.input_size,
            "tasks": self.meta["tasks"], "preprocess": self.preprocess.to_dict(),
            "training": {k: prov.get(k) for k in ("dataset", "mode", "train_fraction", "train_images", "steps",
                                                   "pretrained", "seed")},
            "parameters": prov.get("parameters"), "metrics": {}, "backend": self.backend,
            "intended_use": "research only; not a medical device and not for diagnosis",
        }  # fmt: skip
        if self.onnx is not None:
            card["onnx"] = {k: self.onnx.meta.get(k) for k in ("opset", "outputs", "not_exported", "check")}
        summary = self.model_dir.parent / "summary.json"
        if summary.is_file():
            try:
                evaluations = json.loads(summary.read_text()).get("evaluations", {})
            except json.JSONDecodeError:
                evaluations = {}
            card["metrics"] = {split: {task: res.get("headline") for task, res in ev.get("tasks", {}).items()}
                               for split, ev in evaluations.items()}  # fmt: skip
        return card
