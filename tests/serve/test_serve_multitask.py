"""``xrayfm serve`` of a Foundation X model: every dataset/task head from one backbone, teacher or student."""

from __future__ import annotations

import base64
import copy
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_helpers import TINY_DETR, png_bytes

from xrayfm.cli import main
from xrayfm.models import create_model
from xrayfm.models.preprocess import Preprocess
from xrayfm.pretrain.multitask_export import load_multitask_model, save_multitask_model
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_serving import MultiTaskView, load_served_multitask
from xrayfm.serve.app import create_app
from xrayfm.tasks import TaskSpec, probabilities

TASKS = {
    "nih": [TaskSpec("findings", "multilabel", ("effusion", "nodule")), TaskSpec("lungs", "segmentation", ("lung",))],
    "covid": [TaskSpec("diagnosis", "multiclass", ("normal", "covid", "pneumonia"))],
    "vindr": [TaskSpec("lesions", "detection", ("nodule", "mass"))],
}
KINDS = {"nih/findings": "multilabel", "nih/lungs": "segmentation", "covid/diagnosis": "multiclass",
         "vindr/lesions": "detection"}  # fmt: skip
PNG = png_bytes(80, 64, seed=3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose ``model/`` holds a random multi-task model and a teacher that differs from it (96 px, as
    the phantom recipe: at 64 px the DETR encoder's stride-64 level is 1 x 1, too small for its GroupNorm)."""
    torch.manual_seed(0)
    student = MultiTaskModel(create_model("resnet18", num_classes=0), TASKS, detr=TINY_DETR,
                             preprocess=Preprocess(96, mean=0.49, std=0.28))  # fmt: skip
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    run = tmp_path_factory.mktemp("foundation_x")
    save_multitask_model(student, teacher, run / "model", arch="resnet18", model_kwargs={},
                         preprocess=student.preprocess, info={"provenance": {"method": "Foundation X"}})  # fmt: skip
    return run


def client_for(run_dir: Path, weights: str) -> TestClient:
    loaded = load_served_multitask(run_dir, weights=weights)
    return TestClient(create_app(run_dir / "model", loaded=loaded))


def direct(run_dir: Path, weights: str, x: torch.Tensor, unit: str) -> Any:
    """The loaded model's own prediction of one unit, as training and evaluation call it."""
    model, _ = load_multitask_model(run_dir, teacher=weights == "teacher")
    with torch.no_grad():
        return model(x[None], unit).prediction


def test_the_view_answers_every_head_from_one_pass_as_each_unit_alone(run_dir: Path) -> None:
    model, _ = load_multitask_model(run_dir)
    x = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shared = MultiTaskView(model)(x)
        for unit, kind in KINDS.items():
            alone = model(x, unit).prediction
            if kind == "detection":
                for a, b in zip(shared[unit], alone):
                    assert all(
                        torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in ("boxes", "scores", "labels")
                    )
            else:
                assert torch.allclose(shared[unit], alone, atol=1e-5)
    assert set(shared) == set(KINDS)


@pytest.mark.parametrize("weights", ["teacher", "student"])
def test_predict_answers_every_classification_head_as_the_loaded_model(run_dir: Path, weights: str) -> None:
    with client_for(run_dir, weights) as c:
        x = c.app.state.runtime.read(PNG)[1]
        body = c.post("/predict", files={"file": ("x.png", PNG, "image/png")}).json()
        one = c.post("/predict", params={"task": "covid/diagnosis"}, files={"file": ("x.png", PNG)}).json()
        assert c.get("/model").json()["weights"] == weights
    assert set(body["heads"]) == {"nih/findings", "covid/diagnosis"} and body["task"] == "nih/findings"
    for unit, head in body["heads"].items():
        expected = probabilities(KINDS[unit], direct(run_dir, weights, x, unit))[0].numpy()
        got = np.array(list(head["probabilities"].values()))
        assert head["kind"] == KINDS[unit] and np.allclose(got, expected, atol=1e-5)
    assert body["probabilities"] == body["heads"]["nih/findings"]["probabilities"]
    assert one["task"] == "covid/diagnosis" and "heads" not in one
    assert one["probabilities"] == body["heads"]["covid/diagnosis"]["probabilities"]
    assert sum(one["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)  # softmax: a multiclass head


def test_teacher_and_student_answer_differently(run_dir: Path) -> None:
    answers = []
    for weights in ("teacher", "student"):
        with client_for(run_dir, weights) as c:
            answers.append(c.post("/predict", files={"file": ("x.png", PNG)}).json()["heads"])
    assert answers[0] != answers[1]


def test_health_card_and_page_list_every_head(run_dir: Path) -> None:
    with client_for(run_dir, "teacher") as c:
        health = c.get("/health").json()
        card = c.get("/model").json()
        page = c.get("/")
    assert health["tasks"] == KINDS and health["model"] == "resnet18"
    assert {t["name"]: t["kind"] for t in card["tasks"]} == KINDS
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_segment_and_detect_answer_from_their_heads(run_dir: Path) -> None:
    with client_for(run_dir, "teacher") as c:
        runtime = c.app.state.runtime
        pixels, x, _ = runtime.read(PNG)
        seg = c.post("/segment", files={"file": ("x.png", PNG)}).json()
        det = c.post("/detect", params={"min_score": 0.0}, files={"file": ("x.png", PNG)}).json()
        mask_probs = probabilities("segmentation", direct(run_dir, "teacher", x, "nih/lungs"))[0, 0]
        inside = runtime.to_image(mask_probs, *pixels.shape[:2]) >= 0.5
    assert seg["task"] == "nih/lungs" and list(seg["masks"]) == ["lung"]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(seg["masks"]["lung"]))))
    assert mask.shape == (64, 80) and np.array_equal(mask > 127, inside)
    assert seg["area_fraction"]["lung"] == pytest.approx(float(inside.mean()))
    boxes = direct(run_dir, "teacher", x, "vindr/lesions")[0]
    assert det["task"] == "vindr/lesions" and det["boxes"] and {b["class"] for b in det["boxes"]} <= {"nodule", "mass"}
    assert np.allclose([b["score"] for b in det["boxes"]], boxes["scores"].numpy(), atol=1e-5)


def test_a_heatmap_comes_with_every_head(run_dir: Path) -> None:
    with client_for(run_dir, "teacher") as c:
        x = c.app.state.runtime.read(PNG)[1]
        body = c.post("/predict", params={"heatmap": True}, files={"file": ("x.png", PNG)}).json()
    heat = body["heatmap"]
    assert heat["class"] in ("effusion", "nodule") and (heat["width"], heat["height"]) == (80, 64)
    assert Image.open(io.BytesIO(base64.b64decode(heat["png"]))).size == (80, 64)
    for unit, head in body["heads"].items():
        expected = probabilities(KINDS[unit], direct(run_dir, "teacher", x, unit))[0].numpy()
        assert np.allclose(list(head["probabilities"].values()), expected, atol=1e-5)


def test_an_unknown_task_is_refused_naming_the_heads(run_dir: Path) -> None:
    with client_for(run_dir, "teacher") as c:
        wrong = c.post("/predict", params={"task": "nih/nope"}, files={"file": ("x.png", PNG)})
        not_seg = c.post("/segment", params={"task": "covid/diagnosis"}, files={"file": ("x.png", PNG)})
    assert wrong.status_code == 422 and "nih/findings" in wrong.json()["detail"]
    assert "covid/diagnosis" in wrong.json()["detail"]
    assert not_seg.status_code == 422 and "nih/lungs" in not_seg.json()["detail"]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    uvicorn = pytest.importorskip("uvicorn")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    return seen


def test_the_command_serves_the_teacher_by_default_or_the_student(run_dir: Path, started: dict[str, Any]) -> None:
    student, _ = load_multitask_model(run_dir)
    assert main(["serve", str(run_dir)]) == 0
    assert started["app"].state.runtime.meta["served_weights"] == "teacher"
    assert main(["serve", str(run_dir / "model"), "--weights", "student"]) == 0
    served = started["app"].state.runtime.model.model
    assert started["app"].state.runtime.meta["served_weights"] == "student"
    assert all(torch.equal(a, b) for a, b in zip(served.state_dict().values(), student.state_dict().values()))


def test_the_command_refuses_onnx_and_weights_where_they_do_not_apply(
    run_dir: Path, model_dir: Path, started: dict[str, Any], capsys: pytest.CaptureFixture
) -> None:
    assert main(["serve", str(run_dir), "--backend", "onnx"]) == 2
    assert "no ONNX export" in capsys.readouterr().err
    assert main(["serve", str(model_dir), "--weights", "student"]) == 2
    assert "--weights" in capsys.readouterr().err and not started


@pytest.mark.slow  # compiles a ResNet-18 with every head at two thread counts (about a minute)
def test_a_compiled_foundation_x_model_answers_as_the_uncompiled_one(run_dir: Path) -> None:
    from xrayfm.serve.runtime import ModelRuntime

    compiled = ModelRuntime(run_dir / "model", loaded=load_served_multitask(run_dir), torch_compile=True,
                            lane_threads=(2, 1))  # fmt: skip
    eager = ModelRuntime(run_dir / "model", loaded=load_served_multitask(run_dir))
    rng = np.random.default_rng(0)
    images = [rng.random((100, 90), dtype=np.float32) for _ in range(3)]
    # every classification head at once and the segmentation head were compiled; one head alone was not (eager)
    for task in (("covid/diagnosis", "nih/findings"), "nih/lungs", "vindr/lesions", "covid/diagnosis"):
        for got, want in zip(compiled.run_batch([(im, task) for im in images]),
                             eager.run_batch([(im, task) for im in images])):  # fmt: skip
            assert not isinstance(got, Exception), got
            for name, value in want.outputs.items():
                pairs = [(got.outputs[name][k], value[k]) for k in value] if isinstance(value, dict) else [
                    (got.outputs[name], value)]  # fmt: skip
                for a, b in pairs:
                    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
