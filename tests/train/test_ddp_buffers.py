"""Two-process DDP on CPU with ``broadcast_buffers=False``: buffers are no longer overwritten by rank 0's before
every forward pass, MoCo's queues still agree across ranks, and every rank validates rank 0's buffers."""

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
    moco.register_buffer("probe", torch.zeros(()))  # set on rank 1 only: a forward-pass broadcast would undo it
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 2, 3, 32, 32, generator=g))
    cfg = TrainConfig(out_dir=out, steps=3, batch_size=2, optimizer="sgd", lr=0.03, warmup_steps=0, clip_grad=0,
                      accelerator="cpu", devices=2, strategy="ddp", precision="32-true", checkpoint_every=3,
                      validate_every=2, broadcast_buffers=False)
    digest = lambda ts: hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in ts)).hexdigest()
    seen = {"probes": [], "validated": []}
    calls = {"n": 0}

    def pick(batch):
        calls["n"] += 1
        seen["probes"].append(float(moco.probe))
        if calls["n"] == 1 and dist.get_rank() == 1:
            moco.probe.fill_(1.0)
        return batch[0][:, 0], batch[0][:, 1]

    def validate(module):
        seen["validated"].append([float(module.probe), digest(module.buffers())])
        return {"loss": 1.0 + dist.get_rank()}

    start = moco.queue.clone()
    result = train(moco, data, cfg, batch_to_input=pick, validate=validate)
    changed = (moco.queue != start).any(dim=0).nonzero().flatten().tolist()
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as fh:
        json.dump({"queue": digest([moco.queue, moco.queue_ptr]), "ptr": int(moco.queue_ptr), "changed": changed,
                   "key": digest(moco.encoder_k.parameters()), "best": result["best"], **seen}, fh)
    """
)


@pytest.mark.slow
def test_queues_agree_without_broadcasting_buffers(tmp_path: Path) -> None:
    script = tmp_path / "moco_ddp_buffers.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[1]["probes"][1] == 1.0 and ranks[0]["probes"] == [0.0, 0.0, 0.0]  # no broadcast before forwards
    for key in ("queue", "ptr", "changed", "key", "validated", "best"):
        assert ranks[0][key] == ranks[1][key], key
    assert ranks[0]["ptr"] == 3 * 2 * 2 and ranks[0]["changed"] == list(range(12))  # 2 ranks x 2 keys a step
    assert [probe for probe, _ in ranks[1]["validated"]] == [0.0, 0.0]  # validation sees rank 0's buffers
    assert ranks[1]["probes"][2] == 0.0 and ranks[0]["best"] == {"loss": 1.0}  # rank 0's values select
