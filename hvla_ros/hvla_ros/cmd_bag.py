"""``hvla record`` and ``hvla replay``: rosbag2 MCAP recording and playback into the graph.

``hvla record -o BAG [topic ...]`` records the chosen topics (all when none) until Ctrl-C.
``hvla replay BAG`` publishes a bag (ours, or one recorded elsewhere with standard
sensor_msgs/Image and JointState; ``--map from:=to`` renames topics) at its original timing
(``--rate 1``) or as fast as possible (``--rate 0``). With ``--subtask skill:instruction`` it
also asks the running executor to execute that subtask on the replayed observations and writes
a report of its predicted action chunks against the joint positions recorded in the bag.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from bisect import bisect_left
from pathlib import Path
from typing import Any

import numpy as np

from hvla_ros import topics
from hvla_ros.bag import BagError, BagMessage, deserialize, header_stamp_ns, read_bag, replay
from hvla_ros.cli_args import parse_assignments
from hvla_ros.rosutil.time import seconds

log = logging.getLogger("hvla")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if parser.prog.endswith("record"):
        parser.add_argument("topics", nargs="*", help="topics to record (default: every topic)")
        parser.add_argument("-o", "--output", type=Path, required=True, help="bag directory to create")
        parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)")
        return
    parser.add_argument("bag", type=Path, help="rosbag2 directory (MCAP or sqlite3)")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed; 0 = as fast as possible")
    parser.add_argument("--map", action="append", default=[], metavar="FROM:=TO",
                        help="publish topic FROM under the name TO (repeatable)")
    parser.add_argument("--topics", nargs="*", default=None, help="only these recorded topics")
    parser.add_argument("--wait-for-subscribers", type=float, default=5.0, metavar="SECONDS",
                        help="start once every topic has a subscriber, or after this long (default 5)")
    parser.add_argument("--clock", action="store_true",
                        help="publish /clock from the recorded header stamps (run the graph with use_sim_time)")
    parser.add_argument("--box", action="append", default=[], metavar="CAMERA:X0,Y0,X1,Y1",
                        help="distractor box sent to perception with --subtask (repeatable)")
    parser.add_argument("--subtask", default="", metavar="SKILL:INSTRUCTION",
                        help="execute this subtask on the replayed data and compare its actions")
    parser.add_argument("--report", type=Path, default=None,
                        help="where to write the comparison (JSON; default <bag>/replay_report.json)")


def run(args: argparse.Namespace) -> int:
    import rclpy

    from hvla_ros.rosutil.transport import use_large_data_profile

    use_large_data_profile()  # this process exchanges camera images too
    rclpy.init(args=[])  # our own arguments are not ROS arguments
    node = rclpy.create_node("hvla_bag")
    try:
        if args.command == "record":
            return _record(node, args)
        return _replay(node, args)
    except BagError as exc:
        log.error(str(exc))
        return 2
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def _record(node: Any, args: argparse.Namespace) -> int:
    import rclpy

    from hvla_ros.bag import BagRecorder

    recorder = BagRecorder(node, args.output, args.topics or None)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    last_discovery = 0.0
    while not stop.is_set() and time.monotonic() < deadline:
        if time.monotonic() - last_discovery > 1.0:
            for topic in recorder.discover():
                print(f"[hvla] recording {topic}", flush=True)
            last_discovery = time.monotonic()
        rclpy.spin_once(node, timeout_sec=0.05)
    path = recorder.close()
    print(f"[hvla] wrote {path}: {recorder.stats.messages} messages "
          f"({', '.join(f'{t}: {n}' for t, n in sorted(recorder.stats.per_topic.items()))})", flush=True)
    return 0


def _replay(node: Any, args: argparse.Namespace) -> int:
    from rclpy.executors import SingleThreadedExecutor

    messages = read_bag(args.bag, args.topics)
    if not messages:
        raise BagError(f"bag {str(args.bag)!r} has no messages on the chosen topics")
    remap = parse_assignments(args.map, lambda item: BagError(f"--map expects FROM:=TO, got {item!r}"))
    print(f"[hvla] replaying {len(messages)} messages from {args.bag} "
          f"({(messages[-1].timestamp_ns - messages[0].timestamp_ns) / 1e9:.1f} s recorded) at rate {args.rate}",
          flush=True)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    comparison = None
    try:
        if args.subtask:
            comparison = ChunkComparison(node, args.subtask, [_parse_box(b) for b in args.box])
            if args.clock:  # the executor judges freshness on the recording's clock: start it first
                first = next((s for s in map(header_stamp_ns, messages) if s is not None), None)
                if first is not None:
                    comparison.publish_clock(first)
            comparison.start(timeout=90.0)
        stats = replay(node, messages, rate=args.rate, remap=remap,
                       wait_for_subscribers_s=args.wait_for_subscribers, publish_clock=args.clock)
        print(f"[hvla] published {stats.published} messages"
              + (f", lateness p99 {np.percentile(stats.lateness_ms, 99):.1f} ms" if stats.lateness_ms else ""),
              flush=True)
        if comparison is not None:
            report = comparison.finish(messages, remap)
            path = args.report or args.bag / "replay_report.json"
            path.write_text(json.dumps(report, indent=2))
            print(f"[hvla] {report['chunks']} predicted chunks compared with the recording: "
                  f"mean |error| {report.get('mean_abs_error_rad', float('nan')):.4f} rad; report: {path}",
                  flush=True)
    finally:
        executor.shutdown(timeout_sec=2.0)
        spin.join(timeout=3.0)
    return 0


def _parse_box(text: str) -> Any:
    from hvla_interfaces.msg import PixelBox

    try:
        camera, coords = text.split(":", 1)
        x0, y0, x1, y1 = (float(v) for v in coords.split(","))
    except ValueError:
        raise BagError(f"--box expects CAMERA:X0,Y0,X1,Y1, got {text!r}") from None
    return PixelBox(camera=camera, x_min=x0, y_min=y0, x_max=x1, y_max=y1)


class ChunkComparison:
    """Runs one subtask on the executor during a replay and collects its anchor chunks.

    The subtask also goes to perception (latched on the planner's subtask topic), as the planner
    would send it, so the replayed images are masked with its distractor boxes.
    """

    def __init__(self, node: Any, subtask: str, boxes: list[Any] | None = None) -> None:
        from rosgraph_msgs.msg import Clock

        from hvla_interfaces.msg import ActionChunk, Subtask
        from hvla_ros.rosutil.qos import COMMAND_QOS, LATCHED_QOS

        if ":" not in subtask:
            raise BagError(f"--subtask expects SKILL:INSTRUCTION, got {subtask!r}")
        self.skill, self.instruction = (s.strip() for s in subtask.split(":", 1))
        self.boxes = list(boxes or [])
        self.node = node
        self.chunks: list[Any] = []
        self._lock = threading.Lock()
        node.create_subscription(ActionChunk, topics.ANCHOR_CHUNKS, self._on_chunk, COMMAND_QOS)
        self._subtask_pub = node.create_publisher(Subtask, topics.CURRENT_SUBTASK, LATCHED_QOS)
        self._clock_pub = node.create_publisher(Clock, topics.CLOCK, 10)
        self._goal_handle: Any = None

    def publish_clock(self, stamp_ns: int) -> None:
        from hvla_ros.bag import _clock_msg

        self._clock_pub.publish(_clock_msg(stamp_ns))

    def _on_chunk(self, msg: Any) -> None:
        with self._lock:
            self.chunks.append(msg)

    def start(self, timeout: float) -> None:
        from builtin_interfaces.msg import Duration

        from hvla_interfaces.action import ExecuteSubtask
        from hvla_interfaces.msg import Subtask
        from hvla_ros.rosutil.action import RaceFreeActionClient

        client = RaceFreeActionClient(self.node, ExecuteSubtask, topics.EXECUTE_SUBTASK_ACTION)
        if not client.wait_for_server(timeout_sec=timeout):
            raise BagError("no executor is running (its ExecuteSubtask server did not appear); "
                           "start one, e.g. `hvla up hardware:=mock` or executor_node")
        subtask = Subtask(episode_id="replay", subtask_id=0, attempt=1, instruction=self.instruction,
                          skill=self.skill, horizon=Duration(sec=3600), distractor_boxes=self.boxes)
        self._subtask_pub.publish(subtask)
        goal = ExecuteSubtask.Goal(subtask=subtask)
        future = client.send_goal_async(goal)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not future.done():
            raise BagError(f"the executor did not answer the subtask goal within {timeout:.0f} s")
        if not future.result().accepted:
            raise BagError(f"the executor rejected subtask {self.skill}:{self.instruction!r}")
        self._goal_handle = future.result()

    def finish(self, messages: list[BagMessage], remap: dict[str, str]) -> dict[str, Any]:
        if self._goal_handle is not None:
            self._goal_handle.cancel_goal_async()
        with self._lock:
            chunks = list(self.chunks)
        return compare_chunks(chunks, recorded_joint_states(messages, remap))


def recorded_joint_states(messages: list[BagMessage], remap: dict[str, str]) -> dict[str, Any]:
    """Recorded joint positions: {"t": [s], "names": [...], "q": array T x D} (header stamps)."""
    ts, qs, names = [], [], None
    for m in messages:
        if remap.get(m.topic, m.topic).lstrip("/").endswith(topics.JOINT_STATES):
            msg = deserialize(m)
            if names is None:
                names = list(msg.name)
            if list(msg.name) != names:
                continue
            ts.append(seconds(msg.header.stamp))
            qs.append(list(msg.position))
    return {"t": ts, "names": names or [], "q": np.asarray(qs, dtype=float)}


def compare_chunks(chunks: list[Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """Error of each predicted step against the recorded position at that step's time."""
    t_rec, q_rec, names = recorded["t"], recorded["q"], recorded["names"]
    errors: list[np.ndarray] = []
    for chunk in chunks:
        cols = [names.index(j) if j in names else -1 for j in chunk.joint_names]
        if not t_rec or min(cols, default=-1) < 0:
            continue
        pos = np.asarray(chunk.positions, dtype=float).reshape(int(chunk.num_steps), len(chunk.joint_names))
        t0, dt = seconds(chunk.header.stamp), seconds(chunk.step_period)
        for k in range(pos.shape[0]):
            i = bisect_left(t_rec, t0 + k * dt)
            if i >= len(t_rec):
                break
            errors.append(np.abs(pos[k] - q_rec[i, cols]))
    report: dict[str, Any] = {"chunks": len(chunks), "compared_steps": len(errors), "joints": names}
    if errors:
        err = np.stack(errors)
        report["mean_abs_error_rad"] = float(err.mean())
        report["per_joint_mean_abs_error_rad"] = dict(zip(chunks[0].joint_names, err.mean(axis=0).tolist()))
        report["rmse_rad"] = float(np.sqrt((err**2).mean()))
    return report
