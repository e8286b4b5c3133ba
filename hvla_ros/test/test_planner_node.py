"""planner_node in a subprocess over real DDS, against a test-double executor (a real rclpy
ExecuteSubtask action server + ListSkills service) and a camera publisher that shows rendered sim
images: the rule-based planner completes a goal, a cancel mid-episode reaches the executor, and
bad goals end cleanly."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from hvla_ros.testing import procs

pytestmark = pytest.mark.ros

GOAL = "put the red cube in the box"


@pytest.fixture(scope="module")
def scene_images():
    """Front images of cube_in_box: start, after the expert's pick, after its place."""
    pytest.importorskip("mujoco")
    from hvla_ros.sim.world import SimWorld

    w = SimWorld("cube_in_box", seed=1, image_size=(120, 160), cameras=("front",))
    try:
        ex = w.task.expert(w)
        images = [w.render("front")]
        for i in range(2):
            while ex.current <= i:
                w.set_joint_targets(ex.act(w))
                w.step(w.control_steps)
            for _ in range(5):
                w.step(w.control_steps)
            images.append(w.render("front"))
        return images
    finally:
        w.close()


@pytest.fixture(scope="module")
def planner_process(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("episodes")
    proc = procs.spawn(
        [sys.executable, "-m", "hvla_ros.nodes.planner_node", "--ros-args", "-p", f"log_dir:={log_dir}",
         "-p", "executor_wait_s:=20.0", "-p", "image_wait_s:=20.0", "-p", "executor_margin_s:=3.0"],
        env={**os.environ})
    try:
        yield proc, log_dir
    finally:
        print(procs.stop(proc)[-4000:])  # shown by pytest when a test of this module fails


class Harness:
    """Camera publisher, executor double and goal client in one node spun in a background thread."""

    def __init__(self, context, images, mode: str = "expert", namespace: str = "") -> None:
        from rclpy.action import ActionServer, CancelResponse
        from rclpy.callback_groups import ReentrantCallbackGroup
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image

        from hvla_interfaces.action import ExecuteGoal, ExecuteSubtask
        from hvla_interfaces.msg import PlanState, Subtask
        from hvla_interfaces.srv import ListSkills
        from hvla_ros import topics
        from hvla_ros.rosutil.action import RaceFreeActionClient
        from hvla_ros.rosutil.images import to_image_msg
        from hvla_ros.rosutil.qos import IMAGE_QOS, LATCHED_QOS

        self.images, self.mode, self.index = images, mode, 0
        self.received: list[str] = []
        self.cancel_seen = threading.Event()
        self.goal_seen = threading.Event()
        self.plan_states: list[int] = []
        self.subtasks_seen: list[str] = []
        self.node = Node("planner_test_harness", namespace=namespace, context=context)
        cb = ReentrantCallbackGroup()
        pub = self.node.create_publisher(Image, topics.camera_image("front"), IMAGE_QOS)
        self.node.create_timer(0.05, lambda: pub.publish(to_image_msg(self.images[self.index], "rgb8")),
                               callback_group=cb)

        def list_skills(_req, resp):
            resp.names = ["pick", "place", "push", "press", "open_drawer", "observe", "handover"]
            resp.descriptions = [""] * len(resp.names)
            return resp

        self.node.create_service(ListSkills, topics.LIST_SKILLS_SERVICE, list_skills, callback_group=cb)

        def execute(handle):
            self.received.append(handle.request.subtask.instruction)
            self.goal_seen.set()
            result = ExecuteSubtask.Result()
            if self.mode == "silent":  # never answers until canceled
                deadline = time.monotonic() + 30
                while not handle.is_cancel_requested and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.cancel_seen.set()
                handle.canceled()
                return result
            if self.mode == "lift_then_hold" and len(self.received) == 1:
                # the skill's effect shows (the cube up), but the skill would go on until canceled
                time.sleep(0.5)
                self.index = 1
                deadline = time.monotonic() + 30
                while not handle.is_cancel_requested and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.cancel_seen.set()
                result.termination = ExecuteSubtask.Result.TERMINATION_CANCELED
                result.steps_executed = 20
                handle.canceled()
                return result
            if self.mode == "hold":
                deadline = time.monotonic() + 30
                while not handle.is_cancel_requested and time.monotonic() < deadline:
                    time.sleep(0.02)
                self.cancel_seen.set()
                result.termination = ExecuteSubtask.Result.TERMINATION_CANCELED
                handle.canceled()
                return result
            self.index = min(self.index + 1, len(self.images) - 1)  # the world after the skill ran
            time.sleep(0.4)
            result.termination = ExecuteSubtask.Result.TERMINATION_SKILL_DONE
            result.steps_executed = 30
            handle.succeed()
            return result

        self.server = ActionServer(self.node, ExecuteSubtask, topics.EXECUTE_SUBTASK_ACTION, execute_callback=execute,
                                   cancel_callback=lambda _h: CancelResponse.ACCEPT, callback_group=cb)
        self.node.create_subscription(PlanState, topics.PLAN_STATE, lambda m: self.plan_states.append(m.state),
                                      LATCHED_QOS, callback_group=cb)
        self.node.create_subscription(Subtask, topics.CURRENT_SUBTASK,
                                      lambda m: self.subtasks_seen.append(m.instruction), LATCHED_QOS,
                                      callback_group=cb)
        self.goal_client = RaceFreeActionClient(self.node, ExecuteGoal, topics.EXECUTE_GOAL_ACTION, callback_group=cb)
        self.ExecuteGoal = ExecuteGoal
        self.executor = MultiThreadedExecutor(num_threads=4, context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait(self, future, timeout):
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        assert done.wait(timeout), "timed out"
        return future.result()

    def send(self, goal: str, timeout: float = 60.0):
        assert self.goal_client.wait_for_server(timeout_sec=30.0), "planner_node did not come up"
        handle = self.wait(self.goal_client.send_goal_async(self.ExecuteGoal.Goal(goal=goal)), timeout)
        assert handle.accepted
        return handle

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(5)
        self.server.destroy()
        self.goal_client.destroy()
        self.node.destroy_node()


def test_planner_node_completes_a_goal_over_dds(rclpy_context, planner_process, scene_images):
    from action_msgs.msg import GoalStatus

    from hvla_interfaces.msg import PlanState

    h = Harness(rclpy_context, scene_images)
    try:
        handle = h.send(GOAL)
        res = h.wait(handle.get_result_async(), 90.0)
        assert res.status == GoalStatus.STATUS_SUCCEEDED, (res.result.error_code, res.result.error_msg)
        r = res.result
        assert r.success and r.subtasks_succeeded == 2 and r.subtasks_total == 2 and r.log_path.endswith(".jsonl")
        assert h.received == ["pick up the red cube", "place the red cube in the box"]
        deadline = time.monotonic() + 5
        while PlanState.STATE_SUCCEEDED not in h.plan_states and time.monotonic() < deadline:
            time.sleep(0.05)
        assert PlanState.STATE_EXECUTING in h.plan_states and PlanState.STATE_SUCCEEDED in h.plan_states
        assert h.subtasks_seen and h.subtasks_seen[-1] == "place the red cube in the box"
    finally:
        h.close()


def test_pause_holds_between_subtasks_and_resume_continues(rclpy_context, planner_process, scene_images):
    from action_msgs.msg import GoalStatus

    from hvla_interfaces.msg import PlanState
    from hvla_interfaces.srv import SetPaused
    from hvla_ros import topics

    h = Harness(rclpy_context, scene_images)
    client = h.node.create_client(SetPaused, topics.SET_PAUSED_SERVICE)
    try:
        assert client.wait_for_service(timeout_sec=30.0)
        idle = h.wait(client.call_async(SetPaused.Request(paused=True)), 10.0)
        assert idle.error_code == SetPaused.Response.ERROR_NO_EPISODE
        handle = h.send(GOAL)
        assert h.goal_seen.wait(30)
        assert h.wait(client.call_async(SetPaused.Request(paused=True)), 10.0).paused
        deadline = time.monotonic() + 20
        while PlanState.STATE_PAUSED not in h.plan_states and time.monotonic() < deadline:
            time.sleep(0.05)
        assert PlanState.STATE_PAUSED in h.plan_states
        time.sleep(0.5)
        assert h.received == ["pick up the red cube"]  # nothing new issued while paused
        assert not h.wait(client.call_async(SetPaused.Request(paused=False)), 10.0).paused
        res = h.wait(handle.get_result_async(), 60.0)
        assert res.status == GoalStatus.STATUS_SUCCEEDED and h.received[-1] == "place the red cube in the box"
    finally:
        h.node.destroy_client(client)
        h.close()


def test_cancel_mid_episode_stops_the_executor(rclpy_context, planner_process, scene_images):
    from action_msgs.msg import GoalStatus

    h = Harness(rclpy_context, scene_images, mode="hold")
    try:
        handle = h.send(GOAL)
        assert h.goal_seen.wait(30), "the executor never got a subtask"
        h.wait(handle.cancel_goal_async(), 10.0)
        assert h.cancel_seen.wait(10), "the planner did not cancel the executor's subtask"
        res = h.wait(handle.get_result_async(), 30.0)
        assert res.status == GoalStatus.STATUS_CANCELED
        assert res.result.error_code == res.result.ERROR_CANCELED and not res.result.success
    finally:
        h.close()


def test_a_stop_on_post_subtask_is_ended_once_its_post_condition_shows(rclpy_context, scene_images, tmp_path):
    """With the pick marked stop_on_post, the planner cancels the executor's subtask as soon as the
    camera shows the cube lifted (the double would hold for 30 s), then goes on with the place."""
    import json

    import yaml
    from action_msgs.msg import GoalStatus

    from hvla_ros.executor.library import package_dir

    doc = yaml.safe_load((package_dir() / "config" / "goal_templates.yaml").read_text())
    doc["tasks"]["cube_in_box"]["subtasks"][0]["stop_on_post"] = True
    templates = tmp_path / "templates.yaml"
    templates.write_text(yaml.safe_dump(doc))
    proc = procs.spawn(
        [sys.executable, "-m", "hvla_ros.nodes.planner_node", "--ros-args", "-r", "__ns:=/stop_on_post",
         "-p", f"log_dir:={tmp_path}", "-p", f"templates:={templates}", "-p", "executor_wait_s:=20.0",
         "-p", "image_wait_s:=20.0"],
        env={**os.environ})
    # its own namespace: the module's planner (another test's) must not take this goal
    h = Harness(rclpy_context, scene_images, mode="lift_then_hold", namespace="/stop_on_post")
    try:
        t0 = time.monotonic()
        res = h.wait(h.send(GOAL).get_result_async(), 60.0)
        assert res.status == GoalStatus.STATUS_SUCCEEDED, (res.result.error_code, res.result.error_msg)
        assert h.cancel_seen.is_set() and time.monotonic() - t0 < 20.0
        assert h.received == ["pick up the red cube", "place the red cube in the box"]
        log = [json.loads(line) for line in Path(res.result.log_path).read_text().splitlines()]
        assert [e["termination"] for e in log if e["event"] == "report"] == ["post_condition", "skill_done"]
        assert [e["status"] for e in log if e["event"] == "verdict"] == ["success", "success"]
    finally:
        h.close()
        print(procs.stop(proc)[-4000:])


def test_bad_goals_end_cleanly_with_the_reason(rclpy_context, planner_process, scene_images):
    from action_msgs.msg import GoalStatus

    h = Harness(rclpy_context, scene_images)
    try:
        res = h.wait(h.send("fly to the moon").get_result_async(), 60.0)
        assert res.status == GoalStatus.STATUS_ABORTED
        assert res.result.error_code == res.result.ERROR_PLANNING_FAILED and "no goal template" in res.result.error_msg
        for bad in ("   ", "x" * 5000, "put the red cube\x00 in the box", "\u202e\u0007"):
            res = h.wait(h.send(bad).get_result_async(), 30.0)
            # (a NUL ends a ROS string: that goal arrives truncated and matches no template)
            assert res.result.error_code in (res.result.ERROR_INVALID_GOAL, res.result.ERROR_PLANNING_FAILED)
            assert not res.result.success and res.result.error_msg
        # A malformed camera image is refused with a log line, not a crash.
        from sensor_msgs.msg import Image

        from hvla_ros import topics
        from hvla_ros.rosutil.qos import IMAGE_QOS

        bad_pub = h.node.create_publisher(Image, topics.camera_image("front"), IMAGE_QOS)
        for _ in range(5):
            bad_pub.publish(Image(height=10, width=10, encoding="rgb8", step=30, data=b"\x00" * 7))
            bad_pub.publish(Image(height=4, width=4, encoding="weird", step=12, data=b"\x00" * 48))
            time.sleep(0.05)
        res = h.wait(h.send("an unknown goal").get_result_async(), 60.0)
        assert res.result.error_code == res.result.ERROR_PLANNING_FAILED
        assert h.received == []
    finally:
        h.close()
    proc, _ = planner_process
    assert proc.poll() is None, "planner_node must survive bad goals"


def test_a_silent_executor_takes_the_timeout_path(rclpy_context, scene_images, tmp_path):
    """horizon + margin without a result: the planner cancels the subtask and records a timeout."""
    import importlib.resources
    import json

    import yaml
    from action_msgs.msg import GoalStatus

    doc = yaml.safe_load(importlib.resources.files("hvla_ros").joinpath("config/goal_templates.yaml").read_text())
    doc["tasks"] = {"cube_in_box": doc["tasks"]["cube_in_box"]}
    for s in doc["tasks"]["cube_in_box"]["subtasks"]:
        s["horizon_s"] = 0.5
    templates = tmp_path / "templates.yaml"
    templates.write_text(yaml.safe_dump(doc))
    proc = procs.spawn(
        [sys.executable, "-m", "hvla_ros.nodes.planner_node", "--ros-args", "-r", "__ns:=/silent",
         "-p", f"log_dir:={tmp_path}", "-p", f"templates:={templates}", "-p", "executor_margin_s:=1.0",
         "-p", "max_attempts:=1", "-p", "max_replans:=0", "-p", "executor_wait_s:=20.0", "-p", "image_wait_s:=20.0"],
        env={**os.environ})
    h = Harness(rclpy_context, scene_images, mode="silent", namespace="silent")  # apart from the other planner
    try:
        res = h.wait(h.send(GOAL).get_result_async(), 60.0)
        assert res.status == GoalStatus.STATUS_ABORTED
        assert res.result.error_code == res.result.ERROR_SUBTASK_FAILED and "horizon + margin" in res.result.error_msg
        assert h.cancel_seen.wait(5), "the silent subtask was not canceled"
        with open(res.result.log_path) as f:
            verdicts = [e for e in map(json.loads, f) if e["event"] == "verdict"]
        assert verdicts[0]["status"] == "timeout" and verdicts[0]["error"] == "executor_silent"
    finally:
        h.close()
        print(procs.stop(proc)[-4000:])
