"""``xrayfm shards build`` and ``xrayfm shards inspect`` end to end, errors as one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.shard_format import ShardDataset


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("shards_cli")
    a = write_phantom_dataset(base / "a", n=10, seed=0, size=64)
    return a, write_phantom_dataset(base / "b", n=8, seed=1, size=64)


def test_build_then_inspect(phantoms: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    a, b = phantoms
    out = tmp_path / "out"
    pool = tmp_path / "pool.yaml"
    pool.write_text(f"sources:\n  - {{adapter: phantom, root: {b}, source: bee, weight: 2}}\n")
    args = ["shards", "build", f"phantom:{a}?source=ay", str(pool), str(out), "--size", "32", "--dedupe", "none",
            "--exclude-test", f"phantom:{b}", "--part-size", "4", "--targets", "labels"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "complete" in text and "32 px (shorter side), 8-bit png" in text and "bee: phantom" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["counts"]["train"]["per_source"]) == {"ay", "bee"}
    assert "bee" not in manifest["counts"].get("test", {}).get("per_source", {})  # its test patients are excluded
    assert [t["kind"] for t in manifest["tasks"]] == ["multilabel"]
    sample = ShardDataset(out, "train")[0]
    assert sample["image"].shape == (1, 32, 32) and set(sample) == {"image", "labels", "meta"}

    assert main(["shards", "inspect", str(out), "--verify", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == [] and summary["total"] == manifest["total"] and summary["bits"] == 8
    assert main(args) == 0  # the same build again: resumes, nothing to do
    capsys.readouterr()
    chunk = next((out / "train").glob("chunk-*.bin"))
    chunk.write_bytes(chunk.read_bytes()[:-1])
    assert main(["shards", "inspect", str(out), "--verify"]) == 1
    assert "does not match its SHA-256" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuch:/x", "OUT"], "unknown dataset 'nosuch'"),
        (["not-a-source", "OUT"], "must be ADAPTER:ROOT"),
        (["phantom:A", "OUT", "--splits", "test", "--exclude-test", "phantom:A"], "is empty"),
        (["phantom:A", "OUT", "--size", "48"], "holds shards of another build (different size)"),
    ],
)
def test_errors_are_one_line(
    phantoms: tuple[Path, Path], tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    a, _ = phantoms
    out = tmp_path / "out"
    assert main(["shards", "build", f"phantom:{a}", str(out), "--size", "32"]) == 0
    capsys.readouterr()
    argv = [str(out) if x == "OUT" else x.replace("phantom:A", f"phantom:{a}") for x in argv]
    assert main(["shards", "build", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xrayfm: error: ") and message in err and err.count("\n") == 1


def test_inspect_of_a_folder_that_is_not_shards(tmp_path: Path, capsys) -> None:
    assert main(["shards", "inspect", str(tmp_path)]) == 2
    assert "not a shard folder" in capsys.readouterr().err


def test_unreadable_files_named_and_left_out_on_request(phantoms: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    source = tmp_path / "a"
    shutil.copytree(phantoms[0], source)
    damaged = sorted((source / "images").glob("*.png"))[:2]
    for p in damaged:
        p.write_bytes(p.read_bytes()[:200])
    args = ["shards", "build", f"phantom:{source}", str(tmp_path / "out"), "--size", "32"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--skip-unreadable" in err and str(source / "images") in err
    assert main([*args, "--skip-unreadable"]) == 0
    text = capsys.readouterr().out
    assert "left out as unreadable: 2 files" in text and all(f"- {p}: corrupt or truncated" in text for p in damaged)
    assert main(["shards", "inspect", str(tmp_path / "out"), "--json"]) == 0
    assert {Path(s["image"]) for s in json.loads(capsys.readouterr().out)["skipped"]} == set(damaged)
