"""``xrayfm pretrain multitask``: the shipped phantom recipe end to end, a rerun from the run's config, and
bad recipes refused in one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.models import create_model
from xrayfm.pretrain.multitask_export import load_multitask_model

TINY = [
    "--arch", "resnet18", "--img-size", "32", "--batch-size", "2", "--accelerator", "cpu", "--precision", "32-true",
    "--checkpoint-minutes", "0", "--log-every", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fx")
    write_phantom_dataset(root / "phantom", n=12, seed=0, size=64)  # the folder the shipped recipe names
    return root


def test_the_shipped_recipe_runs_from_the_command_line_and_its_config_runs_again(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["pretrain", "multitask", "foundation_x_phantom", "--data-root", str(data_root), "--out", str(out)]
    assert main([*argv, *TINY, "--steps", "3"]) == 0
    printed = capsys.readouterr().out
    assert "exported backbone" in printed and str(out / "model") in printed
    rows = (out / "phases.csv").read_text().splitlines()
    assert rows[0] == "phase,cycle,unit,kind,locked,first_step,last_step"
    assert rows[1].split(",")[2:5] == ["findings/findings", "multilabel", "0"]  # the cycle's first unit
    assert [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["arch"] == "resnet18" and config["steps"] == 3
    assert config["recipe"]["datasets"]["organs"]["root"] == str((data_root / "phantom").absolute())
    assert [u["task"] for u in config["recipe"]["cycle"]] == ["findings", "lesions", "organs"]
    create_model("resnet18", num_classes=0, pretrained=str(out))
    model, meta = load_multitask_model(out)
    assert sorted(model.tasks) == ["findings/findings", "lesions/lesions", "organs/organs"]
    assert meta["arch"] == "resnet18" and meta["recipe"]["cycles"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["schedule_steps"] > 3 and not summary["resumed_from_checkpoint"]

    again = ["pretrain", "multitask", str(out / "config.yaml"), "--config", str(out / "config.yaml")]
    assert main(again) == 0  # the same run folder, already at its last step: resumed, nothing left to train
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from_checkpoint"] and summary["steps_this_call"] == 0


@pytest.mark.parametrize(
    "text, message",
    [
        ("datasets: {a: {adapter: csv, root: R, tasks: {t: {kind: boxes, classes: [x]}}}}\n",
         "datasets.a.tasks.t.kind: unknown task kind 'boxes'"),
        ("datasets: {a: {adapter: csv, root: R, tasks: {t: {kind: multilabel, classes: [x]}}}}\ncycle: [b]\n",
         "cycle[0].dataset: unknown dataset 'b'"),
        ("datasets: [\n", "is not valid YAML"),
    ],
)  # fmt: skip
def test_a_bad_recipe_is_one_line_and_exit_status_2(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    assert main(["pretrain", "multitask", str(recipe), "--out", str(tmp_path / "out"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_recipe_classes_that_the_data_lacks_and_unknown_recipe_names_exit_2(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "datasets: {a: {adapter: csv, root: phantom, options: {label_columns: [nodule]},"
        " tasks: {t: {kind: multilabel, classes: [effusion]}}}}\n"
    )
    base = ["--data-root", str(data_root), "--out", str(tmp_path / "out"), *TINY]
    assert main(["pretrain", "multitask", str(recipe), *base]) == 2
    assert "datasets.a.tasks.t: the recipe says multilabel ['effusion']" in capsys.readouterr().err
    assert main(["pretrain", "multitask", "foundation_x_phantm", *base]) == 2
    assert "Did you mean foundation_x_phantom" in capsys.readouterr().err
