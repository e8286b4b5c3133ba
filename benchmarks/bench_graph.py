"""Success of the stack through the real ROS graph: ``hvla demo`` once per seed.

Each episode starts the whole graph (simulator, perception, executor, refiner, planner; each node
its own process over Fast DDS, on the simulator's clock), sends the task's goal and
waits for the result, exactly as an operator's ``make demo``. Per seed it records the planner's
verdict, the simulator's ground truth, each subtask's attempts (from the episode log) and the
wall time. This is the figure the in-process evaluations (``hvla eval-skills``, bench_e2e) cannot
give: inference and transport latency, stale observations and the safety filter all act on it.

    .venv/bin/python benchmarks/bench_graph.py --seeds 0-9
    .venv/bin/python benchmarks/bench_graph.py --seeds 0-4 --launch-args real_time_factor:=0.5
    .venv/bin/python benchmarks/bench_graph.py --seeds 0-49 --first-attempt --name graph_first_attempt

``--first-attempt``: the planner gets one attempt per subtask and no replan (a failed subtask
ends the goal), so each seed measures the skills as the executor node runs them, once, and a
failure costs one horizon instead of a dozen.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from _common import print_table, write_result

from hvla_ros.cli_args import seed_list

ROOT = Path(__file__).resolve().parents[1]


def subtask_attempts(run_dir: Path) -> list[dict[str, object]]:
    """Per verdict in the episode log: subtask index, attempt and status."""
    out = []
    for log in sorted((run_dir / "episodes").glob("*.jsonl")):
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("event") == "verdict":
                out.append({"k": ev["k"], "attempt": ev["attempt"], "status": ev["status"],
                            "reason": ev.get("reason", "")})
    return out


def run_seed(task: str, seed: int, launch_args: list[str], timeout: float, keep: Path | None) -> dict[str, object]:
    hvla = Path(sys.executable).with_name("hvla")
    with tempfile.TemporaryDirectory(prefix="hvla_bench_graph_") as tmp:
        run_dir = (keep / f"{task}_seed{seed}") if keep else Path(tmp) / "run"
        cmd = [str(hvla), "demo", "--run-dir", str(run_dir), "--timeout", str(timeout),
               f"task:={task}", f"seed:={seed}", *launch_args]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 300, check=False, cwd=ROOT)
        wall = time.monotonic() - t0
        out = proc.stdout + proc.stderr
        verdict = re.search(r"\[hvla\] goal (SUCCEEDED|FAILED) in ([0-9.]+) s", out)
        truth = re.search(r"\[hvla\] simulator ground truth: (task done|task not done)", out)
        attempts = subtask_attempts(run_dir) if run_dir.exists() else []
    return {
        "seed": seed, "rc": proc.returncode,
        "planner_success": bool(verdict and verdict.group(1) == "SUCCEEDED"),
        "sim_success": bool(truth and truth.group(1) == "task done"),
        "goal_seconds": float(verdict.group(2)) if verdict else None,
        "wall_s": wall, "attempts": attempts,
        "tail": "" if verdict else out[-1500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cube_in_box")
    parser.add_argument("--seeds", type=seed_list, default=seed_list("0-4"), help="e.g. 0-9 or 0,3,5")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-goal timeout (s)")
    parser.add_argument("--launch-args", nargs="*", default=[], help="extra name:=value launch arguments")
    parser.add_argument("--keep", type=Path, default=None, help="keep each run's directory under this folder")
    parser.add_argument("--first-attempt", action="store_true",
                        help="one attempt per subtask, no replanning: the skills' success as the node runs them")
    parser.add_argument("--name", default="graph", help="results file benchmarks/results/<name>.json")
    args = parser.parse_args()
    seeds = args.seeds
    params_dir = tempfile.TemporaryDirectory(prefix="hvla_bench_graph_params_")
    run_args = list(args.launch_args)
    if args.first_attempt:
        if any(a.startswith("params_file:=") for a in args.launch_args):
            parser.error("--first-attempt writes its own params_file; pass the planner settings there instead")
        params = Path(params_dir.name) / "first_attempt.yaml"
        params.write_text("planner:\n  ros__parameters:\n    max_attempts: 1\n    max_replans: 0\n")
        run_args.append(f"params_file:={params}")
    rows: list[list[object]] = []
    results: list[dict[str, object]] = []
    for seed in seeds:
        r = run_seed(args.task, seed, run_args, args.timeout, args.keep)
        results.append(r)
        summarize(args, results, final=False)  # an interrupted run keeps what it measured
        first = {}
        for a in r["attempts"]:  # type: ignore[union-attr]
            first.setdefault(a["k"], a["status"])
        print(f"seed {seed}: planner {'ok' if r['planner_success'] else 'FAILED'}, simulator "
              f"{'done' if r['sim_success'] else 'not done'}, {len(r['attempts'])} verdicts, "
              f"first attempts {first}, {r['wall_s']:.0f} s wall", flush=True)
        if r["tail"]:
            print(r["tail"], flush=True)
        rows.append([seed, r["planner_success"], r["sim_success"], len(r["attempts"]), f"{r['wall_s']:.0f}"])
    print_table(f"{args.task} through the ROS graph ({len(results)} seeds)",
                ["seed", "planner", "simulator", "verdicts", "wall s"], rows)
    summarize(args, results, final=True)
    params_dir.cleanup()


def summarize(args: argparse.Namespace, results: list[dict[str, object]], *, final: bool) -> None:
    """Print (when final) and write the rates over the seeds run so far."""
    n = len(results)
    sim_rate = sum(bool(r["sim_success"]) for r in results) / n
    plan_rate = sum(bool(r["planner_success"]) for r in results) / n
    # first-attempt success per subtask index (how often a skill did its job the first time)
    per_subtask: dict[int, list[bool]] = {}
    for r in results:
        seen: set[int] = set()
        for a in r["attempts"]:  # type: ignore[union-attr]
            if a["k"] not in seen:
                seen.add(a["k"])
                per_subtask.setdefault(a["k"], []).append(a["status"] == "success")
    if final:
        print(f"task success (simulator ground truth): {100 * sim_rate:.0f}%   planner verdict: {100 * plan_rate:.0f}%")
        for k, v in sorted(per_subtask.items()):
            print(f"subtask {k}: first attempt succeeded {sum(v)}/{len(v)}")
    write_result(args.name, {
        "task": args.task, "seeds": [r["seed"] for r in results], "launch_args": args.launch_args,
        "first_attempt_only": args.first_attempt,
        "task_success_rate": sim_rate, "planner_success_rate": plan_rate,
        "first_attempt_success": {str(k): sum(v) / len(v) for k, v in per_subtask.items()},
        "episodes": [{k: v for k, v in r.items() if k != "tail"} for r in results],
    }, notes="hvla demo per seed: every node its own process over Fast DDS, on the simulator clock "
              "(its real_time_factor from config/hvla.yaml unless overridden)")


if __name__ == "__main__":
    main()
