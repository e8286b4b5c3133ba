"""Operator controls: ``hvla status``, ``hvla pause``, ``hvla resume``, ``hvla estop``, ``hvla cancel``.

They talk to a running graph (started by ``hvla up``/``hvla demo`` or ``ros2 launch``) through its
interfaces only: the latched PlanState/MemoryState topics, the planner's SetPaused service, the
refiner's SetEStop service and the ExecuteGoal action's cancel service.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from hvla_ros import topics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", default="", help="namespace of the graph")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the graph")
    if parser.prog.endswith("estop"):
        parser.add_argument("action", choices=("engage", "release"), help="engage or release the e-stop")
        parser.add_argument("--reason", default="operator", help="reason recorded with the e-stop")
    if parser.prog.endswith("status"):
        parser.add_argument("--memory", action="store_true", help="also print the planner's memory")


def _wait(future: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    return future.result() if future.done() else None


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from hvla_ros.operator import OperatorClient
    from hvla_ros.rosutil.transport import use_large_data_profile

    use_large_data_profile()  # this process exchanges camera images too
    rclpy.init(args=[])  # our own arguments are not ROS arguments
    node = OperatorClient(namespace=args.namespace or None)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    import threading

    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        return _dispatch(node, args)
    finally:
        executor.shutdown(timeout_sec=1.0)
        spin.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown()


def _dispatch(node: Any, args: argparse.Namespace) -> int:
    from hvla_ros.operator import describe_plan, describe_safety

    if args.command == "status":
        deadline = time.monotonic() + args.timeout
        while node.plan is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if node.plan is None:
            print(f"no plan published on {topics.PLAN_STATE} within {args.timeout:.0f} s (is a planner running?)")
        else:
            print(describe_plan(node.plan))
        while node.safety is None and time.monotonic() < deadline + 1.0:  # published every control period
            time.sleep(0.05)
        print(describe_safety(node.safety) if node.safety is not None
              else f"safety: no status on {topics.SAFETY_STATUS} (is the refiner running?)")
        if node.plan is None:
            return 1
        if args.memory:
            memory = _latest_memory(node, args.timeout)
            if memory is not None:
                print(f"working memory: {memory.working_memory}")
                for e in memory.errors:
                    print(f"  error register: subtask {e.subtask_id + 1} attempt {e.attempt}: {e.diagnosis}")
        return 0
    if args.command in ("pause", "resume"):
        return _call(node, "paused", lambda: node.set_paused(args.command == "pause"), args.timeout,
                     f"{args.command}d" if args.command == "pause" else "resumed")
    if args.command == "estop":
        engage = args.action == "engage"
        return _call(node, "estop", lambda: node.set_estop(engage, args.reason), args.timeout,
                     "e-stop engaged: the arm holds" if engage else "e-stop released")
    if args.command == "cancel":
        return _cancel_all(node, args.timeout)
    raise ValueError(f"unknown command {args.command!r}")


def _call(node: Any, which: str, call: Any, timeout: float, done_text: str) -> int:
    if not node.wait_for_service(which, timeout):
        print(f"the {which} service is not available (is the graph running?)")
        return 1
    response = _wait(call(), timeout)
    if response is None:
        print(f"no answer from the {which} service within {timeout:.0f} s")
        return 1
    if response.error_code != 0:
        print(f"refused: {response.error_msg} (error {response.error_code})")
        return 1
    print(done_text)
    return 0


def _cancel_all(node: Any, timeout: float) -> int:
    """Cancel every ExecuteGoal goal (a zero goal id and stamp mean all goals)."""
    from action_msgs.srv import CancelGoal

    client = node.create_client(CancelGoal, f"{topics.EXECUTE_GOAL_ACTION}/_action/cancel_goal")
    if not client.wait_for_service(timeout_sec=timeout):
        print("the planner's ExecuteGoal action is not available (is the graph running?)")
        return 1
    response = _wait(client.call_async(CancelGoal.Request()), timeout)
    if response is None:
        print("no answer to the cancel request")
        return 1
    print(f"cancelling {len(response.goals_canceling)} goal(s)")
    return 0 if response.return_code in (0, 1) else 1  # ERROR_NONE, ERROR_REJECTED (nothing to cancel)


def _latest_memory(node: Any, timeout: float) -> Any:
    from hvla_interfaces.msg import MemoryState
    from hvla_ros.rosutil.qos import LATCHED_QOS

    box: list[Any] = []
    node.create_subscription(MemoryState, topics.MEMORY_STATE, box.append, LATCHED_QOS)
    deadline = time.monotonic() + timeout
    while not box and time.monotonic() < deadline:
        time.sleep(0.05)
    return box[-1] if box else None
