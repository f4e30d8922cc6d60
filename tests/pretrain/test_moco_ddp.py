"""MoCo under two-process DDP on CPU: keys of both ranks enter one queue, identical on every rank."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, logging, sys
    import torch
    import torch.distributed as dist
    from torch.utils.data import TensorDataset
    from xrayfm.models import create_model
    from xrayfm.pretrain.moco import MoCo
    from xrayfm.train import TrainConfig, train

    logging.disable(logging.INFO)
    out = sys.argv[1]
    torch.manual_seed(0)
    moco = MoCo(create_model("resnet18", num_classes=0), dim=8, hidden_dim=16, queue_size=20)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 2, 3, 32, 32, generator=g))
    cfg = TrainConfig(out_dir=out, steps=3, batch_size=2, optimizer="sgd", lr=0.03, warmup_steps=0, clip_grad=0,
                      accelerator="cpu", devices=2, strategy="ddp", precision="32-true", checkpoint_every=3)
    start = moco.queue.clone()
    train(moco, data, cfg, batch_to_input=lambda b: (b[0][:, 0], b[0][:, 1]))
    rank = dist.get_rank()
    digest = lambda t: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()
    changed = (moco.queue != start).any(dim=0).nonzero().flatten().tolist()
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump({"queue": digest(moco.queue), "ptr": int(moco.queue_ptr), "changed": changed,
                   "key": digest(torch.cat([p.flatten() for p in moco.encoder_k.parameters()]))}, fh)
    """
)


@pytest.mark.slow
def test_keys_of_every_rank_enter_one_queue(tmp_path: Path) -> None:
    script = tmp_path / "moco_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # queue, pointer and key encoder the same on both ranks
    assert ranks[0]["ptr"] == 3 * 2 * 2 and ranks[0]["changed"] == list(range(12))  # 2 ranks x 2 keys a step
