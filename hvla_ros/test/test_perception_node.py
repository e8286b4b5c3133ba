"""perception_node in its own process over real DDS: filtered images, status, Segment service."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

pytestmark = pytest.mark.ros

H, W = 96, 128


def _scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((H, W, 3), (120, 140, 110), np.uint8) + rng.integers(0, 8, (H, W, 3)).astype(np.uint8)
    img[30:60, 40:70] = (220, 30, 30)
    return img


@pytest.fixture
def perception_process():
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "hvla_ros.nodes.perception_node", "--ros-args",
           "-p", "cameras:=[front]", "-p", "stale_timeout_s:=0.4", "-p", "status_period_s:=0.1",
           "-p", "fill:=zero"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


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
        end = time.monotonic() + timeout
        last = 0.0
        while time.monotonic() < end:
            if perception_process.poll() is not None:
                out = perception_process.stdout.read() if perception_process.stdout else ""
                pytest.fail(f"perception_node exited with {perception_process.returncode}:\n{out}")
            if publish is not None and time.monotonic() - last > 0.05:
                img_pub.publish(publish)
                last = time.monotonic()
            ex.spin_once(timeout_sec=0.02)
            if cond():
                return True
        return False

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
