"""Device settings a machine cannot run are refused in one line, before anything is built."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from xrayfm.errors import XrayfmError
from xrayfm.train import TrainConfig, check_devices, is_global_zero, train
from xrayfm.train.distributed import make_fabric


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _refused(match: str, **settings) -> str:
    with pytest.raises(XrayfmError, match=match) as info:
        check_devices(TrainConfig(**settings))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_accelerator_without_a_gpu_is_one_line(no_gpu, accelerator: str) -> None:
    message = _refused("no CUDA GPU is visible", accelerator=accelerator)
    assert message == (
        f"--accelerator {accelerator}: no CUDA GPU is visible on this machine (torch.cuda.is_available() is False); "
        "use --accelerator cpu or auto"
    )
    _refused("no Apple GPU", accelerator="mps")


def test_what_a_cpu_machine_can_run_passes(no_gpu) -> None:
    for settings in (
        {},
        {"accelerator": "cpu", "devices": "auto"},
        {"accelerator": "auto", "devices": 4, "strategy": "ddp", "num_nodes": 2},  # CPU "devices" are processes
        {"accelerator": "cpu", "devices": 2, "strategy": "fsdp", "precision": "32-true"},
        {"accelerator": "cpu", "strategy": "dp", "precision": "bf16-mixed"},  # Fabric runs dp as ddp on CPUs
        {"precision": "16-mixed"},
    ):
        check_devices(TrainConfig(**settings))


def test_a_gpu_machine_passes_its_gpus_and_refuses_more(one_gpu) -> None:
    check_devices(TrainConfig(accelerator="gpu", devices=1, strategy="fsdp_cpu_offload"))
    check_devices(TrainConfig(accelerator="auto", devices="auto", precision="bf16-true"))
    assert "only 1 CUDA GPU(s) visible" in _refused("--devices 4", accelerator="gpu", devices=4)
    _refused("--devices 2", devices=2)  # auto picks the GPU


def test_counts_below_one_are_refused(no_gpu) -> None:
    assert _refused("--devices", devices=0) == "--devices must be at least 1 (or 'auto' for all), got 0"
    _refused("--devices must be at least 1", devices=-1)
    assert _refused("--num-nodes", num_nodes=0) == "--num-nodes must be at least 1, got 0"


def test_unknown_names_are_refused(no_gpu) -> None:
    assert _refused("--strategy", strategy="ddpp").startswith("--strategy ddpp is unknown; use auto, ddp or fsdp")
    message = _refused("--precision", precision="fp16")
    assert message.startswith("--precision fp16 is unknown; use one of auto, ") and "bf16-mixed" in message
    assert _refused("--accelerator", accelerator="npu").startswith("--accelerator npu is not one of auto, cpu, gpu")


def test_strategies_the_engine_or_the_cpu_cannot_run(no_gpu) -> None:
    for strategy in ("ddp_spawn", "ddp_fork", "ddp_notebook"):
        _refused(f"--strategy {strategy} starts processes from a function.*use --strategy ddp", strategy=strategy)
    for strategy in ("fsdp_cpu_offload", "deepspeed"):
        _refused(f"--strategy {strategy} needs GPUs", accelerator="cpu", devices=4, strategy=strategy)
    _refused("--strategy fsdp needs --precision", strategy="fsdp", precision="16-mixed")


def test_library_users_get_the_check_from_train_before_any_file(no_gpu, tmp_path: Path) -> None:
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), accelerator="gpu")
    with pytest.raises(XrayfmError, match="no CUDA GPU is visible"):
        train(torch.nn.Linear(2, 1), [torch.zeros(2)], cfg)
    assert not (tmp_path / "run").exists()


def test_what_fabric_refuses_beyond_the_check_is_one_line(tmp_path: Path) -> None:
    if importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("torch_xla is installed: Fabric takes --accelerator tpu")
    check_devices(TrainConfig(accelerator="tpu"))  # a name Fabric knows; only Fabric knows it needs torch_xla
    with pytest.raises(XrayfmError, match=r"^Lightning Fabric cannot run --accelerator tpu .*: .*torch_xla[^\n]*$"):
        make_fabric(TrainConfig(out_dir=str(tmp_path), accelerator="tpu"))


def test_rank_zero_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert is_global_zero()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not is_global_zero()
