"""``hvla up`` and ``hvla demo``: run the graph of bringup.launch.py without ``ros2 launch``.

``hvla up [arg:=value ...]`` starts every node of the graph in its own process (same launch
arguments as the launch file), brings the lifecycle nodes up, and, if ``goal:=`` is given, runs
that goal. ``hvla demo`` does the same with the simulated task's goal, prints progress, writes
the episode report (and an MCAP bag of the episode) and exits with the goal's outcome.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from hvla_ros.cli_args import parse_assignments
from hvla_ros.graph import ARGUMENT_NAMES, LAUNCH_ARGUMENTS, Graph, GraphConfigError, build_graph

log = logging.getLogger("hvla")


def parse_launch_args(items: list[str]) -> dict[str, str]:
    return parse_assignments(items, lambda item: GraphConfigError(
        f"expected name:=value, got {item!r} (arguments: {list(ARGUMENT_NAMES)})"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("launch_args", nargs="*", metavar="name:=value",
                        help="launch arguments: " + "; ".join(
                            f"{a.name} (default {a.default!r})" for a in LAUNCH_ARGUMENTS))
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where logs, parameters, key frames, the bag and the report go "
                             "(default: episodes/<date>_<task>)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="give up on the goal after this many seconds (default 900)")
    parser.add_argument("--startup-timeout", type=float, default=180.0,
                        help="seconds allowed for the nodes to come up (default 180)")


def run(args: argparse.Namespace) -> int:
    demo = args.command == "demo"
    try:
        overrides = parse_launch_args(args.launch_args)
        if demo:
            overrides.setdefault("record", "true")
        graph = build_graph(overrides)
    except GraphConfigError as exc:
        log.error(str(exc))
        return 2
    run_dir = args.run_dir or Path("episodes") / time.strftime(
        f"%Y%m%d_%H%M%S_{graph.extra.get('task') if graph.hardware == 'sim' else graph.robot}")
    run_dir = run_dir.resolve()
    if any(n.name == "planner" for n in graph.nodes):
        graph = graph.with_parameters("planner", log_dir=str(run_dir / "episodes"))
    managed = ManagedGraph(graph, run_dir)
    goal = graph.goal if demo else overrides.get("goal", "")
    return managed.run(goal=goal, timeout=args.timeout, startup_timeout=args.startup_timeout, stay_up=not demo)


class ManagedGraph:
    """Start the graph, optionally run one goal with progress + report, then tear down."""

    def __init__(self, graph: Graph, run_dir: Path) -> None:
        self.graph = graph
        self.run_dir = run_dir
        self._interrupted = threading.Event()

    def run(self, *, goal: str, timeout: float, startup_timeout: float, stay_up: bool) -> int:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        from hvla_ros.operator import KeyFrameRecorder, OperatorClient
        from hvla_ros.runner import GraphRunner, LifecycleError, LifecycleManager, NodeDiedError, tail

        # Ctrl-C and SIGTERM (kill, systemd, a container stop) both end the goal and the graph cleanly.
        previous = {sig: signal.signal(sig, lambda *_: self._interrupted.set())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        runner = GraphRunner(self.graph, self.run_dir)
        from hvla_ros.rosutil.transport import use_large_data_profile

        use_large_data_profile()  # this process exchanges camera images too
        from rclpy.signals import SignalHandlerOptions

        # our own arguments are not ROS arguments; the handlers above (not rclpy's, which would shut
        # the context down under us) own the signals, so the goal is cancelled and the nodes
        # brought down over a working context
        rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
        node = OperatorClient(namespace=self.graph.namespace or None)
        manager = LifecycleManager(node, self.graph.lifecycle_nodes, self.graph.namespace)
        executor: MultiThreadedExecutor | None = None
        spin_thread: threading.Thread | None = None
        recorder = None
        discovery_timer = None
        code = 1
        try:
            print(f"[hvla] starting {len(self.graph.nodes)} nodes: "
                  f"{', '.join(n.name for n in self.graph.nodes)} (run dir {self.run_dir})", flush=True)
            runner.start()
            manager.startup(timeout=startup_timeout, alive_check=runner.check_alive)
            print("[hvla] all lifecycle nodes active", flush=True)
            frames = KeyFrameRecorder(node, "front", self.run_dir / "report")
            if self.graph.record:
                from hvla_ros.bag import BagRecorder

                recorder = BagRecorder(node, self.run_dir / "bag")
                recorder.discover()  # every node is up: most topics exist already
                discovery_timer = node.create_timer(1.0, recorder.discover)
            # Multi-threaded, unlike the nodes: the bag recorder reads every stream here (raw and
            # filtered images, masks, /clock, joint_states). Single-threaded it fell behind and the
            # simulator's reliable image publishers waited on it (real-time factor 0.12-0.3 instead
            # of 0.5, cameras at 2.5-7 fps instead of 15; bench_graph seeds 0-6: 4/7 goals).
            executor = MultiThreadedExecutor(num_threads=4)
            executor.add_node(node)
            spin_thread = threading.Thread(target=executor.spin, daemon=True)
            spin_thread.start()
            manager.spun_externally = True
            if goal:
                code = self._run_goal(node, runner, frames, goal, timeout, recorder)
            if stay_up:
                print("[hvla] graph up; Ctrl-C to stop", flush=True)
                while not self._interrupted.is_set():
                    runner.check_alive()
                    time.sleep(0.5)
                code = 0
        except NodeDiedError as exc:
            print(f"[hvla] error: {exc}", flush=True)
            code = 3
        except LifecycleError as exc:
            print(f"[hvla] error: {exc} (logs in {self.run_dir / 'logs'})", flush=True)
            if exc.node is not None and runner is not None:
                print(f"[hvla] last lines of {exc.node}'s log:\n{tail(runner.log_path(exc.node))}", flush=True)
            code = 3
        finally:
            try:  # while the operator node still spins, so the nodes' replies are received
                manager.shutdown(timeout=3.0)
            except Exception as exc:
                log.warning(f"lifecycle shutdown failed: {exc}")
            if executor is not None:
                executor.shutdown(timeout_sec=2.0)
            if spin_thread is not None:
                spin_thread.join(timeout=5.0)
            if discovery_timer is not None:
                node.destroy_timer(discovery_timer)
            if recorder is not None:
                path = recorder.close()
                print(f"[hvla] bag: {path} ({recorder.stats.messages} messages)", flush=True)
            node.destroy_node()
            rclpy.try_shutdown()
            runner.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _run_goal(self, node: Any, runner: Any, frames: Any, goal: str, timeout: float, recorder: Any) -> int:
        from hvla_interfaces.msg import PlanState
        from hvla_ros.operator import STATE_NAMES, describe_plan
        from hvla_ros.report import write_report

        if not node.wait_for_planner(timeout=60.0):
            print("[hvla] error: the planner's ExecuteGoal server did not appear within 60 s", flush=True)
            return 3
        last: dict[str, Any] = {"key": None}

        def on_plan(plan: PlanState) -> None:
            key = (plan.state, plan.current_index, plan.attempt, len(plan.subtasks), len(plan.outcomes))
            if key == last["key"]:
                return
            last["key"] = key
            print(describe_plan(plan), flush=True)
            tag = (f"subtask {plan.current_index + 1} attempt {plan.attempt}"
                   if plan.current_index >= 0 else "start")
            frames.snapshot(f"{tag} ({STATE_NAMES.get(plan.state, plan.state)})")

        node.on_plan(on_plan)
        if self.graph.hardware == "sim":
            self._reset_sim(node, runner)
        print(f"[hvla] goal: {goal!r}", flush=True)
        started = time.monotonic()
        handle_future = node.send_goal(goal)
        handle = self._wait(handle_future, 30.0, runner)
        if handle is None or not handle.accepted:
            print("[hvla] error: the planner rejected the goal", flush=True)
            return 3
        result_future = handle.get_result_async()
        result = self._wait(result_future, timeout, runner)
        if result is None:
            print("[hvla] stopping: cancelling the goal", flush=True)
            self._wait(handle.cancel_goal_async(), 10.0, runner, interruptible=False)
            result = self._wait(result_future, 15.0, runner, interruptible=False)
        elapsed = time.monotonic() - started
        frames.snapshot("end")
        if result is None:
            print("[hvla] error: no result from the planner", flush=True)
            return 4
        r = result.result
        verdict = "SUCCEEDED" if r.success else "FAILED"
        print(f"[hvla] goal {verdict} in {elapsed:.1f} s: {r.subtasks_succeeded}/{r.subtasks_total} subtasks, "
              f"{r.replans} replans" + (f" — {r.error_msg}" if r.error_msg else ""), flush=True)
        log_path = Path(r.log_path) if r.log_path else None
        extra = {"robot": self.graph.robot, "hardware": self.graph.hardware,
                 "task": self.graph.extra.get("task", ""), "seed": self.graph.extra.get("seed", ""),
                 "wall time": f"{elapsed:.1f} s", "episode log": str(log_path or "–")}
        if node.sim_success is not None:  # the simulator's own judgement, beside the planner's
            truth = "task done" if node.sim_success else "task not done"
            print(f"[hvla] simulator ground truth: {truth}", flush=True)
            extra["simulator ground truth"] = truth
        if recorder is not None:
            extra["bag"] = str(recorder.path)
        report = write_report(self.run_dir / "report", log_path, frames.frames, extra)
        print(f"[hvla] episode report: {report}", flush=True)
        return 0 if r.success else 1

    def _reset_sim(self, node: Any, runner: Any) -> None:
        """Start the episode from the task's initial state: the graph took seconds to come up
        and the simulator's timed events (observe_then_pick's cue lights for its first second,
        button_sequence's flashes) would be over before the planner saw them."""
        res = self._wait(node.reset_sim(), 10.0, runner) if node.wait_for_service("sim_reset", 10.0) else None
        if res is None or not res.success:
            why = res.message if res is not None else "no answer from the simulator's reset service"
            print(f"[hvla] warning: simulator not reset before the goal ({why})", flush=True)
        else:
            print(f"[hvla] simulator {res.message}", flush=True)

    def _wait(self, future: Any, timeout: float, runner: Any, *, interruptible: bool = True) -> Any:
        deadline = time.monotonic() + timeout
        while not future.done():
            if (interruptible and self._interrupted.is_set()) or time.monotonic() > deadline:
                return None
            runner.check_alive()
            time.sleep(0.05)
        return future.result()
