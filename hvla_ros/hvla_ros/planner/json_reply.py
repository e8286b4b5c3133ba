"""Robust JSON extraction from model replies, and the reply schemas of verify / memory / reflect.

Models wrap JSON in prose or code fences, add trailing commas, or ramble. :func:`extract_json`
finds the first balanced JSON object (or array) that parses, refusing enormous replies up
front; the ``parse_*`` functions validate the decoded values and raise :class:`ReplyError` with
a message meant to be fed back to the model when re-asking.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from hvla_ros.planner.plan import Box, PlanLimits, PlanValidationError, parse_box
from hvla_ros.planner.reasoner import MemoryUpdate, Reflection, Verdict

MAX_REPLY_CHARS = 32_000
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


class ReplyError(ValueError):
    """A reply that is not usable; the message says what to fix."""


def _balanced_spans(text: str, limit: int = 20) -> list[str]:
    """Substrings that start at ``{`` or ``[`` and end at their matching bracket (strings respected)."""
    spans: list[str] = []
    i, n = 0, len(text)
    while i < n and len(spans) < limit:
        if text[i] not in "{[":
            i += 1
            continue
        depth, j, in_str, esc = 0, i, False, False
        while j < n:
            c = text[j]
            if in_str:
                if esc:
                    esc = False
                elif c == "\\":
                    esc = True
                elif c == '"':
                    in_str = False
            elif c == '"':
                in_str = True
            elif c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    spans.append(text[i : j + 1])
                    break
            j += 1
        else:
            break  # unbalanced to the end: nothing further can close
        i = j + 1
    return spans


def extract_json(text: str, *, max_chars: int = MAX_REPLY_CHARS, want: type = dict) -> Any:
    """The first JSON value of type ``want`` (dict or list) in ``text``; raises :class:`ReplyError`."""
    if not isinstance(text, str):
        raise ReplyError(f"the reply is not text but {type(text).__name__}")
    if len(text) > max_chars:
        raise ReplyError(
            f"the reply is {len(text)} characters long; keep it under {max_chars} "
            f"and reply with the JSON only"
        )
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for cand in candidates:
        for span in _balanced_spans(cand):
            for attempt in (span, _TRAILING_COMMA.sub(r"\1", span)):
                try:
                    value = json.loads(attempt)
                except (json.JSONDecodeError, RecursionError):
                    continue
                if isinstance(value, want):
                    return value
    kind = "object {...}" if want is dict else "array [...]"
    raise ReplyError(f"no JSON {kind} found in the reply (it began {text[:60]!r})")


def _str(obj: Mapping[str, Any], key: str, *, limit: int, required: bool = True) -> str:
    value = obj.get(key, "" if not required else None)
    if not isinstance(value, str) or (required and not value.strip()):
        raise ReplyError(f"'{key}' must be a non-empty string, got {value!r:.60}")
    if len(value) > limit:
        raise ReplyError(f"'{key}' is {len(value)} characters long, at most {limit} allowed")
    return value.strip()


def _str_map(obj: Any, key: str, *, max_items: int = 16) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping) or len(obj) > max_items:
        raise ReplyError(f"'{key}' must be an object of at most {max_items} string values, got {obj!r:.60}")
    out: dict[str, str] = {}
    for k, v in obj.items():
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise ReplyError(f"'{key}.{k}' must be a string or number, got {v!r:.60}")
        if len(str(k)) > 64 or len(str(v)) > 256:
            raise ReplyError(f"'{key}.{k}' is too long (keys <= 64, values <= 256 characters)")
        out[str(k)] = str(v)
    return out


def parse_verdict(obj: Any) -> Verdict:
    """``{"status": "success"|"fail", "reason": str, "facts": {..}}``."""
    if not isinstance(obj, Mapping):
        raise ReplyError("the verdict must be a JSON object")
    status = obj.get("status")
    if status not in ("success", "fail"):
        raise ReplyError(f'\'status\' must be "success" or "fail", got {status!r:.40}')
    return Verdict(
        status, _str(obj, "reason", limit=1000, required=False), _str_map(obj.get("facts"), "facts")
    )


def parse_memory_update(obj: Any) -> MemoryUpdate:
    """``{"working_memory": str, "facts": {..}}``."""
    if not isinstance(obj, Mapping):
        raise ReplyError("the memory update must be a JSON object")
    return MemoryUpdate(_str(obj, "working_memory", limit=2000), _str_map(obj.get("facts"), "facts"))


def parse_reflection(obj: Any, limits: PlanLimits) -> Reflection:
    """``{"diagnosis", "recovery": retry|adjust_param|replan, "parameters", "distractor_boxes"}``."""
    if not isinstance(obj, Mapping):
        raise ReplyError("the reflection must be a JSON object")
    recovery = str(obj.get("recovery", "")).replace("-", "_").strip().lower()
    if recovery not in ("retry", "adjust_param", "replan"):
        raise ReplyError(f"'recovery' must be retry, adjust_param or replan, got {obj.get('recovery')!r:.40}")
    boxes: tuple[Box, ...] | None = None
    raw = obj.get("distractor_boxes")
    if raw is not None:
        if not isinstance(raw, list) or len(raw) > 16:
            raise ReplyError(f"'distractor_boxes' must be a list of at most 16 boxes, got {raw!r:.60}")
        try:
            boxes = tuple(
                parse_box(b, f"distractor_boxes[{i}]", limits.image_sizes) for i, b in enumerate(raw)
            )
        except PlanValidationError as e:
            raise ReplyError(str(e)) from None
    return Reflection(
        _str(obj, "diagnosis", limit=1000), recovery, _str_map(obj.get("parameters"), "parameters"), boxes
    )
