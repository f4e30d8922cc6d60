"""HTML reports of paired comparisons: two models on the same images, and a sweep's seeds and baseline.

Like the evaluation report, these render what they are given (``xrayfm compare``'s result and
the sweep's seed statistics) and import nothing from :mod:`xrayfm.evaluate`.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xrayfm.io.atomic import atomic_write_text
from xrayfm.report.evaluation_report import STYLE

_EXTRA_STYLE = ".up{color:#070}.down{color:#a00}"


def _num(v: float | None, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def _diff_cell(d: Mapping[str, Any]) -> str:
    """``+0.042 [+0.010, +0.071]``, coloured when the interval excludes 0."""
    value, low, high = d.get("difference"), d.get("low"), d.get("high")
    if value is None:
        return "<td>–</td>"
    css = ""
    if low is not None and high is not None:
        css = " class='up'" if low > 0 else " class='down'" if high < 0 else ""
        bounds = f" <span class='ci'>[{_num(low, True)}, {_num(high, True)}]</span>"
    else:
        bounds = ""
    return f"<td{css}>{_num(value, True)}{bounds}</td>"


def _p(v: float | None) -> str:
    return "–" if v is None else ("&lt;0.001" if v < 0.001 else f"{v:.3f}")


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}{_EXTRA_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
        "<p class='ci'>Research use only, not for diagnosis.</p></body></html>"
    )


def _flat_metrics(diffs: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(k, v) for k, v in diffs.items() if k != "per_class"]


def write_comparison_report(result: dict[str, Any], path: str | Path) -> Path:
    """Write the HTML report of a comparison (``xrayfm compare``'s result), atomically.

    Args:
        result: Output of :func:`~xrayfm.evaluate.compare.compare_runs`.
        path: Output HTML file.

    Returns:
        ``path``.
    """
    level = round(100 * (1 - result["alpha"]))
    sections = []
    for task, res in result["tasks"].items():
        diffs, delong = res["differences"], res.get("delong", {})
        rows = []
        for name, d in _flat_metrics(diffs):
            p = delong.get("mean_auroc", {}).get("p") if name == "mean_auroc" else None
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{_num(d['a'])}</td><td>{_num(d['b'])}</td>"
                        f"{_diff_cell(d)}<td>{_p(p)}</td></tr>")  # fmt: skip
        per_class = []
        for c, metrics in diffs.get("per_class", {}).items():
            cells = "".join(_diff_cell(d) for d in metrics.values())
            test = delong.get("per_class", {}).get(c, {}).get("auroc")
            extra = f"<td>{_num(test['se'])}</td><td>{_p(test['p'])}</td>" if test else ""
            per_class.append(f"<tr><td>{html.escape(c)}</td>{cells}{extra}</tr>")
        heads = list(next(iter(diffs.get("per_class", {}).values()), {}))
        delong_heads = "<th>DeLong SE</th><th>DeLong p</th>" if delong else ""
        sections.append(
            f"<h2>{html.escape(task)} ({html.escape(res['kind'])})</h2>"
            f"<table><tr><th>metric</th><th>A</th><th>B</th><th>B - A [{level}% CI]</th><th>DeLong p</th></tr>"
            f"{''.join(rows)}</table>"
            f"<table><tr><th>class</th>{''.join(f'<th>{html.escape(h)} B - A</th>' for h in heads)}{delong_heads}"
            f"</tr>{''.join(per_class)}</table>"
        )
    thresholds = "".join(
        f"<li>{side.upper()}: {html.escape(str(result[side]['thresholds']['rule']))}"
        + (f" chosen on {html.escape(str(result[side]['thresholds']['split']))}" if result[side]["thresholds"]["split"]
           else "")
        + "</li>"
        for side in ("a", "b")
    )  # fmt: skip
    notes = "".join(f"<p class='note'>{html.escape(str(n))}</p>" for n in result.get("notes", []))
    body = (
        f"<p>A = {html.escape(result['a']['run'])} ({html.escape(str(result['a'].get('arch')))}), "
        f"B = {html.escape(result['b']['run'])} ({html.escape(str(result['b'].get('arch')))}); "
        f"{result['n']} images of {html.escape(str(result['dataset']))}/{html.escape(str(result['split']))} "
        f"scored by both.</p><p>Differences are B - A with {level}% paired-bootstrap intervals ({result['n_boot']} "
        f"resamples of the images, the same for both models, seed {result['seed']}); green or red where the interval "
        "excludes 0. AUROC also has DeLong's test (two-sided p).</p>"
        f"<p>Decision thresholds:</p><ul>{thresholds}</ul>{notes}{''.join(sections)}"
    )
    return atomic_write_text(path, _page("xrayfm comparison", body))


def write_sweep_report(stats: dict[str, Any], path: str | Path) -> Path:
    """Write the HTML report of a sweep's seed statistics and paired differences, atomically.

    Args:
        stats: The sweep's statistics (:func:`~xrayfm.finetune.sweep.seed_statistics`): ``split``,
            ``rows`` (mean and sd over seeds per configuration and metric), ``baseline`` and
            ``differences`` (paired against the baseline).
        path: Output HTML file.

    Returns:
        ``path``.
    """
    rows = "".join(
        f"<tr><td>{html.escape(r['backbone'])}</td><td>{html.escape(r['mode'])}</td><td>{r['fraction']:g}</td>"
        f"<td>{html.escape(r['task'])} {html.escape(r['metric'])}</td><td>{r['n_seeds']}</td><td>{_num(r['mean'])}</td>"
        f"<td>{_num(r['sd'])}</td></tr>"
        for r in stats["rows"]
    )
    body = (
        f"<h2>Mean and standard deviation over training seeds ({html.escape(stats['split'])})</h2>"
        "<table><tr><th>backbone</th><th>mode</th><th>fraction</th><th>metric</th><th>seeds</th><th>mean</th>"
        f"<th>sd</th></tr>{rows}</table>"
    )
    if stats.get("baseline"):
        diffs = "".join(
            f"<tr><td>{html.escape(d['row'])}</td><td>{html.escape(d['against'])}</td>"
            f"<td>{html.escape(d['task'])} {html.escape(d['metric'])}</td><td>{len(d['per_seed'])}</td>"
            f"{_diff_cell(d)}<td>{_num(d['sd'])}</td></tr>"
            for d in stats["differences"]
        )
        body += (
            f"<h2>Paired differences against {html.escape(stats['baseline'])}</h2>"
            f"<p>Per seed, both runs scored on the same {html.escape(stats['split'])} images; the mean over seeds "
            f"with a 95% interval from {stats['n_boot']} replicates, each resampling the images (jointly for both "
            "runs) and the seeds. Green or red where the interval excludes 0.</p>"
            "<table><tr><th>row</th><th>baseline</th><th>metric</th><th>seeds</th><th>mean difference [95% CI]</th>"
            f"<th>sd over seeds</th></tr>{diffs}</table>"
        )
    body += "".join(f"<p class='note'>{html.escape(str(n))}</p>" for n in stats.get("notes", []))
    return atomic_write_text(path, _page("xrayfm sweep", body))
