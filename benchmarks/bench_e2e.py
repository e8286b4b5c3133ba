"""End-to-end success rates on the simulated task suite, with the Goal2Skill ablations.

For each task and seed, runs a whole episode of the stack in one process (hvla_ros.system:
planner loop with the rule-based reasoner, classical perception, the shipped skills, the
safety filter) and scores it with the simulator's ground truth. Configurations:

- flat: one diffusion policy per task on whole-task demonstrations (no planner, no masks),
  where the skill library ships a ``flat_<task>`` skill;
- memory ablation: base (no H, W, E), +H, +H+W, full (H+W+E);
- verification ablation: base (no verifier, no reflection), +verify, +verify+reflect, full;
- full:no-early-stop: the full system with subtasks marked ``stop_on_post`` (presses) run to
  their horizons instead of ending once their post-condition is seen.

Printed beside the paper's numbers (Goal2Skill: 32.4% vs 9.8% average success on five RMBench
memory tasks; memory 6.7% -> 35.3%; verify+reflect 8.0% -> 28.0%). The paper's numbers are on
RMBench with its own policies; ours are on this project's SO-101 tasks and shipped skills, so
compare the direction and size of the effects, not the absolute values.

    .venv/bin/python benchmarks/bench_e2e.py --seeds 5 --tasks cube_in_box observe_then_pick
    .venv/bin/python benchmarks/bench_e2e.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("MUJOCO_GL", "egl")

from _common import print_table, write_result

PAPER = {
    "flat": 9.8, "full": 32.4,
    "memory:base": 6.7, "memory:full": 35.3,
    "verify:base": 8.0, "verify:full": 28.0,
}


def configurations() -> dict[str, object]:
    from hvla_ros.planner.episode import PlannerConfig
    from hvla_ros.planner.memory import MemoryConfig

    full = PlannerConfig()
    no_mem = MemoryConfig(use_history=False, use_working_memory=False, use_error_register=False)
    return {
        "full": full,
        "memory:base": replace(full, memory=no_mem),
        "memory:+H": replace(full, memory=replace(no_mem, use_history=True)),
        "memory:+H+W": replace(full, memory=replace(no_mem, use_history=True, use_working_memory=True)),
        "memory:full": full,
        "verify:base": replace(full, use_verifier=False, use_reflection=False),
        "verify:+verify": replace(full, use_reflection=False),
        "verify:+verify+reflect": full,
        "verify:full": full,
        # not in the paper: stop_on_post subtasks (presses) run to their horizons
        "full:no-early-stop": replace(full, stop_on_post=False),
    }


def _task_skills(pairs: list[str]) -> dict[str, str]:
    """``TASK=FILE`` pairs -> {task: skills file}."""
    out: dict[str, str] = {}
    for pair in pairs:
        task, sep, path = pair.partition("=")
        if not sep or not task or not path:
            raise SystemExit(f"--task-skills {pair!r}: expected TASK=FILE")
        out[task] = path
    return out


def _relative(path: str) -> str:
    """A path as recorded in the result file: relative to the repository where it lies inside."""
    repo = Path(__file__).resolve().parent.parent
    try:
        return str(Path(path).resolve().relative_to(repo))
    except ValueError:
        return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=None,
                        help="task ids (default: every single-arm task whose skills the library has)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per task and configuration")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+seeds-1")
    parser.add_argument("--configs", nargs="*", default=None, help="subset of configurations")
    parser.add_argument("--skills-file", default="", help="skill library (default: the shipped one)")
    parser.add_argument("--task-skills", nargs="*", default=[], metavar="TASK=FILE",
                        help="another skill library for one task (default without --skills-file: the task's "
                             "shipped library, hvla_ros.executor.library.TASK_SKILL_LIBRARIES)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 task, full + flat only")
    parser.add_argument("--flat-skills-file", default="",
                        help="flat baselines (default: each task's robot's, library.FLAT_SKILL_LIBRARIES)")
    parser.add_argument("--flat-horizon-s", type=float, default=None,
                        help="how long a flat baseline runs (default: its skill's default_horizon_s)")
    parser.add_argument("--name", default="e2e", help="result file name under benchmarks/results/")
    args = parser.parse_args()

    import torch

    from hvla_ros.executor.library import (
        TASK_SKILL_LIBRARIES,
        SkillLibrary,
        flat_skills_file_for_robot,
        skills_file_for_task,
    )
    from hvla_ros.planner.rule_based import RuleBasedReasoner
    from hvla_ros.planner.templates import load_templates
    from hvla_ros.sim.tasks import TASKS
    from hvla_ros.system import SystemConfig, run_episode, run_flat_episode

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    tasks = args.tasks or sorted(TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; known: {sorted(TASKS)}")
    configs = configurations()
    wanted = args.configs or (["full", "flat"] if args.quick else [*configs, "flat"])
    bad = [c for c in wanted if c != "flat" and c not in configs]
    if bad:
        raise SystemExit(f"--configs: unknown {bad}; known: {[*configs, 'flat']}")
    if args.quick:
        tasks, args.seeds = (["cube_in_box"] if "cube_in_box" in tasks else tasks[:1]), 1
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    per_task = _task_skills(args.task_skills)
    if not args.skills_file:
        per_task = {**{t: str(skills_file_for_task(t)) for t in TASK_SKILL_LIBRARIES}, **per_task}
    default_library = SkillLibrary.load(args.skills_file or None)
    loaded = {f: SkillLibrary.load(f) for f in sorted({per_task[t] for t in tasks if t in per_task})}
    libraries = {t: loaded[per_task[t]] if t in per_task else default_library for t in tasks}
    # A task the library has no skill for would only measure the planner giving up: skipped, named.
    skipped: list[str] = []
    templates = load_templates()
    for t in list(tasks):
        template = templates.tasks.get(t)
        needed = {step.subtask.skill for step in template.steps} if template else set()
        missing = sorted(needed - set(libraries[t].names()))
        if missing:
            skipped.append(f"{t}: the skill library lacks {missing}")
            tasks.remove(t)
    # the flat baselines: the given library, else the one for each task's robot
    flat_files = {t: args.flat_skills_file or str(flat_skills_file_for_robot(TASKS[t].robot_name)) for t in tasks}
    flat_loaded = {  # each file's flat baselines for the tasks run here, and no others
        f: SkillLibrary.load(f, only={f"flat_{t}" for t in tasks if flat_files[t] == f})
        for f in sorted(set(flat_files.values()))
    } if "flat" in wanted else {}
    system = SystemConfig(image_size=tuple(args.image_size))
    # Several rows name the same planner configuration (full = memory:full = verify:full = ...):
    # each distinct configuration runs once and its episodes fill every row that names it.
    same_as: dict[str, str] = {}
    for name in wanted:
        if name != "flat":
            same_as[name] = next((o for o in same_as.values() if configs[o] == configs[name]), name)
    results: dict[str, dict[str, list[bool]]] = {c: {} for c in wanted}
    wall: dict[str, float] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="hvla_bench_e2e_"))
    for name in wanted:
        if name != "flat" and same_as[name] != name:
            results[name], wall[name] = results[same_as[name]], wall[same_as[name]]
            continue
        t0 = time.monotonic()
        for task in tasks:
            outcomes = results[name].setdefault(task, [])
            for seed in seeds:
                # the same denoising noise on a seed for every configuration (common random
                # numbers): their differences are then not the samplers' luck
                torch.manual_seed(seed)
                if name == "flat":
                    flat = f"flat_{task}"
                    flat_library = flat_loaded[flat_files[task]]
                    if flat not in flat_library.names():
                        skipped.append(f"flat/{task}: no skill {flat!r} in the flat library")
                        del results[name][task]
                        break
                    horizon = args.flat_horizon_s or flat_library.get(flat).spec.default_horizon_s
                    score = run_flat_episode(task, seed, flat_library, flat, horizon_s=horizon,
                                             config=system)
                else:
                    score = run_episode(task, seed, libraries[task], RuleBasedReasoner(), log_dir,
                                        planner_config=configs[name], config=system)  # type: ignore[arg-type]
                outcomes.append(score.success)
                print(f"  {name:24s} {task:22s} seed {seed}: {'success' if score.success else 'fail'} "
                      f"({score.wall_s:.0f} s)", flush=True)
        wall[name] = time.monotonic() - t0

    rows = []
    figures: dict[str, object] = {"tasks": tasks, "seeds": list(seeds), "configs": {},
                                  "skills_files": {t: _relative(per_task.get(t, args.skills_file or "default"))
                                                   for t in tasks}}
    for name in wanted:
        per_task_pct = {t: (100.0 * sum(v) / len(v) if v else float("nan")) for t, v in results[name].items()}
        runs = [x for v in results[name].values() for x in v]
        mean = 100.0 * sum(runs) / len(runs) if runs else float("nan")
        alias = same_as.get(name, name)
        label = name if alias == name else f"{name} (= {alias})"
        rows.append([label, f"{mean:.1f}", *(f"{per_task_pct.get(t, float('nan')):.0f}" for t in tasks),
                     PAPER.get(name, "–"), len(runs)])
        figures["configs"][name] = {"success_pct": mean, "per_task_pct": per_task_pct,  # type: ignore[index]
                                    "episodes": len(runs), "wall_s": wall.get(name, 0.0),
                                    "same_run_as": alias, "paper_pct": PAPER.get(name),
                                    "outcomes": results[name]}
    print_table("End-to-end success (%) over the task suite",
                ["configuration", "ours (mean)", *tasks, "paper", "episodes"], rows)
    if skipped:
        print("\nskipped: " + "; ".join(sorted(set(skipped))))
    figures["skipped"] = sorted(set(skipped))
    write_result(args.name, figures, notes="paper numbers: Goal2Skill on RMBench; ours: SO-101 sim tasks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
