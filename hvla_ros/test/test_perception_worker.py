"""PropagationWorker: the propagator in a child process gives the same masks as in-process,
its errors come back typed, and a dead child is reported (no ROS)."""

from __future__ import annotations

import os
import signal

import cv2
import numpy as np
import pytest

from hvla_ros.perception import Box, BoxError, MaskPropagator, PropagationConfig, SegmenterError, make_segmenter
from hvla_ros.perception.worker import PropagationWorker, WorkerDied, to_rgb

H, W = 120, 160


def _frames(n: int) -> tuple[list[np.ndarray], list[Box]]:
    rng = np.random.default_rng(3)
    table = cv2.resize(rng.integers(90, 170, (H // 8, W // 8, 3)).astype(np.uint8), (W, H),
                       interpolation=cv2.INTER_CUBIC)
    frames = []
    for i in range(n):
        img = table.copy()
        cv2.rectangle(img, (30 + 2 * i, 40), (60 + 2 * i, 70), (220, 30, 30), -1)
        cv2.rectangle(img, (100, 60 + i), (125, 85 + i), (30, 60, 220), -1)
        frames.append(img)
    return frames, [Box(24, 34, 66, 76, "red"), Box(94, 54, 131, 91, "blue")]


@pytest.fixture
def worker():
    w = PropagationWorker("classical", {}, PropagationConfig(), answer_timeout_s=30.0)
    yield w
    w.close()


def test_same_masks_as_in_process(worker):
    frames, boxes = _frames(12)
    local = MaskPropagator(make_segmenter("classical"), PropagationConfig())
    local.initialize(frames[0], boxes)
    first = worker.process(frames[0], "rgb8", boxes)
    assert first.segment_ms is not None and first.mask is not None
    assert np.array_equal(first.mask, local.mask)
    for f in frames[1:]:
        res = worker.process(f, "rgb8")
        assert res.segment_ms is None
        assert np.array_equal(res.mask, local.update(f))
    assert worker.stats.frames == local.stats.frames == len(frames) - 1
    # bgr8 input is converted in the child like the node converts it
    bgr = np.ascontiguousarray(frames[-1][..., ::-1])
    assert np.array_equal(worker.process(bgr, "bgr8").mask, local.update(to_rgb(bgr, "bgr8")))
    # an empty box list stops tracking
    assert worker.process(frames[0], "rgb8", []).mask is None
    assert worker.process(frames[1], "rgb8").mask is None


def test_errors_come_back_typed_and_the_worker_keeps_serving(worker):
    frames, boxes = _frames(2)
    with pytest.raises(BoxError, match="9"):
        worker.process(frames[0], "rgb8", [boxes[0]] * 9)  # over max_boxes (8)
    assert worker.process(frames[0], "rgb8", boxes).mask is not None


def test_unknown_backend_fails_at_start_with_the_reason():
    with pytest.raises(SegmenterError, match="no_such_backend"):
        PropagationWorker("no_such_backend", {}, PropagationConfig())


def test_killed_child_is_reported(worker):
    frames, boxes = _frames(2)
    worker.process(frames[0], "rgb8", boxes)
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match="ended"):
        worker.process(frames[1], "rgb8")
    assert not worker.alive()
