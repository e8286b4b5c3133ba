"""The offline rule-based reasoner (the embedded default; needs no model weights).

- plan: the goal template's canonical subtasks; objects are measured in the planning image and
  kept in the plan's notes (``ref.<object>``) as the reference the verifier compares against.
- verify: image-based predicate checks on the latest camera images (colour blobs, regions,
  brightness), never simulator state. Cue predicates read the frames seen during execution.
- update_memory: a short progress summary plus facts (cue colour, flash order, lamp counts,
  derived facts such as the best button).
- reflect: reads the error register E so a failed alternative (slot 2) is not tried again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hvla_ros.planner import image_checks as ic
from hvla_ros.planner.image_checks import Blob, Region
from hvla_ros.planner.memory import MemoryView
from hvla_ros.planner.plan import Plan, Predicate, Subtask
from hvla_ros.planner.reasoner import (
    Context,
    ExecutionReport,
    Images,
    MemoryUpdate,
    Reasoner,
    ReasonerError,
    Reflection,
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
    def _template(self, goal: str) -> TaskTemplate:
        t = self.templates.match(goal)
        if t is None:
            raise ReasonerError(f"no goal template matches {goal!r}; known goals: {self.templates.goals()}")
        return t

    def _image(self, images: Images) -> np.ndarray:
        cam = self.templates.camera
        if cam not in images:
            raise ReasonerError(f"the rule-based checks need the {cam!r} camera image; got {sorted(images)}")
        return ic.check_image(images[cam])

    def _find(self, t: TaskTemplate, obj: str, image: np.ndarray) -> Blob | None:
        spec = t.objects[obj]
        h, w = image.shape[:2]
        region = None
        if spec.region is not None:
            fx0, fy0, fx1, fy1 = spec.region
            region = (int(fx0 * w), int(fy0 * h), math.ceil(fx1 * w), math.ceil(fy1 * h))
        return ic.find_blob(
            image,
            spec.color,
            palette=self.templates.palette,
            min_area=max(4, int(spec.min_area_frac * h * w)),
            max_area=int(spec.max_area_frac * h * w),
            min_fill=spec.min_fill,
            region=region,
        )

    def _ref(self, ctx: Context, obj: str) -> Blob | None:
        text = ctx.notes.get(f"ref.{obj}")
        return Blob.decode(text) if text else None

    def _area(self, t: TaskTemplate, ctx: Context, obj: str, image: np.ndarray) -> Region | None:
        """The region an object occupies: measured at planning (fixed objects) or now."""
        blob = self._ref(ctx, obj) if t.objects[obj].fixed else self._find(t, obj, image)
        if blob is None:
            return None
        g = t.objects[obj].grow_frac * image.shape[1]
        return (int(blob.x0 - g), int(blob.y0 - g), int(blob.x1 + g), int(blob.y1 + g))

    def _steps_of(self, t: TaskTemplate, ctx: Context, n_completed: int, failed: Subtask | None) -> int:
        """Template index of the plan position ``n_completed`` (the failed subtask)."""
        steps = [int(x) for x in ctx.notes.get("steps", "").split(",") if x.strip().isdigit()]
        if n_completed < len(steps):
            return steps[n_completed]
        if failed is not None:
            for i, s in enumerate(t.steps):
                if s.pattern.match(failed.instruction):
                    return i
        return 0

    def _tried(self, step: Step, memory: MemoryView, current: Subtask | None) -> set[str]:
        """Values of ``step.vary`` that already failed (from E, plus the current attempt)."""
        tried = {
            e.parameters[step.vary]
            for e in memory.errors
            if step.vary in e.parameters and step.pattern.match(e.instruction)
        }
        if current is not None and step.vary in current.params:
            tried.add(current.params[step.vary])
        return tried

    # --- plan ----------------------------------------------------------------------------
    def plan(self, ctx: Context, completed: Sequence[Subtask] = (), failed: Subtask | None = None) -> Plan:
        t = self._template(ctx.goal)
        needed = {s.subtask.skill for s in t.steps}
        if not needed <= ctx.limits.skills:
            raise ReasonerError(
                f"goal {ctx.goal!r} needs skills {sorted(needed - ctx.limits.skills)} that the "
                f"executor does not declare (it has {sorted(ctx.limits.skills)})"
            )
        image = self._image(ctx.images)
        notes: dict[str, str] = {"task": t.task}
        replanning = failed is not None or bool(completed)
        if not replanning:
            missing = []
            for name in t.objects:
                blob = self._find(t, name, image)
                if blob is None:
                    missing.append(name)
                else:
                    notes[f"ref.{name}"] = blob.encode()
            for name in {m for g in t.cue_groups.values() for m in g}:
                area = self._area(
                    t, Context(ctx.goal, ctx.limits, ctx.memory, ctx.images, notes=notes), name, image
                )
                if area is not None:
                    notes[f"cue0.{name}"] = f"{ic.brightness(image, area):.1f}"
            if missing:
                _log.warning(
                    f"planning {t.task}: not visible in the {self.templates.camera} image: {missing}"
                )
                notes["missing"] = ",".join(missing)
            start = 0
        else:
            i = self._steps_of(t, ctx, len(completed), failed)
            start = max(0, i - t.steps[i].redo_previous)
        subtasks: list[Subtask] = []
        indices: list[int] = []
        for i in range(start, len(t.steps)):
            step = t.steps[i]
            sub = step.subtask
            if step.vary:
                current = failed if failed is not None and step.pattern.match(failed.instruction) else None
                tried = self._tried(step, ctx.memory, current)
                left = [v for v in step.values if v not in tried]
                if not left:
                    raise ReasonerError(
                        f"every alternative of {step.vary!r} for {sub.instruction!r} failed: {sorted(tried)}"
                    )
                sub = sub.with_parameters({step.vary: left[0]})
            if replanning and step.skippable and not subtasks:
                ok, _, _ = self._check_all(t, ctx, sub, ctx.images, ())
                if ok:
                    continue  # already holds: skip it
            subtasks.append(sub)
            indices.append(i)
        if not subtasks:
            raise ReasonerError(f"nothing left to plan for {ctx.goal!r}")
        # Positions remembered from the first image fill {ref_px.<object>} placeholders.
        refs = {**ctx.notes, **notes}
        values = {
            f"ref_px.{k[4:]}": "{:.0f},{:.0f}".format(*Blob.decode(v).centroid)
            for k, v in refs.items()
            if k.startswith("ref.")
        }
        subtasks = [s.resolve(values) for s in subtasks]
        old = [x for x in ctx.notes.get("steps", "").split(",") if x][: len(completed)]
        notes["steps"] = ",".join([*old, *map(str, indices)])
        plan = Plan(ctx.goal, tuple(subtasks), notes)
        self.record(
            "plan",
            f"goal={ctx.goal!r} completed={len(completed)} failed={failed and failed.instruction!r}",
            f"{[s.instruction for s in subtasks]} params={[s.params for s in subtasks]}",
        )
        return plan

    # --- verify --------------------------------------------------------------------------
    def check(self, goal: str, predicate: Predicate, image: np.ndarray, *,
              notes: Mapping[str, str] | None = None,
              frames: Sequence[np.ndarray] = ()) -> tuple[bool, str, dict[str, str]]:
        """Evaluate one predicate of ``goal``'s template on an RGB ``image``: (holds, reason, facts).

        ``notes`` are a plan's notes (``ref.<object>`` planning-time measurements); ``frames`` the
        images seen during execution (cue predicates).
        """
        from hvla_ros.planner.memory import Memory
        from hvla_ros.planner.plan import PlanLimits

        t = self._template(goal)
        ctx = Context(goal, PlanLimits(frozenset()), Memory().view(), notes=notes or {})
        ok, why, facts = self._check(t, ctx, predicate, ic.check_image(image), frames)
        return ok != predicate.negated, why, facts

    def _check(
        self, t: TaskTemplate, ctx: Context, pred: Predicate, image: np.ndarray, frames: Sequence[np.ndarray]
    ) -> tuple[bool, str, dict[str, str]]:
        h, w = image.shape[:2]
        name, args = pred.name, pred.args
        facts: dict[str, str] = {}

        def label(o: str) -> str:
            return o.replace("_", " ")

        def need(o: str) -> Blob:
            # Fixed objects (containers, a base cube that must not move) keep their planning-time
            # measurement: the arm or the object placed on them may hide them now.
            b = self._ref(ctx, o) if t.objects[o].fixed else self._find(t, o, image)
            if b is None:
                raise _Unmet(f"the {label(o)} is not visible")
            return b

        def ref(o: str) -> Blob:
            b = self._ref(ctx, o)
            if b is None:
                raise _Unmet(f"no reference position of the {label(o)} from planning")
            return b

        try:
            if name == "visible":
                need(args[0])
                return True, f"the {label(args[0])} is visible", facts
            if name == "lifted":
                b, r = need(args[0]), ref(args[0])
                rise = max(r.v - b.v, r.y1 - b.y1)
                ok = rise >= self.templates.lift_frac * h
                return (
                    ok,
                    f"the {label(args[0])} rose {rise:.0f} px (needs {self.templates.lift_frac * h:.0f})",
                    facts,
                )
            if name in ("in", "off"):
                b = need(args[0])
                area = self._area(t, ctx, args[1], image)
                if area is None:
                    raise _Unmet(f"the {label(args[1])} is not visible")
                inside = ic.inside(b, area) and ic.overlap_fraction(b, area) >= 0.5
                where = "inside" if inside else "outside"
                return (
                    inside == (name == "in"),
                    f"the {label(args[0])} is {where} the {label(args[1])}",
                    facts,
                )
            if name == "on":
                top, base = need(args[0]), need(args[1])
                ok = ic.stacked_on(top, base)
                return (
                    ok,
                    (
                        f"the {label(args[0])} (box {top.box}) is {'' if ok else 'not '}on the "
                        f"{label(args[1])} (box {base.box})"
                    ),
                    facts,
                )
            if name == "at":
                b = need(args[0])
                u, v = ic.parse_px(args[1])
                d = math.hypot(b.u - u, b.v - v)
                ok = d <= self.templates.near_frac * w
                return ok, f"the {label(args[0])} is {d:.0f} px from ({u:.0f}, {v:.0f})", facts
            if name == "moved":
                b, r = need(args[0]), ref(args[0])
                d = math.hypot(b.u - r.u, b.v - r.v)
                return d >= self.templates.move_frac * w, f"the {label(args[0])} moved {d:.0f} px", facts
            if name in ("cue", "flash_order"):
                group = t.cue_groups.get(args[0], ())
                areas = {o: self._area(t, ctx, o, image) for o in group}
                regions = {o: a for o, a in areas.items() if a is not None}
                if len(regions) < len(group):
                    raise _Unmet(
                        f"cannot locate every member of {args[0]}: {sorted(set(group) - set(regions))}"
                    )
                seq = [*frames, image]
                if name == "cue":
                    # Planning-time brightness counts too: the cue may glow only at the very start.
                    gains = {
                        o: max(
                            [ic.brightness(im, a) for im in seq] + [float(ctx.notes.get(f"cue0.{o}", 0.0))]
                        )
                        - min(ic.brightness(im, a) for im in seq)
                        for o, a in regions.items()
                    }
                    best = max(gains, key=lambda o: gains[o])
                    if gains[best] < 20.0:
                        raise _Unmet(
                            f"no {args[0]} member lit up (largest brightness change {gains[best]:.0f})"
                        )
                    facts[args[1]] = t.objects[best].color
                    return True, f"the cue lit under the {label(best)}", facts
                order = ic.flash_order(seq, regions)
                if len(order) < len(group):
                    raise _Unmet(f"saw only {len(order)} of {len(group)} flashes: {order}")
                for i, o in enumerate(order, 1):
                    facts[f"{args[1]}_{i}"] = t.objects[o].color
                return True, f"flash order {[t.objects[o].color for o in order]}", facts
            if name == "lamps":
                group = t.cue_groups.get(args[0], ())
                lamps = [a for a in (self._area(t, ctx, o, image) for o in group) if a is not None]
                n = ic.count_lit(image, lamps)
                facts[args[1]] = str(n)
                return n >= 1, f"{n} lamps lit", facts
        except _Unmet as e:
            return False, str(e), facts
        except ic.ImageCheckError as e:
            return False, f"image check failed: {e}", facts
        return False, f"unknown predicate {pred}", facts

    def _check_all(
        self, t: TaskTemplate, ctx: Context, subtask: Subtask, images: Images, frames_seq: Sequence[Images]
    ) -> tuple[bool, str, dict[str, str]]:
        image = self._image(images)
        cam = self.templates.camera
        frames = [f[cam] for f in frames_seq if cam in f]
        ok, reasons, facts = True, [], {}
        for p in subtask.post.predicates:
            holds, why, found = self._check(t, ctx, p, image, frames)
            holds = holds != p.negated
            ok &= holds
            reasons.append(why)
            facts.update(found)
        return ok, "; ".join(reasons) or "no checkable post-condition", facts

    def verify(self, ctx: Context, subtask: Subtask, report: ExecutionReport) -> Verdict:
        t = self._template(ctx.goal)
        images = report.images or ctx.images
        ok, reason, facts = self._check_all(t, ctx, subtask, images, report.frames)
        if not subtask.post.predicates:
            ok = report.termination == "skill_done"
        verdict = Verdict("success" if ok else "fail", reason, facts)
        self.record(
            "verify",
            f"{subtask.instruction!r} post={[str(p) for p in subtask.post.predicates]}",
            f"{verdict.status}: {reason} {facts}",
        )
        return verdict

    # --- memory --------------------------------------------------------------------------
    def update_memory(
        self, ctx: Context, subtask: Subtask, verdict: Verdict, report: ExecutionReport
    ) -> MemoryUpdate:
        t = self._template(ctx.goal)
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
        update = MemoryUpdate(text, {**verdict.facts, **derived})
        self.record("update_memory", f"{subtask.instruction!r} {verdict.status}", f"{text} {derived}")
        return update

    # --- reflect -------------------------------------------------------------------------
    def reflect(self, ctx: Context, subtask: Subtask, verdict: Verdict, attempt: int) -> Reflection:
        t = self._template(ctx.goal)
        step = next((s for s in t.steps if s.vary and s.pattern.match(subtask.instruction)), None) or next(
            (s for s in t.steps if s.pattern.match(subtask.instruction)), None
        )
        if step is None:
            refl = Reflection(
                f"{subtask.instruction!r} is not part of the {t.task} template; replanning", "replan"
            )
        elif step.vary:
            tried = self._tried(step, ctx.memory, subtask)
            left = [v for v in step.values if v not in tried]
            why = f"{step.vary} {subtask.params.get(step.vary, '?')} did not work ({verdict.reason})"
            if not left:
                refl = Reflection(f"{why}; every {step.vary} was tried: {sorted(tried)}", "replan")
            elif step.redo_previous:
                refl = Reflection(
                    f"{why}; redo the previous subtask and try {step.vary} {left[0]}",
                    "replan",
                    {step.vary: left[0]},
                )
            else:
                refl = Reflection(f"{why}; try {step.vary} {left[0]}", "adjust_param", {step.vary: left[0]})
        elif verdict.status == "timeout":
            refl = Reflection(
                f"the horizon ran out before the post-condition held ({verdict.reason})", "retry"
            )
        elif step.redo_previous:
            refl = Reflection(
                f"{verdict.reason}; the object may have been dropped: redo the previous subtask", "replan"
            )
        else:
            refl = Reflection(f"{verdict.reason}; try again", "retry")
        self.record(
            "reflect",
            f"{subtask.instruction!r} attempt {attempt}: {verdict.reason}",
            f"{refl.recovery}: {refl.diagnosis}",
        )
        return refl


class _Unmet(Exception):
    """A predicate that cannot hold (missing object or reference); the message says why."""
