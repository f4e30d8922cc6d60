"""compute_heatmap: the one entry point the CLI and the server share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrayfm.errors import XrayfmError
from xrayfm.explain import attention_rollout, class_activation_map, compute_heatmap, query_attention
from xrayfm.models import create_model
from xrayfm.models.task_model import XrayModel
from xrayfm.tasks import TaskSpec


def test_each_method_gives_the_library_map() -> None:
    torch.manual_seed(0)
    backbone = create_model("eva_x_tiny_patch16", num_classes=0, img_size=64, dynamic_img_size=True)
    model = XrayModel(backbone, [TaskSpec("findings", "multilabel", ("a", "b"))])
    x = torch.rand(2, 1, 64, 64)
    np.testing.assert_allclose(compute_heatmap(model, x, method="rollout"), attention_rollout(model, x).numpy())
    np.testing.assert_allclose(
        compute_heatmap(model, x, method="attention", point=(0.2, 0.8)),
        query_attention(model, x, (0.2, 0.8)).numpy(),
    )
    cam = compute_heatmap(model, x, method="gradcam++", task="findings", class_index=1)
    assert cam.shape == (2, 64, 64)
    np.testing.assert_allclose(cam, class_activation_map(model, x, class_index=1, method="gradcam++")[0], atol=1e-6)
    with pytest.raises(XrayfmError, match="unknown CAM method 'grad'"):
        compute_heatmap(model, x, method="grad")
