"""Two-process FSDP on CPU (gloo): sharded checkpoint folders, exact resume, full weights handed back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.train import TrainConfig
from xrayfm.train.distributed import make_fabric

SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import torch
    from torch.utils.data import TensorDataset
    from xrayfm.models import create_model
    from xrayfm.pretrain.mim import MaskedFeatureModeling
    from xrayfm.train import TrainConfig, train
    from xrayfm.train.distributed import make_fabric

    logging.disable(logging.INFO)
    root = sys.argv[1]

    class Crash(RuntimeError):
        pass

    def objective():
        torch.manual_seed(0)
        student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=32, depth=2)
        teacher = create_model("eva_x_tiny_patch16", num_classes=0, img_size=32, depth=2)
        return MaskedFeatureModeling(student, teacher)

    def cfg(name):
        return TrainConfig(out_dir=f"{root}/{name}", steps=4, batch_size=2, warmup_steps=1, accelerator="cpu",
                           devices=2, strategy="fsdp", precision="32-true", checkpoint_every=1, log_every=1)

    def crash_at_third(batch, calls=[0]):
        calls[0] += 1
        if calls[0] == 3:
            raise Crash
        return batch[0]

    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    fabric = make_fabric(cfg("straight"))
    straight = objective()
    result = train(straight, data, cfg("straight"), batch_to_input=lambda b: b[0], fabric=fabric)
    try:
        train(objective(), data, cfg("killed"), batch_to_input=crash_at_third, fabric=fabric)
        crashed = False
    except Crash:
        crashed = True
    fabric.barrier()
    step_at_kill = torch.load(f"{root}/killed/last.ckpt/meta.pt", weights_only=False)["step"]
    fabric.barrier()
    resumed = objective()
    train(resumed, data, cfg("killed"), batch_to_input=lambda b: b[0], fabric=fabric)
    plain = all(type(t) is torch.Tensor for t in straight.state_dict().values())
    trained = any(not torch.equal(a, b) for a, b in zip(straight.state_dict().values(), objective().state_dict().values()))
    torch.save(straight.state_dict(), f"{root}/straight{fabric.global_rank}.pt")
    torch.save(resumed.state_dict(), f"{root}/resumed{fabric.global_rank}.pt")
    with open(f"{root}/rank{fabric.global_rank}.json", "w") as fh:
        json.dump({"world": fabric.world_size, "loss": result["loss"], "crashed": crashed, "plain": plain,
                   "trained": trained, "step_at_kill": step_at_kill}, fh)
    """
)


@pytest.mark.slow
def test_two_process_fsdp_on_cpu_resumes_from_sharded_folders(tmp_path: Path) -> None:
    script = tmp_path / "fsdp_run.py"
    script.write_text(SCRIPT)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(
        r["world"] == 2 and r["crashed"] and r["plain"] and r["trained"] and r["step_at_kill"] == 2 for r in ranks
    )
    assert ranks[0]["loss"] == ranks[1]["loss"]  # the logged loss is the mean over ranks
    for name in ("straight", "killed"):
        ckpt = tmp_path / name / "last.ckpt"
        assert ckpt.is_dir() and {"meta.pt", ".metadata"} <= {p.name for p in ckpt.iterdir()}
        assert torch.load(ckpt / "meta.pt", weights_only=False)["step"] == 4
        assert not [p for p in (tmp_path / name).iterdir() if p.name.startswith(".")], "temporary left behind"
    assert len((tmp_path / "killed" / "metrics.csv").read_text().splitlines()) == 5
    straight = [torch.load(tmp_path / f"straight{r}.pt") for r in (0, 1)]
    resumed = [torch.load(tmp_path / f"resumed{r}.pt") for r in (0, 1)]
    for key, value in straight[0].items():
        torch.testing.assert_close(straight[1][key], value, rtol=0, atol=0, msg=f"{key}: ranks differ")
        torch.testing.assert_close(resumed[0][key], value, rtol=0, atol=0, msg=f"{key} differs after resume")


def test_fsdp_with_fp16_mixed_precision_is_refused_before_launch(tmp_path: Path) -> None:
    cfg = TrainConfig(out_dir=str(tmp_path), accelerator="cpu", strategy="fsdp", precision="16-mixed")
    with pytest.raises(XrayfmError, match="--strategy fsdp needs --precision"):
        make_fabric(cfg)
