"""Image-based evaluation of post-condition predicates for one goal template.

:class:`PredicateChecker` finds the template's objects in the front camera image by colour
(:mod:`hvla_ros.planner.image_checks`) and evaluates predicates against them. Planning-time
measurements (``ref.<object>`` blobs, ``cue0.<group>``) live in the plan's notes; the checker
never sees simulator state.

Predicates (``negated`` inverts any of them):

==========================  ===========================================================
visible(o)                  a blob of o's colour is in the image
lifted(o)                   o rose by its ``lift_frac`` (else the global one) of the image height since the
                            subtask began
raised(o)                   o is higher by ``lift_frac`` of the image height than at planning
in(o, area) / off(o, area)  o's centre lies inside (outside) area's box (+ half its box overlaps)
on(top, base)               top sits on base: above it, touching, horizontally overlapping
at(o, "u,v")                o's centre within ``near_frac`` of the image width of (u, v)
moved(o)                    o's centre moved ``move_frac`` of the image width since planning
protrudes(o, s)             o stands out of s (a peg on a blocker): a score of o's top and visible
                            height in heights of s, plus half o's aspect, above ``protrude_score``
shifted(o, dir)             o moved ``shift_frac`` of the image width towards dir (left, right, up,
                            down) since the subtask began
cue(group, fact)            which member a lit lamp was nearest to (planning image, frames seen
                            during execution, latest image) -> fact = that member's colour
flash_order(group, fact)    order in which members brightened over the frames -> fact_1, fact_2, ...
indicated(group, member)    the lit lamp (the template's ``lamp`` object) is nearest to ``member``
                            of the group (an indicator showing the last button pressed)
lamps(lamp, fact)           number of lit lamps (blobs of the lamp object's colour) -> fact
lamps_max(lamp, "n1,n2,..")  the number of lit lamps equals the largest of the listed counts
relit(lamp, fact)           as lamps, and that number differs from the subtask's start (lamps that
                            stay lit from the last press do not credit a press that missed)
==========================  ===========================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from hvla_ros.planner import image_checks as ic
from hvla_ros.planner.image_checks import Blob, Region
from hvla_ros.planner.plan import Predicate
from hvla_ros.planner.templates import TaskTemplate, Templates

Result = tuple[bool, str, dict[str, str]]


class _Unmet(Exception):
    """A predicate that cannot hold (missing object or reference); the message says why."""


def _label(obj: str) -> str:
    return obj.replace("_", " ")


class PredicateChecker:
    """Evaluates one template's predicates on ``H x W x 3`` RGB images."""

    def __init__(self, templates: Templates, task: TaskTemplate) -> None:
        self.templates = templates
        self.task = task

    # --- locating objects -------------------------------------------------------------------
    def find_all(self, obj: str, image: np.ndarray) -> list[Blob]:
        """Every blob matching ``obj``'s spec (colour, area range, compactness, region), largest first."""
        spec = self.task.objects[obj]
        h, w = image.shape[:2]
        region = None
        if spec.region is not None:
            fx0, fy0, fx1, fy1 = spec.region
            region = (int(fx0 * w), int(fy0 * h), math.ceil(fx1 * w), math.ceil(fy1 * h))
        return ic.find_blobs(image, spec.color, palette=self.templates.palette,
                             min_area=max(2, int(spec.min_area_frac * h * w)),
                             max_area=int(spec.max_area_frac * h * w), min_fill=spec.min_fill, region=region)

    def find(self, obj: str, image: np.ndarray) -> Blob | None:
        """The blob of ``obj`` in ``image`` (the largest match, or the ``order``-th from the left)."""
        blobs = self.find_all(obj, image)
        k = self.task.objects[obj].order
        if k:
            blobs = sorted(blobs, key=lambda b: b.u)
            return blobs[k - 1] if len(blobs) >= k else None
        return blobs[0] if blobs else None

    def measure(self, image: np.ndarray) -> dict[str, str]:
        """Planning-time notes: ``ref.<object>`` blobs and ``cue0.<group>`` (a cue lit right now)."""
        image = ic.check_image(image)
        notes = {f"ref.{o}": b.encode() for o in self.task.objects if (b := self.find(o, image)) is not None}
        for group in self.task.cue_groups:
            lit = self._lit_member(group, image, notes)
            if lit is not None:
                notes[f"cue0.{group}"] = lit
        return notes

    def _ref(self, notes: Mapping[str, str], obj: str) -> Blob | None:
        text = notes.get(f"ref.{obj}")
        return Blob.decode(text) if text else None

    def _locate(self, obj: str, image: np.ndarray, notes: Mapping[str, str]) -> Blob | None:
        # Fixed objects (containers, buttons, a base cube that must not move) keep their
        # planning-time measurement: the arm or what was put on them may hide them now.
        return self._ref(notes, obj) if self.task.objects[obj].fixed else self.find(obj, image)

    def _area(self, obj: str, image: np.ndarray, notes: Mapping[str, str]) -> Region | None:
        blob = self._locate(obj, image, notes)
        if blob is None:
            return None
        g = self.task.objects[obj].grow_frac * image.shape[1]
        return (int(blob.x0 - g), int(blob.y0 - g), int(blob.x1 + g), int(blob.y1 + g))

    def _lit_member(self, group: str, image: np.ndarray, notes: Mapping[str, str]) -> str | None:
        """The group member nearest to a lit lamp (the template's ``lamp`` object), if one is lit."""
        if "lamp" not in self.task.objects:
            return None
        lamp = self.find("lamp", image)
        if lamp is None:
            return None
        members = {o: b for o in self.task.cue_groups[group] if (b := self._ref(notes, o) or self.find(o, image))}
        if not members:
            return None
        return min(members, key=lambda o: math.hypot(members[o].u - lamp.u, members[o].v - lamp.v))

    # --- predicates -------------------------------------------------------------------------
    def check(self, pred: Predicate, image: np.ndarray, *, notes: Mapping[str, str] | None = None,
              frames: Sequence[np.ndarray] = (), before: np.ndarray | None = None) -> Result:
        """(holds, reason, facts) of ``pred`` on ``image`` (negation applied). ``before`` is the
        image when the subtask was issued (``lifted`` compares against it when given)."""
        try:
            ok, why, facts = self._check(pred, ic.check_image(image), notes or {}, frames, before)
        except _Unmet as e:
            ok, why, facts = False, str(e), {}
        except ic.ImageCheckError as e:
            ok, why, facts = False, f"image check failed: {e}", {}
        return ok != pred.negated, (f"not: {why}" if pred.negated else why), facts

    def _check(self, pred: Predicate, image: np.ndarray, notes: Mapping[str, str],
               frames: Sequence[np.ndarray], before: np.ndarray | None) -> Result:
        h, w = image.shape[:2]
        t = self.templates
        name, args = pred.name, pred.args
        arity = {"visible": 1, "lifted": 1, "raised": 1, "moved": 1, "in": 2, "off": 2, "on": 2, "at": 2, "cue": 2,
                 "flash_order": 2, "lamps": 2, "relit": 2, "lamps_max": 2, "protrudes": 2, "shifted": 2, "indicated": 2}
        if name not in arity:
            return False, f"unknown predicate {pred}", {}
        if len(args) != arity[name]:
            return False, f"{name} takes {arity[name]} arguments, got {list(args)}", {}

        def need(o: str) -> Blob:
            if o not in self.task.objects:
                raise _Unmet(f"{o!r} is not an object of the {self.task.task} template")
            b = self._locate(o, image, notes)
            if b is None:
                raise _Unmet(f"the {_label(o)} is not visible")
            return b

        def ref(o: str) -> Blob:
            b = self._ref(notes, o)
            if b is None:
                raise _Unmet(f"no planning-time position of the {_label(o)}")
            return b

        a0 = args[0]
        if name == "visible":
            need(a0)
            return True, f"the {_label(a0)} is visible", {}
        if name in ("lifted", "raised"):
            # lifted: compared with where the object was when the subtask began (else at planning);
            # raised: compared with where it was at planning (still held up, e.g. after a handover).
            start = self.find(a0, ic.check_image(before)) if before is not None and name == "lifted" else None
            b, r = need(a0), start or ref(a0)
            rise = max(r.v - b.v, r.y1 - b.y1)
            own = self.task.objects[a0].lift_frac if name == "lifted" else None
            need_px = (t.lift_frac if own is None else own) * h
            return rise >= need_px, f"the {_label(a0)} rose {rise:.0f} px (needs {need_px:.0f})", {}
        if name == "moved":
            b, r = need(a0), ref(a0)
            d = math.hypot(b.u - r.u, b.v - r.v)
            return d >= t.move_frac * w, f"the {_label(a0)} moved {d:.0f} px", {}
        if name in ("in", "off"):
            b = need(a0)
            area = self._area(args[1], image, notes) if args[1] in self.task.objects else None
            if area is None:
                raise _Unmet(f"the {_label(args[1])} is not visible")
            inside = ic.inside(b, area) and ic.overlap_fraction(b, area) >= 0.5
            return inside == (name == "in"), \
                f"the {_label(a0)} is {'inside' if inside else 'outside'} the {_label(args[1])}", {}
        if name == "on":
            top, base = need(a0), need(args[1])
            ok = ic.stacked_on(top, base)
            return ok, (f"the {_label(a0)} {top.box} is {'' if ok else 'not '}on the {_label(args[1])} "
                        f"{base.box}"), {}
        if name == "protrudes":
            # How far o stands out of s, in heights of s: its top above s's bottom edge, plus its visible
            # height, plus half its aspect ratio (a peg on a blocker shows more of itself and looks
            # taller). Calibrated on the simulated sockets at 120x160 and 240x320 (48 insertions):
            # sunk pegs score <= 2.8, pegs standing on a blocker >= 3.0.
            b, s = need(a0), need(args[1])
            sh = max(1, s.y1 - s.y0)
            score = (s.y1 - b.y0) / sh + (b.y1 - b.y0) / sh + 0.5 * (b.y1 - b.y0) / max(1, b.x1 - b.x0)
            return score > t.protrude_score, (f"the {_label(a0)} stands out of the {_label(args[1])} by "
                                              f"{score:.2f} (limit {t.protrude_score})"), {}
        if name == "shifted":
            # o moved towards a side of the image since the subtask began (else since planning).
            direction = args[1]
            if direction not in ("left", "right", "up", "down"):
                return False, f"shifted needs left, right, up or down, got {direction!r}", {}
            start = self.find(a0, ic.check_image(before)) if before is not None else None
            b, r = need(a0), start or ref(a0)
            d = {"left": r.u - b.u, "right": b.u - r.u, "up": r.v - b.v, "down": b.v - r.v}[direction]
            need_px = t.shift_frac * w
            return d >= need_px, f"the {_label(a0)} moved {d:.0f} px {direction} (needs {need_px:.0f})", {}
        if name == "at":
            b = need(a0)
            u, v = ic.parse_px(args[1])
            d = math.hypot(b.u - u, b.v - v)
            return d <= t.near_frac * w, f"the {_label(a0)} is {d:.0f} px from ({u:.0f}, {v:.0f})", {}
        if name in ("lamps", "relit", "lamps_max"):
            if a0 not in self.task.objects:
                raise _Unmet(f"{a0!r} is not an object of the {self.task.task} template")
            n = len(self.find_all(a0, image))
            if name == "lamps_max":
                # the lit count equals the largest of the counts listed (facts of earlier presses)
                try:
                    most = max(int(x) for x in args[1].split(","))
                except ValueError:
                    return False, f"lamps_max needs comma-separated counts, got {args[1]!r}", {}
                return n == most, f"{n} lamps lit (the most was {most})", {}
            if name == "relit" and before is not None:
                # a press lit them anew: the count differs from the subtask's start (lamps stay lit
                # from the last press, so "some are lit" alone would credit a press that missed)
                n0 = len(self.find_all(a0, ic.check_image(before)))
                return n >= 1 and n != n0, f"{n} lamps lit ({n0} when the subtask began)", {args[1]: str(n)}
            return n >= 1, f"{n} lamps lit", {args[1]: str(n)}
        group = self.task.cue_groups.get(a0)
        if not group:
            raise _Unmet(f"{a0!r} is not a cue group of the {self.task.task} template")
        if name == "indicated":
            member = args[1]
            if member not in group:
                raise _Unmet(f"{member!r} is not a member of {a0}: {list(group)}")
            lit = self._lit_member(a0, image, notes)
            if lit is None:
                raise _Unmet(f"no lamp lit near any of {list(group)}")
            return lit == member, f"the lamp lit is the {_label(lit)}'s", {}
        seq = [*frames, image]
        if name == "cue":
            seen = [m for im in seq if (m := self._lit_member(a0, im, notes)) is not None]
            if f"cue0.{a0}" in notes:
                seen.insert(0, notes[f"cue0.{a0}"])
            if not seen:
                raise _Unmet(f"no lamp lit near any of {list(group)} in {len(seq)} images")
            best = max(set(seen), key=seen.count)
            color = self.task.objects[best].color.split("_")[0]
            return True, f"the cue lit at the {_label(best)} ({seen.count(best)}/{len(seen)} images)", {
                args[1]: color}
        regions = {o: a for o in group if (a := self._area(o, image, notes)) is not None}
        if len(regions) < len(group):
            raise _Unmet(f"cannot locate every member of {a0}: {sorted(set(group) - set(regions))}")
        order = ic.flash_order(seq, regions)
        if len(order) < len(group):
            raise _Unmet(f"saw {len(order)} of {len(group)} flashes in {len(seq)} images: {order}")
        colors = [self.task.objects[o].color.split("_")[0] for o in order]
        return True, f"flash order {colors}", {f"{args[1]}_{i}": c for i, c in enumerate(colors, 1)}
