"""Checkpoints: save -> load restores everything; files and sharded folders are swapped in atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric import Fabric
from torch import nn

from xrayfm.errors import XrayfmError
from xrayfm.train import CHECKPOINT, TrainConfig
from xrayfm.train.checkpoint import load_checkpoint, save_checkpoint
from xrayfm.train.schedules import build_scheduler


class FolderFabric:
    """Stands for one rank of a sharding Fabric: ``save`` writes a folder of shards plus ``meta.pt``."""

    global_rank = 0

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.saved_to = fail, []

    def broadcast(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        pass

    def save(self, path: Path, state: dict[str, Any]) -> None:
        self.saved_to.append(path)
        path.mkdir()
        (path / "__0_0.distcp").write_bytes(b"shard")
        if self.fail:
            raise OSError("disk full")
        torch.save({"step": state["step"]}, path / "meta.pt")

    def load(self, path: Path, state: dict[str, Any], *, weights_only: bool | None = None) -> None:
        assert weights_only is True, "checkpoints are read without running code"
        state.update(torch.load(path / "meta.pt", weights_only=True))


def _fabric() -> Fabric:
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    fabric.launch()
    return fabric


def _setup(fabric: Fabric, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = build_scheduler(optimizer, TrainConfig(steps=10, warmup_steps=2, lr=1e-2))
    module, optimizer = fabric.setup(model, optimizer)
    return {"objective": module, "optimizer": optimizer, "step": 0, "scheduler": scheduler}


def test_save_then_load_restores_model_optimizer_scheduler_and_step(tmp_path: Path) -> None:
    fabric = _fabric()
    run = _setup(fabric, seed=0)
    for _ in range(3):
        fabric.backward(run["objective"](torch.randn(5, 4)).pow(2).mean())
        run["optimizer"].step()
        run["optimizer"].zero_grad()
        run["scheduler"].step()
    path = tmp_path / CHECKPOINT
    save_checkpoint(fabric, path, {**run, "step": 3, "scheduler": run["scheduler"].state_dict()}, sharded=False)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]

    fresh = _setup(fabric, seed=1)
    state = {**fresh, "scheduler": {}}
    assert load_checkpoint(fabric, path, state, sharded=False)
    fresh["scheduler"].load_state_dict(state["scheduler"])
    assert state["step"] == 3 and fresh["scheduler"].get_last_lr() == run["scheduler"].get_last_lr()
    for a, b in zip(run["objective"].state_dict().values(), fresh["objective"].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    saved, loaded = run["optimizer"].state_dict(), fresh["optimizer"].state_dict()
    for i, s in saved["state"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s[key], loaded["state"][i][key], rtol=0, atol=0)


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert not load_checkpoint(FolderFabric(), tmp_path / CHECKPOINT, {"step": 0}, sharded=True)


def test_sharded_folder_is_written_aside_then_replaces_the_previous_one(tmp_path: Path) -> None:
    fabric, path = FolderFabric(), tmp_path / CHECKPOINT
    for step in (1, 2):
        save_checkpoint(fabric, path, {"step": step}, sharded=True)  # type: ignore[arg-type]
        assert fabric.saved_to[-1].parent == tmp_path and fabric.saved_to[-1] != path
        assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary or old folder left
    assert sorted(p.name for p in path.iterdir()) == ["__0_0.distcp", "meta.pt"]
    state = {"step": 0}
    assert load_checkpoint(fabric, path, state, sharded=True) and state["step"] == 2  # type: ignore[arg-type]


def test_sharded_folder_replaces_a_single_file_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT
    torch.save({"step": 1}, path)  # e.g. a one-device run continued with --strategy fsdp
    save_checkpoint(FolderFabric(), path, {"step": 2}, sharded=True)  # type: ignore[arg-type]
    assert path.is_dir() and [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT
    save_checkpoint(FolderFabric(), path, {"step": 1}, sharded=True)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(FolderFabric(fail=True), path, {"step": 2}, sharded=True)  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]
    assert torch.load(path / "meta.pt")["step"] == 1


def test_unsharded_run_refuses_a_sharded_folder(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT).mkdir()
    with pytest.raises(XrayfmError, match="resume it with --strategy fsdp"):
        load_checkpoint(FolderFabric(), tmp_path / CHECKPOINT, {"step": 0}, sharded=False)  # type: ignore[arg-type]
