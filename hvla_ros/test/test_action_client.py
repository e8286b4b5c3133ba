"""RaceFreeActionClient: a goal response that arrives before rclpy records its request is not
lost (ros2/rclpy#1123), over real DDS with the executor spinning in another thread."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytestmark = pytest.mark.ros

#: Time between sending a request and recording it, stretched so the response always wins.
SEND_GAP_S = 0.3


class _SlowRecordingHandle:
    """The client's rcl handle, sleeping after each goal request is sent (before rclpy records it)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def send_goal_request(self, request: Any) -> int:
        seq = self._handle.send_goal_request(request)
        time.sleep(SEND_GAP_S)
        return seq

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> Any:
        return self._handle.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._handle.__exit__(*exc)


def _send_one_goal(context: Any, client_cls: type, name: str) -> tuple[Any, float]:
    """An accepting ExecuteGoal server and a ``client_cls`` client in one node spun in a background
    thread; one goal sent from this thread. Returns (its future after 5 s, seconds waited)."""
    from rclpy.action import ActionServer, GoalResponse
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from hvla_interfaces.action import ExecuteGoal

    node = Node(f"race_{name}", context=context)

    def execute(handle: Any) -> Any:
        handle.succeed()
        return ExecuteGoal.Result(success=True)

    server = ActionServer(node, ExecuteGoal, f"race/{name}", execute_callback=execute,
                          goal_callback=lambda _g: GoalResponse.ACCEPT)
    client = client_cls(node, ExecuteGoal, f"race/{name}")
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert client.wait_for_server(timeout_sec=10.0), "the action server did not appear"
        client._client_handle = _SlowRecordingHandle(client._client_handle)
        t0 = time.monotonic()
        future = client.send_goal_async(ExecuteGoal.Goal(goal="put the red cube in the box"))
        while not future.done() and time.monotonic() - t0 < 5.0:
            time.sleep(0.01)
        return future, time.monotonic() - t0
    finally:
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=5.0)
        server.destroy()
        node.destroy_node()


def test_a_goal_response_that_outruns_its_request_is_not_lost(rclpy_context):
    from rclpy.action import ActionClient

    from hvla_ros.rosutil.action import RaceFreeActionClient

    future, waited = _send_one_goal(rclpy_context, RaceFreeActionClient, "fixed")
    assert future.done(), f"no goal response within {waited:.1f} s"
    assert future.result().accepted
    # The control: rclpy's own client drops that response (its future never completes). Where it
    # does not, the installed rclpy has the upstream fix and the control says nothing.
    plain, _ = _send_one_goal(rclpy_context, ActionClient, "plain")
    if plain.done():
        pytest.skip("the installed rclpy does not lose the response (ros2/rclpy#1308 is in)")
