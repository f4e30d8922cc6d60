"""The README's benchmark tables are what bench/results/*.json say (bench/readme_tables.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables() -> ModuleType:
    return _load("readme_tables")


def test_readme_tables_match_the_results(tables: ModuleType, capsys) -> None:
    assert tables.main(["--check"]) == 0, capsys.readouterr().err


def test_check_fails_on_a_drifted_number_and_a_rewrite_restores_it(tables: ModuleType, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- bench:serve_latency_cpu:start -->")[1].split("<!-- bench:serve_latency_cpu:end -->")[0]
    row = next(line for line in block.splitlines() if line.startswith("| Ti | torch | fp32 | no | 1 |"))  # generated
    readme.write_text(text.replace(row, "| Ti | torch | fp32 | no | 1 | 70 |"))
    assert tables.main(["--check", "--readme", str(readme)]) == 1
    assert tables.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == text


def test_the_serving_table_leaves_out_skipped_precisions_and_says_why(tables: ModuleType) -> None:
    def run(backend: str, precision: str, clients: int, upload: str = "body", p50: float = 30.0) -> dict:
        return {"arch": "eva_x_tiny_patch16", "backend": backend, "precision": precision, "heatmap": False,
                "clients": clients, "p50_ms": p50, "server_ms_p50": p50 - 2, "p95_ms": 40.0, "p99_ms": 50.0,
                "requests_per_s": 33.3, "mean_batch": 1.0, "upload": upload}  # fmt: skip

    ratios = [{"heatmap": False, "clients": 1, "server_minus_raw_ms": 2.5, "ratio": 1.1, "met": True},
              {"heatmap": False, "clients": 16, "ratio": 0.7, "met": False,
               "rounds": [{"ratio": 0.66}, {"ratio": 0.7}, {"ratio": 0.74}]}]  # fmt: skip
    engine = [{"arch": "eva_x_tiny_patch16", "backend": "onnx", "precision": "fp32", "ratios": ratios},
              {"arch": "eva_x_tiny_patch16", "backend": "onnx", "precision": "int8", "ratios": ratios,
               "speed_vs_fp32": {"against": "onnx/fp32", "raw_forward_bs1": 1.2, "raw_forward_bs16": 1.7,
                                 "server_p50_1_client": 1.25, "server_requests_per_s_16_clients": 1.3}}]  # fmt: skip
    report = {"runs": [run("onnx", "fp32", 1), run("onnx", "int8", 1), run("onnx", "fp32", 1, "multipart", 31.5)],
              "engine": engine, "upload": "body",
              "skipped": ["torch/bf16: bf16 refused: this machine lacks AVX-512-BF16"],
              "machine": {"cores": 2}}  # fmt: skip
    text = tables.serve_table(report, "s.json")
    assert "| Ti | onnx | fp32 | no | 1 | 30 | 28.0 | 40 | 50 | 33.3 | 1.0 |" in text
    assert "| Ti | onnx | int8 | no | 1 |" in text and "bf16 |" not in text
    assert "| Ti | onnx | fp32 | +2.5 ms (met) | 0.70 [0.66, 0.74] (not met) | – | – |" in text
    assert "| Ti | int8 (onnx) | onnx/fp32 | 1.20x | 1.70x | 1.25x | 1.30x |" in text
    assert "Skipped: torch/bf16: bf16 refused: this machine lacks AVX-512-BF16." in " ".join(text.split())
    assert "| 31.5 |" not in text  # the multipart row is not in the main table, only beside its body twin:
    assert "| Ti | onnx | 1 | 30.0 / 31.5 | 28.0 / 29.5 | 33.3 / 33.3 |" in text


def test_the_label_efficiency_table_pairs_each_fraction_and_marks_intervals_excluding_zero(tables: ModuleType) -> None:
    def stat(backbone: str, fraction: float, values: list[float]) -> dict:
        mean = sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return {"backbone": backbone, "mode": "full", "fraction": fraction, "task": "masks", "metric": "mean_dice",
                "values": values, "mean": mean, "sd": sd}  # fmt: skip

    report = {
        "arch": "resnet18", "img_size": 128, "pretrained": None,
        "pretraining": {"run": "mt_x", "seed": 0, "batch_size": 16, "cycles": 3, "units": ["a/b"],
                        "steps_per_unit": {"a/b": 30}},
        "finetune": {"fractions": [0.01, 1.0], "steps": 150, "batch_size": 8, "lr": 5e-4, "layer_decay": 0.85,
                     "seeds": [0, 1, 2]},
        "rows": [{"fraction": "0.01", "metric": "mean_dice", "train_images": "2"},
                 {"fraction": "1", "metric": "mean_dice", "train_images": "174"}],
        "seed_statistics": {
            "rows": [stat("single_task", 0.01, [0.5, 0.6, 0.7]), stat("multitask", 0.01, [0.7, 0.8, 0.9]),
                     stat("single_task", 1.0, [0.9, 0.9, 0.9]), stat("multitask", 1.0, [0.9, 0.91, 0.89])],
            "differences": [
                {"row": "multitask full f0.01", "metric": "mean_dice", "difference": 0.2, "low": 0.1, "high": 0.3},
                {"row": "multitask full f1", "metric": "mean_dice", "difference": 0.0, "low": -0.01, "high": 0.01}],
        },
        "machine": {"cores": 2},
    }  # fmt: skip
    text = tables.foundation_x_label_efficiency_table(report, "fx.json")
    assert "| 1% (2) | 0.600 ± 0.100 | 0.800 ± 0.100 | **+0.200 [+0.100, +0.300]** |" in text
    assert "| 100% (174) | 0.900 ± 0.000 | 0.900 ± 0.010 | +0.000 [-0.010, +0.010] |" in text
    flat = " ".join(text.split())
    assert "3 cycles of 1 units without JSRT" in flat and "seeds 0, 1, 2" in flat


def test_the_multitask_table_shows_each_unit_with_its_pooled_differences(tables: ModuleType) -> None:
    def summary(mean: float, sd: float | None) -> dict:
        return {"mean": mean, "sd": sd, "n_seeds": 3}

    unit = {"kind": "segmentation", "metric": "mean_dice", "split": "test", "n": 51,
            "single_task": summary(0.8, 0.02), "multitask_teacher": summary(0.85, 0.01),
            "multitask_student": summary(0.84, None),
            "teacher_minus_single": {"pooled": {"difference": 0.05, "low": 0.02, "high": 0.08}},
            "student_minus_single": {"pooled": {"difference": 0.04, "low": -0.01, "high": 0.09}}}  # fmt: skip
    report = {"units": {"jsrt/lungs": unit}, "seeds": {"seed_0": {}, "seed_1": {}, "seed_2": {}},
              "arch": "resnet18", "img_size": 128, "batch_size": 16, "pretrained": None, "recipe": "r.yaml",
              "budget_definition": "same steps", "machine": {"cores": 2}}  # fmt: skip
    text = tables.foundation_x_real_table(report, "fx.json")
    row = (
        "| `jsrt/lungs` | mean_dice (test, 51) | 0.800 ± 0.020 | 0.850 ± 0.010 | 0.840 | **+0.050 [+0.020, +0.080]** |"
    )
    assert row + " +0.040 [-0.010, +0.090] |" in text and "seeds 0, 1, 2" in " ".join(text.split())


def test_a_result_without_provenance_shows_only_what_it_recorded(tables: ModuleType) -> None:
    text = tables.describe({"machine": {"cpu": "AMD EPYC", "cores": 2, "gpu": None}}, "bench/results/x.json")
    assert "machine as recorded: cpu AMD EPYC, cores 2, gpu none" in text
    assert "No date, commit or command recorded" in text


def test_a_result_written_by_write_result_is_described_from_its_provenance(
    tables: ModuleType, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(REPO / "bench" / "phantom_throughput.py"), "--n", "3"])
    provenance = _load("provenance")
    path = provenance.write_result(tmp_path / "r.json", {"benchmark": "b", "results": []}, packages=("numpy",))
    report = json.loads(path.read_text())
    prov = report["provenance"]
    assert {"command", "git", "date", "machine", "software", "torch_threads"} <= prov.keys()
    text = tables.describe(report, "r.json")
    assert "`python bench/phantom_throughput.py --n 3`" in text and prov["date"] in text
    assert prov["git"]["commit"] is None or f"commit {prov['git']['commit'][:10]}" in text
    assert "numpy" in text and prov["machine"]["cpu"] in text
    with pytest.raises(ValueError, match="provenance"):
        provenance.write_result(tmp_path / "r.json", report)
    partial = tables.describe_provenance({"date": "2026-01-01T00:00:00+00:00"})
    assert "commit unrecorded" in partial and "command unrecorded" in partial


def test_config_hash_is_canonical() -> None:
    provenance = _load("provenance")
    assert provenance.config_hash({"a": 1, "b": [1, 2]}) == provenance.config_hash({"b": [1, 2], "a": 1})
    assert provenance.config_hash({"a": 1}) != provenance.config_hash({"a": 2})


def test_finetune_provenance_reports_the_backbone_record_and_each_part(tables: ModuleType) -> None:
    new = {
        "provenance": {"date": "2026-01-02T03:04:05+00:00", "command": ["bench/finetune_real.py"]},
        "pretraining": {"source": "mim_phantom_abc: export/backbone.json", "artefact": "mim_phantom_abc", "steps": 200,
                        "images": 1386, "dataset": "phantom", "seconds": 1003.5, "first_loss": 1.0, "last_loss": 0.7},
        "experiments": {"jsrt_lungs": {"config_hash": "0123abcd", "runs": 12, "runs_reused": 12, "rows": [],
                                       "provenance": {"date": "2026-01-01T00:00:00+00:00"}}},
    }  # fmt: skip
    text = " ".join(tables.finetune_provenance(new, "f.json").split())
    assert "`mim_phantom_abc` (as it records itself): 200 steps on 1386 phantom images, 1003.5 s" in text
    assert "jsrt_lungs: config `0123abcd`, 12 runs (12 reused), 2026-01-01T00:00:00+00:00" in text
