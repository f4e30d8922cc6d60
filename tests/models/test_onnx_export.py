"""ONNX export: outputs match PyTorch in ONNX Runtime, dynamic batch, detection boxes as PyTorch's, stale and
broken exports refused."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.models.onnx_detection import onnx_task_outputs, part_names
from xrayfm.models.onnx_export import export_onnx
from xrayfm.models.onnx_model import ONNX_FILE, ONNX_SIDECAR, OnnxModel
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import WEIGHTS, load_task_model, save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

pytest.importorskip("onnxruntime", reason="ONNX tests need the [onnx] extra")

TASKS = [
    TaskSpec("findings", "multilabel", ("effusion", "nodule", "cardiomegaly")),
    TaskSpec("lungs", "segmentation", ("left", "right")),
    TaskSpec("lesions", "detection", ("nodule",)),
]


def save(out: Path, arch: str, tasks: list[TaskSpec], **kwargs) -> Path:
    torch.manual_seed(0)
    backbone = create_model(arch, num_classes=0, **kwargs)
    save_task_model(XrayModel(backbone, tasks, preprocess=Preprocess(64, mean=0.49, std=0.28)), out, arch=arch,
                    model_kwargs=kwargs, info={})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def eva_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = save(tmp_path_factory.mktemp("onnx") / "model", "eva_x_tiny_patch16", TASKS, img_size=64,
                  dynamic_img_size=True)  # fmt: skip
    return folder, export_onnx(folder)


def test_export_writes_a_checked_self_describing_file(eva_export: tuple[Path, dict]) -> None:
    folder, info = eva_export
    assert (folder / ONNX_FILE).stat().st_size > 1_000_000 and not list(folder.glob("*.data"))
    on_disk = json.loads((folder / ONNX_SIDECAR).read_text())
    assert on_disk == info
    assert [o["name"] for o in info["outputs"]] == ["findings", "lungs", "lesions"] and info["not_exported"] == []
    assert info["outputs"][1]["classes"] == ["left", "right"] and info["input_size"] == 64
    assert info["outputs"][2]["parts"] == part_names("lesions") and "precisions" not in info
    diffs = info["check"]["max_abs_diff"]
    assert info["check"]["batches"] == [1, 3] and set(diffs) == {"findings", "lungs", *part_names("lesions")}
    assert diffs["findings"] < 1e-4 and diffs["lungs"] < 1e-4


def test_onnx_runtime_matches_pytorch_at_any_batch_size(eva_export: tuple[Path, dict]) -> None:
    folder, _ = eva_export
    model, _ = load_task_model(folder)
    onnx_model = OnnxModel(folder, weights=folder / WEIGHTS)
    x = torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x)
    got = onnx_model(x, ["findings", "lungs"])
    assert set(got) == {"findings", "lungs"}
    assert got["lungs"].shape == (5, 2, 64, 64)
    for name in got:
        torch.testing.assert_close(got[name], ref[name], atol=1e-4, rtol=1e-3)
    with pytest.raises(XrayfmError, match=r"takes images \(N, 1, 64, 64\)"):
        onnx_model(torch.rand(1, 1, 96, 96))
    from_numpy = onnx_model(x.numpy().astype("float64"))  # numpy arrays too (any float dtype -> float32)
    for name in got:
        torch.testing.assert_close(from_numpy[name], got[name], atol=0, rtol=0)
    with pytest.raises(XrayfmError, match=r"takes images \(N, 1, 64, 64\), got \(1, 64, 64\)"):
        onnx_model(x[0].numpy())
    with pytest.raises(XrayfmError, match="tensor or numpy array of images, got list"):
        onnx_model(x.tolist())


def test_task_selection_runs_only_the_chosen_heads(eva_export: tuple[Path, dict]) -> None:
    model, _ = load_task_model(eva_export[0])
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        full, only = model(x), model(x, tasks=["findings"])
    assert set(only) == {"findings"}
    torch.testing.assert_close(only["findings"], full["findings"], atol=0, rtol=0)


def test_stale_and_corrupt_exports_are_refused(eva_export: tuple[Path, dict], tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(eva_export[0], folder)
    model, _ = load_task_model(folder)
    with torch.no_grad():
        model.heads["findings"].fc.weight.add_(1.0)
    save_task_model(model, folder, arch="eva_x_tiny_patch16", model_kwargs={"img_size": 64, "dynamic_img_size": True},
                    info={})  # fmt: skip
    with pytest.raises(XrayfmError, match="exported from other weights"):
        OnnxModel(folder, weights=folder / WEIGHTS)
    (folder / ONNX_FILE).write_bytes(b"\x08\x07garbage")
    with pytest.raises(XrayfmError, match="ONNX Runtime cannot load it"):
        OnnxModel(folder)
    (folder / ONNX_SIDECAR).unlink()
    with pytest.raises(XrayfmError, match="run: xrayfm export onnx"):
        OnnxModel(folder)


def test_cnn_export_to_another_folder_is_servable_on_its_own(tmp_path: Path) -> None:
    src = save(tmp_path / "src", "resnet18", TASKS[:2])
    info = export_onnx(src, tmp_path / "deploy")
    assert {p.name for p in (tmp_path / "deploy").iterdir()} == {"model.onnx", "onnx.json", "model.json", WEIGHTS}
    assert not (src / ONNX_FILE).exists() and info["not_exported"] == []
    OnnxModel(tmp_path / "deploy", weights=tmp_path / "deploy" / WEIGHTS)


def test_a_failed_check_deletes_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = save(tmp_path / "m", "resnet18", TASKS[:1])
    run = OnnxModel.__call__
    monkeypatch.setattr(OnnxModel, "__call__", lambda self, x: {k: v + 0.01 for k, v in run(self, x).items()})
    with pytest.raises(XrayfmError, match="'findings' differs from PyTorch by up to 0.01"):
        export_onnx(src)
    assert not (src / ONNX_FILE).exists() and not (src / ONNX_SIDECAR).exists()


def test_detection_through_onnx_gives_pytorchs_boxes(tmp_path: Path) -> None:
    src = save(tmp_path / "det", "resnet18", TASKS[2:])
    info = export_onnx(src)
    assert info["outputs"][0]["kind"] == "detection" and info["not_exported"] == []
    model, _ = load_task_model(src)
    onnx_model = OnnxModel(src, weights=src / WEIGHTS)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(x)["lesions"]
    got = onnx_task_outputs(onnx_model, model, x)["lesions"]
    assert len(got) == len(ref) == 2
    for g, r in zip(got, ref):
        assert len(r["boxes"]) > 0 and g["boxes"].shape == r["boxes"].shape
        torch.testing.assert_close(g["boxes"], r["boxes"], atol=1e-2, rtol=1e-3)
        torch.testing.assert_close(g["scores"], r["scores"], atol=1e-4, rtol=1e-3)
        assert torch.equal(g["labels"], r["labels"])
    assert set(onnx_task_outputs(onnx_model, model, x, ["lesions"])) == {"lesions"}


def test_export_to_another_folder_follows_the_umask(
    eva_export: tuple[Path, dict], tmp_path: Path, umask_022: None
) -> None:
    export_onnx(eva_export[0], tmp_path / "deploy")
    files = [p for p in (tmp_path / "deploy").iterdir() if p.is_file()]
    assert {p.name for p in files} == {ONNX_FILE, ONNX_SIDECAR, WEIGHTS, "model.json"}
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: 0o644 for p in files}
