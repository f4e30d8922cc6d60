"""Label-efficiency sweeps: backbones x modes x train fractions x seeds, one table.

Every combination is an ordinary fine-tuning run in its own folder. A finished run (its
``summary.json`` exists) is reused only when the config it records equals the one the sweep would
run now (its folder aside), so an interrupted sweep continues where it stopped and a changed
setting runs again instead of reporting stale numbers. The table (``sweep.csv``: one row per run,
split, task and headline metric, with its 95% CI) and a Markdown summary (mean over seeds) are
rewritten atomically after every run. Each run is announced on the ``xrayfm.progress`` logger
(:mod:`xrayfm.progress`) when it starts and when it ends (or is reused), with its time and
headline metrics: ``run 3/12 eva_x_tiny full f0.1 s0: done in 41 s, test labels mean_auroc 0.712``.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xrayfm.errors import XrayfmError
from xrayfm.finetune.run import FinetuneConfig, run_finetune
from xrayfm.io.atomic import atomic_write_text
from xrayfm.progress import PROGRESS_LOGGER, format_duration
from xrayfm.train import is_global_zero

log = logging.getLogger(__name__)
progress_log = logging.getLogger(PROGRESS_LOGGER)

COLUMNS = ("backbone", "arch", "mode", "fraction", "seed", "train_images", "trainable_percent", "split", "task",
           "metric", "value", "low", "high")  # fmt: skip
# Settings that do not change a run's result: where it is written and how often it logs / checkpoints.
NOT_COMPARED = frozenset({"train.out_dir", "train.log_every", "train.checkpoint_every"})


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


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict with dotted keys (``train.lr``); other values are leaves."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _config_differences(cfg: FinetuneConfig, summary: dict[str, Any]) -> list[str] | None:
    """Dotted keys in which ``cfg`` differs from the config a finished run recorded in its summary.

    The folder and logging cadence (:data:`NOT_COMPARED`) are not compared. ``run_finetune``
    records ``train.steps`` resolved from ``epochs`` when it was 0; a ``cfg`` that asks for that
    is compared with the steps the recorded run's ``train_images`` give.

    Returns:
        The differing keys (empty: same config), or None when the summary records no config.
    """
    recorded = summary.get("config")
    if not isinstance(recorded, dict):
        return None
    wanted = json.loads(json.dumps(asdict(cfg), default=str))
    tc = wanted["train"]
    if tc["steps"] <= 0 and isinstance(summary.get("train_images"), int):
        # the rule of run_finetune: epochs over the training subset, at least one step
        tc["steps"] = max(1, math.ceil(cfg.epochs * summary["train_images"] / (tc["batch_size"] * tc["accumulate"])))
    have, want = _flatten(recorded), _flatten(wanted)
    missing = object()
    return sorted(
        k for k in have.keys() | want.keys() if k not in NOT_COMPARED and have.get(k, missing) != want.get(k, missing)
    )


def _finished_summary(run_dir: Path, cfg: FinetuneConfig) -> dict[str, Any] | None:
    """The summary of a run in ``run_dir`` that finished with ``cfg``, else None.

    A finished run with another (or no recorded) config is reported with ``logging.warning``,
    naming the differing keys, and its folder is removed: the engine would otherwise resume from
    its final checkpoint instead of training afresh.
    """
    done = run_dir / "summary.json"
    if not done.is_file():
        return None
    summary = json.loads(done.read_text())
    diff = _config_differences(cfg, summary)
    if diff == []:
        return summary
    why = "records no config" if diff is None else f"was made with another config (differs in {', '.join(diff)})"
    log.warning("%s %s; removing %s and running it again", done, why, run_dir)
    shutil.rmtree(run_dir)
    return None


def run_folder(out_dir: str | Path, backbone: Backbone, mode: str, fraction: float, seed: int) -> Path:
    """Folder of one sweep run: ``OUT/LABEL_MODE_fFRACTION_sSEED``."""
    return Path(out_dir) / f"{backbone.label}_{mode}_f{fraction:g}_s{seed}"


def run_sweep(
    base: FinetuneConfig,
    *,
    backbones: Sequence[Backbone],
    modes: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    out_dir: str | Path,
) -> Path:
    """Run every combination (reusing runs finished with the same config); returns the path of ``sweep.csv``.

    Rank 0 logs a line on the ``xrayfm.progress`` logger when a run starts and when it is done
    (with its time and headline metrics) or reused.

    Args:
        base: Settings shared by all runs (dataset, image size, steps, lr...).
        backbones: Backbones to compare.
        modes: Fine-tuning modes.
        fractions: Training fractions.
        seeds: Seeds (subset choice, initialisation of heads, data order).
        out_dir: Sweep folder; run ``LABEL_MODE_fFRACTION_sSEED`` lives inside.

    Returns:
        The path of ``sweep.csv`` (``sweep.md`` beside it).

    Raises:
        XrayfmError: A run's settings are unusable (see :func:`~xrayfm.finetune.run.run_finetune`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    runs = list(itertools.product(backbones, modes, fractions, seeds))
    for i, (bb, mode, fraction, seed) in enumerate(runs, 1):
        run_dir = run_folder(out, bb, mode, fraction, seed)
        name = f"run {i}/{len(runs)} {bb.label} {mode} f{fraction:g} s{seed}"
        cfg = copy.deepcopy(base)
        cfg.arch, cfg.pretrained, cfg.mode = bb.arch, bb.pretrained, mode
        cfg.train_fraction, cfg.train.seed, cfg.train.out_dir = fraction, seed, str(run_dir)
        summary = _finished_summary(run_dir, cfg)
        if summary is None:
            if is_global_zero():
                progress_log.info("%s: started", name)
            t0 = time.perf_counter()
            summary = run_finetune(cfg)
            if is_global_zero():
                took = format_duration(time.perf_counter() - t0)
                progress_log.info("%s: done in %s, %s", name, took, _headline(summary))
        elif is_global_zero():
            progress_log.info("%s: reused, %s", name, _headline(summary))
        rows.extend(_rows(bb, mode, fraction, seed, summary))
        _write(out, rows)
    return out / "sweep.csv"


def _headline(summary: dict[str, Any]) -> str:
    """The headline metrics of a run's last evaluated split: ``test labels mean_auroc 0.712, ...``."""
    if not summary["evaluations"]:
        return "not evaluated"
    split, result = list(summary["evaluations"].items())[-1]
    values = [
        f"{task} {metric} {ci['value']:.3f}"
        for task, res in result["tasks"].items()
        for metric, ci in res["headline"].items()
        if ci["value"] is not None
    ]
    return f"{split} {', '.join(values)}" if values else f"{split}: no headline metric"


def _write(out: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    splits = sorted({r["split"] for r in rows})
    atomic_write_text(out / "sweep.md", "".join(f"## {s}\n\n{markdown_table(rows, s)}\n" for s in splits))
