"""``xrayfm demo --pretrain anatomy|multitask|both|all`` (and ``make demo-adam`` / ``demo-multitask``): the Adam and
Foundation X arms of the demo."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from xrayfm.cli import build_parser, main
from xrayfm.cli import demo as demo_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("choice", "methods"),
    [("mim", ["mim"]), ("anatomy", ["anatomy"]), ("multitask", ["multitask"]), ("both", ["mim", "anatomy"]),
     ("all", ["mim", "anatomy", "multitask"])],
)  # fmt: skip
def test_pretrain_choice_runs_its_methods_and_fine_tunes_each(
    choice: str, methods: list[str], tmp_path: Path, monkeypatch, capsys
) -> None:
    calls: list[tuple] = []

    def pretrain(method: str):
        def run(args, data: Path, out: Path) -> tuple[Path, Path]:
            calls.append(("pretrain", method, args.img_size, args.anatomy_steps))
            return out / method, out / method / "export"

        return run

    def finetune(args, data: Path, ft_dir: Path, arch: str, pretrained: Path, what: str) -> dict:
        calls.append(("finetune", ft_dir.name, arch, pretrained.name))
        return {"report": str(ft_dir / "eval_test" / "report.html")}

    monkeypatch.setattr(demo_cli, "_pretrain_mim", pretrain("mim"))
    monkeypatch.setattr(demo_cli, "_pretrain_anatomy", pretrain("anatomy"))
    monkeypatch.setattr(demo_cli, "_pretrain_multitask", pretrain("multitask"))
    monkeypatch.setattr(demo_cli, "_finetune", finetune)
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "-n", "8", "--size", "32", "--img-size", "32", "--anatomy-steps", "3"]
    assert main([*argv, "--pretrain", choice]) == 0
    expected = {
        "mim": [("pretrain", "mim", 32, 3), ("finetune", "finetune", "eva_x_tiny_patch16", "mim")],
        "anatomy": [("pretrain", "anatomy", 32, 3), ("finetune", "finetune_anatomy", "resnet18", "anatomy")],
        "multitask": [("pretrain", "multitask", 32, 3), ("finetune", "finetune_multitask", "resnet18", "multitask")],
    }
    assert calls == [c for m in methods for c in expected[m]]
    stdout = capsys.readouterr().out
    first = out / {"mim": "finetune", "anatomy": "finetune_anatomy", "multitask": "finetune_multitask"}[methods[0]]
    assert f"xrayfm serve {first} --port 8000" in stdout
    both = f"xrayfm compare {out / 'finetune'} {out / 'finetune_anatomy'} phantom" in stdout
    assert both == (choice in ("both", "all"))
    assert ("an Adam run" in stdout) == ("anatomy" in methods)


def test_default_demo_is_mim_only() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.pretrain, args.anatomy_steps) == ("mim", 40)


def test_make_demo_adam_and_multitask_run_their_demos_and_make_demo_stays_mim() -> None:
    # run as a fresh make, not a sub-make of `make test` (which would print "Entering directory" lines)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}

    def dry(target: str) -> str:
        res = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stderr
        return res.stdout.splitlines()[-1]

    assert dry("demo-adam").endswith("xrayfm demo --pretrain anatomy --out demo_output")
    assert dry("demo-multitask").endswith("xrayfm demo --pretrain multitask --out demo_output")
    assert dry("demo").endswith("xrayfm demo --out demo_output")


@pytest.mark.slow  # about 25 s on 2 cores: phantom, two Adam stages, fine-tuning, evaluation report
def test_anatomy_demo_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--pretrain", "anatomy", "--out", str(out), "-n", "24", "--size", "64", "--img-size", "32",
            "--anatomy-steps", "2", "--finetune-steps", "1"]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "anatomy" / "summary.json").read_text())
    assert [(s["granularity"], s["steps"]) for s in summary["stages"]] == [(0, 2), (2, 2)]
    assert [s["prune_threshold"] for s in summary["stages"]] == [None, 0.8]
    for n in (0, 2):
        assert len((out / "anatomy" / f"stage_n{n}" / "metrics.csv").read_text().splitlines()) == 3
        assert f"stage n={n}" in stdout
    assert (out / "anatomy" / "export" / "backbone.safetensors").is_file()
    config = yaml.safe_load((out / "finetune_anatomy" / "config.yaml").read_text())
    assert (config["arch"], config["pretrained"]) == ("resnet18", str(out / "anatomy"))
    assert (out / "finetune_anatomy" / "model" / "model.safetensors").is_file()
    assert (out / "finetune_anatomy" / "eval_test" / "report.html").is_file()
    assert not (out / "mim").exists() and not (out / "finetune").exists()
    assert "mean_dice" in stdout and str(out / "anatomy") in stdout


@pytest.mark.slow  # about 40 s on 2 cores: phantom, a short Foundation X run, fine-tuning, evaluation report
def test_multitask_demo_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--pretrain", "multitask", "--out", str(out), "-n", "24", "--size", "64", "--img-size", "32",
            "--multitask-steps", "6", "--finetune-steps", "1"]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((out / "multitask" / "summary.json").read_text())
    assert summary["steps"] == 6 and set(summary["unit_images"]) == {"findings/findings", "lesions/lesions",
                                                                       "organs/organs"}  # fmt: skip
    phases = (out / "multitask" / "phases.csv").read_text().splitlines()[1:]
    assert [row.split(",")[2] for row in phases][:2] == ["findings/findings", "lesions/lesions"]
    assert "lesions/lesions    yes" in stdout  # the localization unit starts locked
    assert (out / "multitask" / "model" / "teacher.safetensors").is_file()
    config = yaml.safe_load((out / "finetune_multitask" / "config.yaml").read_text())
    assert (config["arch"], config["pretrained"]) == ("resnet18", str(out / "multitask"))
    assert (out / "finetune_multitask" / "eval_test" / "report.html").is_file()
    assert "mean_dice" in stdout and not (out / "mim").exists()
