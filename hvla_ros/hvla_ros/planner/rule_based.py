"""The offline rule-based reasoner (the embedded default; needs no model weights).

- plan: the goal template's canonical subtasks; the template's objects are measured in the
  planning image and kept in the plan's notes (``ref.<object>``) as the reference the verifier
  compares against; ``{ref_px.<object>}`` fills in remembered positions (``target_px``).
- verify: image-based predicate checks (:class:`~hvla_ros.planner.predicates.PredicateChecker`)
  on the latest camera images and the frames seen during execution, never simulator state.
- update_memory: a short progress summary plus facts (cue colour, flash order, lamp counts,
  derived facts such as the button that lit the most lamps).
- reflect: reads the error register E so a failed alternative (slot 2) is not tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hvla_ros.planner.image_checks import Blob
from hvla_ros.planner.memory import MemoryView
from hvla_ros.planner.plan import Plan, Predicate, Subtask
from hvla_ros.planner.predicates import PredicateChecker
from hvla_ros.planner.reasoner import (
    Context,
    ExecutionReport,
    Images,
    MemoryUpdate,
    Reasoner,
    ReasonerError,
    Reflection,
    StopCheck,
    Verdict,
)
from hvla_ros.planner.templates import Step, TaskTemplate, Templates, load_templates

_log = logging.getLogger(__name__)


class RuleBasedReasoner(Reasoner):
    """Templates + image checks + rule-based reflection. ``templates``: a path or loaded templates."""

    name = "rule"

    def __init__(self, templates: Templates | str | Path | None = None) -> None:
        super().__init__()
        self.templates = templates if isinstance(templates, Templates) else load_templates(templates)

    # --- helpers -------------------------------------------------------------------------
    def template(self, goal: str) -> TaskTemplate:
        """The template matching ``goal``; raises ReasonerError naming the known goals."""
        t = self.templates.match(goal)
        if t is None:
            raise ReasonerError(f"no goal template matches {goal!r}; known goals: {self.templates.goals()}")
        return t

    def checker(self, goal: str) -> PredicateChecker:
        """The image-based predicate checker of ``goal``'s template."""
        return PredicateChecker(self.templates, self.template(goal))

    def _image(self, images: Images) -> np.ndarray:
        cam = self.templates.camera
        if cam not in images:
            raise ReasonerError(f"the rule-based checks need the {cam!r} camera image; got {sorted(images)}")
        return images[cam]

    def _tried(self, step: Step, memory: MemoryView, current: Subtask | None) -> set[str]:
        """Values of ``step.vary`` that already failed (from E, plus the current attempt)."""
        tried = {e.parameters[step.vary] for e in memory.errors
                 if step.vary in e.parameters and step.pattern.match(e.instruction)}
        if current is not None and step.vary in current.params:
            tried.add(current.params[step.vary])
        return tried

    def _step_index(self, t: TaskTemplate, ctx: Context, n_completed: int, failed: Subtask | None) -> int:
        """Template index of plan position ``n_completed`` (the failed subtask)."""
        steps = [int(x) for x in ctx.notes.get("steps", "").split(",") if x.strip().isdigit()]
        if n_completed < len(steps) and steps[n_completed] < len(t.steps):
            return steps[n_completed]
        if failed is not None:
            for i, s in enumerate(t.steps):
                if s.pattern.match(failed.instruction):
                    return i
        return 0

    # --- plan ----------------------------------------------------------------------------
    def plan(self, ctx: Context, completed: Sequence[Subtask] = (), failed: Subtask | None = None) -> Plan:
        t = self.template(ctx.goal)
        needed = {s.subtask.skill for s in t.steps}
        if not needed <= ctx.limits.skills:
            raise ReasonerError(f"goal {ctx.goal!r} needs skills {sorted(needed - ctx.limits.skills)} that "
                                f"the executor does not declare (it has {sorted(ctx.limits.skills)})")
        checker = PredicateChecker(self.templates, t)
        image = self._image(ctx.images)
        replanning = failed is not None or bool(completed)
        notes: dict[str, str] = {"task": t.task}
        start = 0
        if replanning:
            i = self._step_index(t, ctx, len(completed), failed)
            start = max(0, i - t.steps[i].redo_previous)
        else:
            notes.update(checker.measure(image))
            missing = [o for o in t.objects if f"ref.{o}" not in notes and o != "lamp"]
            if missing:
                _log.warning(f"planning {t.task}: not visible in the {self.templates.camera} image: {missing}")
        refs = {**ctx.notes, **notes}
        # Positions remembered from the first image fill {ref_px.<object>} placeholders.
        values = {f"ref_px.{k[4:]}": "{:.0f},{:.0f}".format(*Blob.decode(v).centroid)
                  for k, v in refs.items() if k.startswith("ref.")}
        subtasks: list[Subtask] = []
        indices: list[int] = []
        for i in range(start, len(t.steps)):
            step = t.steps[i]
            sub = step.subtask.resolve(values)
            if step.vary:
                current = failed if failed is not None and step.pattern.match(failed.instruction) else None
                tried = self._tried(step, ctx.memory, current)
                left = [v for v in step.values if v not in tried]
                if not left:
                    raise ReasonerError(f"every alternative of {step.vary!r} for {sub.instruction!r} failed: "
                                        f"{sorted(tried)}")
                sub = sub.with_parameters({step.vary: left[0]})
            if replanning and step.skippable and not subtasks and self._holds(checker, sub, ctx.images, refs):
                continue  # already achieved: skip it
            subtasks.append(sub)
            indices.append(i)
        if not subtasks:
            raise ReasonerError(f"nothing left to plan for {ctx.goal!r}")
        old = [x for x in ctx.notes.get("steps", "").split(",") if x][: len(completed)]
        notes["steps"] = ",".join([*old, *map(str, indices)])
        self.record("plan", f"goal={ctx.goal!r} completed={len(completed)} failed="
                            f"{failed.instruction if failed else None!r}",
                    f"{[s.instruction for s in subtasks]} params={[s.params for s in subtasks]}")
        return Plan(ctx.goal, tuple(subtasks), notes)

    def _holds(self, checker: PredicateChecker, sub: Subtask, images: Images, notes: Mapping[str, str]) -> bool:
        ok, _, _ = self._check_all(checker, sub, images, notes, ExecutionReport("skill_done"))
        return ok and bool(sub.post.predicates)

    def _check_all(self, checker: PredicateChecker, sub: Subtask, images: Images, notes: Mapping[str, str],
                   report: ExecutionReport) -> tuple[bool, str, dict[str, str]]:
        image = self._image(images)
        cam = self.templates.camera
        seq = [f[cam] for f in report.frames if cam in f]
        before = report.before.get(cam)
        ok, reasons, facts = True, [], {}
        for p in sub.post.predicates:
            holds, why, found = checker.check(p, image, notes=notes, frames=seq, before=before)
            ok = ok and holds
            reasons.append(why)
            facts.update(found)
        return ok, "; ".join(reasons) or "no checkable post-condition", facts

    # --- verify --------------------------------------------------------------------------
    def check(self, goal: str, predicate: Predicate, image: np.ndarray, *, notes: Mapping[str, str] | None = None,
              frames: Sequence[np.ndarray] = (), before: np.ndarray | None = None) -> tuple[bool, str, dict[str, str]]:
        """Evaluate one predicate of ``goal``'s template on an RGB image: (holds, reason, facts)."""
        return self.checker(goal).check(predicate, image, notes=notes, frames=frames, before=before)

    def verify(self, ctx: Context, subtask: Subtask, report: ExecutionReport) -> Verdict:
        checker = self.checker(ctx.goal)
        ok, reason, facts = self._check_all(checker, subtask, report.images or ctx.images, ctx.notes, report)
        if not subtask.post.predicates:
            # Nothing visible to check (e.g. a press that lights nothing): trust the skill's own stop.
            ok = report.termination == "skill_done"
            reason = f"no visible post-condition; the skill {'' if ok else 'did not '}signal completion"
        verdict = Verdict("success" if ok else "fail", reason, facts)
        self.record("verify", f"{subtask.instruction!r} post={[str(p) for p in subtask.post.predicates]}",
                    f"{verdict.status}: {reason} {facts}")
        return verdict

    def monitor(self, ctx: Context, subtask: Subtask, before: Images) -> StopCheck | None:
        """The post-condition's predicates on the latest image (colour blobs: a few ms per image)."""
        if not subtask.post.predicates:
            return None
        checker = self.checker(ctx.goal)
        notes = dict(ctx.notes)
        started = ExecutionReport("horizon", before=before)  # what the verifier's checks compare against

        def holds(images: Images) -> bool:
            return self.templates.camera in images and self._check_all(checker, subtask, images, notes, started)[0]

        return holds

    # --- memory --------------------------------------------------------------------------
    def update_memory(self, ctx: Context, subtask: Subtask, verdict: Verdict,
                      report: ExecutionReport) -> MemoryUpdate:
        t = self.template(ctx.goal)
        facts = {**ctx.memory.facts, **verdict.facts}
        derived: dict[str, str] = {}
        for fact, keys in t.derive.items():
            if keys and all(k in facts for k in keys):
                try:
                    best = max(keys, key=lambda k: float(facts[k]))
                except ValueError:
                    continue
                derived[fact] = best.rsplit("_", 1)[-1]
        text = f"Last: {subtask.instruction!r} -> {verdict.status} ({verdict.reason})."
        done = [h.instruction for h in ctx.memory.history if h.status == "success"]
        if done:
            text += f" Done so far: {'; '.join(done[-6:])}."
        self.record("update_memory", f"{subtask.instruction!r} {verdict.status}", f"{text} {derived}")
        return MemoryUpdate(text, {**verdict.facts, **derived})

    # --- reflect -------------------------------------------------------------------------
    def reflect(self, ctx: Context, subtask: Subtask, verdict: Verdict, attempt: int) -> Reflection:
        t = self.template(ctx.goal)
        matching = [s for s in t.steps if s.pattern.match(subtask.instruction)]
        step = next((s for s in matching if s.vary), matching[0] if matching else None)
        if step is None:
            refl = Reflection(f"{subtask.instruction!r} is not in the {t.task} template; replanning", "replan")
        elif step.vary:
            tried = self._tried(step, ctx.memory, subtask)
            left = [v for v in step.values if v not in tried]
            why = f"{step.vary} {subtask.params.get(step.vary, '?')} did not work ({verdict.reason})"
            if not left:
                refl = Reflection(f"{why}; every {step.vary} was tried: {sorted(tried)}", "replan")
            elif step.redo_previous:
                refl = Reflection(f"{why}; redo the previous subtask and try {step.vary} {left[0]}", "replan",
                                  {step.vary: left[0]})
            else:
                refl = Reflection(f"{why}; try {step.vary} {left[0]}", "adjust_param", {step.vary: left[0]})
        elif verdict.status == "timeout":
            refl = Reflection(f"the horizon ran out before the post-condition held ({verdict.reason})", "retry")
        elif step.redo_previous:
            refl = Reflection(f"{verdict.reason}; the object may have been dropped: redo the previous subtask",
                              "replan")
        else:
            refl = Reflection(f"{verdict.reason}; try again", "retry")
        self.record("reflect", f"{subtask.instruction!r} attempt {attempt}: {verdict.reason}",
                    f"{refl.recovery}: {refl.diagnosis}")
        return refl
