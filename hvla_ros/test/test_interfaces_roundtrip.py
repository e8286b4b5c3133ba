"""Every hvla_interfaces message, service and action crosses DDS between two OS processes intact.

The peer (hvla_ros.testing.echo_peer) runs in a separate process; this test process publishes,
calls and sends goals over real rclpy/Fast DDS and compares every field of what comes back
(empty arrays, unicode, extreme values, long sequences). Actions are also cancelled mid-way.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import rclpy
from action_msgs.msg import GoalStatus
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from hvla_ros.rosutil.action import RaceFreeActionClient
from hvla_ros.rosutil.qos import COMMAND_QOS
from hvla_ros.testing.echo_peer import distinguishable_variants, interface_types
from hvla_ros.testing.samples import VARIANTS, first_difference, make_sample

pytestmark = pytest.mark.ros

MSGS = interface_types("msg")
SRVS = interface_types("srv")
ACTIONS = interface_types("action")


def test_interfaces_package_is_complete() -> None:
    # The types the rest of the stack relies on must all have been generated.
    assert {"Subtask", "SubtaskOutcome", "ActionChunk", "PlanState", "MemoryState", "PixelBox"} <= set(MSGS)
    assert {"Segment", "ListSkills", "SetEStop", "SetPaused"} <= set(SRVS)
    assert {"ExecuteGoal", "ExecuteSubtask"} <= set(ACTIONS)


class Harness:
    def __init__(self, node: Node, executor: SingleThreadedExecutor) -> None:
        self.node = node
        self.executor = executor

    def spin_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.02)

    def wait_future(self, future, timeout: float, what: str) -> Any:
        self.spin_until(future.done, timeout, what)
        return future.result()


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    peer = subprocess.Popen(
        [sys.executable, "-m", "hvla_ros.testing.echo_peer"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert peer.stdout is not None
        assert peer.stdout.readline().strip() == "ready", "echo peer did not start"
        rclpy.init()
        node = rclpy.create_node("hvla_roundtrip_test")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        yield Harness(node, executor)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    finally:
        if peer.stdin:
            peer.stdin.close()  # the peer exits when its stdin closes
        try:
            peer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()


@pytest.mark.parametrize("name", sorted(MSGS))
def test_message_round_trip(harness: Harness, name: str) -> None:
    cls = MSGS[name]
    received: list[Any] = []
    node = harness.node
    pub = node.create_publisher(cls, f"echo/in/{name}", COMMAND_QOS)
    sub = node.create_subscription(cls, f"echo/out/{name}", received.append, COMMAND_QOS)
    try:
        harness.spin_until(
            lambda: pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0, 20.0,
            f"discovery of the echo peer's {name} endpoints")
        for variant in VARIANTS:
            sent = make_sample(cls, variant)
            received.clear()
            pub.publish(sent)
            harness.spin_until(lambda: bool(received), 10.0, f"{name} ({variant}) echo")
            diff = first_difference(sent, received[0])
            assert diff is None, f"{name} ({variant}) changed in transit: {diff}"
    finally:
        node.destroy_publisher(pub)
        node.destroy_subscription(sub)


@pytest.mark.parametrize("name", sorted(SRVS))
def test_service_round_trip(harness: Harness, name: str) -> None:
    srv = SRVS[name]
    client = harness.node.create_client(srv, f"echo/srv/{name}")
    try:
        harness.spin_until(client.service_is_ready, 20.0, f"service echo/srv/{name}")
        for variant in distinguishable_variants(srv.Request):
            response = harness.wait_future(
                client.call_async(make_sample(srv.Request, variant)), 10.0, f"{name} ({variant}) response")
            assert response.error_msg == make_sample(srv.Response, variant).error_msg, response.error_msg
            diff = first_difference(make_sample(srv.Response, variant), response)
            assert diff is None, f"{name} ({variant}) response changed in transit: {diff}"
    finally:
        harness.node.destroy_client(client)


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_action_round_trip_and_cancel(harness: Harness, name: str) -> None:
    action = ACTIONS[name]
    client = RaceFreeActionClient(harness.node, action, f"echo/action/{name}")
    try:
        harness.spin_until(client.server_is_ready, 20.0, f"action server echo/action/{name}")
        assert distinguishable_variants(action.Goal) == ("full", "large", "empty")
        for variant in ("full", "large"):
            feedback: list[Any] = []
            goal_handle = harness.wait_future(
                client.send_goal_async(make_sample(action.Goal, variant),
                                       feedback_callback=lambda fb, out=feedback: out.append(fb.feedback)),
                10.0, f"{name} ({variant}) goal acceptance")
            assert goal_handle.accepted
            result = harness.wait_future(goal_handle.get_result_async(), 20.0, f"{name} ({variant}) result")
            assert result.status == GoalStatus.STATUS_SUCCEEDED
            assert first_difference(make_sample(action.Result, variant), result.result) is None
            harness.spin_until(lambda fb=feedback: len(fb) >= 3, 5.0, f"{name} ({variant}) feedback")
            for fb in feedback:
                diff = first_difference(make_sample(action.Feedback, variant), fb)
                assert diff is None, f"{name} ({variant}) feedback changed in transit: {diff}"

        # The long-running variant is cancelled after its first feedback and must say so.
        feedback = []
        goal_handle = harness.wait_future(
            client.send_goal_async(make_sample(action.Goal, "empty"),
                                   feedback_callback=lambda fb: feedback.append(fb.feedback)),
            10.0, f"{name} cancellable goal acceptance")
        assert goal_handle.accepted
        harness.spin_until(lambda: bool(feedback), 10.0, f"{name} first feedback")
        cancel = harness.wait_future(goal_handle.cancel_goal_async(), 10.0, f"{name} cancel response")
        assert len(cancel.goals_canceling) == 1
        result = harness.wait_future(goal_handle.get_result_async(), 10.0, f"{name} canceled result")
        assert result.status == GoalStatus.STATUS_CANCELED
        assert len(feedback) < 100, "the goal ran to completion instead of being cancelled"
        assert first_difference(make_sample(action.Result, "empty"), result.result) is None
    finally:
        client.destroy()


def test_peer_rejects_a_modified_request(harness: Harness) -> None:
    # The comparison is real: one changed field makes the peer report it.
    srv = SRVS["SetEStop"]
    client = harness.node.create_client(srv, "echo/srv/SetEStop")
    try:
        harness.spin_until(client.service_is_ready, 20.0, "service echo/srv/SetEStop")
        request = make_sample(srv.Request, "full")
        request.reason += "!"
        response = harness.wait_future(client.call_async(request), 10.0, "SetEStop response")
        assert response.error_code == 1
        assert ".reason" in response.error_msg
    finally:
        harness.node.destroy_client(client)
