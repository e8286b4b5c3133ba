"""perception_node in its own process over real DDS: filtered images, status, Segment service."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from hvla_ros.testing import procs

pytestmark = pytest.mark.ros

H, W = 96, 128


def _scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((H, W, 3), (120, 140, 110), np.uint8) + rng.integers(0, 8, (H, W, 3)).astype(np.uint8)
    img[30:60, 40:70] = (220, 30, 30)
    return img


def _spin_until(ex, proc, cond: Callable[[], bool], timeout: float,
                publish: Callable[[], None] | None = None) -> bool:
    """Spin ``ex`` until ``cond()`` holds (False after ``timeout`` s), calling ``publish`` every
    50 ms; fails the test with the node's output if its process exits."""
    end, last = time.monotonic() + timeout, 0.0
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"perception_node exited with {proc.returncode}:\n{procs.output(proc)}")
        if publish is not None and time.monotonic() - last > 0.05:
            publish()
            last = time.monotonic()
        ex.spin_once(timeout_sec=0.02)
        if cond():
            return True
    return False


@pytest.fixture
def perception_process():
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "hvla_ros.nodes.perception_node", "--ros-args",
           "-p", "cameras:=[front]", "-p", "stale_timeout_s:=0.4", "-p", "status_period_s:=0.1",
           "-p", "fill:=zero"]
    proc = procs.spawn(cmd, env=env)
    try:
        yield proc
    finally:
        print(procs.stop(proc)[-4000:])  # shown by pytest when a test of this module fails


def test_node_filters_reports_and_survives_bad_input(rclpy_context, perception_process):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from hvla_interfaces.msg import PerceptionStatus, PixelBox, Subtask
    from hvla_interfaces.srv import Segment
    from hvla_ros import topics
    from hvla_ros.rosutil.images import from_image_msg, to_image_msg
    from hvla_ros.rosutil.qos import IMAGE_QOS, LATCHED_QOS, STATE_QOS

    node = Node("perception_test", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    filtered: list[Image] = []
    masks: list[Image] = []
    statuses: list[PerceptionStatus] = []
    node.create_subscription(Image, topics.filtered_image("front"), filtered.append, IMAGE_QOS)
    node.create_subscription(Image, topics.mask_image("front"), masks.append, IMAGE_QOS)
    node.create_subscription(PerceptionStatus, topics.PERCEPTION_STATUS, statuses.append, STATE_QOS)
    img_pub = node.create_publisher(Image, topics.camera_image("front"), IMAGE_QOS)
    sub_pub = node.create_publisher(Subtask, topics.CURRENT_SUBTASK, LATCHED_QOS)
    client = node.create_client(Segment, topics.SEGMENT_SERVICE)

    def spin_until(cond: Callable[[], bool], timeout: float, publish: Image | None = None) -> bool:
        return _spin_until(ex, perception_process, cond, timeout,
                           None if publish is None else lambda: img_pub.publish(publish))

    try:
        scene = _scene()
        frame = to_image_msg(scene, "rgb8")
        frame.header.frame_id = "front_optical"
        sub = Subtask(episode_id="e1", subtask_id=0, attempt=1, instruction="pick up the blue cube")
        sub.distractor_boxes = [PixelBox(camera="front", label="red cube", x_min=36.0, y_min=26.0,
                                         x_max=74.0, y_max=64.0)]
        sub_pub.publish(sub)

        def masked_frame() -> bool:
            return any(from_image_msg(m)[45, 55].sum() == 0 for m in filtered)

        assert spin_until(masked_frame, 40.0, publish=frame), "no masked filtered image arrived"
        out = next(m for m in filtered if from_image_msg(m)[45, 55].sum() == 0)
        assert (out.height, out.width, out.encoding) == (H, W, "rgb8")
        assert out.header.frame_id == "front_optical"
        arr = from_image_msg(out)
        assert (arr[32:58, 42:68] == 0).all(), "object pixels must be zeroed"
        assert np.array_equal(arr[:20], scene[:20]), "pixels away from the box must be untouched"
        assert spin_until(lambda: len(masks) > 0, 5.0, publish=frame)
        mask = from_image_msg(masks[-1])
        assert masks[-1].encoding == "mono8" and mask.shape == (H, W)
        assert mask[45, 55] == 255 and mask[5, 5] == 0

        # A frame of an unsupported encoding is reported, not fatal.
        bad = to_image_msg(np.zeros((H, W), np.float32), "32FC1")
        statuses.clear()
        assert spin_until(lambda: any(s.error_code == PerceptionStatus.ERROR_BAD_IMAGE for s in statuses),
                          10.0, publish=bad), "bad encoding was not reported"

        # No frames -> stale status.
        statuses.clear()
        assert spin_until(lambda: any(s.stale and s.camera == "front" and
                                      s.error_code == PerceptionStatus.ERROR_STALE_INPUT for s in statuses),
                          10.0), "stale input was not reported"

        # Segment service: one NaN box rejected by name, the good one segmented.
        assert client.wait_for_service(timeout_sec=10.0)
        req = Segment.Request(image=frame)
        req.boxes = [PixelBox(camera="front", label="nan", x_min=math.nan, y_min=0.0, x_max=5.0, y_max=5.0),
                     PixelBox(camera="front", label="red cube", x_min=36.0, y_min=26.0, x_max=200.0,
                              y_max=64.0)]
        fut = client.call_async(req)
        assert spin_until(fut.done, 20.0)
        resp = fut.result()
        assert resp.error_code == Segment.Response.ERROR_BAD_BOXES and "nan" in resp.error_msg
        assert len(resp.accepted_boxes) == 1 and resp.accepted_boxes[0].x_max == W  # clipped
        seg = from_image_msg(resp.mask)
        assert seg[45, 55] == 255 and seg[5, 5] == 0
        assert perception_process.poll() is None
    finally:
        ex.shutdown()
        node.destroy_node()


def _moving_scene(i: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The red square of :func:`_scene`, moved 2 px right per frame; its xyxy box."""
    img = np.full((H, W, 3), (120, 140, 110), np.uint8)
    img[::4, ::4] = (90, 100, 80)  # some texture for the optical flow
    x0 = 30 + 2 * i
    img[30:60, x0:x0 + 30] = (220, 30, 30)
    return img, (x0, 30, x0 + 30, 60)


@pytest.mark.parametrize(("pipelined", "process"), [(True, False), (True, True), (False, False)],
                         ids=["pipelined-thread", "pipelined-process", "synchronous"])
def test_node_mask_follows_moving_object(rclpy_context, pipelined, process):
    """Every mode publishes every frame at full size; the mask covers the moving object
    (pipelined: the mask of the previous frame, grown by ``pipeline_dilate_px``, propagated in a
    thread or a child process; synchronous: exact)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from hvla_interfaces.msg import PixelBox, Subtask
    from hvla_ros import topics
    from hvla_ros.rosutil.images import from_image_msg, to_image_msg
    from hvla_ros.rosutil.qos import IMAGE_QOS, LATCHED_QOS

    cmd = [sys.executable, "-m", "hvla_ros.nodes.perception_node", "--ros-args", "-p", "cameras:=[front]",
           "-p", f"pipelined:={str(pipelined).lower()}", "-p", f"propagation.process:={str(process).lower()}",
           "-p", "pipeline_dilate_px:=3", "-p", "fill:=zero"]
    proc = procs.spawn(cmd, env=dict(os.environ))
    node = Node("perception_motion_test", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    filtered: dict[str, Image] = {}
    masks: dict[str, Image] = {}
    node.create_subscription(Image, topics.filtered_image("front"),
                             lambda m: filtered.__setitem__(m.header.frame_id, m), IMAGE_QOS)
    node.create_subscription(Image, topics.mask_image("front"),
                             lambda m: masks.__setitem__(m.header.frame_id, m), IMAGE_QOS)
    img_pub = node.create_publisher(Image, topics.camera_image("front"), IMAGE_QOS)
    sub_pub = node.create_publisher(Subtask, topics.CURRENT_SUBTASK, LATCHED_QOS)

    def spin(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.01)

    try:
        sub = Subtask(episode_id="e2", subtask_id=0, attempt=1, instruction="move")
        sub.distractor_boxes = [PixelBox(camera="front", label="red cube", x_min=26.0, y_min=26.0,
                                         x_max=64.0, y_max=64.0)]
        sub_pub.publish(sub)
        first, _ = _moving_scene(0)
        warm = to_image_msg(first, "rgb8")
        warm.header.frame_id = "warm"
        end = time.monotonic() + 40.0
        while time.monotonic() < end and not any(from_image_msg(m)[45, 45].sum() == 0 for m in filtered.values()):
            assert proc.poll() is None, "perception_node exited"
            img_pub.publish(warm)
            spin(0.05)
        assert any(from_image_msg(m)[45, 45].sum() == 0 for m in filtered.values()), "never masked"
        n = 20
        boxes = {}
        for i in range(n):
            img, boxes[str(i)] = _moving_scene(i)
            msg = to_image_msg(img, "rgb8")
            msg.header.frame_id = str(i)
            img_pub.publish(msg)
            spin(0.06)
        spin(1.0)
        assert len([k for k in filtered if k != "warm"]) == n, f"delivered {sorted(filtered)} of {n}"
        covered = []
        for i in range(1, n):
            out = filtered[str(i)]
            assert (out.height, out.width, out.encoding) == (H, W, "rgb8")
            x0, y0, x1, y1 = boxes[str(i)]
            arr = from_image_msg(out)
            covered.append(float((arr[y0:y1, x0:x1].sum(axis=2) == 0).mean()))
            mask = from_image_msg(masks[str(i)])
            assert mask[y0:y1, x0:x1].mean() / 255 == pytest.approx(covered[-1], abs=1e-6)
            assert (mask[:, x1 + 10:] == 0).all(), f"frame {i}: mask far right of the object"
        assert np.mean(covered) > 0.97 and min(covered) > 0.85, covered
    finally:
        ex.shutdown()
        node.destroy_node()
        print(procs.stop(proc)[-4000:])  # shown by pytest when the test fails


def _worker_pids(proc) -> list[int]:
    """Propagation worker pids the node logged (``... (propagation worker pid N)``)."""
    import re

    return [int(m) for m in re.findall(r"propagation worker (?:pid |restarted \(pid )(\d+)", procs.output(proc))]


def test_killed_propagation_process_is_reported_restarted_and_frames_keep_flowing(rclpy_context):
    """propagation.process: the child dies -> status says so, the frames keep coming (unmasked),
    a new worker is started and the next subtask's boxes are masked again."""
    import signal

    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from hvla_interfaces.msg import PerceptionStatus, PixelBox, Subtask
    from hvla_ros import topics
    from hvla_ros.rosutil.images import from_image_msg, to_image_msg
    from hvla_ros.rosutil.qos import IMAGE_QOS, LATCHED_QOS, STATE_QOS

    cmd = [sys.executable, "-m", "hvla_ros.nodes.perception_node", "--ros-args", "-p", "cameras:=[front]",
           "-p", "propagation.process:=true", "-p", "status_period_s:=0.1", "-p", "fill:=zero"]
    proc = procs.spawn(cmd, env=dict(os.environ))
    node = Node("perception_worker_test", context=rclpy_context)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    filtered: list[Image] = []
    statuses: list[PerceptionStatus] = []
    node.create_subscription(Image, topics.filtered_image("front"), filtered.append, IMAGE_QOS)
    node.create_subscription(PerceptionStatus, topics.PERCEPTION_STATUS, statuses.append, STATE_QOS)
    img_pub = node.create_publisher(Image, topics.camera_image("front"), IMAGE_QOS)
    sub_pub = node.create_publisher(Subtask, topics.CURRENT_SUBTASK, LATCHED_QOS)
    frame = to_image_msg(_scene(), "rgb8")

    def spin_until(cond: Callable[[], bool], timeout: float) -> bool:
        return _spin_until(ex, proc, cond, timeout, lambda: img_pub.publish(frame))

    def masked() -> bool:
        return bool(filtered) and from_image_msg(filtered[-1])[45, 55].sum() == 0

    def subtask(attempt: int) -> None:
        sub = Subtask(episode_id="e3", subtask_id=0, attempt=attempt, instruction="pick up the blue cube")
        sub.distractor_boxes = [PixelBox(camera="front", label="red cube", x_min=36.0, y_min=26.0,
                                         x_max=74.0, y_max=64.0)]
        sub_pub.publish(sub)

    try:
        subtask(1)
        assert spin_until(masked, 40.0), "never masked"
        workers = _worker_pids(proc)
        assert len(workers) == 1, f"expected one propagation process, found {workers}"
        os.kill(workers[0], signal.SIGKILL)
        statuses.clear()
        assert spin_until(lambda: any(s.error_code == PerceptionStatus.ERROR_SEGMENTER_FAILED
                                      and "ended" in s.error_msg for s in statuses), 20.0), \
            "the dead worker was not reported"
        n = len(filtered)
        assert spin_until(lambda: len(filtered) > n + 5 and not masked(), 10.0), \
            "frames must keep flowing (unmasked) after the worker died"
        assert spin_until(lambda: len(set(_worker_pids(proc)) - set(workers)) == 1, 20.0), \
            "no new propagation process"
        subtask(2)
        assert spin_until(masked, 30.0), "the next subtask was not masked by the new worker"
    finally:
        ex.shutdown()
        node.destroy_node()
        print(procs.stop(proc)[-4000:])  # shown by pytest when the test fails
