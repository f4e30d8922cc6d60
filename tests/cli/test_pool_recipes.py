"""Shipped pool recipes: ``xrayfm shards build pool_merged520k OUT --data-root /data`` resolves the recipe by name, its
sources are registered adapters with options they take, each value is cited, and ``--data-root`` places roots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from xrayfm.cli import build_parser, main
from xrayfm.cli.recipes import list_recipes
from xrayfm.cli.shards import POOL_RECIPE_PREFIX, read_pool_args
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.registry import get_dataset_info
from xrayfm.errors import XrayfmError

POOLS = sorted(n for n in list_recipes() if n.startswith(POOL_RECIPE_PREFIX))


def test_merged520k_is_shipped() -> None:
    assert "pool_merged520k" in POOLS


@pytest.mark.parametrize("name", POOLS)
def test_a_shipped_pool_resolves_by_name_through_the_build_parser(name: str) -> None:
    args = build_parser().parse_args(["shards", "build", name, "OUT", "--data-root", "/data"])
    sources, excluded = read_pool_args(args.source, args.exclude_test, args.data_root)
    recipe = yaml.safe_load(list_recipes()[name].read_text())
    assert [s.adapter for s in sources] == [s["adapter"] for s in recipe["sources"]]
    assert [s.root for s in sources + excluded] == [
        Path("/data") / s["root"] for s in recipe["sources"] + recipe.get("exclude_test", [])
    ]
    for src in sources + excluded:  # every adapter is registered and takes the options it is given
        info = get_dataset_info(src.adapter)
        assert set(src.options) <= set(info.options()), f"{src.adapter}: {set(src.options) - set(info.options())}"
        info.coerce_options(dict(src.options))
    assert len({s.label for s in sources}) == len(sources) and all(s.weight > 0 for s in sources)


def test_merged520k_is_the_three_frontal_sets_with_their_test_patients_left_out() -> None:
    sources, excluded = read_pool_args(["pool_merged520k"], [], None)
    assert {s.adapter for s in sources} == {"nih_cxr14", "chexpert", "mimic_cxr"}  # EVA-X pretrain/README.md
    assert {(s.adapter, s.root) for s in excluded} == {(s.adapter, s.root) for s in sources}
    views = {s.adapter: s.options["views"] for s in sources}
    assert views == {"nih_cxr14": ("PA", "AP"), "chexpert": "frontal", "mimic_cxr": ("PA", "AP")}


@pytest.mark.parametrize("name", POOLS)
def test_every_value_line_of_a_pool_says_whose_value_it_is(name: str) -> None:
    for line in list_recipes()[name].read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "# paper:" in line or "# xrayfm:" in line, f"{name}: {line!r}"


def test_an_unknown_pool_name_is_an_error_naming_the_source_forms() -> None:
    with pytest.raises(XrayfmError, match="must be ADAPTER:ROOT"):
        read_pool_args(["pool_nowhere"], [], None)


def test_data_root_places_the_relative_roots_of_a_pool_file(tmp_path: Path, capsys) -> None:
    write_phantom_dataset(tmp_path / "data" / "phantom", n=8, seed=0, size=32)
    pool = tmp_path / "mine.yaml"
    pool.write_text(
        "sources:\n  - {adapter: phantom, root: phantom}\nexclude_test:\n  - {adapter: phantom, root: phantom}\n"
    )
    out = tmp_path / "shards"
    argv = ["shards", "build", str(pool), str(out), "--data-root", str(tmp_path / "data"), "--size", "32", "--json"]
    assert main(argv) == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["sources"][0]["root"] == str((tmp_path / "data" / "phantom").resolve())
    test = manifest["pool"]["phantom"]["splits"]["test"]  # the --exclude-test set was found under --data-root too
    assert test["found"] == test["excluded_test"] > 0 and "test" not in manifest["counts"]


def test_the_recipe_list_says_how_a_pool_recipe_is_used(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "pool_merged520k" in out and "a pool_* one as a source of xrayfm shards build NAME OUT" in out
