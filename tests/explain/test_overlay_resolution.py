"""``xrayfm explain`` writes its overlay at the image's own resolution (longer side capped), the map
laid back through the model's resize and crop, with a colour bar below."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from xrayfm.cli import main
from xrayfm.cli.explain import MAX_SIDE as CLI_MAX_SIDE
from xrayfm.errors import XrayfmError
from xrayfm.explain import explanation_image
from xrayfm.explain.overlays import MAX_SIDE, PANEL_BACKGROUND, colour_bar, display_size
from xrayfm.io.writers import write_dicom
from xrayfm.models import create_model
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

SIZE = 64
#: The ends of the jet colour map as 8-bit RGB.
COLD, HOT = np.round(np.asarray(matplotlib.colormaps["jet"]([0.0, 1.0]))[:, :3] * 255).astype(int)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """Untrained resnet18 classifiers at 64 px by crop_pct: 1 (whole image squashed) and 0.5 (centre crop)."""
    root = tmp_path_factory.mktemp("overlay")
    out = {}
    for crop in (1.0, 0.5):
        torch.manual_seed(0)
        task = TaskSpec("labels", "multilabel", ("nodule", "effusion"))
        model = XrayModel(create_model("resnet18", num_classes=0), [task], preprocess=Preprocess(SIZE, crop_pct=crop))
        out[crop] = save_task_model(model.eval(), root / f"crop{crop}", arch="resnet18", model_kwargs={}, info={})
    return out


@pytest.fixture
def top_left_cam(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CAM is 1 in the top-left quadrant of the model input and 0 elsewhere, explaining class 1."""

    def cam(model, images, *, task=None, class_index=None, method="gradcam"):
        maps = np.zeros((images.shape[0], *images.shape[-2:]), np.float32)
        maps[:, : images.shape[-2] // 2, : images.shape[-1] // 2] = 1.0
        return maps, [1] * images.shape[0], torch.zeros(images.shape[0], 2)

    monkeypatch.setattr("xrayfm.explain.heatmap.cam_with_logits", cam)


def _gradient(height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows / height + cols / width) / 2).astype(np.float32)


def _explain(model: Path, image: Path, out: Path, *extra: str) -> np.ndarray:
    assert main(["explain", str(model), str(image), "--out", str(out), *extra]) == 0
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _image_rows(picture: np.ndarray) -> int:
    """Height of the image part: the rows above the bar panel's blank top margin."""
    blank = (picture == PANEL_BACKGROUND).all(axis=(1, 2))
    return int(np.argmax(blank))


def _has(region: np.ndarray, colour: np.ndarray) -> bool:
    return bool((np.abs(region - colour).max(axis=-1) <= 1).any())


def test_a_large_dicom_is_shown_at_1024_px_with_its_aspect_and_a_colour_bar(
    models, top_left_cam, tmp_path: Path, capsys
) -> None:
    dicom = write_dicom(tmp_path / "cr.dcm", _gradient(1600, 1900) * 0.8 + 0.1)
    picture = _explain(models[1.0], dicom, tmp_path / "cr.png")
    assert "gradcam of labels / effusion" in capsys.readouterr().out  # the explained class is named
    height = _image_rows(picture)
    assert picture.shape[1] == 1024 and height == round(1600 * 1024 / 1900)  # 862: aspect kept
    assert not (picture[height - 1] == PANEL_BACKGROUND).all()  # the row above the panel is image
    bar = picture[height:]
    assert _has(bar, COLD) and _has(bar, HOT) and not _has(picture[:height], HOT)  # the ends only in the bar
    # the map is hot in the input's top-left quadrant: so is the picture, at its own resolution
    hotness = picture[:height, :, 0] - picture[:height, :, 2]  # red minus blue; the grey adds to both alike
    h, w = hotness.shape
    m = 24  # the blend over one model pixel (16 px here) at the quadrant's edges
    assert hotness[: h // 2 - m, : w // 2 - m].min() > 0 > hotness[h // 2 + m :, :].max()
    assert hotness[: h // 2 - m, w // 2 + m :].max() < 0  # not transposed or flipped


def test_a_small_image_keeps_its_size_and_max_side_caps(models, top_left_cam, tmp_path: Path, capsys) -> None:
    png = tmp_path / "small.png"
    Image.fromarray(np.round(_gradient(240, 300) * 255).astype(np.uint8), "L").save(png)
    picture = _explain(models[1.0], png, tmp_path / "small_cam.png")
    assert picture.shape[1] == 300 and _image_rows(picture) == 240
    picture = _explain(models[1.0], png, tmp_path / "capped.png", "--max-side", "150")
    assert _image_rows(picture) == 120 and (picture[:120, 150:] == PANEL_BACKGROUND).all()  # padded to the bar
    assert picture.shape[1] == 256 and _has(picture[120:], HOT)
    capsys.readouterr()
    assert main(["explain", str(models[1.0]), str(png), "--max-side", "0"]) == 2
    assert "--max-side must be a positive number of pixels, got 0" in capsys.readouterr().err


def test_a_centre_crop_is_undone_and_what_the_model_never_saw_stays_grey(models, top_left_cam, tmp_path: Path) -> None:
    dicom = write_dicom(tmp_path / "wide.dcm", _gradient(1600, 1900) * 0.8 + 0.1)
    picture = _explain(models[0.5], dicom, tmp_path / "wide.png", "--alpha", "1")
    scale = 1024 / 1900
    # crop_pct 0.5 at 64 px: the image goes to 128 x 152 and the centre 64 square is kept, i.e.
    # rows 400..1200 and columns 550..1350 of the original; its top-left quadrant is hot
    at = lambda row, col: picture[round(row * scale), round(col * scale)]  # noqa: E731
    assert np.abs(at(600, 750) - HOT).max() <= 30  # inside the hot quadrant, alpha 1: the map's colour
    assert np.abs(at(1000, 1150) - COLD).max() <= 30  # the window's cold part
    for row, col in ((100, 100), (1500, 1800), (600, 300), (600, 1600)):  # cut away by the crop: plain grey
        r, g, b = at(row, col)
        assert r == g == b


def test_explanation_image_checks_its_planes() -> None:
    grey = np.zeros((20, 30), np.float32)
    with pytest.raises(XrayfmError, match="one shape"):
        explanation_image(grey, np.zeros((10, 15), np.float32))
    with pytest.raises(XrayfmError, match="alpha"):
        explanation_image(grey, grey, alpha=1.5)
    assert display_size(1600, 1900) == (862, MAX_SIDE) and display_size(240, 300) == (240, 300)
    assert CLI_MAX_SIDE == MAX_SIDE  # the CLI's copy (it does not import the explain package at start)
    bar = np.asarray(colour_bar(400, "rollout"))
    assert _has(bar, COLD) and _has(bar, HOT)


def test_a_real_cr_dicom_is_no_longer_a_thumbnail(models, top_left_cam, shared_datasets: Path, tmp_path: Path) -> None:
    """The issue's case: a 1.9k px CR file gave a 96 px PNG; now its longer side is 1,024 px."""
    dicom = shared_datasets / "dicom_cr_samples/dicom/RG1_UNCR.dcm"
    picture = _explain(models[1.0], dicom, tmp_path / "rg1.png")
    height = _image_rows(picture)  # the file is 1841 wide, 1955 high
    assert height == 1024 and picture.shape[1] == round(1841 * 1024 / 1955)


def test_a_dicom_that_crashes_its_decoder_is_one_error_not_the_end_of_the_process(
    models, tmp_path: Path, capsys
) -> None:
    crasher = Path(__file__).parents[1] / "io" / "data" / "gdcm_segfault_jpeg_lossless.dcm"
    assert main(["explain", str(models[1.0]), str(crasher), "--out", str(tmp_path / "cam.png")]) == 2
    assert f"{crasher}: the DICOM decoder crashed on this file's pixel data" in capsys.readouterr().err
    assert not (tmp_path / "cam.png").exists()
