"""Adam's anatomy decomposer: grids, cells, both views inside the chosen cell, seeded randomness."""

from __future__ import annotations

import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.pretrain.anatomy import AnatomyDecomposer, Cell, cell_of, grid_shape, random_crop_box


def _coded(rows: int, cols: int, height: int, width: int) -> torch.Tensor:
    """A grey image whose every cell of a rows x cols grid holds its own value (k + 1) / 100."""
    image = torch.zeros(1, height, width)
    for r in range(rows):
        for c in range(cols):
            cell = cell_of(height, width, rows, cols, r, c)
            image[:, cell.top : cell.top + cell.height, cell.left : cell.left + cell.width] = (r * cols + c + 1) / 100
    return image


def test_grid_shapes_follow_the_code_or_the_paper_figure() -> None:
    assert [grid_shape(n) for n in (0, 1, 2, 3, 4)] == [(1, 1), (1, 1), (2, 2), (3, 3), (4, 4)]
    assert [grid_shape(n, "pow2") for n in (0, 1, 2, 3, 4)] == [(1, 1), (1, 2), (2, 2), (2, 4), (4, 4)]
    with pytest.raises(XrayfmError, match="granularity"):
        grid_shape(-1)
    with pytest.raises(XrayfmError, match="grid"):
        grid_shape(2, "3x3")  # type: ignore[arg-type]


def test_cells_tile_the_image_without_dropping_a_remainder() -> None:
    assert cell_of(1024, 1024, 2, 2, 1, 1) == Cell(512, 512, 512, 512)
    assert {cell_of(1024, 1024, 4, 4, r, c)[2:] for r in range(4) for c in range(4)} == {(256, 256)}
    heights = [cell_of(1000, 700, 3, 3, r, 0).height for r in range(3)]
    assert heights == [333, 333, 334] and sum(heights) == 1000
    assert cell_of(1000, 700, 3, 3, 2, 2) == Cell(666, 466, 334, 234)
    with pytest.raises(XrayfmError, match="cannot be split"):
        cell_of(3, 3, 4, 4, 0, 0)


def test_granularity_zero_is_the_whole_image() -> None:
    d = AnatomyDecomposer(32)
    g = torch.Generator().manual_seed(0)
    assert {d.cell(90, 70, g) for _ in range(5)} == {Cell(0, 0, 90, 70)}


def test_crops_stay_inside_their_cell() -> None:
    g = torch.Generator().manual_seed(1)
    cell = Cell(50, 20, 40, 60)
    for _ in range(200):
        box = random_crop_box(cell, (0.2, 1.0), (3 / 4, 4 / 3), g)
        assert box.top >= 50 and box.left >= 20 and box.height >= 1 and box.width >= 1
        assert box.top + box.height <= 90 and box.left + box.width <= 80
    thin = random_crop_box(Cell(0, 0, 100, 4), (0.9, 1.0), (3 / 4, 4 / 3), g)  # no try fits: centre crop
    assert thin == Cell(47, 0, 5, 4)


@pytest.mark.parametrize(("n", "grid", "shape"), [(2, "nxn", (2, 2)), (4, "nxn", (4, 4)), (3, "pow2", (2, 4))])
def test_both_views_come_from_the_same_randomly_chosen_cell(n: int, grid: str, shape: tuple[int, int]) -> None:
    rows, cols = shape
    image = _coded(rows, cols, 96, 128)
    d = AnatomyDecomposer(16, granularity=n, grid=grid, degrees=0, blur_p=0, mean=0.0, std=1.0, channels=1)
    seen = set()
    for seed in range(40):
        q, k = d.pair(image, torch.Generator().manual_seed(seed))
        assert q.shape == k.shape == (1, 16, 16)
        values = torch.cat([q.flatten(), k.flatten()])
        torch.testing.assert_close(values, values.new_full(values.shape, float(values[0])))  # one cell, both views
        seen.add(round(float(values[0]) * 100))
    assert seen <= set(range(1, rows * cols + 1)) and len(seen) > rows * cols // 2  # cells drawn at random


def test_views_are_normalised_repeated_and_replay_with_their_generator() -> None:
    image = torch.rand(1, 80, 60, generator=torch.Generator().manual_seed(0))
    d = AnatomyDecomposer(24, granularity=2, brightness=0.4, contrast=0.4, mean=0.5, std=0.25, channels=3)
    a = d.pair(image, torch.Generator().manual_seed(7))
    b = d.pair(image, torch.Generator().manual_seed(7))
    c = d.pair(image, torch.Generator().manual_seed(8))
    assert a[0].shape == (3, 24, 24) and torch.equal(a[0][0], a[0][2])  # grey repeated to the stem's channels
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])
    assert a[0].min() >= (0 - 0.5) / 0.25 and a[0].max() <= (1 - 0.5) / 0.25


def test_rotation_fills_uncovered_corners_with_the_fill_value() -> None:
    image = torch.ones(1, 64, 64)
    d = AnatomyDecomposer(32, degrees=30, blur_p=0, scale=(1.0, 1.0), ratio=(1.0, 1.0), mean=0.0, std=1.0, channels=1)
    views = [d.pair(image, torch.Generator().manual_seed(s))[0] for s in range(8)]
    assert any(float(v[0, 0, 0]) == 0.0 for v in views)  # a rotated corner is black
    assert all(float(v[0, 16, 16]) == pytest.approx(1.0) for v in views)  # the centre is the image


def test_as_a_transform_a_sample_becomes_its_stacked_pair() -> None:
    d = AnatomyDecomposer(16, granularity=2)
    torch.manual_seed(0)
    out = d({"image": torch.rand(1, 40, 40), "meta": {"id": "x"}})
    assert out["image"].shape == (2, 3, 16, 16) and out["meta"] == {"id": "x"}
    with pytest.raises(XrayfmError, match="grey"):
        d.pair(torch.rand(3, 40, 40))


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"size": 0}, "size"), ({"scale": (0.5, 0.2)}, "scale"), ({"std": 0.0}, "std"),
                         ({"brightness": 1.5}, "brightness"), ({"interpolation": "nearest"}, "interpolation")],
)  # fmt: skip
def test_bad_settings_are_one_line_errors(kwargs: dict, name: str) -> None:
    with pytest.raises(XrayfmError, match=name):
        AnatomyDecomposer(**{"size": 16, **kwargs})
