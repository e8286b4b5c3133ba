"""``hvla sim-eval-experts``: run every task's scripted expert over N seeds, print success rates.

Headless (no rendering). Each episode: reset from the seed, let the expert act at 30 Hz until it is
done (or the task's time limit passes), simulate the task's settle time, judge ground-truth
success.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeResult:
    task: str
    seed: int
    success: bool
    sim_seconds: float
    subtasks_done: int


def run_expert_episode(world: SimWorld, seed: int) -> EpisodeResult:
    """Reset ``world`` to ``seed`` and roll its task's expert out to the end."""
    world.reset(seed)
    expert = world.task.expert(world)
    while not expert.done and world.time < world.task.time_limit:
        world.set_joint_targets(expert.act(world))
        world.step(world.control_steps)
    world.step(round(world.task.settle_time / world.timestep))
    return EpisodeResult(world.task.name, seed, world.success(), world.time, expert.current)


def evaluate(task: str, seeds: list[int]) -> list[EpisodeResult]:
    """Expert rollouts of ``task`` for each seed, headless."""
    from hvla_ros.sim.world import SimWorld

    world = SimWorld(task, render=False)
    try:
        return [run_expert_episode(world, s) for s in seeds]
    finally:
        world.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="*", default=None, help="task ids (default: all)")
    parser.add_argument("--seeds", type=int, default=50, help="number of seeds per task (0..N-1)")
    parser.add_argument("--first-seed", type=int, default=0, help="first seed")
    parser.add_argument("--show-failures", action="store_true", help="list the failing seeds")


def run(args: argparse.Namespace) -> int:
    from hvla_ros.sim.tasks import TASKS

    names = args.tasks or list(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        _log.error(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
        return 2
    if args.seeds <= 0:
        _log.error(f"--seeds must be positive, got {args.seeds}")
        return 2
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f"{'task':<24} {'success':>8} {'rate':>7} {'sim s/ep':>9} {'wall s':>7}")
    all_ok = True
    for name in names:
        t0 = time.perf_counter()
        results = evaluate(name, seeds)
        wall = time.perf_counter() - t0
        n_ok = sum(r.success for r in results)
        rate = n_ok / len(results)
        all_ok &= rate >= 0.95
        sim = sum(r.sim_seconds for r in results) / len(results)
        print(f"{name:<24} {n_ok:>4}/{len(results):<3} {rate:>7.1%} {sim:>9.1f} {wall:>7.1f}", flush=True)
        if args.show_failures and n_ok < len(results):
            print(f"  failing seeds: {[r.seed for r in results if not r.success]}")
    return 0 if all_ok else 1
