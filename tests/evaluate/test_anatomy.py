"""Eve's two measures on hand-made cases whose answers are known."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xrayfm import XrayfmError
from xrayfm.evaluate.anatomy import (
    AnatomySettings,
    BackboneEmbedder,
    composition_embeddings,
    composition_similarity,
    crop_patch,
    evaluate_anatomy,
    mask_channels,
    patch_side,
    project_2d,
    retrieval_accuracy,
    split_patch,
)
from xrayfm.models.preprocess import Preprocess
from xrayfm.tasks import TaskSpec

LANDMARKS = [f"landmark {i}" for i in range(5)]


def test_one_hot_of_the_landmark_retrieves_every_landmark() -> None:
    labels = LANDMARKS * 20
    groups = [f"patient {i // 5}" for i in range(100)]
    features = F.one_hot(torch.tensor([LANDMARKS.index(v) for v in labels]), 5).float()
    result = retrieval_accuracy(features, labels, groups)
    assert result["accuracy"] == 1.0 and result["queries"] == 100
    assert all(r["accuracy"] == 1.0 and r["n"] == 20 for r in result["per_landmark"].values())
    assert result["chance"] == pytest.approx(19 / 95)  # per query: 19 same-landmark patches among 95 candidates


def test_a_constant_embedding_scores_the_chance_level() -> None:
    labels = LANDMARKS * 400
    groups = [f"patient {i // 5}" for i in range(2000)]
    result = retrieval_accuracy(torch.ones(2000, 8), labels, groups, seed=3)
    assert result["accuracy"] == pytest.approx(result["chance"], abs=0.03)
    assert result["chance"] == pytest.approx(0.2, abs=1e-3)


def test_the_same_patient_is_never_the_neighbour() -> None:
    """Each patient's own patches are identical to the query; another patient's carry the right label."""
    labels = ["a", "b", "a", "b"]
    groups = ["p1", "p1", "p2", "p2"]
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    result = retrieval_accuracy(features, labels, groups)
    # patch 1 (label b, patient 1) equals patch 0 but must query patient 2: nearest is patch 2 (label a)
    assert result["per_landmark"]["b"]["accuracy"] == 0.5 and result["per_landmark"]["a"]["accuracy"] == 1.0


def test_hits_say_which_queries_found_their_landmark() -> None:
    """Patient p2's two patches look like the other patients' opposite landmarks: only its queries miss."""
    labels = ["a", "b"] * 3
    groups = ["p0", "p0", "p1", "p1", "p2", "p2"]
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.1, 0.9], [0.9, 0.1]])
    result = retrieval_accuracy(features, labels, groups)
    assert result["hits"] == [True, True, True, True, False, False]
    assert result["accuracy"] == pytest.approx(4 / 6)


def test_one_patient_is_an_error() -> None:
    with pytest.raises(XrayfmError, match="at least two patients"):
        retrieval_accuracy(torch.eye(2), ["a", "b"], ["p", "p"])


class PixelFeatures(nn.Module):
    """A per-pixel non-linear feature map, globally average-pooled: E is linear in the pooled map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.pixels = nn.Sequential(nn.Conv2d(1, 16, 1), nn.Tanh(), nn.Conv2d(16, 8, 1))

    def __call__(self, patches: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([self.pixels(p[None]).mean(dim=(2, 3))[0] for p in patches])


def layout_features(patches: Sequence[torch.Tensor]) -> torch.Tensor:
    """Where it is brighter or darker than mid-grey (a 3x3 grid of means): E(whole) is not the mean of E(parts)."""
    return torch.stack([F.adaptive_avg_pool2d(p[None] - 0.5, 3).flatten() for p in patches])


def test_mean_pooled_features_compose_exactly_and_layout_features_do_not() -> None:
    gen = torch.Generator().manual_seed(0)
    patches = [torch.rand(1, 36, 36, generator=gen) for _ in range(6)]
    pooled = composition_similarity(composition_embeddings(patches, PixelFeatures()))
    assert set(pooled) == {"side_by_side_2", "stacked_3", "grid_2x2"}
    for values in pooled.values():
        np.testing.assert_allclose(values, 1.0, atol=1e-9)
    layout = composition_similarity(composition_embeddings(patches, layout_features))
    assert all(np.median(v) < 0.5 for v in layout.values())


def test_the_control_pairs_each_patch_with_another_patchs_parts() -> None:
    """Patches of one constant grey each: E(parts) of patch i is E(patch i); the control pairs i with i - 1."""
    patches = [torch.full((1, 12, 12), v) for v in (0.1, 0.9, 0.5)]
    emb = composition_embeddings(patches, lambda ps: torch.stack([torch.cat([p.mean()[None], 1 - p.mean()[None]])
                                                                   for p in ps]))  # fmt: skip
    own = composition_similarity(emb)["grid_2x2"]
    control = composition_similarity(emb, shift=1)["grid_2x2"]
    np.testing.assert_allclose(own, 1.0)
    whole = emb["whole"].double()
    np.testing.assert_allclose(control, F.cosine_similarity(whole, whole.roll(1, 0)).numpy(), rtol=1e-6)
    assert control.max() < 1.0


def test_parts_tile_the_patch() -> None:
    patch = torch.arange(36.0).reshape(1, 6, 6)
    for rows, cols in ((1, 2), (3, 1), (2, 2)):
        parts = split_patch(patch, rows, cols)
        assert len(parts) == rows * cols
        assert all(p.shape == (1, 6 // rows, 6 // cols) for p in parts)
        assert torch.equal(torch.cat([p.flatten() for p in parts]).sort().values, patch.flatten())
    with pytest.raises(XrayfmError, match="equal parts"):
        split_patch(torch.zeros(1, 7, 6), 3, 1)


def test_patches_are_centred_or_shifted_inside() -> None:
    image = torch.arange(100.0 * 80).reshape(1, 100, 80)
    assert patch_side(100, 80, 0.25) == 18  # 20 rounded down to a multiple of 6
    assert torch.equal(crop_patch(image, (50, 40), 18), image[..., 41:59, 31:49])
    assert torch.equal(crop_patch(image, (2, 79), 18), image[..., 0:18, 62:80])
    with pytest.raises(XrayfmError, match="under 6 pixels"):
        patch_side(20, 20, 0.25)


def test_lung_and_heart_channels_are_found_by_name() -> None:
    assert mask_channels(["lungs", "heart", "lesions"]) == ((0,), 1)
    assert mask_channels(["mask"]) == ((0,), None)
    assert mask_channels(["heart", "left_lung", "right_lung"]) == ((1, 2), 0)
    with pytest.raises(XrayfmError, match="no lung mask"):
        mask_channels(["heart", "lesions"])


class PositionCodedData:
    """Patients whose two rectangular lungs move a few pixels; pixel value codes its position,
    ``(row * W + column) / (H * W)``, so an embedding can read where a patch was cut."""

    H = W = 96
    name, root, split = "coded", Path("coded"), "all"

    def __init__(self, n: int) -> None:
        self.n = n
        self.code = (torch.arange(self.H * self.W, dtype=torch.float64) / (self.H * self.W)).reshape(1, self.H, self.W)

    def __len__(self) -> int:
        return self.n

    def task_for(self, key: str) -> TaskSpec | None:
        return TaskSpec("anatomy", "segmentation", ("lungs",)) if key == "mask" else None

    def load(self, index: int) -> dict[str, Any]:
        dy, dx = index % 3 - 1, index % 2
        mask = torch.zeros(1, self.H, self.W, dtype=torch.uint8)
        mask[0, 14 + dy : 76 + dy, 10 + dx : 40 + dx] = 1
        mask[0, 16 + dy : 78 + dy, 56 + dx : 86 + dx] = 1
        return {"image": self.code, "mask": mask, "meta": {"id": f"img{index}", "patient_id": f"p{index}"}}


def cell_of_patch(patches: Sequence[torch.Tensor]) -> torch.Tensor:
    """One-hot of the 8x8 cell holding each patch's centre, decoded from its top-left pixel."""
    out = []
    for p in patches:
        pos = int(round(float(p[0, 0, 0]) * PositionCodedData.H * PositionCodedData.W))
        y, x = divmod(pos, PositionCodedData.W)
        cy, cx = (y + p.shape[-2] // 2) * 8 // PositionCodedData.H, (x + p.shape[-1] // 2) * 8 // PositionCodedData.W
        out.append(F.one_hot(torch.tensor(cy * 8 + cx), 64).float())
    return torch.stack(out)


def test_an_embedding_of_patch_position_locates_every_landmark(tmp_path: Path) -> None:
    settings = AnatomySettings(patch_fraction=0.25, random_patches=1, projection="pca")
    result = evaluate_anatomy(cell_of_patch, PositionCodedData(6), tmp_path, settings=settings, model_name="cells")
    loc = result["locality"]
    assert loc["accuracy"] == 1.0 and loc["queries"] == 48 and loc["patients"] == 6
    assert loc["chance"] == pytest.approx(5 / 40)  # 5 of the 40 other patients' patches share the landmark
    assert result["images"] == 6 and result["embedding_dim"] == 64
    saved = json.loads((tmp_path / "anatomy.json").read_text())
    assert saved["locality"]["accuracy"] == 1.0 and saved["model"] == "cells"
    assert saved["settings"]["patch_fraction"] == 0.25 and saved["locality"]["projection"] == "PCA"
    per_query = saved["locality"]["per_query"]  # each query's patient, landmark and hit, for paired comparisons
    assert per_query["hit"] == [True] * 48 and "hits" not in saved["locality"]
    assert per_query["patient"] == [f"p{i}" for i in range(6) for _ in range(8)]
    assert sorted(set(per_query["landmark"])) == sorted(loc["per_landmark"])
    for png in ("locality.png", "compositionality.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_images_without_masks_are_refused(tmp_path: Path) -> None:
    data = PositionCodedData(3)
    data.task_for = lambda key: None  # type: ignore[method-assign]
    with pytest.raises(XrayfmError, match="carry no masks"):
        evaluate_anatomy(cell_of_patch, data, tmp_path)


def test_backbone_embedder_preprocesses_as_the_record_says() -> None:
    """Each patch, whatever its size, reaches the backbone at the input side, normalised, on 3 channels."""

    class Probe(nn.Module):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            self.seen = x
            return x

        def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    probe = Probe()
    embed = BackboneEmbedder(probe, Preprocess(input_size=16, channels=3, mean=0.5, std=0.25), batch_size=2)
    out = embed([torch.full((1, 30, 30), 1.0), torch.zeros(1, 12, 18), torch.full((1, 8, 8), 0.5)])
    assert out.shape == (3, 3)
    torch.testing.assert_close(out[:, 0], torch.tensor([2.0, -2.0, 0.0]))
    assert probe.seen.shape == (1, 3, 16, 16)  # the last batch of one


def test_tsne_map_keeps_clusters_apart() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 32, generator=gen) * 5
    features = torch.cat([c + 0.1 * torch.randn(10, 32, generator=gen) for c in centres])
    for method in ("tsne", "pca"):
        xy = project_2d(features, method)
        assert xy.shape == (30, 2) and np.isfinite(xy).all()
        spread = max(np.linalg.norm(xy[i * 10 : i * 10 + 10] - xy[i * 10 : i * 10 + 10].mean(0), axis=1).max()
                     for i in range(3))  # fmt: skip
        means = [xy[i * 10 : i * 10 + 10].mean(0) for i in range(3)]
        gaps = min(np.linalg.norm(means[a] - means[b]) for a in range(3) for b in range(a + 1, 3))
        assert gaps > 2 * spread, method
