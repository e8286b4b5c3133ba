"""The nodes on the control path idle without spinning a core.

With the simulator's traffic (``/clock`` and ``joint_states`` at 120 Hz, nodes on sim time), a
node spun by rclpy's multi-threaded executor kept one core busy doing nothing (measured 101-102%
for refiner_node and executor_node), which on a two-core machine starved the simulator and
delayed the refiner's watchdog by up to 2 s. Spun single-threaded they use 7-8%.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from hvla_ros.testing import procs

pytestmark = pytest.mark.ros

RATE_HZ = 120.0  # the simulator's control rate: /clock and joint_states
MAX_CORE_FRACTION = 0.5  # idle nodes measured 0.07-0.08 here, spinning ones 1.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _hold_only_skills(tmp_path: Path) -> Path:
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"robot": "so101", "skills": {
        "observe": {"description": "hold", "policy": "hold", "n_action_steps": 8, "default_horizon_s": 0.5}}}))
    return f


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc")
@pytest.mark.parametrize("node", ["refiner_node", "executor_node"])
def test_node_on_sim_time_idles_under_120_hz_clock_and_joint_states(rclpy_context, tmp_path, node):
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.executors import SingleThreadedExecutor
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState

    from hvla_ros import topics
    from hvla_ros.robot import SO101
    from hvla_ros.rosutil.qos import STATE_QOS

    args = ["-p", "use_sim_time:=true"]
    if node == "executor_node":
        args += ["-p", f"skills_file:={_hold_only_skills(tmp_path)}"]
    proc = procs.spawn([sys.executable, "-m", f"hvla_ros.nodes.{node}", "--ros-args", *args],
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    peer = rclpy.create_node("cpu_peer", context=rclpy_context)
    clock_pub = peer.create_publisher(Clock, topics.CLOCK, 1)
    js_pub = peer.create_publisher(JointState, topics.JOINT_STATES, STATE_QOS)
    t_sim = [1000.0]

    def tick() -> None:
        t_sim[0] += 1.0 / RATE_HZ
        stamp = Time(sec=int(t_sim[0]), nanosec=int((t_sim[0] % 1.0) * 1e9))
        clock_pub.publish(Clock(clock=stamp))
        js = JointState(name=list(SO101.joint_names), position=[0.0] * len(SO101.joint_names))
        js.header.stamp = stamp
        js_pub.publish(js)

    peer.create_timer(1.0 / RATE_HZ, tick)
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(peer)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        procs.wait_for_line(proc, "[INFO]", timeout=60.0)  # configured (its first log line)
        end = time.monotonic() + 30.0
        while js_pub.get_subscription_count() == 0 or clock_pub.get_subscription_count() == 0:
            assert time.monotonic() < end, "the node did not subscribe to /clock and joint_states"
            time.sleep(0.05)
        time.sleep(1.0)
        c0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(4.0)
        share = (_cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
        print(f"{node}: {100 * share:.0f}% of a core with /clock and joint_states at {RATE_HZ:.0f} Hz")
        assert proc.poll() is None, procs.output(proc)
        assert share < MAX_CORE_FRACTION, f"{node} used {100 * share:.0f}% of a core while idle"
    finally:
        ex.shutdown(timeout_sec=2.0)
        spin.join(timeout=5.0)
        peer.destroy_node()
        out = procs.stop(proc)
        print(out[-2000:])
