"""`xrayfm compare` and `xrayfm evaluate --threshold` as a user runs them, on two tiny fine-tune runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import run

from xrayfm.data.registry import build_dataset

pytestmark = pytest.mark.slow  # two fine-tune runs and six CLI calls: about two minutes on two busy cores

TINY = ["--task", "labels", "--arch", "resnet18", "--img-size", "32", "--batch-size", "8", "--steps", "1",
        "--warmup", "0", "--n-boot", "10", "--eval-split", "val", "--accelerator", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A phantom and two one-step fine-tune runs on it (different seeds)."""
    root = tmp_path_factory.mktemp("compare")
    data = root / "ph"
    assert run("phantom", str(data), "-n", "40", "--size", "32").returncode == 0
    out = []
    for seed in (0, 1):
        res = run("finetune", "phantom", str(data), "--out", str(root / f"run{seed}"), "--seed", str(seed), *TINY)
        assert res.returncode == 0, res.stderr[-3000:]
        out.append(root / f"run{seed}")
    return data, out[0], out[1]


def test_compare_prints_the_paired_table_and_writes_json_and_report(runs, tmp_path: Path) -> None:
    data, a, b = runs
    res = run("compare", str(a), str(b), "phantom", str(data), "--split", "test", "--n-boot", "50",
              "--out", str(tmp_path / "cmp"))  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "B - A with paired-bootstrap 95% CI (50 resamples" in res.stdout
    assert "thresholds: youden, chosen on val per model" in res.stdout
    assert "labels       mean_auroc" in res.stdout and "auroc effusion" in res.stdout
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["n"] == len(build_dataset("phantom", data, "test")) > 0
    labels = result["tasks"]["labels"]
    mean = labels["differences"]["mean_auroc"]
    if mean["difference"] is not None:
        assert mean["difference"] == pytest.approx(mean["b"] - mean["a"])
        assert labels["delong"]["mean_auroc"]["difference"] == pytest.approx(mean["difference"], abs=1e-6)
    assert result["a"]["thresholds"]["split"] == "val" and set(result["a"]["thresholds"]["tasks"]) == {"labels"}
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "paired-bootstrap" in page and "DeLong" in page

    same = run("compare", str(a), str(a), "phantom", str(data), "--n-boot", "20", "--threshold", "0.5",
               "--out", str(tmp_path / "same"))  # fmt: skip
    assert same.returncode == 0, same.stderr[-3000:]
    same_result = json.loads((tmp_path / "same" / "compare.json").read_text())
    diff = same_result["tasks"]["labels"]["differences"]
    assert diff["accuracy"]["difference"] == 0 and (diff["accuracy"]["low"], diff["accuracy"]["high"]) == (0, 0)
    assert same_result["a"]["thresholds"] == {"rule": "0.5", "split": None, "tasks": {}, "notes": [], "default": 0.5}


def test_compare_refuses_a_model_that_is_not_there(runs, tmp_path: Path) -> None:
    data, a, _ = runs
    res = run("compare", str(a), str(tmp_path / "nothing"), "phantom", str(data))
    assert res.returncode == 2 and "no fine-tuned model" in res.stderr
    res = run("compare", str(a), str(a), "phantom", str(data), "--threshold", "spec:0.9")
    assert res.returncode == 2 and "'youden', 'sens:TARGET'" in res.stderr


def test_evaluate_records_thresholds_chosen_on_val(runs, tmp_path: Path) -> None:
    data, a, _ = runs
    res = run("evaluate", str(a), "phantom", str(data), "--n-boot", "10", "--out", str(tmp_path / "ev"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "thresholds: youden chosen on val" in res.stdout
    recorded = json.loads((tmp_path / "ev" / "metrics.json").read_text())["thresholds"]
    assert recorded["rule"] == "youden" and recorded["split"] == "val"
    per_class = json.loads((tmp_path / "ev" / "metrics.json").read_text())["tasks"]["labels"]["metrics"]["threshold"]
    assert per_class == [recorded["tasks"]["labels"][c] for c in recorded["tasks"]["labels"]]
    res = run("evaluate", str(a), "phantom", str(data), "--threshold", "sens:0.8", "--n-boot", "10",
              "--out", str(tmp_path / "ev2"))  # fmt: skip
    assert res.returncode == 0 and "thresholds: sens:0.8 chosen on val" in res.stdout
