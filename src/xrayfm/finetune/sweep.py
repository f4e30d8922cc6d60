"""Label-efficiency sweeps: backbones x modes x train fractions x seeds, one table.

Every combination is an ordinary fine-tuning run in its own folder; a run whose
``summary.json`` exists is not repeated, so an interrupted sweep continues where it stopped.
The table (``sweep.csv``: one row per run, split, task and headline metric, with its 95% CI) and
a Markdown summary (mean over seeds) are rewritten after every run.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xrayfm.errors import XrayfmError
from xrayfm.finetune.run import FinetuneConfig, run_finetune

log = logging.getLogger(__name__)

COLUMNS = ("backbone", "arch", "mode", "fraction", "seed", "train_images", "trainable_percent", "split", "task",
           "metric", "value", "low", "high")  # fmt: skip


@dataclass(frozen=True)
class Backbone:
    """A backbone in a sweep: a label for the table, an architecture and optional weights."""

    label: str
    arch: str
    pretrained: str | None = None

    @classmethod
    def parse(cls, text: str) -> Backbone:
        """``LABEL=ARCH`` or ``LABEL=ARCH:WEIGHTS`` (weights: file or run folder)."""
        label, sep, rest = text.partition("=")
        if not sep or not label or not rest:
            raise XrayfmError(f"backbone {text!r} is not LABEL=ARCH or LABEL=ARCH:WEIGHTS")
        arch, _, weights = rest.partition(":")
        return cls(label, arch, weights or None)


def _rows(backbone: Backbone, mode: str, fraction: float, seed: int, summary: dict[str, Any]) -> list[dict]:
    rows = []
    for split, result in summary["evaluations"].items():
        for task, res in result["tasks"].items():
            for metric, ci in res["headline"].items():
                rows.append({
                    "backbone": backbone.label, "arch": backbone.arch, "mode": mode, "fraction": fraction,
                    "seed": seed, "train_images": summary["train_images"],
                    "trainable_percent": round(summary["parameters"]["trainable_percent"], 3), "split": split,
                    "task": task, "metric": metric, "value": ci["value"], "low": ci["low"], "high": ci["high"],
                })  # fmt: skip
    return rows


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown_table(rows: Sequence[dict[str, Any]], split: str = "test") -> str:
    """Mean over seeds of each headline metric on ``split``: one line per backbone, mode and fraction.

    With one seed the cell shows the run's 95% bootstrap CI; with several, the seeds' range.
    """
    cells: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    metrics: list[str] = []
    for r in rows:
        if r["split"] != split:
            continue
        name = f"{r['task']} {r['metric']}"
        if name not in metrics:
            metrics.append(name)
        cells[(r["backbone"], r["mode"], float(r["fraction"]))][name].append(r)
    lines = [
        "| backbone | mode | fraction | " + " | ".join(metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    for (backbone, mode, fraction), by_metric in sorted(cells.items()):
        out = []
        for name in metrics:
            runs = [r for r in by_metric.get(name, []) if r["value"] not in (None, "")]
            if not runs:
                out.append("–")
                continue
            values = [float(r["value"]) for r in runs]
            mean = sum(values) / len(values)
            if len(runs) == 1:
                low, high = runs[0]["low"], runs[0]["high"]
                span = f" [{_fmt(float(low))}, {_fmt(float(high))}]" if low not in (None, "") else ""
            else:
                span = f" (seeds {_fmt(min(values))}–{_fmt(max(values))}, n={len(runs)})"
            out.append(f"{mean:.3f}{span}")
        lines.append(f"| {backbone} | {mode} | {fraction:g} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def run_sweep(
    base: FinetuneConfig,
    *,
    backbones: Sequence[Backbone],
    modes: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    out_dir: str | Path,
) -> Path:
    """Run every combination (skipping finished ones); returns the path of ``sweep.csv``.

    Args:
        base: Settings shared by all runs (dataset, image size, steps, lr...).
        backbones: Backbones to compare.
        modes: Fine-tuning modes.
        fractions: Training fractions.
        seeds: Seeds (subset choice, initialisation of heads, data order).
        out_dir: Sweep folder; run ``LABEL_MODE_fFRACTION_sSEED`` lives inside.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for bb in backbones:
        for mode in modes:
            for fraction in fractions:
                for seed in seeds:
                    run_dir = out / f"{bb.label}_{mode}_f{fraction:g}_s{seed}"
                    done = run_dir / "summary.json"
                    if done.is_file():
                        summary = json.loads(done.read_text())
                    else:
                        cfg = copy.deepcopy(base)
                        cfg.arch, cfg.pretrained, cfg.mode = bb.arch, bb.pretrained, mode
                        cfg.train_fraction, cfg.train.seed, cfg.train.out_dir = fraction, seed, str(run_dir)
                        log.info("sweep run %s", run_dir.name)
                        summary = run_finetune(cfg)
                    rows.extend(_rows(bb, mode, fraction, seed, summary))
                    _write(out, rows)
    return out / "sweep.csv"


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    tmp = out / "sweep.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "sweep.csv")
    splits = sorted({r["split"] for r in rows})
    text = "".join(f"## {s}\n\n{markdown_table(rows, s)}\n" for s in splits)
    (out / "sweep.md").write_text(text)
