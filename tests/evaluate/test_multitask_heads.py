"""``xrayfm evaluate`` and ``xrayfm compare`` of one head of a Foundation X multi-task model (``--head``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.registry import build_dataset
from xrayfm.data.sample import collate_samples
from xrayfm.evaluate.metrics import classification_metrics
from xrayfm.models import create_model
from xrayfm.models.preprocess import Preprocess, resolve_preprocess
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.pretrain.multitask_export import save_multitask_model
from xrayfm.pretrain.multitask_model import MultiTaskModel
from xrayfm.pretrain.multitask_serving import load_served_multitask

SIZE = 32


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph"), n=48, seed=0, size=48)


@pytest.fixture(scope="module")
def run_dir(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-task run whose ``ph`` and ``other`` heads both fit the phantom's labels, plus a head that does not."""
    labels = build_dataset("phantom", phantom, "train").task_for("labels")
    torch.manual_seed(0)
    tasks = {"ph": [labels], "other": [labels], "covid": [type(labels)("diagnosis", "multiclass", ("normal", "covid"))]}
    student = MultiTaskModel(create_model("resnet18", num_classes=0), tasks,
                             preprocess=Preprocess(SIZE, mean=0.5, std=0.25))  # fmt: skip
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    run = tmp_path_factory.mktemp("fx")
    save_multitask_model(student, teacher, run / "model", arch="resnet18", model_kwargs={},
                         preprocess=student.preprocess, info={"provenance": {"method": "Foundation X"}})  # fmt: skip
    return run


@pytest.fixture(scope="module")
def finetuned(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    labels = build_dataset("phantom", phantom, "train").task_for("labels")
    model = XrayModel(
        create_model("resnet18", num_classes=0), [labels], preprocess=Preprocess(SIZE, mean=0.5, std=0.25)
    )
    return save_task_model(model, tmp_path_factory.mktemp("ft") / "model", arch="resnet18", model_kwargs={}, info={})


def evaluate(run: Path, phantom: Path, out: Path, *extra: str) -> dict:
    code = main(["evaluate", str(run), "phantom", str(phantom), "--n-boot", "20", "--out", str(out), *extra])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def direct_probs(run: Path, phantom: Path, head: str, weights: str) -> np.ndarray:
    """The named head's probabilities on the test split, straight from the served view."""
    view, _ = load_served_multitask(run, weights=weights)
    ds = build_dataset("phantom", phantom, "test", transform=resolve_preprocess(view).eval_transform())
    batch = collate_samples([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        return view(batch["image"], tasks=[head])[head].sigmoid().numpy()


def test_evaluate_scores_the_named_head_as_a_finetuned_model(run_dir: Path, phantom: Path, tmp_path: Path) -> None:
    result = evaluate(run_dir, phantom, tmp_path / "ph", "--head", "ph/labels")
    assert [t["name"] for t in result["task_specs"]] == ["labels"] and "ph/labels" in result["model"]
    with np.load(tmp_path / "ph" / "predictions.npz") as z:
        probs, targets = z["labels.probs"], z["labels.labels"]
    assert 0 < probs.min() and probs.max() < 1 and np.unique(probs.round(5)).size > probs.shape[1]  # not saturated
    np.testing.assert_allclose(probs, direct_probs(run_dir, phantom, "ph/labels", "teacher"), atol=1e-6)
    classes = build_dataset("phantom", phantom, "test").task_for("labels").classes
    expected = classification_metrics(probs, targets, classes, kind="multilabel", threshold=0.5)["mean"]["auroc"]
    assert result["tasks"]["labels"]["metrics"]["mean"]["auroc"] == pytest.approx(expected)
    assert (tmp_path / "ph" / "report.html").is_file()

    other = evaluate(run_dir, phantom, tmp_path / "other", "--head", "other/labels")
    student = evaluate(run_dir, phantom, tmp_path / "student", "--head", "ph/labels", "--weights", "student")
    with np.load(tmp_path / "other" / "predictions.npz") as a, np.load(tmp_path / "student" / "predictions.npz") as b:
        assert not np.allclose(a["labels.probs"], probs) and not np.allclose(b["labels.probs"], probs)
        np.testing.assert_allclose(b["labels.probs"], direct_probs(run_dir, phantom, "ph/labels", "student"), atol=1e-6)
    assert other["n"] == student["n"] == result["n"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--head", "covid/diagnosis"], "multiclass ['normal', 'covid']"),
        (["--head", "nih/findings"], "not a head of this model"),
        ([], "--head DATASET/TASK"),
    ],
)
def test_a_head_that_does_not_fit_is_refused(
    run_dir: Path, phantom: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(run_dir), "phantom", str(phantom), "--n-boot", "5", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    if args and args[1] == "covid/diagnosis":  # both sides named: the head's and the dataset's classes
        assert "labels: multilabel" in err and "heads that fit: ['ph/labels', 'other/labels']" in err


def test_head_flags_need_a_multitask_model(finetuned: Path, phantom: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(finetuned), "phantom", str(phantom), "--head", "ph/labels"]) == 2
    assert "--head picks" in capsys.readouterr().err


def test_compare_a_head_with_a_finetuned_model_on_the_same_images(
    run_dir: Path, finetuned: Path, phantom: Path, tmp_path: Path
) -> None:
    single = evaluate(run_dir, phantom, tmp_path / "eval", "--head", "ph/labels")
    out = tmp_path / "cmp"
    code = main(["compare", str(run_dir / "model"), str(finetuned), "phantom", str(phantom), "--head", "ph/labels",
                 "--n-boot", "20", "--out", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert (
        result["a"]["head"] == "ph/labels" and result["a"]["served_weights"] == "teacher" and "head" not in result["b"]
    )
    diff = result["tasks"]["labels"]["differences"]["mean_auroc"]
    assert diff["a"] == pytest.approx(single["tasks"]["labels"]["metrics"]["mean"]["auroc"])
    assert diff["difference"] == pytest.approx(diff["b"] - diff["a"])
    assert result["n"] == single["n"]
