"""A box task trains only where boxes are annotated: none in the training split is refused when
asked for, and left out with a warning when it came with the dataset's default tasks."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest

from xrayfm.errors import DatasetError
from xrayfm.finetune.run import _annotated_box_tasks
from xrayfm.tasks import TaskSpec

FINDINGS = TaskSpec("findings", "multilabel", ("a", "b"))
LESIONS = TaskSpec("lesions", "detection", ("nodule",))


class _Split(list):
    name, split = "nih_cxr14", "train"

    @property
    def records(self) -> list:
        return list(self)


def _split(*boxes: np.ndarray | None) -> _Split:
    return _Split(SimpleNamespace(boxes=b) for b in boxes)


def test_box_task_kept_when_any_training_image_is_annotated() -> None:
    ds = _split(None, np.zeros((0, 4), np.float32), None)  # an empty box list is an annotation: "no lesion"
    assert _annotated_box_tasks(ds, [FINDINGS, LESIONS], requested=True) == [FINDINGS, LESIONS]


def test_default_box_task_without_annotations_is_left_out_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert _annotated_box_tasks(_split(None, None), [FINDINGS, LESIONS], requested=False) == [FINDINGS]
    assert "none of the 2 training images has a box annotation for 'lesions'" in caplog.text


def test_requested_box_task_without_annotations_is_refused() -> None:
    with pytest.raises(DatasetError, match="box annotation for 'lesions'; choose another --task"):
        _annotated_box_tasks(_split(None), [LESIONS], requested=True)
    with pytest.raises(DatasetError, match="nothing to train"):
        _annotated_box_tasks(_split(None), [LESIONS], requested=False)
