"""``xrayfm serve``: its limit options reach the app, and uvicorn runs with bounded connections and headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from xrayfm.cli import main
from xrayfm.serve.http_protocol import BoundedHttpToolsProtocol


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    uvicorn = pytest.importorskip("uvicorn")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    return seen


def test_limits_reach_the_app_and_uvicorn(model_dir: Path, started: dict[str, Any]) -> None:
    argv = ["serve", str(model_dir), "--max-decodes", "3", "--max-megapixels-in-flight", "300", "--queue-size", "5",
            "--body-timeout", "7", "--body-idle-timeout", "2", "--max-connections", "40"]  # fmt: skip
    assert main(argv) == 0
    admission = started["app"].state.admission
    assert (admission.max_decodes, admission.max_requests, admission.max_pixels) == (3, 8, 300_000_000)
    assert started["limit_concurrency"] == 40 and started["http"] is BoundedHttpToolsProtocol
    assert BoundedHttpToolsProtocol.max_head == 16_384 and started["timeout_keep_alive"] == 5
    assert started["server_header"] is False


def test_a_pixel_budget_below_one_image_is_refused(model_dir: Path, started: dict[str, Any],
                                                   capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    assert main(["serve", str(model_dir), "--max-megapixels-in-flight", "50"]) == 2
    assert "pixel budget" in capsys.readouterr().err and not started


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "unknown device 'gpu'; use cpu, cuda or cuda:N"),
     pytest.param("cuda", "--device cuda: no CUDA GPU is visible on this machine", marks=pytest.mark.skipif(
         __import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU"))],
)  # fmt: skip
def test_a_device_this_machine_lacks_is_refused_in_one_line(
    model_dir: Path, started: dict[str, Any], capsys: pytest.CaptureFixture, device: str, message: str
) -> None:
    assert main(["serve", str(model_dir), "--device", device]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not started
