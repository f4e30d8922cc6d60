"""The ``xrayfm`` entry point: user mistakes and bugs each end in one line, never a traceback."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only

from xrayfm.cli import build_parser, main
from xrayfm.cli.args import train_config
from xrayfm.cli.explain import _overlay_path, _point
from xrayfm.errors import XrayfmError
from xrayfm.progress import PROGRESS_LOGGER


def _boom(args: argparse.Namespace) -> int:
    raise RuntimeError("a bug\nwith a second line")


def test_unexpected_exception_is_one_line_with_status_1(monkeypatch, capsys) -> None:
    monkeypatch.setattr("xrayfm.cli.data.cmd_datasets", _boom)
    assert main(["datasets"]) == 1
    err = capsys.readouterr().err
    assert err == "xrayfm: internal error: RuntimeError: a bug (run with -v for the traceback)\n"


def test_verbose_logs_the_traceback_of_an_unexpected_exception(monkeypatch, capsys, caplog) -> None:
    monkeypatch.setattr("xrayfm.cli.data.cmd_datasets", _boom)
    with caplog.at_level(logging.DEBUG, logger="xrayfm"):
        assert main(["-v", "datasets"]) == 1
    assert capsys.readouterr().err.startswith("xrayfm: internal error: RuntimeError:")
    record = next(r for r in caplog.records if r.getMessage() == "internal error")
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_bad_devices_is_an_xrayfm_error(tmp_path: Path, capsys) -> None:
    args = build_parser().parse_args(["pretrain", "mim", "phantom", "R", "--devices", "abc", "--out", str(tmp_path)])
    with pytest.raises(XrayfmError, match="--devices must be a number of devices or 'auto', got 'abc'"):
        train_config(args)
    assert main(["finetune", "phantom", "R", "--devices", "two", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "xrayfm: error: --devices must be a number of devices or 'auto', got 'two'\n"
    assert not (tmp_path / "run").exists()  # nothing written before the mistake is found
    args.devices = "auto"
    assert train_config(args).devices == "auto"
    args.devices = "2"
    assert train_config(args).devices == 2


def test_explain_out_is_an_image_name_or_a_folder(tmp_path: Path) -> None:
    assert _overlay_path(None, "scans/a.dcm", "rollout") == Path("a_rollout.png")
    assert _overlay_path(str(tmp_path), "scans/a.dcm", "gradcam") == tmp_path / "a_gradcam.png"
    assert _overlay_path(str(tmp_path / "heat.JPG"), "a.png", "gradcam") == tmp_path / "heat.JPG"
    for bad in (tmp_path / "heat", tmp_path / "new_folder", tmp_path / "heat.txt"):
        with pytest.raises(XrayfmError, match=r"must end in \.png, \.jpg, \.jpeg"):
            _overlay_path(str(bad), "a.png", "gradcam")


def test_explain_point_is_two_numbers() -> None:
    assert _point(None) == (0.5, 0.5) and _point("0.2,0.7") == (0.2, 0.7)
    for bad in ("a,b", "0.1", "0.1,0.2,0.3"):
        with pytest.raises(XrayfmError, match="--point must be x,y"):
            _point(bad)


def test_shared_options_are_declared_alike() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers = dict(sub.choices)
    methods = next(a for a in parsers.pop("pretrain")._actions if isinstance(a, argparse._SubParsersAction))
    parsers["pretrain mim"], parsers["pretrain anatomy"] = methods.choices["mim"], methods.choices["anatomy"]
    with_option = {name for name, p in parsers.items() if any("--option" in a.option_strings for a in p._actions)}
    assert with_option == {"inspect", "stats", "pretrain mim", "pretrain anatomy", "finetune", "sweep", "evaluate",
                           "evaluate anatomy", "localize", "compare"}  # fmt: skip
    defaults = {name: a.default for name, p in parsers.items() for a in p._actions if "--split" in a.option_strings}
    assert defaults == {"inspect": "all", "stats": "train", "evaluate": "test", "evaluate anatomy": "test",
                        "localize": "test", "compare": "test"}  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--accelerator", "gpu"], "--accelerator gpu: no CUDA GPU is visible on this machine"),
        (["--devices", "0"], "--devices must be at least 1 (or 'auto' for all), got 0"),
        (["--num-nodes", "0"], "--num-nodes must be at least 1, got 0"),
        (["--strategy", "ddp_spawn"], "--strategy ddp_spawn starts processes from a function"),
        (["--strategy", "fsdp_cpu_offload", "--devices", "4"], "--strategy fsdp_cpu_offload needs GPUs"),
        (["--strategy", "fdsp"], "--strategy fdsp is unknown; use auto, ddp or fsdp"),
        (["--precision", "fp16"], "--precision fp16 is unknown; use one of auto, "),
    ],
)
def test_device_mistakes_are_one_line_before_anything_is_written(
    options: list[str], message: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.backends.mps.is_available", lambda: False)
    for command in (["pretrain", "mim"], ["finetune"], ["sweep"]):
        out = tmp_path / command[-1]
        assert main([*command, "phantom", str(tmp_path / "no_data"), "--out", str(out), *options]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"xrayfm: error: {message}") and err.count("\n") == 1, err
        assert not out.exists()


def test_only_rank_zero_prints_the_result(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr("xrayfm.pretrain.mim_run.run_mim", lambda *a, **k: tmp_path / "r" / "export")
    argv = ["pretrain", "mim", "phantom", "R", "--out", str(tmp_path / "r"), "--accelerator", "cpu"]
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert main(argv) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("pretraining finished") and out[1].startswith("exported backbone")


def test_progress_lines_reach_stderr_without_verbose(monkeypatch, capsys) -> None:
    def work(args: argparse.Namespace) -> int:
        logging.getLogger(PROGRESS_LOGGER).info("step 1/2  loss 0.5000")
        logging.getLogger("xrayfm.data").info("an info message stays hidden")
        return 0

    monkeypatch.setattr("xrayfm.cli.data.cmd_datasets", work)
    for _ in range(2):  # a second main() replaces the handler of the first, it does not add one
        assert main(["datasets"]) == 0
        assert capsys.readouterr().err == "step 1/2  loss 0.5000\n"
