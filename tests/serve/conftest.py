"""A small saved model (random weights, every head) and its app, shared by the server tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xrayfm.models import create_model
from xrayfm.models.preprocess import Preprocess
from xrayfm.models.task_checkpoint import save_task_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec

TASKS = [
    TaskSpec("findings", "multilabel", ("effusion", "nodule", "cardiomegaly")),
    TaskSpec("lungs", "segmentation", ("lung",)),
    TaskSpec("lesions", "detection", ("nodule",)),
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("served") / "model"
    backbone = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64, dynamic_img_size=True)
    save_task_model(XrayModel(backbone, TASKS, preprocess=Preprocess(64, mean=0.49, std=0.28)), out, arch="eva_x_tiny_patch16",
                    model_kwargs={"img_size": 64, "dynamic_img_size": True},
                    info={"provenance": {"dataset": "phantom", "mode": "full"}})  # fmt: skip
    return out
