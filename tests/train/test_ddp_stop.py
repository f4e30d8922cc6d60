"""Two-process DDP on CPU: a stop signal that reaches one rank, and rank 0's checkpoint clock, make every rank
save the same step and stop together (a rank that disagreed would wait forever in the save's collectives)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

SCRIPT = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    import torch
    from torch.utils.data import TensorDataset
    from xrayfm.train import TrainConfig, TrainingInterrupted, train

    logging.disable(logging.INFO)
    out = sys.argv[1]
    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.linear(x).pow(2).mean()

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4, generator=torch.Generator().manual_seed(1)))
    cfg = TrainConfig(out_dir=out, steps=6, batch_size=2, warmup_steps=1, accelerator="cpu", devices=2, strategy="ddp",
                      precision="32-true", checkpoint_every=100, checkpoint_minutes=1e-9, log_every=1)
    calls = {"n": 0}

    def pick(batch):
        calls["n"] += 1
        if calls["n"] == 3 and int(os.environ.get("LOCAL_RANK", "0")) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. the scheduler signals one node first
        return batch[0]

    try:
        train(Objective(), data, cfg, batch_to_input=pick)
        outcome = "finished"
    except TrainingInterrupted as exc:
        outcome = str(exc)
    import torch.distributed as dist
    with open(f"{out}/rank{dist.get_rank()}.json", "w") as fh:
        json.dump({"outcome": outcome}, fh)
    """
)


def test_one_signalled_rank_stops_every_rank_after_the_same_saved_step(tmp_path: Path) -> None:
    script = tmp_path / "ddp_stop.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    outcomes = [json.loads((out / f"rank{r}.json").read_text())["outcome"] for r in (0, 1)]
    expected = (
        f"stopped by SIGTERM after step 3 of 6, saved in {out / 'last.ckpt'}; run the same command again to resume"
    )
    assert outcomes[0] == expected  # rank 0 was not signalled: it names the usual signal of schedulers
    assert outcomes[1] == expected
    assert torch.load(out / "last.ckpt", weights_only=True)["step"] == 3
    assert [r.split(",")[0] for r in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
