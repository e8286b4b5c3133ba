"""executor_node in its own process over real DDS: chunks, feedback, horizon, cancel, preemption."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from hvla_ros.robot import HOME_POSITION, JOINTS
from hvla_ros.testing import procs

pytestmark = pytest.mark.ros
PERIOD = 1 / 30


@pytest.fixture(scope="module")
def skills_file(tmp_path_factory) -> Path:
    import torch

    from hvla_ros.executor.training import save_untrained_policy

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("skills")
    pol = save_untrained_policy(
        d / "pick", cameras=["front"], joint_names=JOINTS, image_hw=(32, 40), down_dims=(16, 32, 64), backbone_stages=1
    )
    f = d / "skills.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "robot": "so101",
                "skills": {
                    "pick": {
                        "description": "pick up an object",
                        "policy": str(pol),
                        "cameras": ["front"],
                        "n_action_steps": 8,
                        "denoising_steps": 2,
                        "default_horizon_s": 1.0,
                    },
                    "observe": {"description": "hold", "policy": "hold", "n_action_steps": 8, "default_horizon_s": 0.5},
                    "home": {"description": "go home", "policy": "home", "n_action_steps": 8, "default_horizon_s": 6.0},
                },
            }
        )
    )
    return f


def _start(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hvla_ros.nodes.executor_node", "--ros-args", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return procs.spawn(cmd, env=env)


def _stop(proc: subprocess.Popen) -> str:
    return procs.stop(proc)


@pytest.fixture(scope="module")
def executor_process(skills_file):
    proc = _start(
        [
            "-p",
            f"skills_file:={skills_file}",
            "-p",
            "max_observation_age_s:=0.3",
            "-p",
            # long enough to ride out an observation gap on a loaded machine (the node waits for a
            # newer observation, then goes on); the stale test still sees the abort
            "stale_abort_s:=3.0",
            "-p",
            "torch_threads:=1",
        ]
    )
    try:
        yield proc
    finally:
        print(_stop(proc)[-4000:])  # shown by pytest when a test of this module fails


class _Peer:
    """Test-side node: publishes filtered images + joint states, records chunks, drives the action."""

    def __init__(self, ctx):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image, JointState

        from hvla_interfaces.action import ExecuteSubtask
        from hvla_interfaces.msg import ActionChunk
        from hvla_interfaces.srv import ListSkills
        from hvla_ros import topics
        from hvla_ros.rosutil.action import RaceFreeActionClient
        from hvla_ros.rosutil.images import to_image_msg
        from hvla_ros.rosutil.qos import COMMAND_QOS, IMAGE_QOS, STATE_QOS

        self.node = Node("executor_test", context=ctx)
        self.chunks: list[tuple[float, ActionChunk]] = []
        self.chunk_sub = self.node.create_subscription(
            ActionChunk, topics.ANCHOR_CHUNKS, lambda m: self.chunks.append((time.monotonic(), m)), COMMAND_QOS
        )
        self.img_pub = self.node.create_publisher(Image, topics.filtered_image("front"), IMAGE_QOS)
        self.js_pub = self.node.create_publisher(JointState, topics.JOINT_STATES, STATE_QOS)
        self.image = to_image_msg(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8), "rgb8")
        self.publishing = True
        self.node.create_timer(PERIOD, self._publish)
        self.action = RaceFreeActionClient(self.node, ExecuteSubtask, topics.EXECUTE_SUBTASK_ACTION)
        self.list_skills = self.node.create_client(ListSkills, topics.LIST_SKILLS_SERVICE)
        self.ex = SingleThreadedExecutor(context=ctx)
        self.ex.add_node(self.node)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    def _publish(self) -> None:
        from sensor_msgs.msg import JointState

        if not self.publishing:
            return
        stamp = self.node.get_clock().now().to_msg()
        self.image.header.stamp = stamp
        self.img_pub.publish(self.image)
        js = JointState(name=list(JOINTS), position=[HOME_POSITION[j] for j in JOINTS])
        js.header.stamp = stamp
        self.js_pub.publish(js)

    def send(self, skill: str, horizon_s: float, subtask_id: int, feedback: list | None = None):
        from builtin_interfaces.msg import Duration

        from hvla_interfaces.action import ExecuteSubtask

        goal = ExecuteSubtask.Goal()
        goal.subtask.skill = skill
        goal.subtask.instruction = "pick up the red cube"
        goal.subtask.episode_id = "ep"
        goal.subtask.subtask_id = subtask_id
        goal.subtask.horizon = Duration(sec=int(horizon_s), nanosec=round((horizon_s % 1) * 1e9))
        cb = (lambda fb: feedback.append((time.monotonic(), fb.feedback))) if feedback is not None else None
        fut = self.action.send_goal_async(goal, feedback_callback=cb)
        handle = _wait_future(fut, 10.0)
        assert handle.accepted
        return handle

    def chunks_of(self, subtask_id: int) -> list:
        return [(t, m) for t, m in self.chunks if m.subtask_id == subtask_id]

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


def _wait_future(fut, timeout: float, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while not fut.done():
        assert proc is None or proc.poll() is None, f"executor_node exited: {_stop(proc)}"
        assert time.monotonic() < end, "timed out waiting for a ROS future"
        time.sleep(0.01)
    return fut.result()


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture(scope="module")
def peer(executor_process):
    import rclpy
    from rclpy.context import Context

    from hvla_interfaces.srv import ListSkills

    ctx = Context()
    rclpy.init(context=ctx)
    p = _Peer(ctx)
    try:
        assert p.action.wait_for_server(timeout_sec=60.0), _stop(executor_process)
        assert p.list_skills.wait_for_service(timeout_sec=10.0)
        # The servers exist from construction; requests are served once configure (policy loading) is done.
        _wait_future(p.list_skills.call_async(ListSkills.Request()), 120.0, executor_process)
        # chunks and observations are volatile: every topic must be matched before the first goal
        assert _wait(lambda: p.chunk_sub.get_publisher_count() > 0 and p.img_pub.get_subscription_count() > 0
                     and p.js_pub.get_subscription_count() > 0, 30.0), "executor topics did not match"
        yield p
    finally:
        p.close()
        rclpy.try_shutdown(context=ctx)


def test_list_skills(peer):
    from hvla_interfaces.srv import ListSkills

    assert peer.list_skills.wait_for_service(timeout_sec=10.0)
    res = _wait_future(peer.list_skills.call_async(ListSkills.Request()), 10.0)
    assert res.error_code == ListSkills.Response.ERROR_NONE
    assert list(res.names) == ["home", "observe", "pick"]
    assert list(res.cameras) == ["", "", "front"]
    assert res.descriptions[2] == "pick up an object"


def test_goal_runs_to_horizon_with_chunks_and_feedback(peer):
    from hvla_interfaces.action import ExecuteSubtask
    from hvla_interfaces.msg import ActionChunk

    feedback: list = []
    peer.chunks.clear()  # a rerun of this test starts from no chunks of subtask 1
    handle = peer.send("pick", 20 * PERIOD, subtask_id=1, feedback=feedback)
    res = _wait_future(handle.get_result_async(), 60.0).result
    assert res.termination == ExecuteSubtask.Result.TERMINATION_HORIZON, res.error_msg
    assert res.error_code == 0 and res.chunks_executed == 3 and res.steps_executed == 20
    assert _wait(lambda: len(peer.chunks_of(1)) == 3, 5.0), [m.num_steps for _, m in peer.chunks_of(1)]
    chunks = [m for _, m in peer.chunks_of(1)]
    # n_action_steps fresh steps each (the last one cut at the horizon), plus the steps that go
    # stale between the observation and execution (latency compensation), at most all the policy
    # predicts (horizon 16 - 2 observation steps + 1)
    for c, fresh in zip(chunks, [8, 8, 4], strict=True):
        assert fresh < c.num_steps <= 15, [c.num_steps for c in chunks]
    assert [c.chunk_index for c in chunks] == [0, 1, 2]
    for c in chunks:
        assert list(c.joint_names) == list(JOINTS) and list(c.gripper_names) == ["gripper"]
        assert len(c.positions) == c.num_steps * len(JOINTS) and np.all(np.isfinite(c.positions))
        assert c.origin == ActionChunk.ORIGIN_ANCHOR and c.skill == "pick" and c.episode_id == "ep"
        # the policy's observation context, one token per observation step, for the refiner
        assert c.context_tokens >= 1 and len(c.context) % c.context_tokens == 0 and len(c.context) > c.context_tokens
        assert np.all(np.isfinite(c.context))
        assert c.step_period.nanosec == pytest.approx(PERIOD * 1e9, abs=2)
    stamps = [c.header.stamp.sec + c.header.stamp.nanosec * 1e-9 for c in chunks]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert abs(stamps[0] - time.time()) < 30  # execution times on the node's clock
    chunk_fb = [f for _, f in feedback if f.status_text.startswith("chunk")]
    assert [f.chunk_index for f in chunk_fb] == [0, 1, 2]
    assert [f.steps_executed for f in chunk_fb] == [8, 16, 20]
    assert chunk_fb[-1].progress == pytest.approx(1.0)


def test_home_ends_as_done_at_the_home_pose_before_its_horizon(peer):
    """The arm is at home (the peer's joint states): home opens the jaws, closes them again and
    reports the skill done, well before its 6 s horizon; its last target is the home pose."""
    from hvla_interfaces.action import ExecuteSubtask
    from hvla_ros.robot import GRIPPER_OPEN

    peer.chunks.clear()
    t0 = time.monotonic()
    handle = peer.send("home", 0.0, subtask_id=7)  # 0: the skill's default horizon
    res = _wait_future(handle.get_result_async(), 60.0).result
    assert res.termination == ExecuteSubtask.Result.TERMINATION_SKILL_DONE, res.error_msg
    assert time.monotonic() - t0 < 6.0 and 0 < res.steps_executed < 6.0 / PERIOD
    assert _wait(lambda: len(peer.chunks_of(7)) == res.chunks_executed, 5.0)
    chunks = [m for _, m in peer.chunks_of(7)]
    pos = np.concatenate([np.reshape(c.positions, (c.num_steps, len(JOINTS))) for c in chunks])
    g = JOINTS.index("gripper")
    assert pos[:, g].max() == pytest.approx(GRIPPER_OPEN)
    assert np.allclose(pos[-1], [HOME_POSITION[j] for j in JOINTS], atol=1e-6)
    assert all(c.skill == "home" and c.context_tokens == 0 for c in chunks)


def test_cancel_mid_chunk_stops_all_further_chunks(peer):
    from hvla_interfaces.action import ExecuteSubtask

    peer.chunks.clear()  # a rerun of this test starts from no chunks of subtask 2
    handle = peer.send("pick", 10.0, subtask_id=2)
    assert _wait(lambda: len(peer.chunks_of(2)) >= 1, 30.0)
    _wait_future(handle.cancel_goal_async(), 10.0)
    t_cancel = time.monotonic()
    res = _wait_future(handle.get_result_async(), 30.0).result
    assert res.termination == ExecuteSubtask.Result.TERMINATION_CANCELED
    time.sleep(1.0)
    late = [m.chunk_index for t, m in peer.chunks_of(2) if t > t_cancel + 0.05]
    assert late == []
    assert res.chunks_executed == len(peer.chunks_of(2))


def test_new_goal_preempts_the_running_one(peer):
    from hvla_interfaces.action import ExecuteSubtask

    first = peer.send("pick", 10.0, subtask_id=3)
    assert _wait(lambda: len(peer.chunks_of(3)) >= 1, 30.0)
    second = peer.send("observe", 10 * PERIOD, subtask_id=4)
    res1 = _wait_future(first.get_result_async(), 30.0).result
    assert res1.termination == ExecuteSubtask.Result.TERMINATION_PREEMPTED
    res2 = _wait_future(second.get_result_async(), 30.0).result
    assert res2.termination == ExecuteSubtask.Result.TERMINATION_HORIZON and res2.chunks_executed == 2
    first_of_second = min(t for t, _ in peer.chunks_of(4))
    assert not [m for t, m in peer.chunks_of(3) if t > first_of_second]
    hold = [m for _, m in peer.chunks_of(4)]
    assert np.allclose(np.reshape(hold[0].positions, (-1, 6)), [HOME_POSITION[j] for j in JOINTS])


def test_stale_observation_gives_status_and_no_chunk(peer):
    from hvla_interfaces.action import ExecuteSubtask

    peer.publishing = False
    try:
        time.sleep(0.5)
        feedback: list = []
        handle = peer.send("pick", 5.0, subtask_id=5, feedback=feedback)
        res = _wait_future(handle.get_result_async(), 30.0).result
    finally:
        peer.publishing = True
    assert res.error_code == ExecuteSubtask.Result.ERROR_STALE_OBSERVATION
    assert res.termination == ExecuteSubtask.Result.TERMINATION_ERROR and "s old (limit 0.300 s)" in res.error_msg
    assert peer.chunks_of(5) == []
    assert feedback and "s old (limit 0.300 s)" in feedback[0][1].status_text


def test_unknown_skill_is_reported(peer):
    from hvla_interfaces.action import ExecuteSubtask

    res = _wait_future(peer.send("fly", 1.0, subtask_id=6).get_result_async(), 10.0).result
    assert res.error_code == ExecuteSubtask.Result.ERROR_UNKNOWN_SKILL and "'fly'" in res.error_msg


def test_configure_fails_with_path_and_reason(tmp_path):
    missing = tmp_path / "gone"
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"skills": {"pick": {"policy": str(missing), "cameras": ["front"]}}}))
    proc = _start(["-p", f"skills_file:={f}"])
    try:
        proc.wait(timeout=60)
    finally:
        out = _stop(proc)
    assert proc.returncode != 0
    assert f"cannot load policy from {missing}: directory does not exist" in out
