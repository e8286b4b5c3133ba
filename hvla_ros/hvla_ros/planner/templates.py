"""Goal templates of the rule-based reasoner, loaded from ``config/goal_templates.yaml``.

A template maps one goal text to its canonical subtasks (the task-suite contract's wording),
the objects the verifier looks for in the front image (by colour, measured at planning time),
recovery hints (which parameter to vary on failure, whether to redo the previous subtask) and
how facts are derived from other facts (e.g. the button that lit the most lamps).
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hvla_ros.planner.image_checks import Palette
from hvla_ros.planner.plan import ARMS, PlanLimits, PlanValidationError, Subtask, parse_subtask

SKILLS = ("pick", "place", "push", "press", "open_drawer", "observe", "handover")


class TemplateError(ValueError):
    """A malformed goal template file; the message names the task and field."""


def normalize_goal(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: how goals are matched."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!")


@dataclass(frozen=True)
class ObjectSpec:
    """How to find one object in the front image: a colour (largest blob), optionally restricted to
    a region given as fractions of the image (x0, y0, x1, y1)."""

    name: str
    color: str
    region: tuple[float, float, float, float] | None = None
    min_area_frac: float = 0.0002
    max_area_frac: float = 1.0
    min_fill: float = 0.0  # blob area / bounding-box area (cubes are compact, arm links are not)
    order: int = 0  # 0: the largest matching blob; k >= 1: the k-th matching blob from the left
    fixed: bool = False  # does not move: its planning-time measurement is used thereafter
    grow_frac: float = 0.0  # grow the measured box by this fraction of the image width (cue areas)
    #: lifted(o) needs o to rise by this fraction of the image height (None: the templates'
    #: ``checks.lift_frac``): how high the task's pick carries a well-grasped object.
    lift_frac: float | None = None


@dataclass(frozen=True)
class Step:
    """One template subtask with its recovery hints."""

    subtask: Subtask
    vary: str = ""  # parameter to vary on failure
    values: tuple[str, ...] = ()  # its alternatives, in order of preference
    redo_previous: int = 0  # subtasks before this one to redo on a replan (e.g. pick again)
    skippable: bool = False  # skip on replan when the post-condition already holds
    pattern: re.Pattern[str] = field(default=re.compile(""), compare=False)


@dataclass(frozen=True)
class TaskTemplate:
    task: str
    goal: str
    robot: str
    objects: Mapping[str, ObjectSpec]
    steps: tuple[Step, ...]
    derive: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # fact -> argmax over facts
    cue_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group -> objects


@dataclass(frozen=True)
class Templates:
    palette: Palette
    tasks: Mapping[str, TaskTemplate]
    camera: str = "front"
    lift_frac: float = 0.02
    near_frac: float = 0.06
    move_frac: float = 0.04
    protrude_score: float = 2.9
    shift_frac: float = 0.025

    def match(self, goal: str) -> TaskTemplate | None:
        key = normalize_goal(goal)
        return next((t for t in self.tasks.values() if normalize_goal(t.goal) == key), None)

    def goals(self) -> list[str]:
        return [t.goal for t in self.tasks.values()]


def _pattern(instruction: str) -> re.Pattern[str]:
    parts = re.split(r"\{[A-Za-z_][A-Za-z0-9_.]*\}", instruction)
    return re.compile("^" + "(.+?)".join(re.escape(p) for p in parts) + "$")


def _frac_box(value: Any, where: str) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, Sequence)
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in value)
        or not (value[0] < value[2] and value[1] < value[3])
    ):
        raise TemplateError(
            f"{where} must be [x0, y0, x1, y1] fractions of the image in [0, 1], got {value!r}"
        )
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def _lift_frac(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise TemplateError(f"{where} must be a fraction of the image height in (0, 1), got {value!r}")
    return float(value)


def _task(task: str, doc: Mapping[str, Any], palette: Palette) -> TaskTemplate:
    where = f"tasks.{task}"
    if not isinstance(doc, Mapping) or "goal" not in doc or "subtasks" not in doc:
        raise TemplateError(f"{where} needs 'goal' and 'subtasks'")
    objects: dict[str, ObjectSpec] = {}
    for name, o in (doc.get("objects") or {}).items():
        if not isinstance(o, Mapping) or o.get("color") not in palette.colors:
            raise TemplateError(
                f"{where}.objects.{name}.color must be one of {sorted(palette.colors)}, got {o!r}"
            )
        objects[name] = ObjectSpec(
            name,
            o["color"],
            _frac_box(o.get("region"), f"{where}.objects.{name}.region"),
            float(o.get("min_area_frac", 0.0002)),
            float(o.get("max_area_frac", 1.0)),
            float(o.get("min_fill", 0.0)),
            int(o.get("order", 0)),
            bool(o.get("fixed", False)),
            float(o.get("grow_frac", 0.0)),
            _lift_frac(o.get("lift_frac"), f"{where}.objects.{name}.lift_frac"),
        )
    limits = PlanLimits(skills=frozenset(SKILLS))
    steps = []
    for i, s in enumerate(doc["subtasks"]):
        w = f"{where}.subtasks[{i}]"
        if not isinstance(s, Mapping):
            raise TemplateError(f"{w} must be a mapping")
        body = {k: v for k, v in s.items() if k not in {"on_fail", "skippable"}}
        try:
            sub = parse_subtask(body, w, limits)
        except PlanValidationError as e:
            raise TemplateError(str(e)) from None
        if sub.arm not in ARMS:
            raise TemplateError(f"{w}.arm {sub.arm!r} must be one of {ARMS}")
        for p in sub.post.predicates:
            for a in p.args[:1]:
                if (
                    p.name in ("visible", "lifted", "raised", "in", "on", "at", "off", "moved", "protrudes", "shifted")
                    and a not in objects
                    and "{" not in a
                ):
                    raise TemplateError(f"{w}.post predicate {p} names object {a!r} not in {where}.objects")
        on_fail = s.get("on_fail") or {}
        steps.append(
            Step(
                sub,
                str(on_fail.get("vary", "")),
                tuple(str(v) for v in on_fail.get("values", ())),
                int(on_fail.get("redo_previous", 0)),
                bool(s.get("skippable", False)),
                _pattern(sub.instruction),
            )
        )
    derive = {
        str(k): tuple(str(x) for x in v.get("argmax", ())) for k, v in (doc.get("derive") or {}).items()
    }
    groups = {str(k): tuple(str(x) for x in v) for k, v in (doc.get("cue_groups") or {}).items()}
    for g, members in groups.items():
        for m in members:
            if m not in objects:
                raise TemplateError(f"{where}.cue_groups.{g} names object {m!r} not in {where}.objects")
    return TaskTemplate(
        task, str(doc["goal"]), str(doc.get("robot", "so101")), objects, tuple(steps), derive, groups
    )


def load_templates(path: str | Path | None = None) -> Templates:
    """Load the templates file (default: the packaged ``config/goal_templates.yaml``)."""
    if path is None:
        text = importlib.resources.files("hvla_ros").joinpath("config/goal_templates.yaml").read_text()
        source = "goal_templates.yaml"
    else:
        text = Path(path).read_text()
        source = str(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TemplateError(f"{source} is not valid YAML: {e}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("tasks"), Mapping):
        raise TemplateError(f"{source} needs a 'tasks' mapping")
    palette = Palette.from_dict(doc.get("palette") or {})
    checks = doc.get("checks") or {}
    tasks = {str(t): _task(str(t), d, palette) for t, d in doc["tasks"].items()}
    return Templates(
        palette,
        tasks,
        str(checks.get("camera", "front")),
        float(checks.get("lift_frac", 0.02)),
        float(checks.get("near_frac", 0.06)),
        float(checks.get("move_frac", 0.04)),
        float(checks.get("protrude_score", 2.9)),
        float(checks.get("shift_frac", 0.025)),
    )
