"""Label-efficiency sweeps: backbones x modes x train fractions x seeds, one table.

Every combination (a row: backbone, mode, fraction) runs once per seed, each an ordinary
fine-tuning run in its own folder. A finished run (its
``summary.json`` exists) is reused only when the config it records equals the one the sweep would
run now (its folder aside), so an interrupted sweep continues where it stopped and a changed
setting runs again instead of reporting stale numbers. The table (``sweep.csv``: one row per run,
split, task and headline metric, with its 95% CI) and a Markdown summary (mean over seeds) are
rewritten atomically after every run. Each run is announced on the ``xrayfm.progress`` logger
(:mod:`xrayfm.progress`) when it starts and when it ends (or is reused), with its time and
headline metrics: ``run 3/12 eva_x_tiny full f0.1 s0: done in 41 s, test labels mean_auroc 0.712``.

When the sweep is done, each row's headline metrics get their mean and standard deviation over
the seeds and, with a named baseline row, the paired difference against it: per seed, both runs'
saved test predictions are scored on the same images and resamples, and the mean over seeds
gets an interval that resamples both the images and the seeds
(:func:`~xrayfm.evaluate.paired.seed_mean_difference`). These go to ``sweep_stats.json``,
``sweep.md`` and ``sweep.html``.
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
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xrayfm.errors import XrayfmError
from xrayfm.finetune.run import FinetuneConfig, run_finetune
from xrayfm.io.atomic import atomic_write_json, atomic_write_text
from xrayfm.progress import PROGRESS_LOGGER, format_duration
from xrayfm.train import is_global_zero
from xrayfm.train.streaming import SHARDS

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


@dataclass(frozen=True)
class Baseline:
    """The row each sweep row is compared with: a backbone label, and optionally a mode and a fraction.

    A part left out means "the same as the row compared": ``random`` compares every row with the
    ``random`` backbone at the row's own mode and fraction; ``random/full/1`` compares every row
    with that one row.
    """

    label: str
    mode: str | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str) -> Baseline:
        """``LABEL``, ``LABEL/MODE`` or ``LABEL/MODE/FRACTION``."""
        parts = text.split("/")
        if not parts[0] or len(parts) > 3 or any(not p for p in parts):
            raise XrayfmError(f"baseline {text!r} is not LABEL, LABEL/MODE or LABEL/MODE/FRACTION")
        try:
            fraction = float(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise XrayfmError(f"baseline {text!r}: {parts[2]!r} is not a fraction") from None
        return cls(parts[0], parts[1] if len(parts) > 1 else None, fraction)

    def of(self, row: tuple[str, str, float]) -> tuple[str, str, float]:
        """The baseline row of ``row`` (backbone label, mode, fraction)."""
        return (self.label, self.mode or row[1], row[2] if self.fraction is None else self.fraction)

    def check(self, backbones: Sequence[Backbone], modes: Sequence[str], fractions: Sequence[float]) -> Baseline:
        """This baseline with the sweep's own fraction value; refused if it names a row the sweep does not run."""
        labels = [b.label for b in backbones]
        if self.label not in labels:
            raise XrayfmError(f"baseline backbone {self.label!r} is not in the sweep ({', '.join(labels)})")
        if self.mode is not None and self.mode not in modes:
            raise XrayfmError(f"baseline mode {self.mode!r} is not in the sweep ({', '.join(modes)})")
        if self.fraction is None:
            return self
        same = [f for f in fractions if math.isclose(self.fraction, f)]
        if not same:
            listed = ", ".join(f"{f:g}" for f in fractions)
            raise XrayfmError(f"baseline fraction {self.fraction:g} is not in the sweep ({listed})")
        return Baseline(self.label, self.mode, same[0])

    def __str__(self) -> str:
        return "/".join([self.label, *([self.mode] if self.mode else []), *([f"{self.fraction:g}"] if self.fraction
                                                                            is not None else [])])  # fmt: skip


def _row_name(row: tuple[str, str, float]) -> str:
    return f"{row[0]} {row[1]} f{row[2]:g}"


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

    With one seed the cell shows the run's 95% bootstrap CI; with several, the standard deviation
    over the seeds and their number.
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
                span = f" ± {_fmt(statistics.stdev(values))} (n={len(runs)})"
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
    records the config as given (durations in epochs unresolved), so the two compare as they are.

    Returns:
        The differing keys (empty: same config), or None when the summary records no config.
    """
    recorded = summary.get("config")
    if not isinstance(recorded, dict):
        return None
    have, want = _flatten(recorded), _flatten(json.loads(json.dumps(asdict(cfg), default=str)))
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
    baseline: str | Baseline | None = None,
    split: str = "test",
) -> Path:
    """Run every combination (reusing runs finished with the same config); returns the path of ``sweep.csv``.

    Rank 0 logs a line on the ``xrayfm.progress`` logger when a run starts and when it is done
    (with its time and headline metrics) or reused. At the end it writes the seed statistics and
    paired differences (:func:`sweep_statistics`) to ``sweep_stats.json``, ``sweep.md`` and
    ``sweep.html``.

    Args:
        base: Settings shared by all runs (dataset, image size, steps, lr...).
        backbones: Backbones to compare.
        modes: Fine-tuning modes.
        fractions: Training fractions.
        seeds: Seeds (subset choice, initialisation of heads, data order).
        out_dir: Sweep folder; run ``LABEL_MODE_fFRACTION_sSEED`` lives inside.
        baseline: The row every other row is compared with, paired by seed (see :class:`Baseline`).
        split: The split of the seed statistics and paired differences.

    Returns:
        The path of ``sweep.csv`` (``sweep.md``, ``sweep_stats.json`` and ``sweep.html`` beside it).

    Raises:
        XrayfmError: A run's settings are unusable (see :func:`~xrayfm.finetune.run.run_finetune`),
            or the baseline names a row the sweep does not run.
    """
    if base.dataset == SHARDS and any(f != 1.0 for f in fractions):
        raise XrayfmError(
            "--fractions: shards stream their train split, so no patient subset can be drawn from it; sweep the "
            "dataset's adapter for label efficiency, or give --fractions 1"
        )
    if isinstance(baseline, str):
        baseline = Baseline.parse(baseline)
    if baseline is not None:
        baseline = baseline.check(backbones, modes, fractions)
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
    if is_global_zero():
        stats = sweep_statistics(out, rows, [(bb.label, m, f, sd) for bb, m, f, sd in runs], baseline=baseline,
                                 split=split, n_boot=base.n_boot)  # fmt: skip
        _write(out, rows, stats)
    return out / "sweep.csv"


def _seed_rows(rows: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """Per row (backbone, mode, fraction) and headline metric on ``split``: the seeds' values, mean and sd."""
    groups: dict[tuple, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["split"] == split and r["value"] not in (None, ""):
            groups[(r["backbone"], r["mode"], float(r["fraction"]), r["task"], r["metric"])][int(r["seed"])] = float(
                r["value"]
            )
    out = []
    for (backbone, mode, fraction, task, metric), by_seed in groups.items():
        values = [by_seed[k] for k in sorted(by_seed)]
        out.append({
            "backbone": backbone, "mode": mode, "fraction": fraction, "task": task, "metric": metric,
            "n_seeds": len(values), "seeds": sorted(by_seed), "values": values, "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
        })  # fmt: skip
    return out


def sweep_statistics(
    out_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    runs: Sequence[tuple[str, str, float, int]],
    *,
    baseline: Baseline | None = None,
    split: str = "test",
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Mean and sd over seeds of each row's headline metrics, and paired differences against ``baseline``.

    For a row and its baseline row, each seed run by both gives a paired difference: both runs'
    saved predictions of ``split`` (``RUN/eval_SPLIT``) are matched by image id and scored on the
    same bootstrap resamples (:func:`~xrayfm.evaluate.compare.paired_resamples`, each run with its
    own recorded thresholds). :func:`~xrayfm.evaluate.paired.seed_mean_difference` then gives the
    mean over seeds and its interval over images and seeds.

    Args:
        out_dir: The sweep folder.
        rows: The rows of ``sweep.csv``.
        runs: The sweep's runs as (backbone label, mode, fraction, seed).
        baseline: The baseline row; None: no differences.
        split: The split compared.
        n_boot: Bootstrap resamples of the images.

    Returns:
        ``split``, ``baseline`` (its name or None), ``n_boot``, ``rows`` (per row and metric:
        ``n_seeds``, ``seeds``, ``values``, ``mean``, ``sd``), ``differences`` (per row, baseline
        and metric, as :func:`~xrayfm.evaluate.paired.seed_mean_difference`, with ``row``,
        ``against``, ``task``, ``metric`` and ``seeds``) and ``notes`` (what could not be paired).
    """
    from xrayfm.evaluate.compare import evaluation_differences
    from xrayfm.evaluate.paired import seed_mean_difference
    from xrayfm.evaluate.run import load_evaluation

    stats: dict[str, Any] = {
        "split": split, "baseline": None if baseline is None else str(baseline), "n_boot": n_boot,
        "rows": _seed_rows(rows, split), "differences": [], "notes": [],
    }  # fmt: skip
    if baseline is None:
        return stats
    headline = defaultdict(list)
    for r in stats["rows"]:
        if r["metric"] not in headline[r["task"]]:
            headline[r["task"]].append(r["metric"])
    seeds_of: dict[tuple, list[int]] = defaultdict(list)
    for label, mode, fraction, seed in runs:
        seeds_of[(label, mode, fraction)].append(seed)
    loaded: dict[Path, Any] = {}

    def evaluation(row: tuple, seed: int) -> Any:
        folder = run_folder(out_dir, Backbone(row[0], ""), row[1], row[2], seed) / f"eval_{split}"
        if folder not in loaded:
            loaded[folder] = load_evaluation(folder)
        return loaded[folder]

    for row, seeds in seeds_of.items():
        base_row = baseline.of(row)
        if base_row == row or base_row not in seeds_of:
            continue
        paired = [s for s in seeds if s in seeds_of[base_row]]
        per_metric: dict[tuple[str, str], list] = defaultdict(list)
        try:
            for seed in paired:
                differences = evaluation_differences(evaluation(base_row, seed), evaluation(row, seed), headline,
                                                     n_boot=n_boot, seed=0)  # fmt: skip
                for key, difference in differences.items():
                    per_metric[key].append(difference)
        except XrayfmError as exc:
            stats["notes"].append(f"{_row_name(row)} vs {_row_name(base_row)}: not paired ({exc})")
            continue
        for (task, metric), diffs in per_metric.items():
            stats["differences"].append({
                "row": _row_name(row), "against": _row_name(base_row), "task": task, "metric": metric,
                "seeds": paired, **seed_mean_difference(diffs),
            })  # fmt: skip
    return stats


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


def differences_table(stats: dict[str, Any], *, heading: bool = True) -> str:
    """Markdown table of the paired differences in ``stats`` (:func:`sweep_statistics`): per row,
    baseline and metric, the mean difference over seeds with its 95% CI and the sd over seeds."""
    lines = [
        *([f"## paired differences against {stats['baseline']} ({stats['split']})\n"] if heading else []),
        "| row | baseline | metric | seeds | mean difference [95% CI] | sd over seeds |",
        "|---|---|---|---|---|---|",
    ]
    for d in stats["differences"]:
        ci = f" [{d['low']:+.3f}, {d['high']:+.3f}]" if d["low"] is not None else ""
        value = "–" if d["difference"] is None else f"{d['difference']:+.3f}{ci}"
        lines.append(f"| {d['row']} | {d['against']} | {d['task']} {d['metric']} | {len(d['per_seed'])} | {value} | "
                     f"{_fmt(d['sd'])} |")  # fmt: skip
    lines += [f"\n{n}" for n in stats["notes"]]
    return "\n".join(lines) + "\n"


def _write(out: Path, rows: list[dict[str, Any]], stats: dict[str, Any] | None = None) -> None:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "sweep.csv", buf.getvalue())
    splits = sorted({r["split"] for r in rows})
    md = "".join(f"## {s}\n\n{markdown_table(rows, s)}\n" for s in splits)
    if stats is not None:
        from xrayfm.report.comparison_report import write_sweep_report

        if stats["baseline"]:
            md += differences_table(stats)
        atomic_write_json(out / "sweep_stats.json", stats)
        write_sweep_report(stats, out / "sweep.html")
    atomic_write_text(out / "sweep.md", md)
