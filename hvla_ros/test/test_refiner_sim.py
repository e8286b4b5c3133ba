"""E-stop through refiner_node holds the simulated arm (sim_node + refiner_node over real DDS)."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from hvla_ros import topics
from hvla_ros.robot import SO101
from hvla_ros.testing import procs

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_estop_holds_the_simulated_arm(rclpy_context):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState

    from hvla_interfaces.msg import ActionChunk, SafetyStatus
    from hvla_interfaces.srv import SetEStop
    from hvla_ros.nodes.refiner_node import to_duration, to_time
    from hvla_ros.rosutil.qos import COMMAND_QOS, STATE_QOS

    sim = procs.spawn(
        [sys.executable, "-m", "hvla_ros.nodes.sim_node", "--ros-args", "-p", "task:=cube_in_box",
         "-p", "camera_rate_hz:=0.0", "-p", "real_time_factor:=1.0", "-p", "stats_period:=0.0"])
    ref = procs.spawn(
        [sys.executable, "-m", "hvla_ros.nodes.refiner_node", "--ros-args", "-p", "use_sim_time:=true",
         "-p", "watchdog_timeout_s:=10.0", "-p", "max_chunk_age_s:=5.0"])
    node = rclpy.create_node("refiner_sim_peer", context=rclpy_context)
    lock = threading.Lock()
    states: list[tuple[float, np.ndarray, np.ndarray]] = []

    def on_js(msg: JointState) -> None:
        idx = [list(msg.name).index(n) for n in SO101.joint_names]
        with lock:
            states.append((msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9,
                           np.array(msg.position)[idx], np.array(msg.velocity)[idx]))

    node.create_subscription(JointState, topics.JOINT_STATES, on_js, STATE_QOS)
    known = threading.Event()  # the refiner has a measured position for every joint
    node.create_subscription(SafetyStatus, topics.SAFETY_STATUS,
                             lambda m: known.set() if m.joint_state_known else None, STATE_QOS)
    pub = node.create_publisher(ActionChunk, topics.ANCHOR_CHUNKS, COMMAND_QOS)
    cli = node.create_client(SetEStop, topics.SET_ESTOP_SERVICE)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()

    def latest():
        with lock:
            return states[-1] if states else None

    def wait(pred, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            v = pred()
            if v:
                return v
            time.sleep(0.02)
        raise AssertionError("timed out")

    try:
        assert cli.wait_for_service(timeout_sec=30.0)
        wait(latest)
        wait(known.is_set)  # before that the refiner refuses every chunk
        t_sim, q0, _ = latest()
        # 6 s chunk: shoulder_pan +0.6 rad, stamped in sim time (slow enough that a late e-stop
        # reply on a loaded machine still finds the arm far from the chunk's goal)
        T, period = 180, 1 / 30
        pos = np.repeat(q0[None], T, axis=0)
        pos[:, 0] += np.linspace(0.01, 0.6, T)
        msg = ActionChunk()
        msg.header.stamp = to_time(t_sim + 0.3)
        msg.step_period = to_duration(period)
        msg.joint_names = list(SO101.joint_names)
        msg.num_steps = T
        msg.positions = pos.ravel().tolist()
        wait(lambda: pub.get_subscription_count() > 0)  # volatile topic: publish once matched
        pub.publish(msg)
        wait(lambda: (s := latest()) is not None and s[1][0] - q0[0] > 0.1)  # the arm is moving
        fut = cli.call_async(SetEStop.Request(engage=True, reason="test"))
        wait(fut.done)
        t_stop, q_stop, _ = latest()
        wait(lambda: (s := latest()) is not None and s[0] > t_stop + 1.0)  # one second of sim time
        _t_end, q_end, v_end = latest()
        assert abs(v_end[0]) < 0.05, v_end
        assert q_end[0] - q_stop[0] < 0.1, (q_stop[0], q_end[0])  # held, not carried on
        assert q_end[0] < q0[0] + 0.45  # far from the chunk's goal (+0.6)
    finally:
        ex.shutdown(timeout_sec=2.0)
        spin.join(timeout=5)
        node.destroy_node()
        out_ref = procs.stop(ref)
        out_sim = procs.stop(sim)
        print(f"--- refiner_node ---\n{out_ref[-3000:]}\n--- sim_node ---\n{out_sim[-3000:]}")
    assert "Traceback" not in out_ref, out_ref
    assert "Traceback" not in out_sim, out_sim
