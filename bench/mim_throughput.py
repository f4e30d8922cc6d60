"""EVA-X MIM training throughput and memory, and forward throughput vs the reference definition.

Usage: python bench/mim_throughput.py [--batch 8] [--steps 3] [--out bench/results/mim_throughput_cpu.json]

For students Ti/16 and S/16 at 224 px with a ViT-B-sized teacher (EVA-X B/16, frozen): images/s
of full MIM training steps (forward, backward, AdamW) and the process's peak resident memory.
Also the inference throughput of ``xrayfm.models.create_model(name)`` against timm's ``Eva``
built with the EVA-X release's arguments, in the same run (ratio = ours / reference). On CUDA the
steps run in bf16 autocast. Records its provenance (``bench/provenance.py``).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from provenance import write_result
from timm.models.eva import Eva

from xrayfm.models import create_model
from xrayfm.models.backbones.eva_x import eva_x_kwargs
from xrayfm.pretrain.mim import MaskedFeatureModeling


def _timed(fn, steps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "mim_throughput_cpu.json"
    )
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    images = torch.randn(args.batch, 3, 224, 224, device=device)
    teacher = create_model("eva_x_base_patch16", num_classes=0).to(device)
    results: dict[str, dict] = {}
    for name in ("eva_x_tiny_patch16", "eva_x_small_patch16"):
        student = create_model(name, num_classes=0, global_pool="token").to(device)
        mim = MaskedFeatureModeling(student, teacher).to(device).train()
        opt = torch.optim.AdamW([p for p in mim.parameters() if p.requires_grad], lr=3e-4, betas=(0.9, 0.98))

        def step() -> None:
            with amp:
                loss = mim(images)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        sec = _timed(step, args.steps)
        ours = create_model(name, num_classes=0).to(device).eval()
        ref = Eva(**eva_x_kwargs(name), num_classes=0).to(device).eval()
        with torch.no_grad(), amp:
            t_ours = _timed(lambda: ours(images), args.steps)
            t_ref = _timed(lambda: ref(images), args.steps)
        results[name] = {
            "mim_train_images_per_s": round(args.batch / sec, 2),
            "forward_images_per_s_ours": round(args.batch / t_ours, 2),
            "forward_images_per_s_reference": round(args.batch / t_ref, 2),
            "forward_ratio_ours_over_reference": round(t_ref / t_ours, 3),
        }
        print(name, results[name])
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    report = {
        "benchmark": "mim_throughput",
        "setup": {"input": "3x224x224", "batch": args.batch, "timed_steps": args.steps, "teacher": "eva_x_base_patch16",
                  "mask_ratio": 0.3, "device": device, "precision": "bf16-autocast" if device == "cuda" else "fp32"},
        "peak_memory_mib": round(peak, 1),
        "peak_memory_kind": "cuda max allocated" if device == "cuda" else "process max RSS (both students)",
        "results": results,
    }  # fmt: skip
    write_result(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
