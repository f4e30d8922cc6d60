"""Issue 17's end-to-end case: a pool of the real shared sets and the phantom builds into shards, and MIM
pretraining and fine-tuning both train from those shards through the command line."""

from __future__ import annotations

import json
from pathlib import Path

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset

ENGINE = ["--batch-size", "4", "--steps", "2", "--warmup", "0", "--accelerator", "cpu", "--precision", "32-true"]


def test_a_pool_of_real_sets_and_the_phantom_trains_mim_and_fine_tunes_from_shards(
    shared_datasets: Path, tmp_path: Path
) -> None:
    phantom = write_phantom_dataset(tmp_path / "phantom", n=16, seed=0, size=64)
    sources = [
        f"csv:{shared_datasets / 'jsrt_lungs'}?mask_columns=mask&mask_classes=lungs&label_columns=nodule&source=jsrt",
        f"csv:{shared_datasets / 'kermany_pneumonia_test224'}?label_columns=pneumonia&split_column=&source=kermany",
        f"phantom:{phantom}?source=phantom",
    ]
    shards = tmp_path / "shards"
    assert main(["shards", "build", *sources, str(shards), "--size", "32", "--encoding", "raw"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    by_source = manifest["counts"]["train"]["per_source"]
    assert set(by_source) == {"jsrt", "kermany", "phantom"} and all(n > 0 for n in by_source.values())

    mim = tmp_path / "mim"
    assert (
        main(
            [
                "pretrain",
                "mim",
                "shards",
                str(shards),
                "--out",
                str(mim),
                "--arch",
                "eva_x_tiny_patch16",
                "--img-size",
                "32",
                *ENGINE,
            ]
        )
        == 0
    )  # fmt: skip (no --teacher: pixel targets)
    assert json.loads((mim / "summary.json").read_text())["images"] == manifest["counts"]["train"]["total"]

    ft = tmp_path / "ft"
    argv = ["finetune", "shards", str(shards), "--out", str(ft), "--arch", "eva_x_tiny_patch16", "--img-size", "32",
            "--pretrained", str(mim), "--n-boot", "5", "--allow-empty-classes", *ENGINE]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((ft / "eval_test" / "metrics.json").read_text())
    assert metrics["n"] == manifest["counts"]["test"]["total"] and metrics["dataset"] == "shards"
    classes = {c for spec in metrics["task_specs"] for c in spec["classes"]}
    assert {"nodule", "pneumonia", "lungs"} <= classes  # the sources' tasks, merged by class name
