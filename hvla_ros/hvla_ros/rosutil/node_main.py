"""Entry-point boilerplate shared by every node's ``main()``.

Handles the two shutdown traps of rclpy: KeyboardInterrupt / ExternalShutdownException at any
point, and shutting the context down while an executor thread still spins (which can abort the
process), by always stopping the executor before ``try_shutdown``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

EXECUTORS = ("multi_threaded", "single_threaded")


def make_executor(kind: str, *, threads: int = 4) -> Executor:
    """The rclpy executor named ``kind`` (one of :data:`EXECUTORS`).

    ``single_threaded`` dispatches each callback on the spinning thread: on a 480x640 image relay
    it adds about half the latency of ``multi_threaded`` (p50 3.1 vs 6.2 ms, p99 6.5 vs 16.5 ms,
    ``benchmarks/bench_transport.py``), which hands every callback to a pool thread. Use it for
    nodes on the image path whose slow work runs in threads of their own. (rclpy's experimental
    C++ events executor hung at 100% CPU in Jazzy here; it is not offered.)

    ``multi_threaded`` also polls: with one subscription at 120 Hz (``joint_states``, ``/clock``
    under ``use_sim_time``) rclpy's MultiThreadedExecutor (Jazzy) yielded each message 10-45
    times and kept about one core busy (86-105%), against one yield per message and 5-6% for
    ``single_threaded``. Keep it for nodes whose callbacks block (the planner's); a node whose
    only long work is one action goal runs that goal in a thread of its own on
    ``single_threaded`` (executor_node).
    """
    if kind == "multi_threaded":
        return MultiThreadedExecutor(num_threads=threads)
    if kind == "single_threaded":
        return SingleThreadedExecutor()
    raise ValueError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")


def run_node(factory: Callable[[], Node], args: Sequence[str] | None = None, *, threads: int = 4,
             executor_kind: str = "multi_threaded") -> int:
    """Create the node with ``factory`` after ``rclpy.init`` and spin it until shutdown.

    Every node of the graph loads the large-data Fast DDS profile (camera images) unless the
    user set a profile of their own (see :mod:`hvla_ros.rosutil.transport`).
    """
    from hvla_ros.rosutil.transport import use_large_data_profile

    use_large_data_profile()
    rclpy.init(args=list(args) if args is not None else None)
    node: Node | None = None
    executor = make_executor(executor_kind, threads=threads)
    try:
        node = factory()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # SIGTERM shuts the context down from the signal handler; a spin that is between two
        # waits then fails to build its wait set (RCLError) instead of raising
        # ExternalShutdownException. That is a normal shutdown, anything else is not.
        if rclpy.ok():
            raise
    finally:
        # Let callbacks still running in the pool finish before their node is destroyed.
        executor.shutdown(timeout_sec=5.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def run_lifecycle_node(factory: Callable[[], Any], args: Sequence[str] | None = None, *, threads: int = 4,
                       executor_kind: str = "multi_threaded") -> int:
    """:func:`run_node` for a lifecycle node with an ``autostart`` parameter.

    With ``autostart`` true (the default when started alone) the node configures and activates
    itself; a failed configure ends the process with the node's logged reason. Under a
    lifecycle manager (``autostart:=false``) it waits for the manager's transitions.
    """
    from rclpy.lifecycle import TransitionCallbackReturn

    def start() -> Any:
        node = factory()
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError(f"{node.get_name()} failed to configure (see the log above)")
            node.trigger_activate()
        return node

    return run_node(start, args, threads=threads, executor_kind=executor_kind)
