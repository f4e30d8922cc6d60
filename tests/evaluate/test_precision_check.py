"""Reduced precision: int8 export calibrated and scored against fp32, refusals, bf16 probe, int8 serving."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.registry import build_dataset
from xrayfm.errors import XrayfmError
from xrayfm.evaluate.precision_check import export_checked
from xrayfm.models import create_model, precision
from xrayfm.models.onnx_model import INT8_FILE, ONNX_FILE, ONNX_SIDECAR, OnnxModel
from xrayfm.models.precision import PrecisionError, check_precision
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel

pytest.importorskip("onnxruntime", reason="ONNX tests need the [onnx] extra")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), n=40, seed=0, size=48)


def save(out: Path, root: Path, *, recorded: bool = True) -> Path:
    """A resnet18 at 32 px with the phantom's label and mask tasks; ``root`` recorded as its training data."""
    torch.manual_seed(0)
    tasks = [t for t in build_dataset("phantom", root, "train").tasks if t.kind != "detection"]
    prov = {"dataset": "phantom", "root": str(root), "dataset_options": {}} if recorded else {}
    save_task_model(XrayModel(create_model("resnet18", num_classes=0), tasks, preprocess=Preprocess(32, mean=0.5,
                    std=0.25)), out, arch="resnet18", model_kwargs={}, info={"provenance": prov})  # fmt: skip
    return out


def png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (36, 40), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_dir(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(tmp_path_factory.mktemp("m") / "model", phantom)


@pytest.fixture(scope="module")
def int8_export(model_dir: Path) -> dict:
    return export_checked(model_dir, precision="int8")


def test_int8_export_is_calibrated_on_training_images_and_scored(
    phantom: Path, model_dir: Path, int8_export: dict
) -> None:
    rec = int8_export["precisions"]["int8"]
    assert json.loads((model_dir / ONNX_SIDECAR).read_text()) == int8_export
    assert rec["method"].startswith("static QDQ") and rec["file"] == INT8_FILE
    assert rec["calibration"] == {"images": len(build_dataset("phantom", phantom, "train")), "split": "train"}
    check = rec["check"]
    assert check["data"]["split"] == "test" and check["data"]["images"] == len(
        build_dataset("phantom", phantom, "test")
    )
    assert check["passed"] and check["tolerance"] == 0.005
    assert {t: r["metric"] for t, r in check["tasks"].items()} == {"labels": "auroc", "masks": "dice"}
    for r in check["tasks"].values():
        assert 0 <= r["fp32"] <= 1 and r["change"] == pytest.approx(r["int8"] - r["fp32"])
    # the int8 file is really quantized: close to fp32, not equal
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    fp32, int8 = OnnxModel(model_dir)(x), OnnxModel(model_dir, precision="int8")(x)
    diff = (fp32["labels"] - int8["labels"]).abs().max()
    assert 0 < diff < 0.5 * fp32["labels"].abs().max() + 0.5


def test_missing_or_replaced_int8_files_are_refused(model_dir: Path, int8_export: dict, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(model_dir, folder)
    (folder / INT8_FILE).write_bytes((folder / ONNX_FILE).read_bytes())
    with pytest.raises(XrayfmError, match="is not the file onnx.json describes"):
        OnnxModel(folder, precision="int8")
    (folder / INT8_FILE).unlink()
    with pytest.raises(XrayfmError, match="no int8 ONNX model; run: xrayfm export onnx .* --precision int8"):
        OnnxModel(folder, precision="int8")


def test_int8_without_training_images_is_dynamic_and_checked_on_given_data(phantom: Path, tmp_path: Path) -> None:
    folder = save(tmp_path / "m", phantom, recorded=False)
    with pytest.raises(PrecisionError, match="no held-out images.*--check-data ADAPTER:ROOT"):
        export_checked(folder, precision="int8")
    assert not (folder / ONNX_FILE).exists() and not (folder / INT8_FILE).exists()
    rec = export_checked(folder, precision="int8", check_data=f"phantom:{phantom}")["precisions"]["int8"]
    assert rec["method"].startswith("dynamic") and "records no training dataset" in rec["why_dynamic"]
    assert rec["check"]["data"] == {
        "dataset": "phantom", "root": str(phantom), "split": "test",
        "images": len(build_dataset("phantom", phantom, "test")),
    }  # fmt: skip


@pytest.mark.slow
def test_an_int8_model_that_changes_accuracy_is_refused(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = OnnxModel.__call__

    def broken(self: OnnxModel, x: torch.Tensor, outputs=None) -> dict:  # noqa: ANN001
        out = run(self, x, outputs)
        return {k: -v for k, v in out.items()} if self.precision == "int8" else out

    monkeypatch.setattr(OnnxModel, "__call__", broken)
    out = tmp_path / "deploy"
    with pytest.raises(PrecisionError, match=r"int8 changes accuracy beyond 0: labels auroc .* export refused"):
        export_checked(model_dir, out, precision="int8", tolerance=0.0)
    assert not (out / INT8_FILE).exists() and not (out / ONNX_FILE).exists()
    check = export_checked(model_dir, out, precision="int8", force=True)["precisions"]["int8"]["check"]
    assert not check["passed"] and check["forced"] and abs(check["tasks"]["labels"]["change"]) > 0.005


def test_bf16_is_refused_without_the_instructions(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    with pytest.raises(PrecisionError, match="bf16 refused: this machine lacks AVX-512-BF16 or AMX-BF16"):
        export_checked(model_dir, precision="bf16")
    from xrayfm.serve.runtime import ModelRuntime

    with pytest.raises(PrecisionError, match="lacks AVX-512-BF16"):
        ModelRuntime(model_dir, precision="bf16")
    with pytest.raises(PrecisionError, match="int8 runs on the onnx backend, not torch; use --backend onnx"):
        check_precision("int8", "torch")
    with pytest.raises(PrecisionError, match="bf16 runs on the torch backend"):
        check_precision("bf16", "onnx")


@pytest.mark.skipif(precision.missing_bf16_support() is not None, reason="this CPU has no native bf16")
def test_bf16_export_records_its_accuracy_check(model_dir: Path, tmp_path: Path) -> None:
    rec = export_checked(model_dir, tmp_path / "bf16", precision="bf16")["precisions"]["bf16"]
    assert rec["file"] is None and "autocast" in rec["runtime"]
    assert set(rec["check"]["tasks"]) == {"labels", "masks"} and rec["check"]["data"]["split"] == "test"
    assert not (tmp_path / "bf16" / INT8_FILE).exists()


def test_cli_export_and_int8_serving(
    model_dir: Path, int8_export: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["export", "onnx", str(model_dir), "--out", str(tmp_path / "cli"), "--precision", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "int8: model.int8.onnx (static QDQ" in printed and "labels auroc" in printed
    assert "within tolerance 0.005" in printed and "--backend onnx --precision int8" in printed
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from xrayfm.serve.app import create_app

    with TestClient(create_app(model_dir, backend="onnx", precision="int8")) as client:
        card = client.get("/model").json()
        assert card["precision"] == "int8"
        assert card["precision_check"] == int8_export["precisions"]["int8"]["check"]
        res = client.post("/predict", files={"file": ("x.png", png(), "image/png")})
        assert res.status_code == 200, res.text
        assert set(res.json()["probabilities"]) == set(int8_export["outputs"][0]["classes"])
    with pytest.raises(PrecisionError, match="int8 runs on the onnx backend"):
        create_app(model_dir, precision="int8")


@pytest.mark.skipif(precision.missing_bf16_support() is not None, reason="this CPU has no native bf16")
def test_bf16_serving_answers_close_to_fp32(model_dir: Path, int8_export: dict) -> None:
    from xrayfm.serve.runtime import ModelRuntime, Request

    x = torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(2))
    bf16, fp32 = ModelRuntime(model_dir, precision="bf16"), ModelRuntime(model_dir)
    a, b = (rt.run_batch([Request(x, "labels"), Request(x, "masks")]) for rt in (bf16, fp32))
    np.testing.assert_allclose(a[0].outputs["labels"], b[0].outputs["labels"], atol=0.02)
    np.testing.assert_allclose(a[1].outputs["masks"], b[1].outputs["masks"], atol=0.02)
    assert a[0].outputs["labels"].dtype == np.float32
    assert bf16.card()["precision_check"].startswith("not checked against fp32; run: xrayfm export onnx")


def test_int8_export_scores_box_heads_by_map50(phantom: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    detection = [t for t in build_dataset("phantom", phantom, "train").tasks if t.kind == "detection"]
    folder = tmp_path / "det"
    save_task_model(XrayModel(create_model("resnet18", num_classes=0), detection, preprocess=Preprocess(64, mean=0.5,
                    std=0.25)), folder, arch="resnet18", model_kwargs={},
                    info={"provenance": {"dataset": "phantom", "root": str(phantom), "dataset_options": {}}})  # fmt: skip
    check = export_checked(folder, precision="int8", force=True)["precisions"]["int8"]["check"]
    (name,) = [t.name for t in detection]
    rec = check["tasks"][name]
    assert rec["metric"] == "map_50" and check["not_scored"] == []  # a box-only model is checked, not refused
    assert 0 <= rec["fp32"] <= 1 and 0 <= rec["int8"] <= 1 and rec["change"] == pytest.approx(rec["int8"] - rec["fp32"])
    # the fp32 value is what evaluation's box metric gives for the PyTorch model on the same held-out images
    from xrayfm.evaluate.box_metrics import detection_metrics
    from xrayfm.evaluate.predict import predict
    from xrayfm.models.task_checkpoint import load_task_model

    model, _ = load_task_model(folder)
    held_out = build_dataset("phantom", phantom, "test", transform=model.preprocess.eval_transform())
    with torch.no_grad():
        pred = predict(model.eval(), held_out, batch_size=8)[name]
    assert detection_metrics(pred["pred"], pred["target"], detection[0].classes)["map_50"] == pytest.approx(rec["fp32"])


def test_a_box_head_that_loses_its_boxes_at_reduced_precision_is_refused() -> None:
    """compare_to_fp32 scores boxes by mAP@0.5: exact boxes score 1, boxes moved off their lesions lower it."""
    from xrayfm.evaluate.precision_check import compare_to_fp32
    from xrayfm.tasks import TaskSpec

    box = torch.tensor([[4.0, 4.0, 20.0, 20.0]])
    held_out = [{"image": torch.rand(1, 32, 32), "boxes": box, "box_labels": torch.tensor([0]), "meta": {"id": f"i{k}"}}
                for k in range(6)]  # fmt: skip
    task = TaskSpec("lesions", "detection", ["nodule"])

    def answer(boxes: torch.Tensor):  # noqa: ANN202
        def forward(x: torch.Tensor) -> dict:
            one = {"boxes": boxes, "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
            return {"lesions": [dict(one) for _ in range(len(x))]}

        return forward

    kept = compare_to_fp32(answer(box), answer(box + 0.5), [task], held_out, precision="int8")
    assert kept["passed"] and kept["tasks"]["lesions"] == {"metric": "map_50", "fp32": 1.0, "int8": 1.0, "change": 0.0}
    with pytest.raises(PrecisionError, match=r"int8 changes accuracy beyond 0.005: lesions map_50 1.0000 -> 0.0000"):
        compare_to_fp32(answer(box), answer(box + 12.0), [task], held_out, precision="int8")
