"""Training from shards: the engine streams a shard folder, a run killed mid-epoch resumes to the same samples and
weights, two ranks see every sample exactly once per epoch, and ``xrayfm pretrain mim shards OUT`` trains."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from toy_runs import Crash, NoisyPairs

from xrayfm.cli import main
from xrayfm.data.phantom_io import write_phantom_dataset
from xrayfm.data.sample import Sample, collate_samples
from xrayfm.data.shards import build_shards
from xrayfm.errors import XrayfmError
from xrayfm.train import CHECKPOINT, TrainConfig, train
from xrayfm.train.streaming import SeededShards, open_shards

SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import torch
    from xrayfm.data.sample import collate_samples
    from xrayfm.train import TrainConfig, train
    from xrayfm.train.streaming import SeededShards

    logging.disable(logging.INFO)
    shards, out, workers, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    seen = []

    def pick(batch):
        seen.append([m["id"] for m in batch["meta"]])
        return batch["image"]

    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(images.mean(dim=(1, 2, 3)).unsqueeze(1)).pow(2).mean()

    cfg = TrainConfig(out_dir=out, epochs=2, batch_size=batch, warmup_steps=1, accelerator="cpu", devices=2,
                      strategy="ddp", precision="32-true", checkpoint_every=100, num_workers=workers)
    result = train(Objective(), SeededShards(shards, "train", seed=0, shuffle=True), cfg, batch_to_input=pick,
                   collate_fn=collate_samples)
    import torch.distributed as dist
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as fh:
        json.dump({"steps": result["steps"], "seen": seen}, fh)
    """
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("shard_training")
    data = write_phantom_dataset(base / "phantom", n=40, seed=0, size=32)
    out = base / "shards"
    build_shards([f"phantom:{data}"], out, size=32, resize="square", part_size=5, chunk_mb=0.002)  # many chunks
    return out


def _train_ids(shards: Path) -> set[str]:
    return {s["meta"]["id"] for s in SeededShards(shards, "train")}


def _noisy(sample: Sample) -> Sample:
    """An augmentation drawing from torch, NumPy and ``random``: replays only if the reads are seeded by sample."""
    noise = 0.1 * torch.randn(1) + float(np.random.normal()) * 0.01 + random.random() * 0.01
    return {**sample, "image": sample["image"] + noise}


class Probe(torch.nn.Module):
    """A linear map of pooled images with dropout (the forward pass draws random numbers too)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.drop = torch.nn.Linear(16, 1), torch.nn.Dropout(0.2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)
        return (self.linear(self.drop(pooled)) - 0.5).pow(2).mean()


def _recorder(seen: list[list[str]], crash_at: int = 0):
    """``batch_to_input`` recording each batch's ids; it raises Crash at batch ``crash_at`` (1-based), as a kill."""

    def pick(batch: dict[str, Any]) -> torch.Tensor:
        if len(seen) + 1 == crash_at:
            raise Crash
        seen.append([m["id"] for m in batch["meta"]])
        return batch["image"]

    return pick


def _run(shards: Path, out: Path, seen: list[list[str]], crash_at: int = 0, **settings: Any) -> Probe:
    base = dict(
        out_dir=str(out), steps=10, batch_size=4, warmup_steps=1, lr=1e-2, accelerator="cpu", precision="32-true",
        checkpoint_minutes=0, checkpoint_every=100, log_every=1,
    )  # fmt: skip
    probe = Probe()
    data = SeededShards(shards, "train", seed=0, shuffle=True, transform=_noisy)
    train(probe, data, TrainConfig(**{**base, **settings}), batch_to_input=_recorder(seen, crash_at),
          collate_fn=collate_samples)  # fmt: skip
    return probe


@pytest.mark.parametrize(
    ("workers", "every", "crash_at"),
    [(0, 3, 5), (2, 3, 5), (0, 7, 9)],  # killed mid-epoch (steps 4-5 lost), and right after an epoch's last step
)
def test_a_killed_run_resumes_to_the_same_samples_and_weights(
    shards: Path, tmp_path: Path, workers: int, every: int, crash_at: int
) -> None:
    n = len(_train_ids(shards))
    assert n == 28  # 7 steps of 4 an epoch: 10 steps cross into the second epoch
    straight: list[list[str]] = []
    reference = _run(shards, tmp_path / "straight", straight, num_workers=workers)
    assert sorted(i for b in straight[:7] for i in b) == sorted(_train_ids(shards))  # epoch 1: each sample once

    killed: list[list[str]] = []
    with pytest.raises(Crash):
        _run(shards, tmp_path / "killed", killed, crash_at, num_workers=workers, checkpoint_every=every)
    saved = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)
    assert saved["step"] == every and saved["loader"]["num_samples_yielded"] == 4 * every
    resumed: list[list[str]] = []
    weights = _run(shards, tmp_path / "killed", resumed, num_workers=workers, checkpoint_every=every)
    assert killed[:every] + resumed == straight  # the same remaining samples, in the same order
    torch.testing.assert_close(weights.state_dict(), reference.state_dict(), rtol=0, atol=0)


def test_a_stream_cannot_resume_a_checkpoint_without_its_position(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(Crash):
        _run(shards, tmp_path, [], 3, checkpoint_every=1)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    del state["loader"]  # as an older xrayfm wrote it
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.raises(XrayfmError, match="holds no stream position"):
        _run(shards, tmp_path, [])


class Regression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (self.linear(x).squeeze(1) - y).pow(2).mean()


def test_a_map_style_checkpoint_without_loader_state_still_resumes(tmp_path: Path) -> None:
    cfg = dict(steps=4, batch_size=2, warmup_steps=1, accelerator="cpu", precision="32-true", checkpoint_every=2)
    reference = Regression()
    train(reference, NoisyPairs(), TrainConfig(out_dir=str(tmp_path / "straight"), **cfg))
    calls = {"n": 0}

    def crash_at_3(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash
        return batch

    with pytest.raises(Crash):
        train(Regression(), NoisyPairs(), TrainConfig(out_dir=str(tmp_path / "old"), **cfg), batch_to_input=crash_at_3)
    state = torch.load(tmp_path / "old" / CHECKPOINT, weights_only=True)
    assert state.pop("loader") == {} and state["step"] == 2
    torch.save(state, tmp_path / "old" / CHECKPOINT)  # a checkpoint of before loader states
    resumed = Regression()
    assert train(resumed, NoisyPairs(), TrainConfig(out_dir=str(tmp_path / "old"), **cfg))["start_step"] == 2
    torch.testing.assert_close(resumed.state_dict(), reference.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("workers", "batch"), [(0, 2), pytest.param(2, 1, marks=pytest.mark.slow)]
)  # about 20 s each on 2 cores: two gloo processes; the default suite runs the one without loader workers
def test_two_ranks_see_every_sample_exactly_once_per_epoch(
    shards: Path, tmp_path: Path, workers: int, batch: int
) -> None:
    ids = _train_ids(shards)
    assert len(ids) % (2 * max(workers, 1) * batch) == 0  # divides into world x workers x batch: LitData drops nothing
    script = tmp_path / "ddp_shards.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, str(script), str(shards), str(out), str(workers), str(batch)], capture_output=True, text=True,
        timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    per_epoch = len(ids) // (2 * batch)  # steps: 2 ranks x batches
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * per_epoch
    epochs = []
    for e in range(2):
        read = [i for r in ranks for b in r["seen"][e * per_epoch : (e + 1) * per_epoch] for i in b]
        counts = Counter(read)
        assert set(counts) == ids and set(counts.values()) == {1}, counts  # none lost, none twice
        epochs.append([b for r in ranks for b in r["seen"][e * per_epoch : (e + 1) * per_epoch]])
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_pretrain_mim_streams_shards_from_the_cli(shards: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "mim"
    code = main([
        "pretrain", "mim", "shards", str(shards), "--out", str(out), "--img-size", "32", "--batch-size", "4",
        "--steps", "2", "--warmup", "1", "--accelerator", "cpu", "--precision", "32-true",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "shards" and summary["images"] == len(_train_ids(shards)) and summary["steps"] == 2
    assert torch.load(out / CHECKPOINT, weights_only=True)["loader"]["num_samples_yielded"] == 8
    assert (out / "export" / "backbone.safetensors").is_file()


def test_shards_refuse_adapter_options(shards: Path) -> None:
    with pytest.raises(XrayfmError, match="shards take no option missing"):
        open_shards(shards, "train", seed=0, transform=None, options={"missing": "skip"})
