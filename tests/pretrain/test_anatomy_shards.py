"""Adam from shards: ``xrayfm pretrain anatomy shards OUT`` streams the train split, validates on the val split,
refuses shards without one unless validation is off, and a run killed mid-stage resumes to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.shard_format import ShardDataset
from xrayfm.data.shards import build_shards
from xrayfm.errors import XrayfmError
from xrayfm.pretrain import anatomy_run
from xrayfm.pretrain.anatomy_run import STAGE_WEIGHTS, run_anatomy
from xrayfm.train import CHECKPOINT, TrainConfig
from xrayfm.train.streaming import SeededShards, ShardSplit, open_dataset, sample_total

TINY = {"arch": "test_resnet", "img_size": 32, "queue_size": 16, "moco_dim": 8, "split_bn": 2}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("anatomy_shards") / "phantom", n=40, seed=0, size=32)


@pytest.fixture(scope="module")
def shards(phantom: Path) -> Path:
    out = phantom.parent / "shards"
    build_shards([f"phantom:{phantom}"], out, size=32, resize="square", part_size=5, chunk_mb=0.002)
    return out


def _cfg(out: Path, steps: int = 2, **settings) -> TrainConfig:
    base = dict(
        out_dir=str(out), steps=steps, batch_size=4, optimizer="sgd", lr=0.03, weight_decay=1e-4, warmup_steps=0,
        clip_grad=0.0, accelerator="cpu", precision="32-true", checkpoint_every=1, log_every=1,
    )  # fmt: skip
    return TrainConfig(**{**base, **settings})


def test_shards_open_as_a_stream_for_training_and_by_index_for_validation(shards: Path) -> None:
    stream = open_dataset("shards", shards, "train", seed=0)
    val = open_dataset("shards", shards, "val", stream=False)
    assert isinstance(stream, SeededShards) and isinstance(val, ShardSplit)
    expected = [s["meta"]["id"] for s in ShardDataset(shards, "val")]
    assert len(val) == sample_total(val) == len(expected) > 0
    assert [val[i]["meta"]["id"] for i in range(len(val))] == expected  # every sample once, stored order
    assert sample_total(stream) == sum(1 for _ in ShardDataset(shards, "train"))
    with pytest.raises(XrayfmError, match="shards take no option views"):
        open_dataset("shards", shards, "val", options={"views": "all"}, stream=False)


def test_pretrain_anatomy_streams_shards_and_validates_on_their_val_split(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "adam"
    code = main([
        "pretrain", "anatomy", "shards", str(shards), "--out", str(out), "--stages", "0,2", "--arch", "test_resnet",
        "--img-size", "32", "--queue-size", "16", "--moco-dim", "8", "--split-bn", "2", "--steps", "2",
        "--batch-size", "4", "--accelerator", "cpu", "--precision", "32-true", "--checkpoint-every", "1",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    counts = json.loads((shards / "manifest.json").read_text())["counts"]
    assert summary["images"] == counts["train"]["total"] and summary["val_images"] == counts["val"]["total"]
    assert [s["granularity"] for s in summary["stages"]] == [0, 2] and summary["steps"] == 4
    assert all(s["val_loss"] is not None and s["val_loss"] > 0 for s in summary["stages"])
    for stage in ("stage_n0", "stage_n2"):  # each stage's checkpoint holds its stream position
        assert torch.load(out / stage / CHECKPOINT, weights_only=True)["loader"]["num_samples_yielded"] == 8


def test_shards_without_a_val_split_need_val_fraction_zero(phantom: Path, tmp_path: Path) -> None:
    train_only = tmp_path / "train_only"
    build_shards([f"phantom:{phantom}"], train_only, size=32, resize="square", splits=("train",), chunk_mb=0.002)
    with pytest.raises(XrayfmError, match="no val split .* --val-fraction 0"):
        run_anatomy("shards", train_only, stages=(0,), train_config=_cfg(tmp_path / "refused"), **TINY)
    run_anatomy("shards", train_only, stages=(0,), val_fraction=0, train_config=_cfg(tmp_path / "ok", 1), **TINY)
    stage = json.loads((tmp_path / "ok" / "stage_n0" / "stage.json").read_text())
    assert stage["val_loss"] is None and stage["exported_step"] == 1  # no validation: the last step stands


def test_a_shard_run_killed_mid_epoch_resumes_to_the_same_weights(shards: Path, tmp_path: Path, monkeypatch) -> None:
    settings = dict(stages=(2,), **TINY)
    run_anatomy("shards", shards, train_config=_cfg(tmp_path / "straight", 4, checkpoint_every=2), **settings)

    class Crash(RuntimeError):
        pass

    calls = {"n": 0}
    real_views = anatomy_run._views

    def crash_at_step_three(batch):
        calls["n"] += 1
        if calls["n"] == 5:  # steps 1, 2, then 2 validation batches (6 pairs of 4) at the checkpoint of step 2
            raise Crash
        return real_views(batch)

    monkeypatch.setattr(anatomy_run, "_views", crash_at_step_three)
    with pytest.raises(Crash):
        run_anatomy("shards", shards, train_config=_cfg(tmp_path / "killed", 4, checkpoint_every=2), **settings)
    monkeypatch.setattr(anatomy_run, "_views", real_views)
    saved = torch.load(tmp_path / "killed" / "stage_n2" / CHECKPOINT, weights_only=True)
    assert saved["step"] == 2 and saved["loader"]["num_samples_yielded"] == 8  # mid-epoch: 7 steps an epoch
    run_anatomy("shards", shards, train_config=_cfg(tmp_path / "killed", 4, checkpoint_every=2), **settings)
    stage = json.loads((tmp_path / "killed" / "stage_n2" / "stage.json").read_text())
    assert stage["resumed_from_checkpoint"] and stage["steps_this_call"] == 2
    ref = load_file(str(tmp_path / "straight" / "stage_n2" / STAGE_WEIGHTS))
    got = load_file(str(tmp_path / "killed" / "stage_n2" / STAGE_WEIGHTS))
    for key in ref:  # query and key encoders, heads, queue and pointer
        assert torch.equal(ref[key], got[key]), f"{key} differs after resume"
