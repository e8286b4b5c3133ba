"""Control-loop latency of the ROS graph versus the same models called in one process.

Graph: the simulator, perception, executor and refiner run as separate processes over Fast DDS
(started from the graph description, as ``hvla up`` does); one subtask is executed and, for each
action chunk, the latency is measured from the camera frame stamp the chunk was predicted from
(ActionChunk.header.stamp, the newest observation's stamp) to the JointTrajectory the refiner
published for it (its header stamp, the publication time). Both stamps are sim time on the
simulator's /clock, which runs at real time here.

Baseline: the same perception, policy, refinement and safety code called in one process on the
same simulator (hvla_ros.system), per chunk: perception of one frame + policy inference +
refine/safety. The ratio is the ROS overhead.

    .venv/bin/python benchmarks/bench_latency.py --skill pick --seconds 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
from _common import percentiles, print_table, write_result


def graph_latency(task: str, skill: str, instruction: str, seconds: float,
                  image: tuple[int, int]) -> tuple[list[float], dict[str, dict[str, float]]]:
    """Per-chunk latencies (ms) and their breakdown (sim time, as the probe receives them):
    ``to_chunk`` observation stamp -> ActionChunk received (observation age at prediction +
    inference + one hop), ``inference`` (the executor's own figure, from its feedback),
    ``refiner`` ActionChunk received -> JointTrajectory received (refiner + two hops)."""
    import rclpy
    from builtin_interfaces.msg import Duration
    from rclpy.executors import SingleThreadedExecutor
    from trajectory_msgs.msg import JointTrajectory

    from hvla_interfaces.action import ExecuteSubtask
    from hvla_interfaces.msg import ActionChunk, Subtask
    from hvla_ros import topics
    from hvla_ros.graph import build_graph
    from hvla_ros.robot import get_robot
    from hvla_ros.rosutil.action import RaceFreeActionClient
    from hvla_ros.rosutil.qos import COMMAND_QOS, LATCHED_QOS
    from hvla_ros.runner import GraphRunner, LifecycleManager

    graph = build_graph({"task": task, "namespace": f"latency{os.getpid()}"})
    nodes = []
    for n in graph.nodes:
        if n.name == "planner":
            continue
        params = dict(n.parameters)
        if n.name == "sim":
            params.update(image_height=image[0], image_width=image[1], camera_rate_hz=30.0)
        nodes.append(replace(n, parameters=params))
    graph = replace(graph, nodes=nodes)
    run_dir = Path(tempfile.mkdtemp(prefix="hvla_bench_latency_"))
    stamps: dict[str, list[tuple[float, float]]] = {"chunks": [], "trajectories": []}
    inference_ms: list[float] = []
    lock = threading.Lock()

    def sec(t) -> float:
        return t.sec + t.nanosec * 1e-9

    rclpy.init()
    from rclpy.parameter import Parameter

    # on the simulator's clock, like the nodes, so arrival times compare with the stamps
    node = rclpy.create_node("latency_probe", namespace=graph.namespace,
                             parameter_overrides=[Parameter("use_sim_time", value=True)])

    def now() -> float:
        return node.get_clock().now().nanoseconds * 1e-9

    def on_feedback(fb) -> None:
        text = fb.feedback.status_text
        if text.startswith("chunk") and "inference " in text:
            inference_ms.append(float(text.rsplit("inference ", 1)[1].split()[0]))
    with GraphRunner(graph, run_dir) as runner:
        LifecycleManager(node, graph.lifecycle_nodes, graph.namespace).startup(
            timeout=180.0, alive_check=runner.check_alive)
        node.create_subscription(ActionChunk, topics.ANCHOR_CHUNKS,
                                 lambda m: _append(lock, stamps["chunks"], (now(), sec(m.header.stamp))),
                                 COMMAND_QOS)
        arm = get_robot(graph.robot).arms[0]
        node.create_subscription(JointTrajectory, arm.trajectory_topic,
                                 lambda m: _append(lock, stamps["trajectories"],
                                                   (now(), sec(m.header.stamp))), COMMAND_QOS)
        client = RaceFreeActionClient(node, ExecuteSubtask, topics.EXECUTE_SUBTASK_ACTION)
        subtask_pub = node.create_publisher(Subtask, topics.CURRENT_SUBTASK, LATCHED_QOS)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        try:
            if not client.wait_for_server(timeout_sec=60):
                raise RuntimeError("executor did not come up")
            subtask = Subtask(episode_id="latency", instruction=instruction, skill=skill,
                              horizon=Duration(sec=int(seconds)))
            subtask_pub.publish(subtask)  # what the planner does: perception starts filtering for it
            goal = ExecuteSubtask.Goal(subtask=subtask)
            handle_future = client.send_goal_async(goal, feedback_callback=on_feedback)
            while not handle_future.done():
                time.sleep(0.05)
            result_future = handle_future.result().get_result_async()
            deadline = time.monotonic() + seconds * 4 + 30
            while not result_future.done() and time.monotonic() < deadline:
                runner.check_alive()
                time.sleep(0.1)
        finally:
            executor.shutdown(timeout_sec=2)
            spin.join(timeout=3)
            node.destroy_node()
            rclpy.try_shutdown()
    # Pair each chunk with the first trajectory received after it (holds and later ticks are
    # not the chunk's trajectory).
    latencies, to_chunk, refiner = [], [], []
    trajs = sorted(t for t in stamps["trajectories"] if t[1] > 0)  # holds are stamped 0 (start on receipt)
    for t_chunk, obs_stamp in sorted(stamps["chunks"]):
        after = [t for t in trajs if t[0] >= t_chunk]
        if after:
            latencies.append((after[0][1] - obs_stamp) * 1e3)
            to_chunk.append((t_chunk - obs_stamp) * 1e3)
            refiner.append((after[0][0] - t_chunk) * 1e3)
    breakdown = {"to_chunk": percentiles(to_chunk), "inference": percentiles(inference_ms),
                 "refiner": percentiles(refiner)}
    return latencies, breakdown


def _append(lock: threading.Lock, out: list, item: tuple[float, float]) -> None:
    with lock:
        out.append(item)


def one_process_latency(task: str, skill: str, instruction: str, seconds: float,
                        image: tuple[int, int]) -> tuple[list[float], dict[str, float]]:
    import torch

    from hvla_ros.executor.library import SkillLibrary
    from hvla_ros.planner.plan import Subtask
    from hvla_ros.sim.world import SimWorld
    from hvla_ros.system import SimSystemExecutor, SystemConfig

    torch.set_num_threads(1)  # as the executor node (config/hvla.yaml: torch_threads 1)
    world = SimWorld(task, seed=0, image_size=image)
    try:
        executor = SimSystemExecutor(world, SkillLibrary.load(), SystemConfig(image_size=image))
        executor.execute(Subtask(instruction=instruction, skill=skill, horizon_s=seconds), 0, 1)
    finally:
        world.close()
    t = executor.timings
    # The first chunk pays one-off costs (allocations, lazy initialisation): left out.
    perception_ms = 1e3 * float(np.median(t.perception[1:])) if len(t.perception) > 1 else 0.0
    per_chunk = [1e3 * (p + r) + perception_ms for p, r in zip(t.policy[1:], t.refine_and_safety[1:])]
    stages = {"render_ms": 1e3 * float(np.median(t.render[1:])), "perception_ms": perception_ms,
              "policy_ms": 1e3 * float(np.median(t.policy[1:])) if len(t.policy) > 1 else 0.0}
    return per_chunk, stages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cube_in_box")
    parser.add_argument("--skill", default="pick")
    parser.add_argument("--instruction", default="pick up the red cube")
    parser.add_argument("--seconds", type=float, default=20.0, help="subtask horizon")
    parser.add_argument("--image-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--quick", action="store_true", help="a 6 s subtask")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 6.0
    image = tuple(args.image_size)
    base, stages = one_process_latency(args.task, args.skill, args.instruction, args.seconds, image)  # type: ignore[arg-type]
    graph, breakdown = graph_latency(args.task, args.skill, args.instruction, args.seconds, image)  # type: ignore[arg-type]
    g, b = percentiles(graph), percentiles(base)
    rows = [["graph (separate processes, DDS)", g["p50"], g["p99"], g.get("n", 0)],
            ["one process (same models)", b["p50"], b["p99"], b.get("n", 0)]]
    ratio = g["p50"] / b["p50"] if b["p50"] else float("nan")
    print_table(f"camera frame stamp -> JointTrajectory published (ms), skill {args.skill!r}, "
                f"{image[0]}x{image[1]}", ["path", "p50", "p99", "chunks"], rows)
    print(f"\nROS overhead ratio (p50 graph / p50 one process): {ratio:.2f}")
    print("one-process stage means (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print_table("graph breakdown (ms, sim time)", ["stage", "p50", "p99"],
                [["observation stamp -> ActionChunk received", breakdown["to_chunk"]["p50"],
                  breakdown["to_chunk"]["p99"]],
                 ["  of which executor inference", breakdown["inference"]["p50"], breakdown["inference"]["p99"]],
                 ["ActionChunk received -> JointTrajectory received", breakdown["refiner"]["p50"],
                  breakdown["refiner"]["p99"]]])
    write_result("latency", {"graph_ms": g, "graph_breakdown_ms": breakdown, "one_process_ms": b,
                             "ratio_p50": ratio, "stages_ms": stages,
                             "skill": args.skill, "image_size": list(image)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
