"""Two-process DDP on CPU (gloo): the same train() call, launched by Fabric, keeps ranks in sync and
counts an epoch over both ranks."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, logging, sys
    import torch
    from torch.utils.data import TensorDataset
    from xrayfm.models import create_model
    from xrayfm.pretrain.mim import MaskedFeatureModeling
    from xrayfm.train import TrainConfig, train

    logging.disable(logging.INFO)
    out = sys.argv[1]
    torch.manual_seed(0)
    student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=32, depth=1)
    teacher = create_model("eva_x_tiny_patch16", num_classes=0, img_size=32, depth=1)
    objective = MaskedFeatureModeling(student, teacher)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    # 16 samples over 2 ranks in batches of 2: 4 steps an epoch (8 on one process)
    cfg = TrainConfig(out_dir=out, epochs=0.75, batch_size=2, warmup_steps=1, accelerator="cpu", devices=2,
                      strategy="ddp", precision="32-true", checkpoint_every=3, log_every=1)
    result = train(objective, data, cfg, batch_to_input=lambda b: b[0])
    import torch.distributed as dist
    rank = dist.get_rank()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in student.parameters())).hexdigest()
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump({"world": dist.get_world_size(), "digest": digest, "loss": result["loss"], "steps": result["steps"]}, fh)
    """
)


def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["steps"] == 3 for r in ranks)  # epochs resolved with the world size
    assert ranks[0]["digest"] == ranks[1]["digest"]  # gradients were all-reduced: weights in sync
    assert ranks[0]["loss"] == ranks[1]["loss"]  # the logged loss is the mean over ranks
    assert (out / "last.ckpt").is_file() and len((out / "metrics.csv").read_text().splitlines()) == 4
