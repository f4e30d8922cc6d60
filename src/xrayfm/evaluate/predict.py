"""Run a model over a dataset and collect outputs with their targets, task by task."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from xrayfm.data.sample import collate_samples
from xrayfm.models.task_model import XrayModel
from xrayfm.progress import progress
from xrayfm.tasks import probabilities


@torch.no_grad()
def predict(
    model: XrayModel, dataset: Dataset, *, batch_size: int = 16, device: str | torch.device = "cpu", workers: int = 0
) -> dict[str, Any]:
    """Outputs of ``model`` on every sample of ``dataset`` (transformed to the model's input).

    Returns:
        ``ids`` (sample ids) and, per task name: ``probs`` (N, K) + ``labels`` (N, K, nan = unknown)
        for classification; ``probs`` (N, M, H, W) float16 + ``mask`` (N, M, H, W) uint8 for
        segmentation (samples without a mask are skipped for that task); for detection, lists
        ``pred`` (``boxes``, ``scores``, ``labels``) and ``target`` (``boxes``, ``labels``) of the
        box-annotated images and their dataset ``index``.
    """
    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples, num_workers=workers)
    ids: list[str] = []
    store: dict[str, dict[str, list[np.ndarray]]] = {t.name: {} for t in model.tasks}
    for batch in progress(loader, desc="predicting", unit="batch"):
        outputs = model(batch["image"].to(device))
        ids.extend(str(m.get("id")) for m in batch["meta"])
        for t in model.tasks:
            target = batch.get(t.sample_key)
            if target is None:
                continue
            if t.kind == "detection":
                rec = store[t.name]
                for i, (det, boxes) in enumerate(zip(outputs[t.name], target)):
                    if boxes is None:  # image without box annotation: not scored
                        continue
                    rec.setdefault("index", []).append(len(ids) - len(target) + i)
                    rec.setdefault("pred", []).append({k: v.cpu().numpy() for k, v in det.items()})
                    rec.setdefault("target", []).append(
                        {"boxes": boxes.cpu().numpy(), "labels": batch["box_labels"][i].cpu().numpy()}
                    )
                continue
            probs = probabilities(t.kind, outputs[t.name].float()).cpu()
            if t.kind == "segmentation":
                store[t.name].setdefault("probs", []).append(probs.half().numpy())
            else:
                store[t.name].setdefault("probs", []).append(probs.numpy())
            store[t.name].setdefault("target", []).append(target.cpu().numpy())
    out: dict[str, Any] = {"ids": ids}
    for t in model.tasks:
        parts = store[t.name]
        if not parts:
            continue
        if t.kind == "detection":
            out[t.name] = {"pred": parts["pred"], "target": parts["target"], "index": parts["index"]}
            continue
        key = "mask" if t.kind == "segmentation" else "labels"
        out[t.name] = {"probs": np.concatenate(parts["probs"]), key: np.concatenate(parts["target"])}
    return out
