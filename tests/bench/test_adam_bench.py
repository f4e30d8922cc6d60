"""bench/adam_throughput.py, its README table (bench/readme_tables.py) and bench/decomposer_figure.py."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from xrayfm.data.phantom import PhantomConfig, generate_phantom
from xrayfm.errors import XrayfmError

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
FIGURE = REPO / "docs" / "img" / "adam_decomposer.png"


def _bench(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A bench script as a module (importable by name, as the benchmark's worker processes need)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(name)


@pytest.fixture
def throughput(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _bench("adam_throughput", monkeypatch)


@pytest.fixture
def figure(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return _bench("decomposer_figure", monkeypatch)


@pytest.mark.parametrize("kind", ["moco", "plain"])
def test_measure_times_a_training_step_and_its_memory(throughput: ModuleType, kind: str) -> None:
    job = {"kind": kind, "arch": "resnet18", "size": 32, "batch": 2, "warmup": 1, "steps": 1, "granularity": 2,
           "queue_size": 16, "device": "cpu"}  # fmt: skip
    result = throughput.measure(job)
    assert result["step_s"] > 0
    assert 0 < result["step_mib"] <= result["peak_mib"]


def test_cuda_asked_for_without_cuda_is_a_user_error(throughput: ModuleType) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(XrayfmError, match="--device cuda"):
        throughput.main(["--device", "cuda"])


@pytest.mark.slow  # two worker processes, each importing torch and building the model
def test_benchmark_writes_results_with_provenance(throughput: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "adam.json"
    argv = ["--archs", "resnet18", "--sizes", "32", "--batches", "2", "--warmup", "0", "--steps", "1",
            "--queue-size", "16", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert throughput.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["setup"]["prune_threshold"] == 0.8 and report["setup"]["queue_size"] == 16
    (row,) = report["results"]
    assert (row["arch"], row["img_size"], row["batch"]) == ("resnet18", 32, 2)
    assert row["moco_pairs_per_s"] > 0 and row["plain_images_per_s"] > 0 and row["ratio_moco_over_plain"] > 0
    assert {"command", "git", "machine", "software"} <= report["provenance"].keys()
    assert set(report["decomposer_pairs_per_s_one_thread"]) == {"32"}


def test_readme_table_of_the_adam_benchmark(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _bench("readme_tables", monkeypatch)
    report = {
        "setup": {"device": "cpu", "granularity": 2, "prune_threshold": 0.8, "queue_size": 65536,
                  "precision": "fp32", "timed_steps": 3, "warmup_steps": 2},
        "decomposer_pairs_per_s_one_thread": {"224": 61.25, "128": 140.4},
        "results": [{"arch": "resnet50", "img_size": 224, "batch": 8, "moco_pairs_per_s": 1.46,
                     "plain_images_per_s": 2.45, "ratio_moco_over_plain": 1.675, "moco_peak_mib": 2345.5,
                     "moco_step_mib": 678.4, "plain_peak_mib": 1999.0, "plain_step_mib": 512.6}],
        "provenance": {"command": ["bench/adam_throughput.py"], "date": "2026-01-01"},
    }  # fmt: skip
    stem, render = tables.renderer("adam_throughput_cpu")
    text = render(report, "bench/results/adam_throughput_cpu.json")
    assert stem == "adam_throughput_cpu"
    assert "| resnet50 | 224 | 8 | 1.5 | 2.5 | 1.68x | 2,346 (678) | 1,999 (513) |" in text
    flat = " ".join(text.split())
    assert "peak RSS MiB" in flat and "queue 65,536" in flat and "61 pairs/s at 224 px" in flat
    assert "`python bench/adam_throughput.py`" in flat


def _png(figure: ModuleType, pixels: np.ndarray, path: Path, seed: int) -> bytes:
    fig = figure.decomposer_figure(pixels, name="a phantom", pairs=2, size=32, seed=seed)
    assert len(fig.axes) == 3 * (1 + 3 * 2)
    figure.save_png(fig, path)
    figure.plt.close(fig)
    return path.read_bytes()


def test_figure_is_the_same_for_a_seed_and_differs_for_another(figure: ModuleType, tmp_path: Path) -> None:
    pixels = generate_phantom(0, seed=0, config=PhantomConfig(size=128)).image
    first = _png(figure, pixels, tmp_path / "a.png", seed=0)
    assert _png(figure, pixels, tmp_path / "b.png", seed=0) == first
    assert _png(figure, pixels, tmp_path / "c.png", seed=1) != first
    assert Image.open(tmp_path / "a.png").mode == "P"  # a palette keeps the committed file small


@pytest.mark.shared_data
def test_committed_figure_is_what_the_script_makes_from_jsrt(figure: ModuleType, tmp_path: Path) -> None:
    """The README's figure is current: made again from the real radiograph, it has the same pixels
    (up to font rasterisation, which may differ between FreeType builds)."""
    if not figure.IMAGE.is_file():
        pytest.skip(f"{figure.IMAGE} is missing")
    assert figure.main(["--out", str(tmp_path / "fig.png")]) == 0
    made = np.asarray(Image.open(tmp_path / "fig.png").convert("RGB"), dtype=np.int16)
    committed = np.asarray(Image.open(FIGURE).convert("RGB"), dtype=np.int16)
    assert made.shape == committed.shape
    assert np.abs(made - committed).mean() < 1.0
    assert FIGURE.stat().st_size < 400_000
