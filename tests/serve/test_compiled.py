"""``xrayfm serve --compile``: compiled passes answer as the model does, compile before serving, and run on any
lane's thread count without compiling again; refusals in one line."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from serve.conftest import TASKS

from xrayfm.cli import main
from xrayfm.errors import XrayfmError
from xrayfm.models import create_model
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.serve.compiled import default_task_sets, quiet_cuda_search, warm_up
from xrayfm.serve.runtime import ModelRuntime
from xrayfm.tasks import TaskSpec


@pytest.fixture(scope="module")
def shallow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every head on a two-block EVA-X Ti (compiling a shallow graph keeps the test short)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("compiled") / "model"
    kwargs = {"img_size": 64, "depth": 2}
    backbone = create_model("eva_x_tiny_patch16", num_classes=0, **kwargs)
    save_task_model(XrayModel(backbone, TASKS, preprocess=Preprocess(64, mean=0.49, std=0.28)), out,
                    arch="eva_x_tiny_patch16", model_kwargs=kwargs, info={})  # fmt: skip
    return out


def graphs_compiled() -> int:
    return sum(torch._dynamo.utils.counters["stats"].values())


@pytest.fixture(scope="module")
def runtimes(shallow_model_dir: Path) -> tuple[ModelRuntime, ModelRuntime, int]:
    """The model compiled (and warmed up) and not, and the compile counter after the warm-up."""
    compiled = ModelRuntime(shallow_model_dir, torch_compile=True, lane_threads=(2, 1))
    return compiled, ModelRuntime(shallow_model_dir), graphs_compiled()


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((80, 72), dtype=np.float32) for _ in range(n)]


def assert_same_answers(compiled: ModelRuntime, eager: ModelRuntime, task: str, n: int) -> None:
    got = compiled.run_batch([(im, task) for im in images(n)])
    want = eager.run_batch([(im, task) for im in images(n)])
    for a, b in zip(got, want):
        for key in ("boxes", "scores", "labels") if task == "lesions" else (None,):
            x, y = (a.outputs[task], b.outputs[task]) if key is None else (a.outputs[task][key], b.outputs[task][key])
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["findings", "lungs", "lesions"])
@pytest.mark.parametrize("n", [1, 3])
def test_compiled_passes_answer_as_the_model_does(runtimes: tuple, task: str, n: int) -> None:
    compiled, eager, _ = runtimes
    assert compiled.compiled is not None and eager.compiled is None
    assert_same_answers(compiled, eager, task, n)


def test_the_warm_up_leaves_nothing_to_compile_on_any_lane(runtimes: tuple) -> None:
    compiled, eager, after_warm_up = runtimes
    assert after_warm_up > 0  # the warm-up compiled graphs
    errors: list[BaseException] = []

    def lane(threads: int) -> None:  # a lane thread: its own thread count, the same kernels
        try:
            compiled.use_threads(threads)
            for task in ("findings", "lungs"):
                for n in (1, 2, 5):
                    assert_same_answers(compiled, eager, task, n)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    lanes = [threading.Thread(target=lane, args=(t,)) for t in (1, 1, 2)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    assert not errors, errors
    assert graphs_compiled() == after_warm_up


def test_the_default_task_sets_are_what_requests_naming_no_head_run() -> None:
    heads = [TaskSpec("b/findings", "multilabel", ("x",)), TaskSpec("lungs", "segmentation", ("lung",)),
             TaskSpec("a/tb", "multiclass", ("normal", "tb")), TaskSpec("boxes", "detection", ("nodule",)),
             TaskSpec("heart", "segmentation", ("heart",))]  # fmt: skip
    assert default_task_sets(heads) == [["a/tb", "b/findings"], ["lungs"], ["heart"]]
    assert default_task_sets(TASKS) == [["findings"], ["lungs"]]


@pytest.mark.parametrize(("device", "heard"), [("cpu", ["after"]), ("cuda", ["inside", "after"])])
def test_the_cuda_search_warning_is_quiet_while_compiling_for_a_cpu(device: str, heard: list[str]) -> None:
    logger, seen = logging.getLogger("torch.utils.cpp_extension"), []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        with quiet_cuda_search(torch.device(device)):
            logger.warning("inside")
        logger.warning("after")
    finally:
        logger.removeHandler(handler)
    assert seen == heard


def test_compile_on_the_onnx_backend_is_refused(shallow_model_dir: Path) -> None:
    with pytest.raises(XrayfmError, match="--compile is for the torch backend"):
        ModelRuntime(shallow_model_dir, backend="onnx", torch_compile=True)


def test_a_failed_compile_is_one_line() -> None:
    def broken(x: torch.Tensor, tasks: list[str]) -> None:
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n  deep traceback line")

    with pytest.raises(XrayfmError, match=r"^--compile: torch.compile failed \(InvalidCxxCompiler: No working C\+\+ "
                                          r"compiler found\); serve without --compile$"):  # fmt: skip
        warm_up(broken, [["findings"]], 32, "fp32", torch.device("cpu"))


def test_the_serve_command_passes_compile_on(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    seen: dict[str, Any] = {}
    monkeypatch.setattr("xrayfm.serve.app.create_app", lambda model, **kw: seen.update(kw))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    assert main(["serve", str(model_dir), "--compile"]) == 0 and seen["torch_compile"] is True
    assert main(["serve", str(model_dir)]) == 0 and seen["torch_compile"] is False


def test_serve_compile_on_onnx_is_refused_in_one_line(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    uvicorn = pytest.importorskip("uvicorn")
    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app))
    assert main(["serve", str(model_dir), "--compile", "--backend", "onnx"]) != 0
    err = capsys.readouterr().err
    assert "--compile is for the torch backend" in err and "Traceback" not in err and not started
