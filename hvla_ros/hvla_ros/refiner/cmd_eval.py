"""``hvla eval-refiner``: closed-loop success, anchor-only vs refined vs each ablation, in the sim.

For each variant and seed the task's canonical subtasks run as in ``hvla eval-skills`` (same
SkillRunner path), except that every anchor chunk goes through the variant's refiner (the
anchor's context recomputed from the observation history, as refiner_node does) and then the
safety filter, exactly what reaches the arm through refiner_node. ``anchor`` is the skills alone
(pass-through: the safety filter only). Refiners are read from ``<refiners>/<variant>/<skill>/``
(``hvla train-refiner --ablation <variant> --out <refiners>/<variant>/<skill>``).

Printed beside the AnchorRefine paper's figures (their benchmarks, not ours: the deltas are
what to compare), with the residual-target compactness each refiner measured on its training
data (mean norm and covariance trace, raw actions vs residuals)::

    hvla eval-refiner --task cube_in_box --seeds 0-49 --refiners refiners
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hvla_ros.cli_args import seed_list

log = logging.getLogger(__name__)

#: Paper figures (success-rate points): full method gain over the anchor, and each ablation's
#: change relative to the full method (LIBERO-Long, GR-1 backbone).
PAPER_DELTA = {"full": +7.8, "no_gripper": -3.8, "naive_gripper_mse": -9.7, "no_detach": -6.6,
               "anchor_concat": -2.7, "direct": -8.7}
PRECISION_TASKS = ("cube_in_box", "pen_in_holder", "stack_blue_on_yellow", "open_drawer")


def run_episode(world: Any, lib: Any, seed: int, refiner: Any, *, horizon_s: float | None,
                cameras: list[str], expert_subtasks: int = 0, latency_steps: int = 0) -> dict[str, Any]:
    """One seeded episode with chunks refined by ``refiner`` (None = anchor only) and safety-filtered.

    ``expert_subtasks``: the first K subtasks are done by the scripted expert (to measure a later
    skill, e.g. place after an expert pick); the skills and the refiner run the rest.

    ``latency_steps``: the graph's timing, in lockstep. Zero: each chunk's ``n_action_steps`` are
    executed right after its observation (no latency). N > 0: as executor_node and refiner_node
    run it: the chunk carries N extra steps (latency compensation), the arm goes on executing the
    previous chunk for N control steps after the observation (inference and transport), then the
    new chunk's steps N .. N + n_action_steps - 1 (its first N are stale and dropped by the safety
    filter); the next observation is taken when step ``n_action_steps`` of the chunk is due, so
    the arm finishes the chunk while the next one is computed.
    """
    from hvla_ros.executor.evaluate import expert_prefix, seed_episode
    from hvla_ros.executor.runner import Observation, ObservationBuffer, SkillRunner
    from hvla_ros.refiner.runtime import observation_context_provider
    from hvla_ros.refiner.safety import Chunk, SafetyConfig, SafetyFilter

    # The same denoising noise for every variant on a seed (common random numbers): the
    # variants' differences are then not drowned in the anchor's sampling noise.
    seed_episode(world, seed)
    names = world.joint_names
    safety = SafetyFilter(world.robot, SafetyConfig(latency_budget=0.0))
    results = expert_prefix(world, expert_subtasks)
    interventions = 0
    refined0 = refiner.refined if refiner is not None else 0
    for i, sub in enumerate(world.task.subtasks()):
        if i < expert_subtasks:
            continue
        skill = lib.get(sub.skill)
        runner = SkillRunner(skill, sub.instruction, horizon_s, max_obs_age_s=1e9)
        buf = ObservationBuffer(maxlen=8)
        if refiner is not None and sub.skill in refiner.models:
            refiner.providers[sub.skill] = observation_context_provider(skill, buf,
                                                                          functools.partial(str, sub.instruction))

        def observe(buf: ObservationBuffer = buf) -> None:
            q = world.joint_positions()
            safety.update_joint_state(names, q)
            buf.add(Observation(stamp=world.time, images={c: world.render(c) for c in cameras},
                                joints=dict(zip(names, q.tolist(), strict=True))))

        # Commands the arm has yet to execute, one per control step: (joint columns, targets).
        pending: deque[tuple[list[int], np.ndarray]] = deque()

        def tick(buf: ObservationBuffer = buf, pending: deque = pending) -> None:
            if pending:  # else the arm keeps its last target (a refused chunk: the hold)
                idx, q = pending.popleft()
                target = world.joint_targets().copy()
                target[idx] = q
                world.set_joint_targets(target)
            world.step(world.control_steps)
            observe(buf)

        observe()
        while not runner.done:
            planned = runner.next_chunk(buf.history(runner.n_obs_steps, runner.step_period), now=world.time,
                                        latency_s=latency_steps * runner.step_period)
            positions = planned.positions
            grippers = [j for j in planned.joint_names if j in world.robot.gripper_joints]
            if refiner is not None:
                positions = refiner.refine(sub.skill, planned.joint_names, positions, grippers,
                                           planned.start_time).positions
            stamps = planned.start_time + planned.step_period * np.arange(planned.num_steps)
            for _ in range(latency_steps):  # inference and transport: the arm runs on
                tick()
            # The step due now is the one the controller takes next (half a period of slack for
            # the clock's rounding); earlier steps are stale and dropped.
            cmd = safety.filter_chunk(Chunk(planned.joint_names, positions, stamps),
                                      world.time - 0.5 * planned.step_period)
            interventions += int(cmd.hold)
            idx = [names.index(n) for n in cmd.joint_names]
            pending.clear()
            pending.extend((idx, q) for q in cmd.positions)
            for _ in range(max(runner.last_fresh_steps - latency_steps, 0)):
                tick()
        while pending:  # the arm finishes the last chunk
            tick()
        results.append(bool(world.subtask_success(i)))
    world.step(round(world.task.settle_time / world.timestep))
    return {"seed": seed, "subtasks": results, "success": bool(world.success()), "safety_holds": interventions,
            "refined_chunks": refiner.refined - refined0 if refiner is not None else 0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hvla_ros.refiner.model import ABLATIONS

    p.add_argument("--task", action="append", default=None,
                   help=f"task id (repeatable; default: the precision tasks {list(PRECISION_TASKS)})")
    p.add_argument("--seeds", type=seed_list, default=seed_list("0-49"), help="e.g. 0-49 or 1,5,9")
    p.add_argument("--refiners", type=Path, default=None, help="root of <variant>/<skill>/ refiner checkpoints")
    p.add_argument("--variants", default=",".join(["anchor", *ABLATIONS]),
                   help="comma-separated: anchor and/or ablation names")
    p.add_argument("--skills-file", default=None,
                   help="skill library (default: the task's shipped one, e.g. the multi-task skills for "
                        "stack_blue_on_yellow)")
    p.add_argument("--horizon-s", type=float, default=None, help="per-subtask horizon (default: skill's)")
    p.add_argument("--image-size", default="96x128", help="rendered HxW (the policy resizes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--expert-subtasks", type=int, default=0, metavar="K",
                   help="the scripted expert does the first K subtasks (evaluates the later skills alone)")
    p.add_argument("--latency-steps", type=int, default=0, metavar="N",
                   help="run with the graph's timing: each chunk's first N steps are stale by the time it "
                        "reaches the arm, which executes the previous chunk meanwhile (0: lockstep, no "
                        "latency; through the graph on a 2-core CPU chunks arrive ~7 steps late)")
    p.add_argument("--out", type=Path, default=None,
                   help="write all results as JSON (with --combine: the pooled table)")
    p.add_argument("--combine", type=Path, nargs="+", default=None, metavar="JSON",
                   help="print one table from earlier --out files (runs nothing)")


def _load_variant(root: Path, variant: str, skills: list[str]) -> tuple[Any, dict[str, Any], dict[str, Path]]:
    """The variant's refiners, their compactness records, and the co-trained anchors (no_detach)."""
    from hvla_ros.refiner.runtime import ChunkRefiner
    from hvla_ros.refiner.train import load_refiner

    cr = ChunkRefiner()
    compact: dict[str, Any] = {}
    anchors: dict[str, Path] = {}
    for s in skills:
        d = root / variant / s
        if d.is_dir():
            model, meta = load_refiner(d)
            cr.add(s, model, lambda start: None)
            compact[s] = meta.get("compactness")
            if meta.get("anchor_weights"):
                anchors[s] = d
    return cr, compact, anchors


@contextlib.contextmanager
def _anchor_weights(lib: Any, anchors: dict[str, Path]) -> Iterator[None]:
    """Run with the skills' policies replaced by co-trained anchors, restored afterwards."""
    from hvla_ros.refiner.train import load_anchor_weights

    saved = {s: copy.deepcopy(lib.get(s).bundle.policy.state_dict()) for s in anchors}
    try:
        for s, d in anchors.items():
            load_anchor_weights(lib.get(s).bundle.policy, d)
            log.info("skill %s runs with the co-trained anchor of %s", s, d)
        yield
    finally:
        for s, state in saved.items():
            lib.get(s).bundle.policy.load_state_dict(state)


def run(args: argparse.Namespace) -> int:
    import torch

    from hvla_ros.executor.library import SkillConfigError, SkillLibrary, skills_file_for_task
    from hvla_ros.sim.world import SimWorld

    if args.combine:
        return _combine(args.combine, args.out)
    if args.refiners is None and args.variants.strip() != "anchor":
        log.error("--refiners is required unless --variants is anchor or --combine is given")
        return 2
    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.image_size.lower().split("x"))
    libraries: dict[str, Any] = {}

    def library_for(task: str) -> Any:
        """--skills-file, else the task's shipped library (loaded once per file)."""
        path = str(args.skills_file or skills_file_for_task(task))
        if path not in libraries:
            libraries[path] = SkillLibrary.load(path)
        return libraries[path]

    if args.skills_file:
        try:
            library_for("")
        except SkillConfigError as exc:
            log.error("%s", exc)
            return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v != "anchor" and v not in PAPER_DELTA]
    if unknown:
        log.error("unknown variants %s; expected anchor or %s", unknown, sorted(PAPER_DELTA))
        return 2
    if args.latency_steps < 0:
        log.error("--latency-steps must be >= 0, got %d", args.latency_steps)
        return 2
    report: dict[str, Any] = {"seeds": args.seeds, "expert_subtasks": args.expert_subtasks,
                              "latency_steps": args.latency_steps, "tasks": {}}
    for task in args.task or list(PRECISION_TASKS):
        try:
            world = SimWorld(task, image_size=(h, w))
        except (KeyError, ValueError) as exc:
            log.error("task %r is not available in the sim: %s", task, exc)
            continue
        try:
            try:
                lib = library_for(task)
            except SkillConfigError as exc:
                log.error("%s", exc)
                continue
            subs = world.task.subtasks()[args.expert_subtasks:]
            needed = sorted({s.skill for s in subs})
            missing = sorted(set(needed) - set(lib.names()))
            if missing:
                log.error("task %r needs skills %s that the library lacks (%s)", task, missing, lib.names())
                continue
            cams = sorted({c for s in subs for c in lib.get(s.skill).spec.cameras})
            rows: dict[str, Any] = {}
            for v in variants:
                refiner: Any = None
                compact: dict[str, Any] = {}
                anchors: dict[str, Path] = {}
                if v != "anchor":
                    refiner, compact, anchors = _load_variant(args.refiners, v, needed)
                if refiner is not None and not refiner.models:
                    log.error("no %s refiners for %s under %s; skipped", v, needed, args.refiners / v)
                    continue
                t0 = time.monotonic()
                eps = []
                with _anchor_weights(lib, anchors):
                    for seed in args.seeds:
                        eps.append(run_episode(world, lib, seed, refiner, horizon_s=args.horizon_s, cameras=cams,
                                               expert_subtasks=args.expert_subtasks,
                                               latency_steps=args.latency_steps))
                        log.info("%s %s seed %d: subtasks %s, task %s", task, v, seed, eps[-1]["subtasks"],
                                 "success" if eps[-1]["success"] else "failure")
                rate = float(np.mean([e["success"] for e in eps]))
                rows[v] = {"success": rate, "successes": int(sum(e["success"] for e in eps)), "n": len(eps),
                           "episodes": eps, "compactness": compact, "seconds": time.monotonic() - t0}
                log.info("%s %s: %.0f%% over %d seeds", task, v, 100 * rate, len(eps))
            report["tasks"][task] = rows
            _print_task(task, rows)
        finally:
            world.close()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0 if report["tasks"] else 2


def _combine(files: list[Path], out: Path | None = None) -> int:
    """One table per task from several ``--out`` files (variants or seed ranges run in separate
    processes; a variant's episodes over several files are pooled). With ``out``, the pooled
    table is written there too: per variant the rate, its 95% interval and the paired comparison
    with the anchor, with the date and the machine."""
    tasks: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            log.error("cannot read results %s: %s", f, exc)
            return 2
        for task, rows in doc.get("tasks", {}).items():
            into = tasks.setdefault(task, {})
            for v, r in rows.items():
                if v not in into:
                    into[v] = dict(r)
                    continue
                # The same variant over other seeds: one row over all of them (a seed counts once).
                seen = {e["seed"] for e in into[v]["episodes"]}
                eps = into[v]["episodes"] + [e for e in r["episodes"] if e["seed"] not in seen]
                k = int(sum(e["success"] for e in eps))
                into[v] = {**into[v], "episodes": eps, "n": len(eps), "successes": k, "success": k / len(eps)}
    order = ["anchor", *PAPER_DELTA]
    for task, rows in tasks.items():
        tasks[task] = {v: rows[v] for v in sorted(rows, key=lambda v: order.index(v) if v in order else 99)}
        _print_task(task, tasks[task])
    if out is not None and tasks:
        out.write_text(json.dumps(_combined_record(tasks, files), indent=1) + "\n")
        print(f"\npooled results written to {out}")
    return 0 if tasks else 2


def _combined_record(tasks: dict[str, dict[str, Any]], files: list[Path]) -> dict[str, Any]:
    import datetime
    import os
    import platform

    record: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "os": platform.platform()},
        "sources": [f.name for f in files], "paper_delta_points": PAPER_DELTA, "tasks": {}}
    for task, rows in tasks.items():
        base = rows.get("anchor", {}).get("episodes")
        record["tasks"][task] = {
            v: {**_variant_stats(v, r, base), "success": r["success"], "compactness": r.get("compactness") or {},
                "episodes": r.get("episodes", [])}
            for v, r in rows.items()}
    return record


def _variant_stats(variant: str, row: dict[str, Any], anchor_episodes: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A variant's episode count, successes, 95% interval and (not for the anchor itself) its
    paired comparison with the anchor: what the table prints and the pooled record keeps."""
    n = int(row.get("n", len(row.get("episodes", []))))
    k = int(row.get("successes", round(row["success"] * n)))
    stats: dict[str, Any] = {"n": n, "successes": k, "ci95": list(wilson_interval(k, n))}
    if anchor_episodes and variant != "anchor" and row.get("episodes"):
        won, lost, pval = paired_comparison(anchor_episodes, row["episodes"])
        stats["vs_anchor"] = {"won": won, "lost": lost, "mcnemar_p": pval}
    return stats


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate ``k / n``."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_comparison(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[int, int, float]:
    """Seeds ``b`` won and lost against ``a`` (success where the other failed), over the seeds
    both ran, and the exact two-sided McNemar p-value of that split. Every variant meets the same
    denoising noise on a seed, so the paired test is the one that fits."""
    sa = {e["seed"]: bool(e["success"]) for e in a}
    sb = {e["seed"]: bool(e["success"]) for e in b}
    common = sa.keys() & sb.keys()
    won = sum(1 for s in common if sb[s] and not sa[s])
    lost = sum(1 for s in common if sa[s] and not sb[s])
    n = won + lost
    if n == 0:
        return won, lost, 1.0
    tail = sum(math.comb(n, i) for i in range(min(won, lost) + 1)) / 2 ** n
    return won, lost, min(1.0, 2 * tail)


def _print_task(task: str, rows: dict[str, Any]) -> None:
    base = rows.get("anchor", {}).get("success")
    full = rows.get("full", {}).get("success")
    base_eps = rows.get("anchor", {}).get("episodes")
    print(f"\n{task}: success (paper: LIBERO-Long GR-1 deltas in points; full vs anchor, ablations vs full)")
    print(f"  {'variant':<20}{'seeds':>6}{'succ.':>6}{'success':>9}{'vs anchor':>11}{'vs full':>9}{'paper':>8}"
          f"{'95% CI':>14}{'won/lost vs anchor':>20}{'McNemar p':>11}")
    for v, r in rows.items():
        s = r["success"]
        st = _variant_stats(v, r, base_eps)
        n, k = st["n"], st["successes"]
        d_anchor = f"{100 * (s - base):+.1f}" if base is not None and v != "anchor" else ""
        d_full = f"{100 * (s - full):+.1f}" if full is not None and v not in ("anchor", "full") else ""
        paper = f"{PAPER_DELTA[v]:+.1f}" if v in PAPER_DELTA else ""
        lo, hi = st["ci95"]
        ci = f"{100 * lo:.0f}-{100 * hi:.0f}%"
        paired, pval = "", ""
        if "vs_anchor" in st:
            paired, pval = f"{st['vs_anchor']['won']}/{st['vs_anchor']['lost']}", f"{st['vs_anchor']['mcnemar_p']:.2f}"
        print(f"  {v:<20}{n:>6}{k:>6}{100 * s:>8.1f}%{d_anchor:>11}{d_full:>9}{paper:>8}{ci:>14}{paired:>20}{pval:>11}")
    # Residual-target compactness of each refiner's training data (variants trained on the same
    # anchor predictions share it: printed once, with the variants).
    shared: dict[tuple[str, str], list[str]] = {}
    for v, r in rows.items():
        for skill, c in (r.get("compactness") or {}).items():
            if c:
                line = (f"mean norm raw {c['raw_mean_norm']:.3f} -> residual {c['residual_mean_norm']:.3f} "
                        f"(x{c['residual_mean_norm'] / c['raw_mean_norm']:.3f}); cov trace raw "
                        f"{c['raw_cov_trace']:.4f} -> residual {c['residual_cov_trace']:.4f} "
                        f"(x{c['residual_cov_trace'] / c['raw_cov_trace']:.3f})")
                shared.setdefault((skill, line), []).append(v)
    for (skill, line), vs in shared.items():
        print(f"  compactness {skill} [{', '.join(vs)}]: {line}")
