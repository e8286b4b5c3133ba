"""Recording a running sim to MCAP and playing it back into the graph, over real DDS."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hvla_ros import topics
from hvla_ros.bag import BagError, BagRecorder, deserialize, read_bag, replay

pytestmark = pytest.mark.ros


@pytest.fixture
def sim(tmp_path: Path):
    log = (tmp_path / "sim.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hvla_ros.nodes.sim_node", "--ros-args", "-p", "task:=cube_in_box",
         "-p", "image_height:=48", "-p", "image_width:=64", "-p", "camera_rate_hz:=10.0",
         "-p", "stats_period:=0.0"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def _spin_for(node, seconds: float, until=None) -> None:
    import rclpy

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until()):
        rclpy.spin_once(node, timeout_sec=0.02)


def test_record_then_replay_round_trip(sim, tmp_path: Path) -> None:
    import rclpy
    from mcap.reader import make_reader
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    rclpy.init()
    node = rclpy.create_node("bag_test")
    try:
        wanted = [topics.JOINT_STATES, topics.camera_image("front")]
        recorder = BagRecorder(node, tmp_path / "episode", wanted)
        deadline = time.monotonic() + 40.0
        counts = recorder.stats.per_topic
        while time.monotonic() < deadline and not (
                counts.get("/joint_states", 0) >= 10 and counts.get("/cameras/front/image_raw", 0) >= 3):
            recorder.discover()
            _spin_for(node, 0.5)
        assert recorder.stats.per_topic, "nothing recorded from the running sim"
        path = recorder.close()
        with pytest.raises(BagError, match="already exists"):
            BagRecorder(node, path, wanted)

        recorded = read_bag(path)
        by_topic = {t: [m for m in recorded if m.topic == t] for t in ("/joint_states", "/cameras/front/image_raw")}
        assert len(by_topic["/joint_states"]) >= 10
        assert len(by_topic["/cameras/front/image_raw"]) >= 3
        image = deserialize(by_topic["/cameras/front/image_raw"][0])
        assert (image.height, image.width, image.encoding) == (48, 64, "rgb8")
        state = deserialize(by_topic["/joint_states"][-1])
        assert "shoulder_pan" in list(state.name)

        # The MCAP is a standard file: the mcap reader sees ROS 2 schemas and channels.
        mcap_file = next(path.glob("*.mcap"))
        with mcap_file.open("rb") as f:
            summary = make_reader(f).get_summary()
        assert summary is not None
        assert {s.name for s in summary.schemas.values()} >= {"sensor_msgs/msg/Image", "sensor_msgs/msg/JointState"}

        # Play it back (as fast as possible) under other names: every message arrives unchanged.
        got_images: list[Image] = []
        got_states: list[JointState] = []
        deep = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(Image, "replayed/image", got_images.append, deep)
        node.create_subscription(JointState, "replayed/joint_states", got_states.append, deep)
        remap = {"/cameras/front/image_raw": "replayed/image", "/joint_states": "replayed/joint_states"}
        subset = by_topic["/cameras/front/image_raw"][:3] + by_topic["/joint_states"][:10]
        subset.sort(key=lambda m: m.timestamp_ns)
        stats = replay(node, subset, rate=0.0, remap=remap, wait_for_subscribers_s=10.0)
        assert stats.published == len(subset)
        _spin_for(node, 10.0, until=lambda: len(got_images) >= 3 and len(got_states) >= 10)
        assert (len(got_images), len(got_states)) == (3, 10)
        assert bytes(got_images[0].data) == bytes(deserialize(by_topic["/cameras/front/image_raw"][0]).data)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def test_reading_a_missing_or_corrupt_bag_names_it(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="does not exist"):
        read_bag(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("not: [a, bag")
    with pytest.raises(BagError, match="broken"):
        read_bag(broken)
