"""Landmarks from lung and heart masks, on hand-drawn masks whose corners are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xrayfm.data.registry import build_dataset
from xrayfm.evaluate.landmarks import find_landmarks, heart_landmarks, lung_landmarks, split_lungs


def two_lungs(bridge: bool = False) -> np.ndarray:
    """Image-left lung rows 10-69 x cols 8-37, image-right lung rows 12-71 x cols 60-91, in 100 x 100."""
    m = np.zeros((100, 100), dtype=bool)
    m[10:70, 8:38] = True
    m[12:72, 60:92] = True
    if bridge:  # lungs drawn behind the heart touch low in the middle
        m[62:64, 38:60] = True
    return m


def test_rectangle_lungs_give_their_corners_and_edges() -> None:
    marks = find_landmarks(two_lungs())
    assert marks == {
        "right apex": (10, 22),  # top row, median column of 8..37
        "right costophrenic": (69, 8),  # lowest lateral corner (patient's right = image left)
        "right cardiophrenic": (69, 37),  # lowest medial corner
        "right hilum": (39, 37),  # mid-height (10 + 69) // 2, medial edge
        "left apex": (12, 75),
        "left costophrenic": (71, 91),
        "left cardiophrenic": (71, 60),
        "left hilum": (41, 60),
    }


def test_lungs_that_touch_are_split_at_the_mediastinum() -> None:
    left, right = split_lungs(two_lungs(bridge=True))
    assert left[:, :38].sum() == 60 * 30 and right[:, 60:].sum() == 60 * 32
    assert not right[:, :38].any() and not left[:, 60:].any()
    assert find_landmarks(two_lungs(bridge=True))["left apex"] == (12, 75)


def test_specks_outside_a_lung_are_ignored() -> None:
    m = two_lungs()
    m[95, 2] = True  # a stray pixel below and lateral to the right lung
    assert find_landmarks(m)["right costophrenic"] == (69, 8)


def test_one_lung_or_a_tiny_mask_gives_no_landmarks() -> None:
    one = np.zeros((100, 100), dtype=bool)
    one[10:70, 8:38] = True
    assert find_landmarks(one) == {}
    tiny = np.zeros((400, 400), dtype=bool)
    tiny[10:14, 8:12] = tiny[10:14, 30:34] = True
    assert find_landmarks(tiny) == {}


def test_heart_landmarks() -> None:
    heart = np.zeros((100, 100), dtype=bool)
    heart[50:80, 40:70] = True
    heart[60:70, 35:40] = True  # the right border bulges at rows 60-69
    assert heart_landmarks(heart) == {"heart apex": (79, 69), "heart right border": (64, 35)}
    marks = find_landmarks(two_lungs(), heart)
    assert len(marks) == 10 and marks["heart apex"] == (79, 69)


def test_single_lung_landmarks_mirror() -> None:
    lung = np.zeros((50, 50), dtype=bool)
    lung[5:45, 10:31] = True
    lung[40:45, 10:14] = False  # a rounded costophrenic corner
    image_left = lung_landmarks(lung, medial=+1)
    image_right = lung_landmarks(lung[:, ::-1].copy(), medial=-1)
    assert image_left["costophrenic"] == (44, 14)  # 2 x depth 1 + lateral 16/20 beats 2 x 34/39 + 1
    assert image_right == {name: (y, 49 - x) for name, (y, x) in image_left.items()}


def test_real_lung_masks_give_anatomically_ordered_landmarks(shared_datasets: Path) -> None:
    """On JSRT's masks: apex above hilum above the angles, the patient's right lung on the image's left."""
    ds = build_dataset("csv", shared_datasets / "jsrt_lungs", "test", mask_columns="mask", label_columns=())
    found = 0
    for i in range(0, len(ds), 5):
        sample = ds.load(i)
        marks = find_landmarks(sample["mask"][0].numpy() == 1)
        if not marks:
            continue
        found += 1
        for side in ("right", "left"):
            apex, hilum = marks[f"{side} apex"], marks[f"{side} hilum"]
            assert apex[0] < hilum[0] < marks[f"{side} costophrenic"][0], (sample["meta"]["id"], marks)
            assert hilum[0] < marks[f"{side} cardiophrenic"][0]
        assert marks["right hilum"][1] < marks["left hilum"][1]
        assert marks["right costophrenic"][1] < marks["right cardiophrenic"][1]
        assert marks["left cardiophrenic"][1] < marks["left costophrenic"][1]
    assert found >= 0.9 * len(range(0, len(ds), 5))


@pytest.mark.parametrize("size", [64, 97])
def test_landmarks_stay_inside_the_image(size: int) -> None:
    rng = np.random.default_rng(size)
    m = np.zeros((size, size), dtype=bool)
    m[size // 8 : size * 7 // 8, size // 10 : size * 2 // 5] = True
    m[size // 8 : size * 7 // 8, size * 3 // 5 : size * 9 // 10] = True
    m &= rng.random((size, size)) > 0.02  # ragged masks
    for y, x in find_landmarks(m).values():
        assert 0 <= y < size and 0 <= x < size and m[y, x]
