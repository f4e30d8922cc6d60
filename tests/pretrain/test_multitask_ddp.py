"""Foundation X under two-process DDP on CPU: unused heads and a locked backbone do not stall the reducer,
the lock holds, and the ranks stay in sync."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xrayfm.data.phantom_io import write_phantom_dataset

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, logging, sys
    import torch, torch.distributed as dist, yaml
    import xrayfm
    from pathlib import Path
    from xrayfm.pretrain import multitask_run
    from xrayfm.pretrain.multitask_recipe import parse_recipe
    from xrayfm.train import TrainConfig

    logging.disable(logging.INFO)
    out, phantom = sys.argv[1], sys.argv[2]
    recipe = yaml.safe_load((Path(xrayfm.__file__).parent / "configs" / "foundation_x_phantom.yaml").read_text())
    for entry in recipe["datasets"].values():
        entry["root"] = phantom
    recipe["cycle"] = [{"dataset": "findings", "steps": 1}, {"dataset": "organs", "steps": 2, "lock_fraction": 0.5}]
    recipe["cycles"] = 1
    snapshots = {}
    real_on_step = multitask_run.CyclicObjective.on_step

    def on_step(self, step):
        real_on_step(self, step)
        backbone = self.objective.model.backbone
        snapshots[step] = torch.cat([p.detach().reshape(-1).clone() for p in backbone.parameters()])

    multitask_run.CyclicObjective.on_step = on_step
    cfg = TrainConfig(batch_size=2, lr=1e-3, warmup_steps=0, clip_grad=0.0, accelerator="cpu", devices=2,
                      strategy="ddp", precision="32-true", checkpoint_every=100, log_every=1)
    multitask_run.run_multitask(parse_recipe(recipe), out, cfg, arch="resnet18", img_size=32)
    student = snapshots[4]
    rank = dist.get_rank()
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump({
            "world": dist.get_world_size(),
            "digest": hashlib.sha256(student.numpy().tobytes()).hexdigest(),
            "locked_phase_kept_backbone": bool(torch.equal(snapshots[1], snapshots[2])),
            "released_phase_moved_backbone": not torch.equal(snapshots[2], snapshots[4]),
        }, fh)
    """
)


@pytest.mark.slow
def test_two_process_ddp_trains_through_a_lock(tmp_path: Path) -> None:
    phantom = write_phantom_dataset(tmp_path / "phantom", n=12, seed=0, size=64)
    script = tmp_path / "ddp_multitask.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, str(script), str(out), str(phantom)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"]  # gradients all-reduced over the released steps
    assert all(r["locked_phase_kept_backbone"] and r["released_phase_moved_backbone"] for r in ranks)
    assert (out / "export" / "backbone.safetensors").is_file() and (out / "model" / "teacher.safetensors").is_file()
