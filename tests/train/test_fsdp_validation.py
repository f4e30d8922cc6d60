"""Validation under two-process FSDP on CPU: the best state is gathered from the shards into one file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent(
    """
    import json, logging, sys
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.utils.data import TensorDataset
    from xrayfm.models import create_model
    from xrayfm.pretrain.mim import MaskedFeatureModeling
    from xrayfm.train import TrainConfig, train

    logging.disable(logging.INFO)
    root = sys.argv[1]
    torch.manual_seed(0)
    student = create_model("eva_x_tiny_patch16", num_classes=0, global_pool="token", img_size=32, depth=1)
    teacher = create_model("eva_x_tiny_patch16", num_classes=0, img_size=32, depth=1)
    objective = MaskedFeatureModeling(student, teacher)
    data = TensorDataset(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    cfg = TrainConfig(out_dir=f"{root}/run", steps=3, batch_size=2, warmup_steps=1, accelerator="cpu", devices=2,
                      strategy="fsdp", precision="32-true", checkpoint_every=100, validate_every=1)
    losses, seen = iter([2.0, 1.0, 3.0]), []

    def validate(module):
        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
        seen.append({k: v.detach().clone() for k, v in full.items()})
        return {"loss": next(losses)}

    result = train(objective, data, cfg, batch_to_input=lambda b: b[0], validate=validate)
    rank = torch.distributed.get_rank()
    torch.save(seen[1], f"{root}/step2_rank{rank}.pt")
    with open(f"{root}/rank{rank}.json", "w") as fh:
        json.dump({"best_step": result["best_step"], "best": result["best"]}, fh)
    """
)


@pytest.mark.slow
def test_best_state_is_gathered_from_the_shards(tmp_path: Path) -> None:
    script = tmp_path / "fsdp_validation.py"
    script.write_text(SCRIPT)
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1] == {"best_step": 2, "best": {"loss": 1.0}}
    best = load_file(str(tmp_path / "run" / "best.safetensors"))
    step2 = torch.load(tmp_path / "step2_rank0.pt")
    assert best.keys() == step2.keys() and "student.cls_token" in best
    for key, value in step2.items():
        torch.testing.assert_close(best[key], value, rtol=0, atol=0, msg=key)
