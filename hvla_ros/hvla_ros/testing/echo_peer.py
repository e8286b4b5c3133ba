"""A peer process that echoes every hvla_interfaces type back over DDS.

Used by the interface round-trip tests (run it with ``python -m hvla_ros.testing.echo_peer``):
- message ``X``: subscribes ``echo/in/X`` and republishes each sample unchanged on ``echo/out/X``;
- service ``X``: ``echo/srv/X`` recognises which sample variant the request is and answers with
  the response sample of the same variant (or an error naming the first differing field);
- action ``X``: ``echo/action/X`` checks the goal the same way, publishes feedback samples and
  returns the result sample; the ``empty`` variant runs long so tests can cancel it mid-way.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import threading
import time
from typing import Any

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from hvla_ros.rosutil.qos import COMMAND_QOS
from hvla_ros.testing.samples import first_difference, make_sample

PACKAGE = "hvla_interfaces"
LONG_RUN_FEEDBACKS = 100  # the cancellable variant: 100 feedbacks, 50 ms apart
SHORT_RUN_FEEDBACKS = 3


def interface_types(kind: str) -> dict[str, Any]:
    """All types of ``kind`` ('msg', 'srv' or 'action') in hvla_interfaces, by name."""
    module = importlib.import_module(f"{PACKAGE}.{kind}")
    out = {}
    for name, obj in vars(module).items():
        if not inspect.isclass(obj) or name.startswith("_"):
            continue
        markers = {"msg": ("get_fields_and_field_types",), "srv": ("Request", "Response"),
                   "action": ("Goal", "Feedback")}[kind]
        if all(hasattr(obj, m) for m in markers):
            out[name] = obj
    return out


#: Order in which a request is matched against the sample variants.
MATCH_ORDER = ("full", "large", "empty")


def distinguishable_variants(cls: type) -> tuple[str, ...]:
    """Variants whose samples of ``cls`` differ from every variant matched before them.

    (A request of one bool field has the same ``full`` and ``large`` sample, for example.)
    """
    out: list[str] = []
    for variant in MATCH_ORDER:
        sample = make_sample(cls, variant)
        if all(first_difference(make_sample(cls, prev), sample) is not None for prev in out):
            out.append(variant)
    return tuple(out)


def match_variant(cls: type, value: Any) -> tuple[str | None, str]:
    """Which sample variant ``value`` equals, and otherwise the first difference from ``full``."""
    for variant in MATCH_ORDER:
        if first_difference(make_sample(cls, variant), value) is None:
            return variant, ""
    return None, first_difference(make_sample(cls, "full"), value) or "?"


class EchoPeer(Node):
    def __init__(self) -> None:
        super().__init__("hvla_echo_peer")
        group = ReentrantCallbackGroup()
        self._keep: list[Any] = []
        for name, cls in interface_types("msg").items():
            pub = self.create_publisher(cls, f"echo/out/{name}", COMMAND_QOS)
            self._keep.append(pub)
            self._keep.append(self.create_subscription(
                cls, f"echo/in/{name}", pub.publish, COMMAND_QOS, callback_group=group))
        for name, srv in interface_types("srv").items():
            self._keep.append(self.create_service(
                srv, f"echo/srv/{name}", functools.partial(self._on_request, srv), callback_group=group))
        for name, act in interface_types("action").items():
            self._keep.append(ActionServer(
                self, act, f"echo/action/{name}",
                execute_callback=lambda gh, a=act: self._execute(a, gh),
                goal_callback=lambda goal, a=act: self._on_goal(a, goal),
                cancel_callback=lambda _gh: CancelResponse.ACCEPT,
                callback_group=group))

    def _on_request(self, srv: Any, request: Any, response: Any) -> Any:
        variant, diff = match_variant(srv.Request, request)
        if variant is None:
            response.error_code = 1
            response.error_msg = f"request matched no sample: {diff}"
            return response
        return make_sample(srv.Response, variant)

    def _on_goal(self, action: Any, goal: Any) -> GoalResponse:
        variant, diff = match_variant(action.Goal, goal)
        if variant is None:
            self.get_logger().error(f"goal matched no sample: {diff}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, action: Any, goal_handle: Any) -> Any:
        variant, _ = match_variant(action.Goal, goal_handle.request)
        assert variant is not None  # the goal callback rejected anything else
        count, period = (LONG_RUN_FEEDBACKS, 0.05) if variant == "empty" else (SHORT_RUN_FEEDBACKS, 0.02)
        for _ in range(count):
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
                return make_sample(action.Result, variant)
            goal_handle.publish_feedback(make_sample(action.Feedback, variant))
            time.sleep(period)  # runs in its own executor thread; never blocks other callbacks
        goal_handle.succeed()
        return make_sample(action.Result, variant)


def main() -> int:
    rclpy.init()
    node = EchoPeer()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    # Exit when the parent closes our stdin, so a killed test run never leaves us behind.
    # (The reader thread only sets a flag: shutting rclpy down under a spinning executor aborts.)
    stdin_closed = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stdin_closed.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    print("ready", flush=True)
    try:
        while not stdin_closed.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
