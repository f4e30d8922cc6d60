"""Adam pretraining throughput and peak memory per step, against a plain supervised step of the same backbone.

Usage: python bench/adam_throughput.py [--archs resnet50,resnet18] [--sizes 224,128] [--batches 8,32]
       [--warmup 2] [--steps 3] [--granularity 2] [--queue-size 65536] [--device auto]
       [--out bench/results/adam_throughput_cpu.json]

For each backbone, view size and batch: pairs/s of whole training steps of the objective that
``xrayfm pretrain anatomy`` trains (:class:`~xrayfm.pretrain.moco.MoCo` on anatomy-decomposer views of
granularity n, purposive pruner on for n > 0; momentum update of the key encoder, keys, loss, enqueue,
backward and the recipe's SGD), and as the reference, images/s of a plain supervised step of the same
backbone on the query batch of the same run (forward, cross-entropy on a linear head, backward, the
same SGD). ``ratio_moco_over_plain`` is MoCo step time / plain step time: a MoCo step adds the key
encoder's forward and the projection heads. Every measurement runs in a process of its own, so its
peak memory is its own: on CPU the peak resident memory of the process (``ru_maxrss``) and what the
steps added to it (peak minus the resident memory of the built model, optimiser and batch); on CUDA
``torch.cuda.max_memory_allocated`` and what the steps added, in bf16 autocast (the engine's
``--precision auto``). Also the decomposer's pairs/s in one thread (a DataLoader worker's share), from a
512 px phantom. Records its provenance (``bench/provenance.py``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.nn.functional as F
from provenance import torch_device, write_result

from xrayfm.data.phantom import PhantomConfig, generate_phantom
from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.models.preprocess import resolve_preprocess
from xrayfm.models.registry import backbone_kwargs
from xrayfm.pretrain.anatomy import AnatomyDecomposer
from xrayfm.pretrain.moco import MoCo

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 2**20
#: The recipe's optimiser (adam_resnet50.yaml): SGD lr 0.03, momentum 0.9, weight decay 1e-4.
SGD = {"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4}
PRUNE_THRESHOLD, TEMPERATURE, MOCO_DIM, CLASSES = 0.8, 0.2, 128, 14
MEMORY_CPU = (
    "process peak RSS (ru_maxrss), one process per measurement; step_mib = peak - RSS before the first step "
    "(model, optimiser and batch built)"
)
MEMORY_GPU = "torch.cuda.max_memory_allocated; step_mib = peak - allocated before the first step"


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _phantom(size: int) -> torch.Tensor:
    """A grey (1, size, size) phantom radiograph, the same for every run."""
    return torch.from_numpy(generate_phantom(0, seed=0, config=PhantomConfig(size=size)).image)[None]


def _peak_rss() -> int:
    """The process's peak resident memory in bytes (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _memory(device: str) -> int:
    """Memory in use now: CUDA allocated bytes, else the process's resident bytes."""
    return torch.cuda.memory_allocated() if device == "cuda" else psutil.Process().memory_info().rss


def measure(job: dict[str, Any]) -> dict[str, float]:
    """One (kind, arch, size, batch) measurement, run in a fresh process: seconds per step and memory.

    Args:
        job: ``kind`` (``moco`` or ``plain``), ``arch``, ``size``, ``batch``, ``warmup`` and ``steps`` (steps
            before and in the timing), ``granularity``, ``queue_size``, ``device``.

    Returns:
        ``step_s``, ``peak_mib`` and ``step_mib`` (what the steps added to the memory of the built model).
    """
    torch.manual_seed(0)
    device, batch, size = job["device"], job["batch"], job["size"]
    backbone = create_model(job["arch"], num_classes=0, **backbone_kwargs(job["arch"], img_size=size))
    record = resolve_preprocess(backbone, img_size=size)
    decomposer = AnatomyDecomposer(
        size, granularity=job["granularity"], mean=record.mean, std=record.std, channels=record.channels
    )
    g = torch.Generator().manual_seed(0)
    image = _phantom(512)
    pairs = [decomposer.pair(image, g) for _ in range(batch)]
    query = torch.stack([p[0] for p in pairs]).to(device)
    key = torch.stack([p[1] for p in pairs]).to(device)
    if job["kind"] == "moco":
        prune = PRUNE_THRESHOLD if job["granularity"] > 0 else None
        model = MoCo(backbone, dim=MOCO_DIM, queue_size=job["queue_size"], temperature=TEMPERATURE,
                     prune_threshold=prune).to(device).train()  # fmt: skip

        def loss_fn() -> torch.Tensor:
            return model((query, key))
    else:
        model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.num_features, CLASSES)).to(device).train()
        labels = torch.randint(CLASSES, (batch,), generator=g).to(device)

        def loss_fn() -> torch.Tensor:
            return F.cross_entropy(model(query), labels)

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], **SGD)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step() -> None:
        with amp:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _memory(device)
    for _ in range(job["warmup"]):  # allocator, optimiser state, kernel selection
        step()
    t0 = time.perf_counter()
    for _ in range(job["steps"]):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / job["steps"]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss()
    return {"step_s": seconds, "peak_mib": peak / MIB, "step_mib": (peak - before) / MIB}


def decomposer_pairs_per_s(size: int, granularity: int, pairs: int = 16) -> float:
    """Pairs/s of the decomposer in one thread, from a 512 px phantom, at view side ``size``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        decomposer, image, g = AnatomyDecomposer(size, granularity=granularity), _phantom(512), torch.Generator()
        g.manual_seed(0)
        decomposer.pair(image, g)
        t0 = time.perf_counter()
        for _ in range(pairs):
            decomposer.pair(image, g)
        return pairs / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Measure every (arch, size, batch) and write the result file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="resnet50,resnet18", help="backbones, comma-separated")
    ap.add_argument("--sizes", type=_ints, default=[224, 128], help="view sides, comma-separated")
    ap.add_argument("--batches", type=_ints, default=[8, 32], help="pairs per step, comma-separated")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    ap.add_argument("--granularity", type=int, default=2, help="decomposer n (> 0: the pruner is on)")
    ap.add_argument("--queue-size", type=int, default=65536, help="queued negatives K (the recipe's 65536)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--out", type=Path, help="result file (default bench/results/adam_throughput_{cpu,gpu}.json)")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise XrayfmError(f"--steps must be at least 1 and --warmup at least 0, got {args.steps} and {args.warmup}")
    device = torch_device(args.device)
    out = args.out or RESULTS / f"adam_throughput_{'gpu' if device == 'cuda' else 'cpu'}.json"
    common = {
        "warmup": args.warmup,
        "steps": args.steps,
        "granularity": args.granularity,
        "queue_size": args.queue_size,
        "device": device,
    }
    results = []
    ctx = multiprocessing.get_context("spawn")
    for arch in args.archs.split(","):
        for size in args.sizes:
            for batch in args.batches:
                jobs = [{"kind": k, "arch": arch, "size": size, "batch": batch, **common} for k in ("moco", "plain")]
                with ctx.Pool(1, maxtasksperchild=1) as pool:
                    moco, plain = pool.map(measure, jobs, chunksize=1)
                row = {
                    "arch": arch, "img_size": size, "batch": batch,
                    "moco_pairs_per_s": round(batch / moco["step_s"], 2),
                    "plain_images_per_s": round(batch / plain["step_s"], 2),
                    "ratio_moco_over_plain": round(moco["step_s"] / plain["step_s"], 3),
                    "moco_peak_mib": round(moco["peak_mib"], 1), "moco_step_mib": round(moco["step_mib"], 1),
                    "plain_peak_mib": round(plain["peak_mib"], 1), "plain_step_mib": round(plain["step_mib"], 1),
                }  # fmt: skip
                results.append(row)
                print(row, flush=True)
    decomposer = {str(size): round(decomposer_pairs_per_s(size, args.granularity), 1) for size in args.sizes}
    print("decomposer pairs/s (one thread):", decomposer)
    cuda = device == "cuda"
    report = {
        "benchmark": "adam_throughput",
        "setup": {
            "objective": "MoCo-v2 (xrayfm.pretrain.moco.MoCo) on AnatomyDecomposer views",
            "granularity": args.granularity,
            "prune_threshold": PRUNE_THRESHOLD if args.granularity > 0 else None,
            "queue_size": args.queue_size,
            "moco_dim": MOCO_DIM,
            "temperature": TEMPERATURE,
            "optimizer": "sgd " + ", ".join(f"{k} {v}" for k, v in SGD.items()),
            "reference": f"plain supervised step: backbone + linear head ({CLASSES} classes), cross-entropy, same SGD",
            "timed_steps": args.steps,
            "warmup_steps": args.warmup,
            "device": device,
            "precision": "bf16-autocast" if cuda else "fp32",
            "memory": MEMORY_GPU if cuda else MEMORY_CPU,
        },
        "decomposer_pairs_per_s_one_thread": decomposer,
        "results": results,
    }
    write_result(out, report, packages=("psutil",))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
