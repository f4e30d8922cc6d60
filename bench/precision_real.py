"""Benchmark: reduced precision against fp32 on real X-rays, as ``xrayfm export onnx --precision`` checks it.

The models are the full-data fine-tuned models of ``bench/adam_real.py`` (seed 0, every training
patient): Kermany pneumonia classifiers and JSRT lung segmenters, EVA-X Ti/16 from the MIM run and
ResNet-50 from random initialisation and from Adam. Each is exported twice, as a user would:
``--precision int8`` (ONNX Runtime static quantization calibrated on 64 of its own training images)
and ``--precision bf16`` (PyTorch autocast; refused on CPUs without AVX-512-BF16 / AMX-BF16, which is
recorded as such). The export scores the reduced model against fp32 on the model's own test split
(Kermany: 140 images, AUROC; JSRT: 51 images, Dice) and refuses it past a change of 0.005; here
``--force`` writes a refused one anyway, marked failed, so its numbers are kept. This script
collects those checks from each export's ``onnx.json`` (an export already there is reused) into
``bench/results/precision_real_<device>.json`` with provenance. It measures accuracy, not speed
(``bench/serve_latency.py`` times the precisions).

Usage: python bench/precision_real.py [--models runs/bench_adam_real] [--work runs/bench_precision_real]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from provenance import write_result

from xrayfm.cli import main as xrayfm

REPO = Path(__file__).resolve().parents[1]
#: (set, family, run) of bench/adam_real.py's full-data seed-0 models.
MODELS = [
    ("kermany_pneumonia", "vit", "eva_x_mim_full_f1_s0"),
    ("kermany_pneumonia", "resnet", "random_full_f1_s0"),
    ("kermany_pneumonia", "resnet", "adam_full_f1_s0"),
    ("jsrt_lungs", "vit", "eva_x_mim_full_f1_s0"),
    ("jsrt_lungs", "resnet", "random_full_f1_s0"),
    ("jsrt_lungs", "resnet", "adam_full_f1_s0"),
]
PRECISIONS = ("int8", "bf16")


def check(model: Path, out: Path, precision: str) -> dict[str, Any]:
    """Export ``model`` at ``precision`` into ``out`` (``--force``: a refused one is kept, marked failed);
    the export's own check, or the exit status when nothing was written (e.g. bf16 on a CPU without it)."""
    sidecar = out / "onnx.json"

    def record() -> dict[str, Any] | None:
        return json.loads(sidecar.read_text()).get("precisions", {}).get(precision) if sidecar.is_file() else None

    status = 0
    if record() is None:
        status = xrayfm(["export", "onnx", str(model), "--out", str(out), "--precision", precision, "--force"])
    found = record()
    if found is None:
        return {"exported": False, "exit_status": status}
    return {"exported": True, "method": found.get("method"), "check": found["check"]}


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=str(REPO / "runs" / "bench_adam_real"), help="bench/adam_real.py's work folder")
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_precision_real"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "precision_real_cpu.json"))
    args = ap.parse_args(argv)
    models, work = Path(args.models), Path(args.work)
    rows = []
    for dataset, family, run in MODELS:
        model = models / dataset / family / run
        if not (model / "model").is_dir():
            sys.exit(f"{model} is missing: run bench/adam_real.py first (it fine-tunes these models)")
        for precision in PRECISIONS:
            result = check(model, work / dataset / run / precision, precision)
            rows.append({"dataset": dataset, "model": run, "precision": precision, **result})
            print(json.dumps(rows[-1]["check"]["tasks"] if result["exported"] else result), file=sys.stderr)
    return write_result(args.out, {"benchmark": "precision_real", "rows": rows}, packages=("onnxruntime",))


if __name__ == "__main__":
    print(main())
