"""Reading weight files as they are published: wrapper keys, fp16, pickled training arguments, and refusal of
anything that would run code.

The EVA-X release's fine-tuned files are written by classification/utils/misc.py save_model(): ``model`` (the
state dict), ``optimizer``, ``epoch``, ``scaler`` and ``args`` (the run's ``argparse.Namespace``); its pretrained
files hold fp16 weights under ``module`` (see ../shared/reference/eva-x.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from xrayfm import XrayfmError
from xrayfm.models import read_state_dict

WEIGHTS = {"blocks.0.attn.proj.weight": torch.randn(4, 4), "cls_token": torch.randn(1, 1, 4)}


class Recipe:
    """A class no weights-only load may rebuild (unpickling a class can run its code)."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


@pytest.mark.parametrize("key", ["model", "module", "state_dict", "model_ema", None])
def test_weights_are_found_under_each_wrapper_key(tmp_path: Path, key: str | None) -> None:
    torch.save(WEIGHTS if key is None else {key: WEIGHTS, "epoch": 3}, tmp_path / "w.pth")
    state = read_state_dict(tmp_path / "w.pth")
    assert state.keys() == WEIGHTS.keys()
    torch.testing.assert_close(state["cls_token"], WEIGHTS["cls_token"])


def test_finetuned_release_file_loads_without_unsafe_flag(tmp_path: Path) -> None:
    """misc.save_model()'s layout: the args namespace (strings, numbers, lists, None) is allowed, the rest is read."""
    args = argparse.Namespace(
        model="eva02_base_patch16_xattn_fusedLN_NaiveSwiGLU_subln_RoPE", input_size=224, blr=1e-3, layer_decay=0.55,
        aa="rand-m6-mstd0.5-inc1", finetune="pretrained/eva_x_base_patch16_merged520k_mim.pt", resume="", seed=0,
        nb_classes=14, use_mean_pooling=True, lr=None, train_list=["a.txt", "b.txt"],
    )  # fmt: skip
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    torch.save(
        {"model": WEIGHTS, "optimizer": optimizer.state_dict(), "epoch": 3, "scaler": {"scale": 65536.0}, "args": args},
        tmp_path / "checkpoint-best.pth",
    )
    assert read_state_dict(tmp_path / "checkpoint-best.pth").keys() == WEIGHTS.keys()
    # the allow-list lasts for that one load: the process's own list is unchanged
    assert argparse.Namespace not in torch.serialization.get_safe_globals()


def test_fp16_pretrained_file_keeps_its_dtype(tmp_path: Path) -> None:
    torch.save({"module": {k: v.half() for k, v in WEIGHTS.items()}}, tmp_path / "mim.pt")
    state = read_state_dict(tmp_path / "mim.pt")
    assert all(v.dtype == torch.float16 for v in state.values())
    torch.testing.assert_close(state["cls_token"].float(), WEIGHTS["cls_token"].half().float())


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"recipe": Recipe(0.1)}, id="another-class"),
        pytest.param({"args": argparse.Namespace(recipe=Recipe(0.1))}, id="another-class-inside-args"),
    ],
)
def test_any_other_class_is_refused_unless_trusted(tmp_path: Path, extra: dict) -> None:
    torch.save({"model": WEIGHTS, **extra}, tmp_path / "u.pt")
    with pytest.raises(XrayfmError, match=r"unsafe unpickling.*Recipe.*allow_unsafe=True") as err:
        read_state_dict(tmp_path / "u.pt")
    assert "\n" not in str(err.value)
    assert read_state_dict(tmp_path / "u.pt", allow_unsafe=True).keys() == WEIGHTS.keys()  # trusted: loads


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(XrayfmError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(XrayfmError, match="not a readable"):
        read_state_dict(tmp_path / "junk.pt")
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=0.1)}, tmp_path / "no_tensors.pt")
    with pytest.raises(XrayfmError, match="holds no tensors"):
        read_state_dict(tmp_path / "no_tensors.pt")
