"""refiner_node in its own process over real DDS: chunks in, JointTrajectory out, holds."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from hvla_ros import topics
from hvla_ros.operator import describe_safety
from hvla_ros.robot import HOME_POSITION, JOINTS, SO101, SO101_BIMANUAL
from hvla_ros.testing import procs

pytestmark = pytest.mark.ros

PERIOD = 1 / 30
WATCHDOG = 0.3


def _start_node(robot: str, watchdog: float = WATCHDOG) -> subprocess.Popen:
    return procs.spawn(
        [sys.executable, "-m", "hvla_ros.nodes.refiner_node", "--ros-args",
         "-p", f"robot:={robot}", "-p", f"watchdog_timeout_s:={watchdog}",
         "-p", f"control_period_s:={PERIOD}", "-p", "latency_budget_s:=0.0"])


class Peer:
    """The test's side of the graph: joint states, chunks, e-stop; records what comes out."""

    def __init__(self, ctx, robot) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool
        from trajectory_msgs.msg import JointTrajectory

        from hvla_interfaces.msg import ActionChunk, SafetyStatus
        from hvla_interfaces.srv import SetEStop
        from hvla_ros.rosutil.qos import COMMAND_QOS, STATE_QOS

        self.robot = robot
        self.node = rclpy.create_node("refiner_test_peer", context=ctx)
        self.lock = threading.Lock()
        self.trajs: dict[str, list] = {a.name: [] for a in robot.arms}
        self.status: list = []
        self.q = np.tile([HOME_POSITION[j] for j in JOINTS], len(robot.arms))
        self.chunk_pub = self.node.create_publisher(ActionChunk, topics.ANCHOR_CHUNKS, COMMAND_QOS)
        self.js_pub = self.node.create_publisher(JointState, topics.JOINT_STATES, STATE_QOS)
        self.estop_pub = self.node.create_publisher(Bool, topics.ESTOP_TOPIC, COMMAND_QOS)
        self.estop_cli = self.node.create_client(SetEStop, topics.SET_ESTOP_SERVICE)
        for arm in robot.arms:
            self.node.create_subscription(JointTrajectory, arm.trajectory_topic,
                                          lambda m, a=arm.name: self._rec(self.trajs[a], m), COMMAND_QOS)
        self.node.create_subscription(SafetyStatus, topics.SAFETY_STATUS, lambda m: self._rec(self.status, m),
                                      STATE_QOS)
        self.node.create_timer(0.02, self._publish_js)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _rec(self, store: list, msg) -> None:
        with self.lock:
            store.append((time.monotonic(), msg))

    def _publish_js(self) -> None:
        from sensor_msgs.msg import JointState

        msg = JointState()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.name = list(self.robot.joint_names)
        msg.position = [float(v) for v in self.q]
        self.js_pub.publish(msg)

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def send_chunk(self, positions: np.ndarray, start: float, names=None, period: float = PERIOD) -> None:
        from hvla_interfaces.msg import ActionChunk
        from hvla_ros.nodes.refiner_node import to_duration, to_time

        msg = ActionChunk()
        msg.header.stamp = to_time(start)
        msg.step_period = to_duration(period)
        msg.joint_names = list(names or self.robot.joint_names)
        msg.num_steps = positions.shape[0]
        msg.positions = [float(v) for v in positions.ravel()]
        msg.skill = "pick"
        self.chunk_pub.publish(msg)

    def wait_for(self, pred: Callable[[], object], timeout: float = 30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                got = pred()
            if got:
                return got
            time.sleep(0.01)
        raise AssertionError("timed out waiting for the refiner node")

    def first_traj(self, arm: str, n_points: int):
        """The first recorded (t, JointTrajectory) of ``arm`` with ``n_points`` points, or None.

        Search by content, never take the latest: on a loaded machine the watchdog's hold can
        arrive before this thread looks again.
        """
        return next((x for x in self.trajs[arm] if len(x[1].points) == n_points), None)

    def first_motion(self, arm: str):
        """The first recorded (t, JointTrajectory) of ``arm`` that is not a hold (2+ points), or None.

        Its length is not fixed: steps a loaded machine delivers too late are dropped as stale,
        which is the behaviour under test elsewhere; callers check the points are the chunk's tail.
        """
        return next((x for x in self.trajs[arm] if len(x[1].points) > 1), None)

    def clear(self) -> None:
        with self.lock:
            for v in self.trajs.values():
                v.clear()
            self.status.clear()

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5)
        self.node.destroy_node()


def _ready(peer: Peer) -> None:
    assert peer.estop_cli.wait_for_service(timeout_sec=20.0), "refiner node did not come up"
    # its timer runs and it has a measured position for every joint (chunks are refused before)
    peer.wait_for(lambda: [m for _, m in peer.status if m.joint_state_known])
    peer.wait_for(lambda: peer.chunk_pub.get_subscription_count() > 0)  # volatile: chunks need a match


def _seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def test_chunks_nan_estop_and_watchdog_single_arm(rclpy_context):
    proc = _start_node("so101")
    peer = Peer(rclpy_context, SO101)
    try:
        _ready(peer)
        # 1. a valid chunk -> JointTrajectory on arm_controller, every step at its stamp
        start = peer.now() + 1.0  # far enough ahead that no step goes stale in transit
        pos = peer.q[None, :] + 0.004 * np.arange(1, 9)[:, None]
        peer.send_chunk(pos, start)
        _, traj = peer.wait_for(lambda: peer.first_motion("arm"))
        assert list(traj.joint_names) == list(SO101.joint_names)
        skip = len(pos) - len(traj.points)  # steps dropped as stale, only if delivery stalled over 1 s
        assert 0 <= skip < len(pos) - 1
        t0 = _seconds(traj.header.stamp)
        for k, pt in enumerate(traj.points):
            assert t0 + _seconds(pt.time_from_start) == pytest.approx(start + (skip + k) * PERIOD, abs=1e-6)
            np.testing.assert_allclose(pt.positions, pos[skip + k], atol=1e-9)
        # 2. NaN chunk -> refused, hold at the measured position within one period
        peer.clear()
        bad = pos.copy()
        bad[2, 1] = np.nan
        peer.send_chunk(bad, peer.now() + 1.0)
        _, hold = peer.wait_for(lambda: peer.trajs["arm"] and peer.trajs["arm"][-1])
        assert len(hold.points) == 1
        assert _seconds(hold.header.stamp) == 0.0  # starts on receipt, whatever the controller's clock says
        np.testing.assert_allclose(hold.points[0].positions[:5], peer.q[:5], atol=1e-9)  # the arm where it is
        # the gripper keeps its commanded target (between the first chunk's first and last step)
        assert peer.q[5] - 1e-9 <= hold.points[0].positions[5] <= pos[-1, 5] + 1e-9
        assert list(hold.points[0].velocities) == [0.0] * 6
        assert _seconds(hold.points[0].time_from_start) <= PERIOD + 1e-6
        st = peer.wait_for(lambda: [m for _, m in peer.status if m.error_code == m.ERROR_NAN])[-1]
        assert st.holding and st.chunks_rejected == 1 and "shoulder_lift" in st.error_msg
        line = describe_safety(st)  # what `hvla status` prints
        assert "holding; every joint measured" in line and "refused 1" in line and "last intervention: nan" in line
        # 3. e-stop by service -> hold; chunks refused while engaged; released by topic
        peer.clear()
        from std_msgs.msg import Bool

        from hvla_interfaces.srv import SetEStop

        t_req = time.monotonic()
        fut = peer.estop_cli.call_async(SetEStop.Request(engage=True, reason="test"))
        resp = peer.wait_for(lambda: fut.done() and fut.result())
        assert resp.engaged and resp.error_code == 0
        t_hold, hold = peer.wait_for(lambda: peer.trajs["arm"] and peer.trajs["arm"][-1])
        assert len(hold.points) == 1 and _seconds(hold.points[0].time_from_start) <= PERIOD + 1e-6
        print(f"e-stop request -> hold received: {1e3 * (t_hold - t_req):.1f} ms")
        peer.clear()
        peer.send_chunk(pos, peer.now() + 1.0)
        st = peer.wait_for(lambda: [m for _, m in peer.status if m.error_code == m.ERROR_ESTOP
                                    and m.chunks_rejected == 2])[-1]
        assert st.estop_engaged and describe_safety(st).startswith("safety: E-STOP ENGAGED")
        peer.estop_pub.publish(Bool(data=False))
        peer.wait_for(lambda: [m for _, m in peer.status if not m.estop_engaged])
        # 4. watchdog: a long chunk, then silence -> hold after watchdog_timeout
        peer.clear()
        long = peer.q[None, :] + 0.001 * np.arange(1, 61)[:, None]
        t_sent = time.monotonic()
        peer.send_chunk(long, peer.now() + 1.0)
        _, traj = peer.wait_for(lambda: peer.first_motion("arm"))
        np.testing.assert_allclose(traj.points[-1].positions, long[-1], atol=1e-9)  # the chunk's tail
        t_hold, hold = peer.wait_for(lambda: peer.first_traj("arm", 1))
        assert t_hold - t_sent >= WATCHDOG - 0.05
        st = peer.wait_for(lambda: [m for _, m in peer.status if m.error_code == m.ERROR_WATCHDOG])[-1]
        assert st.holding
        # 5. fuzz the subscriber: malformed chunks are refused, the node keeps serving
        rng = np.random.default_rng(0)
        rejected_before = st.chunks_rejected
        for i in range(40):
            from hvla_interfaces.msg import ActionChunk

            m = ActionChunk()
            m.header.stamp.sec = int(rng.integers(0, 2**31 - 1))
            m.step_period.nanosec = int(rng.integers(0, 10**8))
            names = list(SO101.joint_names)
            m.joint_names = [names[j] for j in rng.integers(0, 6, rng.integers(0, 8))] + (["x"] if i % 3 else [])
            m.num_steps = int(rng.integers(0, 5))
            m.positions = rng.choice([np.nan, np.inf, 1e9, 0.1], int(rng.integers(0, 30))).tolist()
            peer.chunk_pub.publish(m)
            # one at a time: the chunk queue keeps the newest 10, and a delivery stall on a loaded
            # machine must not drop fuzz input before the node has judged it
            peer.wait_for(lambda n=rejected_before + i + 1: [s for _, s in peer.status if s.chunks_rejected >= n])
        # every malformed chunk was refused
        peer.clear()
        peer.send_chunk(pos, peer.now() + 1.0)
        peer.wait_for(lambda: peer.first_motion("arm"))
        assert proc.poll() is None
    finally:
        peer.close()
        out = procs.stop(proc)
        print("--- refiner node output ---\n" + out)  # shown when the test fails
    assert "Traceback" not in out, out


def test_bimanual_chunk_splits_per_controller(rclpy_context):
    proc = _start_node("so101_bimanual")
    peer = Peer(rclpy_context, SO101_BIMANUAL)
    try:
        _ready(peer)
        start = peer.now() + 1.0
        pos = peer.q[None, :] + 0.003 * np.arange(1, 6)[:, None]
        peer.send_chunk(pos, start)
        for arm, cols in (("left", slice(0, 6)), ("right", slice(6, 12))):
            _, traj = peer.wait_for(lambda a=arm: peer.first_motion(a))
            assert list(traj.joint_names) == list(SO101_BIMANUAL.arm(arm).joint_names)
            n = len(traj.points)  # the chunk's tail: a stalled delivery drops stale steps
            np.testing.assert_allclose([p.positions for p in traj.points], pos[-n:, cols], atol=1e-9)
    finally:
        peer.close()
        out = procs.stop(proc)
        print("--- refiner node output ---\n" + out)  # shown when the test fails
    assert "Traceback" not in out, out


class SubtaskServer:
    """An ExecuteSubtask action server in the executor's place: its goals run until canceled or
    told to finish, so the test decides when a subtask is canceled."""

    def __init__(self, ctx) -> None:
        import rclpy
        from rclpy.action import ActionServer, CancelResponse
        from rclpy.callback_groups import ReentrantCallbackGroup
        from rclpy.executors import MultiThreadedExecutor

        from hvla_interfaces.action import ExecuteSubtask
        from hvla_ros.rosutil.action import RaceFreeActionClient

        self.node = rclpy.create_node("subtask_server_stand_in", context=ctx)
        self.finish = threading.Event()
        group = ReentrantCallbackGroup()
        self.server = ActionServer(self.node, ExecuteSubtask, topics.EXECUTE_SUBTASK_ACTION, self._execute,
                                   cancel_callback=lambda _h: CancelResponse.ACCEPT, callback_group=group)
        self.client = RaceFreeActionClient(self.node, ExecuteSubtask, topics.EXECUTE_SUBTASK_ACTION,
                                           callback_group=group)
        self.executor = MultiThreadedExecutor(num_threads=4, context=ctx)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _execute(self, handle):
        from hvla_interfaces.action import ExecuteSubtask

        Result = ExecuteSubtask.Result
        while not handle.is_cancel_requested and not self.finish.is_set():
            time.sleep(0.01)
        if handle.is_cancel_requested:
            time.sleep(0.2)  # a policy call still in flight: the goal stays CANCELING a while
            handle.canceled()
            return Result(termination=Result.TERMINATION_CANCELED)
        handle.succeed()
        return Result(termination=Result.TERMINATION_HORIZON)

    def start_goal(self, peer: Peer):
        from hvla_interfaces.action import ExecuteSubtask

        assert self.client.wait_for_server(timeout_sec=10.0)
        self.finish.clear()
        fut = self.client.send_goal_async(ExecuteSubtask.Goal())
        handle = peer.wait_for(lambda: fut.done() and fut.result())
        assert handle.accepted
        return handle

    def close(self) -> None:
        self.finish.set()
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5)
        self.node.destroy_node()


def test_canceled_subtask_holds_the_arm_before_its_chunk_plays_out(rclpy_context):
    """An operator's or the planner's cancel stops the arm at once, not when the sent chunk ends.

    The watchdog is set far out (10 s) so that only the cancel can cause the hold; a goal that
    ends normally leaves its chunk to play out.
    """
    proc = _start_node("so101", watchdog=10.0)
    peer = Peer(rclpy_context, SO101)
    server = SubtaskServer(rclpy_context)
    try:
        _ready(peer)
        long = peer.q[None, :] + 0.001 * np.arange(1, 121)[:, None]  # 4 s of motion
        # 1. a goal that finishes normally: its chunk plays out, no hold
        server.start_goal(peer)
        peer.send_chunk(long, peer.now() + 0.5)
        peer.wait_for(lambda: peer.first_motion("arm"))
        server.finish.set()
        time.sleep(1.0)
        with peer.lock:
            assert peer.first_traj("arm", 1) is None, "a goal that ended normally must not stop the arm"
        # 2. a goal canceled while its chunk runs: hold at the measured position, within 1 s
        peer.clear()
        handle = server.start_goal(peer)
        peer.send_chunk(long, peer.now() + 0.5)
        peer.wait_for(lambda: peer.first_motion("arm"))
        t_cancel = time.monotonic()
        handle.cancel_goal_async()
        t_hold, hold = peer.wait_for(lambda: peer.first_traj("arm", 1), timeout=10.0)
        print(f"cancel -> hold received: {1e3 * (t_hold - t_cancel):.1f} ms")
        assert t_hold - t_cancel < 2.0  # the chunk would have run 4 s, the watchdog 10 s
        assert _seconds(hold.header.stamp) == 0.0 and list(hold.points[0].velocities) == [0.0] * 6
        np.testing.assert_allclose(hold.points[0].positions[:5], peer.q[:5], atol=1e-9)
        st = peer.wait_for(lambda: [m for _, m in peer.status if m.holding])[-1]
        assert st.error_code == st.ERROR_NONE  # a cancel is not a safety fault
        with peer.lock:
            assert len([x for x in peer.trajs["arm"] if len(x[1].points) == 1]) == 1  # held once
        # 3. the next subtask's chunks move the arm again
        peer.clear()
        server.start_goal(peer)
        peer.send_chunk(long[:8], peer.now() + 0.5)
        peer.wait_for(lambda: peer.first_motion("arm"))
        assert proc.poll() is None
    finally:
        server.close()
        peer.close()
        out = procs.stop(proc)
        print("--- refiner node output ---\n" + out)  # shown when the test fails
    assert "Traceback" not in out, out
    assert "subtask goal canceled: holding the arm" in out
