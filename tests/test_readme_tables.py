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
    row = next(line for line in block.splitlines() if line.startswith("| Ti | torch | no | 1 |"))  # a generated row
    readme.write_text(text.replace(row, "| Ti | torch | no | 1 | 70 |"))
    assert tables.main(["--check", "--readme", str(readme)]) == 1
    assert tables.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == text


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
