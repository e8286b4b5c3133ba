"""Plan schema: subtasks τ_k = (instruction, pre, post, horizon δ_k, distractor boxes B_k, skill j_k).

Plans come from reasoners (templates or VLM replies) as plain dicts; :func:`parse_plan` turns
such a dict into validated :class:`Plan` objects or raises :class:`PlanValidationError` naming
the offending field and value, which VLM backends feed back when they re-ask.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

ARMS: tuple[str, ...] = ("single", "left", "right", "both")
MAX_SUBTASKS = 64
MAX_INSTRUCTION_CHARS = 400
MAX_TEXT_CHARS = 1000
MAX_BOXES = 16
MAX_PARAMETERS = 16
MAX_HORIZON_S = 600.0
DEFAULT_HORIZON_S = 20.0
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")


class PlanValidationError(ValueError):
    """A plan (or part of one) that violates the schema; the message names field and value."""


@dataclass(frozen=True)
class Predicate:
    """A checkable fact, e.g. ``in(red_cube, box)``; ``negated`` turns it into "not ..."."""

    name: str
    args: tuple[str, ...] = ()
    negated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": list(self.args), "negated": self.negated}

    def __str__(self) -> str:
        core = f"{self.name}({', '.join(self.args)})"
        return f"not {core}" if self.negated else core


@dataclass(frozen=True)
class Condition:
    """Natural-language text plus the predicates it means (all must hold)."""

    text: str = ""
    predicates: tuple[Predicate, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "predicates": [p.to_dict() for p in self.predicates]}


@dataclass(frozen=True)
class Box:
    """A distractor box in pixels (xyxy, inclusive-exclusive) on one camera."""

    camera: str
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "label": self.label,
            "box": [self.x_min, self.y_min, self.x_max, self.y_max],
        }


@dataclass(frozen=True)
class Subtask:
    """One plan step τ_k. ``parameters`` are the approach hints reflection may adjust."""

    instruction: str
    skill: str
    arm: str = "single"
    pre: Condition = field(default_factory=Condition)
    post: Condition = field(default_factory=Condition)
    horizon_s: float = DEFAULT_HORIZON_S
    boxes: tuple[Box, ...] = ()
    parameters: tuple[tuple[str, str], ...] = ()
    #: end the attempt as soon as the post-condition is seen to hold during execution (the
    #: planner watches; for skills that would otherwise undo or repeat their work, e.g. a press)
    stop_on_post: bool = False

    @property
    def params(self) -> dict[str, str]:
        return dict(self.parameters)

    def with_parameters(self, updates: Mapping[str, str]) -> Subtask:
        merged = {**self.params, **{str(k): str(v) for k, v in updates.items()}}
        return replace(self, parameters=tuple(sorted(merged.items())))

    def placeholders(self) -> set[str]:
        """Names of ``{name}`` placeholders still unresolved in the instruction or parameters."""
        names = set(_PLACEHOLDER.findall(self.instruction))
        for _, v in self.parameters:
            names.update(_PLACEHOLDER.findall(v))
        return names

    def resolve(self, values: Mapping[str, str]) -> Subtask:
        """Fill ``{name}`` placeholders from ``values`` (unknown names stay as they are)."""

        def sub(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), text)

        return replace(
            self,
            instruction=sub(self.instruction),
            parameters=tuple((k, sub(v)) for k, v in self.parameters),
            post=Condition(
                sub(self.post.text),
                tuple(
                    Predicate(p.name, tuple(sub(a) for a in p.args), p.negated) for p in self.post.predicates
                ),
            ),
            pre=Condition(
                sub(self.pre.text),
                tuple(
                    Predicate(p.name, tuple(sub(a) for a in p.args), p.negated) for p in self.pre.predicates
                ),
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "skill": self.skill,
            "arm": self.arm,
            "pre": self.pre.to_dict(),
            "post": self.post.to_dict(),
            "horizon_s": self.horizon_s,
            "distractor_boxes": [b.to_dict() for b in self.boxes],
            "parameters": dict(self.parameters),
            "stop_on_post": self.stop_on_post,
        }


@dataclass(frozen=True)
class Plan:
    """An ordered list of subtasks for one goal."""

    goal: str
    subtasks: tuple[Subtask, ...]
    #: what the planner measured when planning (e.g. reference positions of objects in the first
    #: image); kept across replans and written to the log with the plan
    notes: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "goal": self.goal,
            "subtasks": [s.to_dict() for s in self.subtasks],
            "notes": dict(self.notes),
        }

    def __len__(self) -> int:
        return len(self.subtasks)


@dataclass(frozen=True)
class PlanLimits:
    """What a parsed plan may contain: the executor's skills and each camera's image size."""

    skills: frozenset[str]
    image_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # camera -> (h, w)
    max_subtasks: int = MAX_SUBTASKS
    max_horizon_s: float = MAX_HORIZON_S


def _text(value: Any, where: str, *, limit: int, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise PlanValidationError(f"{where} must be a string, got {type(value).__name__}: {value!r:.80}")
    if required and not value.strip():
        raise PlanValidationError(f"{where} must not be empty")
    if len(value) > limit:
        raise PlanValidationError(f"{where} is {len(value)} characters long, at most {limit} allowed")
    return value.strip()


def parse_predicate(obj: Any, where: str) -> Predicate:
    """A predicate from ``{"name", "args", "negated"}`` or ``["name", arg, ...]``."""
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise PlanValidationError(f"{where} is an empty list; expected [name, arg, ...]")
        obj = {"name": obj[0], "args": list(obj[1:])}
    if not isinstance(obj, Mapping):
        raise PlanValidationError(f"{where} must be an object with 'name' and 'args', got {obj!r:.80}")
    name = _text(obj.get("name"), f"{where}.name", limit=64, required=True)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise PlanValidationError(f"{where}.name {name!r} is not an identifier")
    args = obj.get("args", [])
    if not isinstance(args, (list, tuple)) or len(args) > 8:
        raise PlanValidationError(f"{where}.args must be a list of at most 8 strings, got {args!r:.80}")
    negated = obj.get("negated", False)
    if not isinstance(negated, bool):
        raise PlanValidationError(f"{where}.negated must be true or false, got {negated!r:.40}")
    return Predicate(
        name,
        tuple(_text(a, f"{where}.args[{i}]", limit=64, required=True) for i, a in enumerate(args)),
        negated,
    )


def parse_condition(obj: Any, where: str) -> Condition:
    """A condition from ``{"text", "predicates"}``, a bare string, or ``None``."""
    if obj is None:
        return Condition()
    if isinstance(obj, str):
        return Condition(_text(obj, where, limit=MAX_TEXT_CHARS))
    if not isinstance(obj, Mapping):
        raise PlanValidationError(f"{where} must be an object with 'text' and 'predicates', got {obj!r:.80}")
    preds = obj.get("predicates", [])
    if not isinstance(preds, (list, tuple)) or len(preds) > 16:
        raise PlanValidationError(f"{where}.predicates must be a list of at most 16, got {preds!r:.80}")
    return Condition(
        _text(obj.get("text", ""), f"{where}.text", limit=MAX_TEXT_CHARS),
        tuple(parse_predicate(p, f"{where}.predicates[{i}]") for i, p in enumerate(preds)),
    )


def parse_box(obj: Any, where: str, image_sizes: Mapping[str, tuple[int, int]]) -> Box:
    """A box from ``{"camera", "label", "box": [x0, y0, x1, y1]}``, checked against the image size."""
    if not isinstance(obj, Mapping):
        raise PlanValidationError(f"{where} must be an object with 'camera' and 'box', got {obj!r:.80}")
    camera = _text(obj.get("camera", "front"), f"{where}.camera", limit=64, required=True)
    coords = obj.get("box")
    if coords is None and all(k in obj for k in ("x_min", "y_min", "x_max", "y_max")):
        coords = [obj["x_min"], obj["y_min"], obj["x_max"], obj["y_max"]]
    if (
        not isinstance(coords, (list, tuple))
        or len(coords) != 4
        or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords)
    ):
        raise PlanValidationError(
            f"{where}.box must be [x_min, y_min, x_max, y_max] numbers, got {coords!r:.80}"
        )
    x0, y0, x1, y1 = (float(c) for c in coords)
    if not all(math.isfinite(c) for c in (x0, y0, x1, y1)):
        raise PlanValidationError(f"{where}.box has a non-finite coordinate: {coords!r}")
    if not (x0 < x1 and y0 < y1):
        raise PlanValidationError(f"{where}.box {coords!r} is empty (needs x_min < x_max and y_min < y_max)")
    if camera in image_sizes:
        h, w = image_sizes[camera]
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise PlanValidationError(
                f"{where}.box {coords!r} lies outside the {camera!r} image of {w}x{h} pixels"
            )
    elif image_sizes:
        raise PlanValidationError(f"{where}.camera {camera!r} is unknown; cameras: {sorted(image_sizes)}")
    return Box(camera, x0, y0, x1, y1, _text(obj.get("label", ""), f"{where}.label", limit=64))


def parse_subtask(obj: Any, where: str, limits: PlanLimits) -> Subtask:
    """One subtask dict -> :class:`Subtask` (raises :class:`PlanValidationError`)."""
    if not isinstance(obj, Mapping):
        raise PlanValidationError(f"{where} must be an object, got {obj!r:.80}")
    skill = _text(obj.get("skill"), f"{where}.skill", limit=64, required=True)
    if skill not in limits.skills:
        raise PlanValidationError(
            f"{where}.skill {skill!r} is not a declared skill; skills: {sorted(limits.skills)}"
        )
    arm = _text(obj.get("arm", "single") or "single", f"{where}.arm", limit=16)
    if arm not in ARMS:
        raise PlanValidationError(f"{where}.arm {arm!r} must be one of {list(ARMS)}")
    horizon = obj.get("horizon_s", DEFAULT_HORIZON_S)
    if not isinstance(horizon, (int, float)) or isinstance(horizon, bool) or not math.isfinite(horizon):
        raise PlanValidationError(f"{where}.horizon_s must be a number of seconds, got {horizon!r:.40}")
    if not 0.0 < float(horizon) <= limits.max_horizon_s:
        raise PlanValidationError(f"{where}.horizon_s {horizon} must be in (0, {limits.max_horizon_s}]")
    boxes = obj.get("distractor_boxes", [])
    if boxes is None:
        boxes = []
    if not isinstance(boxes, (list, tuple)) or len(boxes) > MAX_BOXES:
        raise PlanValidationError(
            f"{where}.distractor_boxes must be a list of at most {MAX_BOXES}, got {boxes!r:.80}"
        )
    params = obj.get("parameters", {}) or {}
    if not isinstance(params, Mapping) or len(params) > MAX_PARAMETERS:
        raise PlanValidationError(
            f"{where}.parameters must be an object of at most {MAX_PARAMETERS} entries, got {params!r:.80}"
        )
    clean_params: dict[str, str] = {}
    for k, v in params.items():
        key = _text(k, f"{where}.parameters key", limit=64, required=True)
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise PlanValidationError(
                f"{where}.parameters[{key!r}] must be a string or number, got {v!r:.80}"
            )
        clean_params[key] = _text(str(v), f"{where}.parameters[{key!r}]", limit=256)
    stop_on_post = obj.get("stop_on_post", False)
    if not isinstance(stop_on_post, bool):
        raise PlanValidationError(f"{where}.stop_on_post must be true or false, got {stop_on_post!r:.40}")
    return Subtask(
        instruction=_text(
            obj.get("instruction"), f"{where}.instruction", limit=MAX_INSTRUCTION_CHARS, required=True
        ),
        skill=skill,
        arm=arm,
        pre=parse_condition(obj.get("pre"), f"{where}.pre"),
        post=parse_condition(obj.get("post"), f"{where}.post"),
        horizon_s=float(horizon),
        boxes=tuple(
            parse_box(b, f"{where}.distractor_boxes[{i}]", limits.image_sizes) for i, b in enumerate(boxes)
        ),
        parameters=tuple(sorted(clean_params.items())),
        stop_on_post=stop_on_post,
    )


def parse_subtasks(items: Any, limits: PlanLimits, where: str = "subtasks") -> tuple[Subtask, ...]:
    if not isinstance(items, (list, tuple)):
        raise PlanValidationError(f"{where} must be a list, got {type(items).__name__}")
    if not 1 <= len(items) <= limits.max_subtasks:
        raise PlanValidationError(f"{where} must hold 1..{limits.max_subtasks} subtasks, got {len(items)}")
    return tuple(parse_subtask(s, f"{where}[{i}]", limits) for i, s in enumerate(items))


def parse_plan(obj: Any, goal: str, limits: PlanLimits) -> Plan:
    """A plan reply ``{"subtasks": [...]}`` (or a bare list) -> validated :class:`Plan`."""
    if isinstance(obj, Mapping):
        if "subtasks" not in obj:
            raise PlanValidationError(f"plan must have a 'subtasks' list; keys were {sorted(obj)[:10]}")
        obj = obj["subtasks"]
    return Plan(goal, parse_subtasks(obj, limits))


def plan_from_dict(obj: Mapping[str, Any], skills: Sequence[str] | None = None) -> Plan:
    """Rebuild a plan written by :meth:`Plan.to_dict` (e.g. from the episode log)."""
    subtasks = obj.get("subtasks", [])
    allowed = frozenset(skills) if skills is not None else frozenset(s.get("skill", "") for s in subtasks)
    notes = {str(k): str(v) for k, v in (obj.get("notes") or {}).items()}
    return Plan(str(obj.get("goal", "")), parse_subtasks(subtasks, PlanLimits(skills=allowed)), notes)
