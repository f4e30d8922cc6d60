"""Refused weight files say why: code the pickle would run, or Python objects it needs."""

from __future__ import annotations

import builtins
import datetime
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from xrayfm import XrayfmError
from xrayfm.models.checkpoints import pickled_globals, read_state_dict, runs_code

WEIGHTS = {"w": torch.zeros(2)}


class RunsCommand:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class RunsEval:
    def __reduce__(self) -> tuple:
        return builtins.eval, ("1 + 1",)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_runs_a_command_is_named_and_never_run(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "MARKER"
    torch.save({"model": WEIGHTS, "x": RunsCommand(marker)}, tmp_path / "evil.pt",
               _use_new_zipfile_serialization=zip_format)  # fmt: skip
    with pytest.raises(XrayfmError, match=r"evil.pt: refused: the file asks to run code \((posix|nt)\.system\)") as err:
        read_state_dict(tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and "allow_unsafe" not in str(err.value)
    assert not marker.exists()


def test_code_behind_an_ordinary_class_is_still_named(tmp_path: Path) -> None:
    """PyTorch stops at the first global it refuses (here numpy's); the command after it is found too."""
    marker = tmp_path / "MARKER"
    torch.save({"model": WEIGHTS, "a": np.float64(1.0), "b": RunsCommand(marker)}, tmp_path / "mixed.pt")
    with pytest.raises(XrayfmError, match=r"asks to run code \((posix|nt)\.system\)"):
        read_state_dict(tmp_path / "mixed.pt")
    assert not marker.exists()


def test_eval_is_code(tmp_path: Path) -> None:
    torch.save({"model": WEIGHTS, "x": RunsEval()}, tmp_path / "eval.pt")
    with pytest.raises(XrayfmError, match=r"asks to run code \(builtins\.eval\)"):
        read_state_dict(tmp_path / "eval.pt")


@pytest.mark.parametrize(
    "value, name",
    [(np.float64(1.0), "numpy"), (datetime.date(2020, 1, 2), "datetime.date")],
    ids=["numpy-scalar", "date"],
)
def test_an_ordinary_class_keeps_the_allow_unsafe_message(tmp_path: Path, value: object, name: str) -> None:
    torch.save({"model": WEIGHTS, "extra": value}, tmp_path / "objects.pt")
    with pytest.raises(XrayfmError, match=rf"needs unsafe unpickling.*{name}.*allow_unsafe=True") as err:
        read_state_dict(tmp_path / "objects.pt")
    assert "run code" not in str(err.value)
    assert read_state_dict(tmp_path / "objects.pt", allow_unsafe=True).keys() == WEIGHTS.keys()


@pytest.mark.parametrize(
    "message, expected",
    [
        ("Weights only load failed. Unsupported global: GLOBAL posix.system was not an allowed global", "posix.system"),
        ("Trying to load unsupported GLOBAL nt.system whose module nt is blocked.", "nt.system"),
        ("unsupported global: global subprocess.Popen", "subprocess.Popen"),
        ("UNSUPPORTED GLOBAL: GLOBAL exec was not an allowed global by default", "builtins.exec"),
    ],
)
def test_pytorch_wordings_are_read_case_insensitively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str, expected: str
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise pickle.UnpicklingError(message)

    (tmp_path / "w.pt").write_bytes(b"no pickle here")
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(XrayfmError, match=rf"asks to run code \({expected}\)"):
        read_state_dict(tmp_path / "w.pt")


def test_an_unknown_wording_naming_a_class_asks_for_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise pickle.UnpicklingError("weights only: unsupported global mylib.Config")

    (tmp_path / "w.pt").write_bytes(b"no pickle here")
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(XrayfmError, match=r"needs unsafe unpickling.*mylib\.Config.*allow_unsafe"):
        read_state_dict(tmp_path / "w.pt")


@pytest.mark.parametrize(
    "name, code",
    [
        ("posix.system", True), ("nt.system", True), ("os.popen", True), ("subprocess.check_output", True),
        ("eval", True), ("builtins.getattr", True), ("__builtin__.__import__", True), ("runpy._run_code", True),
        ("operator.methodcaller", True), ("types.CodeType", True),
        ("numpy.dtype", False), ("argparse.Namespace", False), ("collections.OrderedDict", False),
        ("builtins.set", False), ("operator.itemgetter", False), ("functools.partial", False),
        ("posixpath.join", False),
    ],
)  # fmt: skip
def test_runs_code(name: str, code: bool) -> None:
    assert runs_code(name) is code


def test_pickled_globals_imports_nothing(tmp_path: Path) -> None:
    torch.save({"model": WEIGHTS, "x": RunsCommand(tmp_path / "M"), "d": datetime.date(2020, 1, 2)}, tmp_path / "a.pt")
    names = pickled_globals(tmp_path / "a.pt")
    assert {"posix.system", "datetime.date"} <= set(names) or {"nt.system", "datetime.date"} <= set(names)
    assert not (tmp_path / "M").exists()
    assert pickled_globals(tmp_path / "missing.pt") == []
