"""INT8 quantization of an exported ``model.onnx`` with ONNX Runtime's quantization tools.

The fp32 graph is first pre-processed as ONNX Runtime recommends (shape inference and graph
fusions, ``quant_pre_process``; skipped with a note where it fails). Static quantization (QDQ
format, per-channel int8 weights, uint8 activations with MinMax ranges) is used when the model's
own training images can be read: they are fed through xrayfm's evaluation preprocessing, so the
activation ranges are those the served model will meet. Where they cannot (no dataset recorded,
the files moved), dynamic quantization of the matrix products is used instead, which needs no
data; the sidecar says which and why.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch.utils.data import DataLoader

from xrayfm.data.sample import collate_samples
from xrayfm.errors import XrayfmError
from xrayfm.io.atomic import atomic_path
from xrayfm.models.onnx_model import INT8_FILE, file_digest

log = logging.getLogger(__name__)
#: Operators dynamic quantization rewrites: a ViT's linear layers (dynamic Conv is slower than fp32 on CPU).
DYNAMIC_OPS = ["MatMul", "Gemm"]


class ImageCalibrationReader(CalibrationDataReader):
    """Batches of preprocessed images for ONNX Runtime's calibration, from an xrayfm dataset.

    Args:
        dataset: Dataset whose transform gives the model's input (evaluation view).
        input_name: The ONNX graph's image input.
        batch_size: Images per calibration batch.
    """

    def __init__(self, dataset: Any, input_name: str = "image", batch_size: int = 8) -> None:
        self.dataset, self.input_name, self.batch_size = dataset, input_name, batch_size
        self.rewind()

    def rewind(self) -> None:
        loader = DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=collate_samples)
        self._batches = (b["image"].numpy().astype(np.float32) for b in loader)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_int8(
    fp32: str | Path, out_dir: str | Path, calibration: Any | None, *, why_not_static: str = ""
) -> dict[str, Any]:
    """Write ``out_dir/model.int8.onnx`` from the fp32 ``fp32`` model.

    Args:
        fp32: The exported fp32 ONNX file.
        out_dir: Destination folder.
        calibration: Training images for static quantization, or None for dynamic quantization.
        why_not_static: Why there are no calibration images (recorded with a dynamic result).

    Returns:
        The sidecar record: ``file``, ``method``, ``calibration`` (images used) or ``why_dynamic``, ``sha256``.

    Raises:
        XrayfmError: ONNX Runtime's quantizer failed.
    """
    out = Path(out_dir) / INT8_FILE
    record: dict[str, Any] = {"file": INT8_FILE, "runtime": "onnxruntime"}
    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        source = Path(work) / "pre.onnx"
        try:
            quant_pre_process(os.fspath(fp32), os.fspath(source))
            record["pre_processed"] = True
        except Exception as exc:  # an optimisation only: quantize the exported graph as it is
            log.info("int8: ONNX Runtime's pre-processing failed (%s); quantizing the graph as exported", exc)
            source, record["pre_processed"] = Path(fp32), False
        _quantize(source, out, calibration, why_not_static, record)
    record["sha256"] = file_digest(out)
    return record


def _quantize(source: Path, out: Path, calibration: Any | None, why_not_static: str, record: dict[str, Any]) -> None:
    """Static (with ``calibration``) or dynamic quantization of ``source`` into ``out``; fills ``record``."""
    try:
        with atomic_path(out) as tmp:
            if calibration is not None:
                quantize_static(
                    os.fspath(source), os.fspath(tmp), ImageCalibrationReader(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                )  # fmt: skip
                record.update(method="static QDQ (MinMax ranges, per-channel int8 weights, uint8 activations)",
                              calibration={"images": len(calibration), "split": "train"})  # fmt: skip
            else:
                log.warning("int8: dynamic quantization, %s", why_not_static)
                quantize_dynamic(os.fspath(source), os.fspath(tmp), op_types_to_quantize=DYNAMIC_OPS,
                                 weight_type=QuantType.QInt8)  # fmt: skip
                record.update(method=f"dynamic ({'/'.join(DYNAMIC_OPS)} weights int8)", why_dynamic=why_not_static)
    except Exception as exc:  # the quantizer raises assorted internal types; name the file and the cause
        raise XrayfmError(f"{out}: int8 quantization failed: {type(exc).__name__}: {str(exc)[:300]}") from None
