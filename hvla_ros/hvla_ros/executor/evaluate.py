"""``hvla eval-skills``: closed-loop success of the skill library in the MuJoCo work cell.

For each seed the task is reset and its canonical subtasks run in order, each by its skill
through :class:`SkillRunner` (the same code path as executor_node, without DDS): per control step
the cameras are rendered and the joint state read, chunks are predicted with the receding
horizon and executed step by step at the 30 Hz control rate. Inference latency is not simulated
(the simulation waits for the policy). The images are the rendered camera images; in the tasks
without distractors perception's filtered image equals them (empty mask).

Success is ground truth (evaluation only): per subtask the task's post-condition right after the
subtask, and the whole task after the settle time.

    hvla eval-skills --task cube_in_box --seeds 0-19 [--skills-file FILE] [--horizon-s 4]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hvla_ros.cli_args import seed_list

log = logging.getLogger(__name__)


def seed_episode(world: Any, seed: int) -> None:
    """Reset ``world`` to ``seed`` and seed torch's generator, which draws the policies'
    denoising noise: the same seed then gives the same rollout (on the same machine and build)."""
    import torch

    world.reset(seed)
    torch.manual_seed(seed)


def expert_prefix(world: Any, k: int) -> list[bool]:
    """The task's scripted expert does the first ``k`` subtasks; returns their post-conditions.

    Each is judged when the expert moves on from it (a pick's "held" no longer holds once the
    handover after it has passed the cube on). The world must be freshly reset.
    """
    results: list[bool] = []
    if k <= 0:
        return results
    expert = world.task.expert(world)
    while expert.current < k and not expert.done and world.time < world.task.time_limit:
        world.set_joint_targets(np.asarray(expert.act(world), dtype=float))
        world.step(world.control_steps)
        results += [bool(world.subtask_success(i)) for i in range(len(results), min(expert.current, k))]
    return results + [bool(world.subtask_success(i)) for i in range(len(results), k)]


def run_episode(world: Any, lib: Any, seed: int, *, horizon_s: float | None, image_hw: tuple[int, int],
                cameras: Sequence[str], stop_on_failure: bool = False, expert_subtasks: int = 0,
                subtasks: int | None = None) -> dict[str, Any]:
    """One seeded episode; returns per-subtask and task success.

    ``expert_subtasks``: the first K subtasks are done by the task's scripted expert (to measure
    a later skill on its own, e.g. place after an expert pick). ``subtasks``: run only the first
    N subtasks (expert ones included); the task's success is then not judged (``None``).
    """
    from hvla_ros.executor.runner import Observation, ObservationBuffer, SkillRunner

    seed_episode(world, seed)
    names = world.joint_names
    results = expert_prefix(world, expert_subtasks)
    for i, sub in enumerate(world.task.subtasks()):
        if i < expert_subtasks:
            continue
        if subtasks is not None and i >= subtasks:
            return {"seed": seed, "subtasks": results, "success": None}
        skill = lib.get(sub.skill)
        # A subtask that says how long it lasts (observe: the cue's duration, written to 0.1 s)
        # gets that horizon, plus the rounding.
        own = float(sub.parameters["horizon_s"]) + 0.1 if "horizon_s" in sub.parameters else None
        runner = SkillRunner(skill, sub.instruction, own if own and skill.spec.is_scripted else horizon_s,
                             max_obs_age_s=1e9)
        buf = ObservationBuffer(maxlen=8)

        def observe(buf: ObservationBuffer = buf) -> None:
            q = world.joint_positions()
            buf.add(Observation(stamp=world.time, images={c: world.render(c) for c in cameras},
                                joints=dict(zip(names, q.tolist(), strict=True))))

        observe()
        while not runner.done:
            chunk = runner.next_chunk(buf.history(runner.n_obs_steps, runner.step_period), now=world.time)
            for k in range(chunk.num_steps):
                world.set_joint_targets(chunk.positions[k])
                world.step(world.control_steps)
                observe()
        ok = world.subtask_success(i)
        results.append(ok)
        if not ok and stop_on_failure:
            break
    world.step(round(world.task.settle_time / world.timestep))
    return {"seed": seed, "subtasks": results, "success": bool(world.success())}


def run_flat_episode(world: Any, skill: Any, seed: int, *, horizon_s: float, cameras: Sequence[str]) -> dict[str, Any]:
    """The flat baseline: one policy runs the whole task from the goal text for ``horizon_s``."""
    from hvla_ros.executor.runner import Observation, ObservationBuffer, SkillRunner

    seed_episode(world, seed)
    names = world.joint_names
    runner = SkillRunner(skill, world.task.goal, horizon_s, max_obs_age_s=1e9)
    buf = ObservationBuffer(maxlen=8)

    def observe() -> None:
        buf.add(Observation(stamp=world.time, images={c: world.render(c) for c in cameras},
                            joints=dict(zip(names, world.joint_positions().tolist(), strict=True))))

    observe()
    while not runner.done:
        chunk = runner.next_chunk(buf.history(runner.n_obs_steps, runner.step_period), now=world.time)
        for k in range(chunk.num_steps):
            world.set_joint_targets(chunk.positions[k])
            world.step(world.control_steps)
            observe()
    world.step(round(world.task.settle_time / world.timestep))
    return {"seed": seed, "subtasks": [], "success": bool(world.success())}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="cube_in_box", help="task id of the simulated suite")
    parser.add_argument("--seeds", type=seed_list, default=seed_list("0-19"), help="e.g. 0-49 or 1,5,9")
    parser.add_argument("--skills-file", default=None,
                        help="skill library (default: the task's shipped one, library.TASK_SKILL_LIBRARIES; with "
                             "--flat the robot's flat baselines, library.FLAT_SKILL_LIBRARIES)")
    parser.add_argument("--horizon-s", type=float, default=None, help="per-subtask horizon (default: skill's)")
    parser.add_argument("--image-size", default="96x128", help="rendered HxW (the policy resizes)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="write per-seed results as JSON")
    parser.add_argument("--expert-subtasks", type=int, default=0, metavar="K",
                        help="the scripted expert does the first K subtasks (evaluates the later skills alone)")
    parser.add_argument("--subtasks", type=int, default=None, metavar="N",
                        help="run only the first N subtasks (e.g. 1: the first skill alone, over many seeds "
                        "in less time); the task's success is not judged")
    parser.add_argument("--flat", default=None, metavar="SKILL",
                        help="evaluate a flat baseline: this one skill runs the whole task from the goal text")


def run(args: argparse.Namespace) -> int:
    import torch

    from hvla_ros.executor.library import (
        SkillConfigError,
        SkillLibrary,
        flat_skills_file_for_robot,
        skills_file_for_task,
    )
    from hvla_ros.sim.tasks import TASKS
    from hvla_ros.sim.world import SimWorld

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.image_size.lower().split("x"))
    if args.task not in TASKS:
        log.error(f"unknown task {args.task!r}; known: {sorted(TASKS)}")
        return 2
    try:
        if args.skills_file:
            lib = SkillLibrary.load(args.skills_file)
        elif args.flat:
            lib = SkillLibrary.load(flat_skills_file_for_robot(TASKS[args.task].robot_name), only={args.flat})
        else:
            lib = SkillLibrary.load(skills_file_for_task(args.task))
    except SkillConfigError as exc:
        log.error(str(exc))
        return 2
    world = SimWorld(args.task, image_size=(h, w))
    try:
        all_subs = world.task.subtasks()
        if args.subtasks is not None and not args.expert_subtasks < args.subtasks <= len(all_subs):
            log.error(f"--subtasks {args.subtasks}: task {args.task!r} has {len(all_subs)} subtasks, and it must "
                      f"exceed --expert-subtasks ({args.expert_subtasks})")
            return 2
        subs = [] if args.flat else all_subs[args.expert_subtasks:args.subtasks]
        missing = sorted({s.skill for s in subs} - set(lib.names()) | ({args.flat} - set(lib.names()) - {None}))
        if missing:
            log.error(f"task {args.task!r} needs skills {missing} that the library lacks ({lib.names()})")
            return 2
        used = [args.flat] if args.flat else [s.skill for s in subs]
        cams = sorted({c for name in used for c in lib.get(name).spec.cameras})
        episodes = []
        t0 = time.monotonic()
        for seed in args.seeds:
            if args.flat:
                ep = run_flat_episode(world, lib.get(args.flat), seed, horizon_s=args.horizon_s or 10.0,
                                      cameras=cams)
            else:
                ep = run_episode(world, lib, seed, horizon_s=args.horizon_s, image_hw=(h, w), cameras=cams,
                                 expert_subtasks=args.expert_subtasks, subtasks=args.subtasks)
            episodes.append(ep)
            verdict = {True: "success", False: "failure", None: "not judged"}[ep["success"]]
            log.info(f"seed {seed}: subtasks {ep['subtasks']} task {verdict}")
    finally:
        world.close()
    n = len(episodes)
    k0 = args.expert_subtasks
    per_sub = [float(np.mean([e["subtasks"][k0 + i] for e in episodes])) for i in range(len(subs))]
    judged = [e["success"] for e in episodes if e["success"] is not None]
    task_rate = float(np.mean(judged)) if judged else None
    print(f"{args.task}: {n} seeds in {time.monotonic() - t0:.0f} s"
          + (f" (subtasks 0..{k0 - 1} by the scripted expert)" if k0 else ""))
    for i, s in enumerate(subs):
        print(f"  subtask {k0 + i} {s.skill:<12} {s.instruction!r}: {per_sub[i] * 100:.0f}% success")
    print(f"  task success: {task_rate * 100:.0f}%" if task_rate is not None
          else f"  task success: not judged (only the first {args.subtasks} subtasks ran)")
    if args.out:
        args.out.write_text(json.dumps({"task": args.task, "seeds": args.seeds, "episodes": episodes,
                                        "subtask_success": per_sub, "task_success": task_rate}, indent=1))
    return 0
