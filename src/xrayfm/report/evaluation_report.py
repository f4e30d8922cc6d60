"""A self-contained HTML report of an evaluation: tables with CIs, ROC curves, mask overlays.

People would rather look than read: the report shows each class's ROC curve and, for
segmentation, the best and worst cases with the reference outline in green and the model's in
red. Figures are embedded as PNG data URIs, so the single file works offline and can be mailed.

The report only renders what it is given and imports nothing from :mod:`xrayfm.evaluate`:
imports run evaluate -> report, :func:`~xrayfm.evaluate.run.evaluate_dataset` computing the
metrics, intervals and ROC curves and passing them in.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from xrayfm.io.atomic import atomic_write_text

GREEN, RED = (60, 200, 75), (235, 50, 50)
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}.ci{color:#777;font-size:90%}
.grid{display:flex;flex-wrap:wrap;gap:8px}.grid figure{margin:0;font-size:80%;text-align:center}
.note{color:#a40}
"""


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("value") is None:
        return "–"
    low, high = ci.get("low"), ci.get("high")
    bounds = f' <span class="ci">[{low:.3f}, {high:.3f}]</span>' if low is not None and high is not None else ""
    return f"{ci['value']:.3f}{bounds}"


def _roc_figure(curves: Mapping[str, Mapping[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=90)
    for name, c in curves.items():
        if c["auroc"] is not None:
            ax.plot(c["fpr"], c["tpr"], lw=1.3, label=f"{name} ({c['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    if any(c["auroc"] is not None for c in curves.values()):  # a legend of nothing warns
        ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _outline(on: np.ndarray) -> np.ndarray:
    inner = np.roll(on, 1, 0) & np.roll(on, -1, 0) & np.roll(on, 1, 1) & np.roll(on, -1, 1)
    return on & ~inner


def mask_overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, side: int = 200) -> Image.Image:
    """Grey image with the reference outline (green) and the predicted outline (red), all channels."""
    rgb = np.repeat(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    for plane in truth:
        rgb[_outline(plane == 1)] = GREEN
    for plane in pred:
        rgb[_outline(plane.astype(bool))] = RED
    out = Image.fromarray(rgb)
    scale = side / max(out.size)
    return out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))))


def _classification_section(
    name: str, res: dict[str, Any], curves: Mapping[str, Mapping[str, Any]] | None, classes: list[str]
) -> str:
    m, ci = res["metrics"], res.get("cis", {})
    rows = []
    for c in classes:
        pc = m["per_class"].get(c, {})
        cc = ci.get("per_class", {}).get(c, {})
        rows.append(
            f"<tr><td>{html.escape(c)}</td><td>{pc.get('positives', '–')}</td><td>{pc.get('negatives', '–')}</td>"
            f"<td>{_fmt(cc.get('auroc') or {'value': pc.get('auroc')})}</td>"
            f"<td>{_fmt(cc.get('sensitivity') or {'value': pc.get('sensitivity')})}</td>"
            f"<td>{_fmt(cc.get('specificity') or {'value': pc.get('specificity')})}</td>"
            f"<td>{_fmt({'value': pc.get('ece')})}</td></tr>"
        )
    head = "".join(f"<li>{html.escape(k)}: {_fmt(v)}</li>" for k, v in res.get("headline", {}).items())
    notes = "".join(f'<p class="note">{html.escape(str(n))}</p>' for n in m.get("notes", []))
    roc = f'<img alt="ROC curves of {html.escape(name)}" src="{_roc_figure(curves)}">' if curves else ""
    return (
        f"<h2>{html.escape(name)} ({html.escape(m.get('kind', ''))})</h2><ul>{head}</ul>{notes}"
        f"<p>threshold {m.get('threshold')}</p>"
        "<table><tr><th>class</th><th>pos</th><th>neg</th><th>AUROC [95% CI]</th><th>sensitivity</th>"
        f"<th>specificity</th><th>ECE</th></tr>{''.join(rows)}</table>{roc}"
    )


def _segmentation_section(
    name: str, res: dict[str, Any], pred: dict[str, Any], classes: list[str], dataset: Dataset, examples: int
) -> str:
    m, ci = res["metrics"], res.get("cis", {})
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{_fmt(ci.get('per_class', {}).get(c, {}).get('dice'))}</td>"
        f"<td>{_fmt(ci.get('per_class', {}).get(c, {}).get('jaccard'))}</td></tr>"
        for c in classes
    )
    head = "".join(f"<li>{html.escape(k)}: {_fmt(v)}</li>" for k, v in res.get("headline", {}).items())
    dice = np.asarray(m.get("per_image", {}).get("dice", []), dtype=float)
    figures = []
    if dice.size:
        per_image = np.nanmean(dice.reshape(len(dice), -1), axis=1)
        order = np.argsort(per_image)
        k = max(1, examples // 2)
        picks = list(dict.fromkeys([*order[:k].tolist(), *order[-k:].tolist()]))
        for i in picks:
            image = dataset[i]["image"][0].numpy()
            overlay = mask_overlay(image, pred["mask"][i], pred["probs"][i].astype(np.float32) >= 0.5)
            figures.append(
                f'<figure><img alt="case {i}" src="{_png(overlay)}"><figcaption>#{i} Dice {per_image[i]:.3f}'
                "</figcaption></figure>"
            )
    return (
        f"<h2>{html.escape(name)} (segmentation)</h2><ul>{head}</ul>"
        f"<table><tr><th>class</th><th>Dice [95% CI]</th><th>Jaccard [95% CI]</th></tr>{rows}</table>"
        "<p>Worst and best cases: reference outline <b style='color:#3c4'>green</b>, model "
        f"<b style='color:#e33'>red</b>.</p><div class='grid'>{''.join(figures)}</div>"
    )


def box_overlay(
    image: np.ndarray,
    truth: dict[str, Any],
    pred: dict[str, Any],
    classes: list[str],
    *,
    side: int = 256,
    min_score: float = 0.3,
) -> Image.Image:
    """Grey image with reference boxes (green) and predicted boxes with scores (red)."""
    from PIL import ImageDraw

    grey = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), "L").convert("RGB")
    scale = side / max(grey.size)
    out = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))))
    draw = ImageDraw.Draw(out)
    for box, lab in zip(np.asarray(truth["boxes"]).reshape(-1, 4), np.asarray(truth["labels"]).reshape(-1)):
        draw.rectangle(tuple(float(v) * scale for v in box), outline=GREEN, width=2)
        draw.text((float(box[0]) * scale + 2, float(box[1]) * scale + 1), classes[int(lab)], fill=GREEN)
    boxes, scores = np.asarray(pred["boxes"]).reshape(-1, 4), np.asarray(pred["scores"]).reshape(-1)
    labels = np.asarray(pred["labels"]).reshape(-1)
    for box, score, lab in zip(boxes, scores, labels):
        if score < min_score:
            continue
        draw.rectangle(tuple(float(v) * scale for v in box), outline=RED, width=1)
        draw.text((float(box[0]) * scale + 2, float(box[3]) * scale - 11), f"{classes[int(lab)]} {score:.2f}", fill=RED)
    return out


def _detection_section(
    name: str, res: dict[str, Any], pred: dict[str, Any], classes: list[str], dataset: Dataset, examples: int
) -> str:
    m = res["metrics"]
    head = "".join(f"<li>{html.escape(k)}: {_fmt(v)}</li>" for k, v in res.get("headline", {}).items())
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{_fmt({'value': v['ap']})}</td><td>{_fmt({'value': v['ar_100']})}</td></tr>"
        for c, v in m["per_class"].items()
    )
    with_boxes = [k for k, t in enumerate(pred["target"]) if len(np.asarray(t["labels"]).reshape(-1))]
    figures = []
    for k in (with_boxes or list(range(len(pred["target"]))))[:examples]:
        image = dataset[pred["index"][k]]["image"][0].numpy()
        overlay = box_overlay(image, pred["target"][k], pred["pred"][k], classes)
        figures.append(
            f'<figure><img alt="case {k}" src="{_png(overlay)}"><figcaption>#{pred["index"][k]}</figcaption></figure>'
        )
    return (
        f"<h2>{html.escape(name)} (detection)</h2><ul>{head}</ul>"
        f"<p>{m['n']} box-annotated images, {m['boxes']} reference boxes; mAP over IoU 0.5:0.95 (COCO).</p>"
        f"<table><tr><th>class</th><th>AP</th><th>AR@100</th></tr>{rows}</table>"
        "<p>Reference boxes <b style='color:#3c4'>green</b>, predictions with score at least 0.3 "
        f"<b style='color:#e33'>red</b>.</p><div class='grid'>{''.join(figures)}</div>"
    )


def _thresholds_note(thresholds: Mapping[str, Any] | None) -> str:
    """Where the multi-label decision thresholds come from (rule, and the split that chose them)."""
    if not thresholds:
        return ""
    where = f" chosen on the {html.escape(str(thresholds['split']))} split" if thresholds.get("split") else ""
    notes = "".join(f'<p class="note">{html.escape(str(n))}</p>' for n in thresholds.get("notes", []))
    return f"<p>Decision thresholds: {html.escape(str(thresholds['rule']))}{where}.</p>{notes}"


def write_evaluation_report(
    result: dict[str, Any],
    predictions: dict[str, Any],
    dataset: Dataset,
    path: str | Path,
    *,
    roc: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    examples: int = 8,
) -> Path:
    """Write the HTML report of ``result`` (from :func:`~xrayfm.evaluate.run.evaluate_dataset`), atomically.

    Args:
        result: Evaluation result with ``task_specs`` and ``tasks`` -> ``metrics`` / ``cis`` /
            ``headline``.
        predictions: Per task, the masks (segmentation) or boxes and dataset indices (detection)
            to overlay, as :func:`~xrayfm.evaluate.predict.predict` returns them.
        dataset: The evaluated dataset (read again for overlays).
        path: Output HTML file.
        roc: Classification task name -> class name -> ``fpr``, ``tpr`` and ``auroc`` (as
            :func:`~xrayfm.evaluate.metrics.roc_curves` returns them); a task without curves
            gets no ROC figure.
        examples: Overlays per segmentation or detection task (segmentation: half worst, half best).

    Returns:
        ``path``.
    """
    sections = []
    for spec in result["task_specs"]:
        name = spec["name"]
        if name not in result["tasks"]:
            continue
        classes = list(spec["classes"])
        if spec["kind"] == "detection":
            sections.append(
                _detection_section(name, result["tasks"][name], predictions[name], classes, dataset, examples)
            )
        elif spec["kind"] == "segmentation":
            sections.append(
                _segmentation_section(name, result["tasks"][name], predictions[name], classes, dataset, examples)
            )
        else:
            sections.append(_classification_section(name, result["tasks"][name], (roc or {}).get(name), classes))
    title = f"xrayfm evaluation: {result.get('dataset')} / {result.get('split')}"
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{result.get('n')} images; model {html.escape(str(result.get('model', '')))}; "
        f"95% CIs from {result.get('n_boot')} bootstrap resamples of images (seed {result.get('seed')}).</p>"
        f"{_thresholds_note(result.get('thresholds'))}{''.join(sections)}"
        "<p class='ci'>Research use only, not for diagnosis.</p></body></html>"
    )
    return atomic_write_text(path, doc)
