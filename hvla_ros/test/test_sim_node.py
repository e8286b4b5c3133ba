"""sim_node over real DDS: started in another process, driven like an arm behind ros2_control."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import hvla_ros
from hvla_ros import topics
from hvla_ros.robot import SO101, SO101_BIMANUAL

pytestmark = pytest.mark.ros

H, W = 48, 64


def _start_sim(task: str, log: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    # Run the same hvla_ros as this test, installed or not.
    pkg_root = str(Path(next(iter(hvla_ros.__path__))).parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "hvla_ros.nodes.sim_node", "--ros-args",
           "-p", f"task:={task}", "-p", f"image_height:={H}", "-p", f"image_width:={W}",
           "-p", "camera_rate_hz:=10.0", "-p", "stats_period:=0.0", *extra]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Probe:
    """A test-side node: subscribes to the sim's outputs, publishes trajectories."""

    def __init__(self, context, robot, cameras: tuple[str, ...]) -> None:
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo, Image, JointState
        from std_msgs.msg import Bool
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from hvla_ros.rosutil.qos import COMMAND_QOS, IMAGE_QOS, LATCHED_QOS, STATE_QOS

        self.node = Node("sim_probe", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.joint_states: list = []
        self.clock: list[float] = []
        self.images: dict[str, list] = {c: [] for c in cameras}
        self.infos: dict[str, list] = {c: [] for c in cameras}
        self.segmentation: dict[str, list] = {c: [] for c in cameras}
        self.success: list[bool] = []
        n = self.node
        n.create_subscription(JointState, topics.JOINT_STATES, self.joint_states.append, STATE_QOS)
        n.create_subscription(Clock, topics.CLOCK,
                              lambda m: self.clock.append(m.clock.sec + m.clock.nanosec * 1e-9),
                              QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT))
        n.create_subscription(Bool, topics.SIM_SUCCESS, lambda m: self.success.append(m.data), LATCHED_QOS)
        for c in cameras:
            n.create_subscription(Image, topics.camera_image(c), self.images[c].append, IMAGE_QOS)
            n.create_subscription(CameraInfo, topics.camera_info(c), self.infos[c].append, IMAGE_QOS)
            n.create_subscription(Image, topics.SIM_GROUND_TRUTH_SEGMENTATION.format(camera=c),
                                  self.segmentation[c].append, IMAGE_QOS)
        self.pubs = {a.controller: n.create_publisher(JointTrajectory, topics.trajectory_topic(a.controller),
                                                      COMMAND_QOS) for a in robot.arms}
        self.reset_client = n.create_client(Trigger, topics.SIM_RESET_SERVICE)
        self.robot = robot

    def spin_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def spin_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.02)

    def positions(self) -> dict[str, float]:
        js = self.joint_states[-1]
        return dict(zip(js.name, js.position, strict=True))

    def send(self, controller: str, names, points: list[tuple[float, list[float]]]) -> None:
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        msg = JointTrajectory()
        msg.joint_names = list(names)
        for t, q in points:
            p = JointTrajectoryPoint()
            p.positions = [float(v) for v in q]
            p.time_from_start.sec = int(t)
            p.time_from_start.nanosec = round((t - int(t)) * 1e9)
            msg.points.append(p)
        self.pubs[controller].publish(msg)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "sim_node.log"


def _wait_ready(probe: Probe, proc: subprocess.Popen, log: Path) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sim_node exited with {proc.returncode}:\n{log.read_text()}")
        return bool(probe.joint_states) and all(probe.images.values()) and bool(probe.success)

    probe.spin_until(ready, 60.0, "joint_states, camera images and sim/success from sim_node")


def _target(probe: Probe, arm, **changes: float) -> list[float]:
    q = probe.positions()
    q.update({arm.prefix + k: v for k, v in changes.items()})
    return [q[j] for j in arm.joint_names]


def _wait_at(probe: Probe, joint: str, value: float, timeout: float = 15.0, tol: float = 0.03) -> None:
    probe.spin_until(lambda: abs(probe.positions()[joint] - value) < tol, timeout,
                     f"{joint} to reach {value} (at {probe.positions()[joint]:.3f})")


@pytest.fixture
def single_sim(rclpy_context, log_path: Path) -> Iterator[tuple[Probe, subprocess.Popen]]:
    proc = _start_sim("cube_in_box", log_path, "-p", "publish_ground_truth:=true",
                      "-p", "real_time_factor:=1.0")
    probe = Probe(rclpy_context, SO101, SO101.cameras)
    try:
        _wait_ready(probe, proc, log_path)
        yield probe, proc
    finally:
        probe.close()
        _stop(proc)


def test_single_arm_outputs_follow_ros2_control_conventions(single_sim):
    probe, _ = single_sim
    js = probe.joint_states[-1]
    assert tuple(js.name) == SO101.joint_names
    assert len(js.position) == len(js.velocity) == len(js.effort) == 6
    for cam in SO101.cameras:
        img = probe.images[cam][-1]
        assert (img.height, img.width, img.encoding, img.step) == (H, W, "rgb8", W * 3)
        assert len(img.data) == H * W * 3
        probe.spin_until(lambda c=cam: bool(probe.infos[c]), 10.0, f"camera_info of {cam}")
        info = probe.infos[cam][-1]
        assert (info.height, info.width) == (H, W)
        fx, cx, fy, cy = info.k[0], info.k[2], info.k[4], info.k[5]
        assert fx > 0 and fy > 0 and (cx, cy) == (W / 2, H / 2) and info.k[8] == 1.0
        probe.spin_until(lambda c=cam: bool(probe.segmentation[c]), 10.0,
                         f"ground-truth segmentation of {cam}")
        seg = probe.segmentation[cam][-1]
        assert seg.encoding == "32SC1" and (seg.height, seg.width) == (H, W)
    assert probe.success[-1] is False
    # /clock advances with the joint_states stamps (sim time).
    c0 = probe.clock[-1]
    probe.spin_for(0.5)
    assert probe.clock[-1] > c0
    stamp = probe.joint_states[-1].header.stamp
    assert abs(stamp.sec + stamp.nanosec * 1e-9 - probe.clock[-1]) < 0.5


BAD_CASES = [
    # (name, joint_names transform, positions transform, points, expected log text)
    ("nan", None, lambda q: [math.nan, *q[1:]], None, "non-finite position"),
    ("unknown_joint", lambda n: [*n[:5], "elbow"], None, None, "unknown joint"),
    ("duplicate_joint", lambda n: [*n[:5], n[0]], None, None, "more than once"),
    ("wrong_length", None, lambda q: q[:4], None, "4 positions for 6 joints"),
    ("non_increasing_time", None, None, [1.0, 0.5], "increase strictly"),
    ("beyond_limits", None, lambda q: [3.0, *q[1:]], None, "beyond its limits"),
]


def test_single_arm_follows_trajectories_and_holds_on_bad_ones(single_sim, log_path):
    probe, _ = single_sim
    arm = SO101.arms[0]
    probe.send(arm.controller, arm.joint_names, [(1.0, _target(probe, arm, shoulder_pan=0.6, gripper=0.8))])
    _wait_at(probe, "shoulder_pan", 0.6)
    _wait_at(probe, "gripper", 0.8, tol=0.08)

    for name, names_fn, pos_fn, times, reason in BAD_CASES:
        names = list(arm.joint_names)
        q = _target(probe, arm, shoulder_pan=-0.6)  # would swing the arm if accepted
        names = names_fn(names) if names_fn else names
        q = pos_fn(q) if pos_fn else q
        points = [(t, q) for t in times] if times else [(0.5, q)]
        probe.send(arm.controller, names, points)
        probe.spin_until(lambda r=reason: r in log_path.read_text(), 10.0, f"a logged rejection for {name}")
        probe.spin_for(0.6)
        assert probe.positions()["shoulder_pan"] == pytest.approx(0.6, abs=0.03), f"arm moved after {name}"
    text = log_path.read_text()
    assert text.count("rejected trajectory") >= len(BAD_CASES)

    # Multi-point trajectory with linear interpolation reaches its last point and holds.
    probe.send(arm.controller, arm.joint_names, [(0.5, _target(probe, arm, shoulder_pan=0.2)),
                                                 (1.0, _target(probe, arm, shoulder_pan=-0.3))])
    _wait_at(probe, "shoulder_pan", -0.3)

    # Reset to the parameters' task/seed: the arm goes home, /clock keeps increasing.
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient
    from std_srvs.srv import Trigger

    params = AsyncParameterClient(probe.node, "sim")
    assert params.wait_for_services(timeout_sec=10.0)
    set_future = params.set_parameters([Parameter("seed", value=4)])
    probe.spin_until(set_future.done, 10.0, "parameter seed set")
    assert set_future.result().results[0].successful
    clock_before = probe.clock[-1]
    assert probe.reset_client.wait_for_service(timeout_sec=10.0)
    future = probe.reset_client.call_async(Trigger.Request())
    probe.spin_until(future.done, 15.0, "sim/reset response")
    assert future.result().success, future.result().message
    assert "seed 4" in future.result().message
    probe.spin_for(0.5)
    assert probe.positions()["shoulder_pan"] == pytest.approx(0.0, abs=0.03)
    assert probe.clock[-1] > clock_before


def test_bimanual_controllers_share_one_code_path(rclpy_context, log_path):
    proc = _start_sim("bimanual_handover", log_path, "-p", "real_time_factor:=1.0")
    probe = Probe(rclpy_context, SO101_BIMANUAL, SO101_BIMANUAL.cameras)
    try:
        _wait_ready(probe, proc, log_path)
        assert tuple(probe.joint_states[-1].name) == SO101_BIMANUAL.joint_names
        left, right = SO101_BIMANUAL.arms
        probe.send(left.controller, left.joint_names, [(1.0, _target(probe, left, shoulder_pan=0.5))])
        probe.send(right.controller, right.joint_names, [(1.0, _target(probe, right, shoulder_pan=-0.4))])
        _wait_at(probe, "left_shoulder_pan", 0.5)
        _wait_at(probe, "right_shoulder_pan", -0.4)
        # One arm's controller refuses the other arm's joints; both arms hold.
        probe.send(left.controller, right.joint_names, [(0.5, _target(probe, right, shoulder_pan=0.0))])
        probe.spin_until(lambda: "unknown joint" in log_path.read_text(), 10.0, "a logged rejection")
        probe.spin_for(0.5)
        q = probe.positions()
        assert q["left_shoulder_pan"] == pytest.approx(0.5, abs=0.03)
        assert q["right_shoulder_pan"] == pytest.approx(-0.4, abs=0.03)
        for cam in SO101_BIMANUAL.cameras:
            assert np.frombuffer(bytes(probe.images[cam][-1].data), np.uint8).size == H * W * 3
    finally:
        probe.close()
        _stop(proc)
