"""A reasoner over any chat-style vision-language model (local transformers or HTTP).

:class:`VLMReasoner` writes the prompts, extracts and validates JSON from the replies, and
re-asks a bounded number of times with the validation error fed back; after that it raises
:class:`~hvla_ros.planner.reasoner.ReasonerError` with the last reason, and the episode fails
cleanly. The model itself sits behind :class:`ChatBackend` (``complete(messages) -> text``).
"""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from hvla_ros.planner.json_reply import (
    ReplyError,
    extract_json,
    parse_memory_update,
    parse_reflection,
    parse_verdict,
)
from hvla_ros.planner.plan import Plan, PlanValidationError, Subtask, parse_plan
from hvla_ros.planner.reasoner import (
    Context,
    ExecutionReport,
    MemoryUpdate,
    Reasoner,
    ReasonerError,
    Reflection,
    Verdict,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Message:
    """One chat message: role (system | user | assistant), text, and images (RGB arrays)."""

    role: str
    text: str
    images: tuple[np.ndarray, ...] = ()


class ChatBackend(abc.ABC):
    """A chat model: messages in, reply text out. Raise ``ReasonerError`` when unreachable."""

    name = "chat"

    @abc.abstractmethod
    def complete(self, messages: Sequence[Message]) -> str:
        """The model's reply to ``messages``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model or connection."""


class FunctionChat(ChatBackend):
    """A chat backend that calls a Python function (scripted replies in tests and tools)."""

    name = "function"

    def __init__(self, fn: Callable[[Sequence[Message]], str]) -> None:
        self.fn = fn

    def complete(self, messages: Sequence[Message]) -> str:
        return self.fn(messages)


SYSTEM = (
    "You are the task planner of a robot arm. You decompose goals into subtasks for a library of "
    "learned skills, check whether subtasks succeeded from camera images, keep a short world-state "
    "summary, and diagnose failures. Always reply with one JSON object only, no prose."
)

PLAN_SCHEMA = (
    '{"subtasks": [{"instruction": str, "skill": one of SKILLS, "arm": "single"|"left"|"right"|"both", '
    '"pre": {"text": str, "predicates": [{"name": str, "args": [str], "negated": bool}]}, '
    '"post": {"text": str, "predicates": [...]}, "horizon_s": number, '
    '"distractor_boxes": [{"camera": str, "label": str, "box": [x_min, y_min, x_max, y_max]}], '
    '"parameters": {str: str}}]}'
)


def _memory_text(ctx: Context) -> str:
    m = ctx.memory
    lines = [f"Working memory: {m.working_memory or '(empty)'}"]
    if m.history:
        lines.append("Recent history:")
        lines += [
            f"- subtask {h.subtask_id} attempt {h.attempt} {h.instruction!r}: {h.status} ({h.summary})"
            for h in m.history
        ]
    if m.errors:
        lines.append("Error register:")
        lines += [
            f"- subtask {e.subtask_id} attempt {e.attempt} {e.instruction!r} with {dict(e.parameters)}: "
            f"{e.diagnosis} -> {e.recovery}"
            for e in m.errors
        ]
    return "\n".join(lines)


def _cameras(ctx: Context) -> str:
    return ", ".join(f"{c} ({w}x{h} px)" for c, (h, w) in sorted(ctx.limits.image_sizes.items())) or "none"


class VLMReasoner(Reasoner):
    """Plan / verify / update_memory / reflect through a :class:`ChatBackend` with bounded re-asks."""

    def __init__(
        self,
        chat: ChatBackend,
        *,
        max_reasks: int = 2,
        max_reply_chars: int = 32_000,
        send_images: bool = True,
    ) -> None:
        super().__init__()
        if max_reasks < 0:
            raise ValueError(f"`max_reasks` must be >= 0. Got {max_reasks}.")
        self.chat = chat
        self.name = f"vlm/{chat.name}"
        self.max_reasks = max_reasks
        self.max_reply_chars = max_reply_chars
        self.send_images = send_images

    def _images(self, ctx: Context) -> tuple[np.ndarray, ...]:
        return tuple(ctx.images[c] for c in sorted(ctx.images)) if self.send_images else ()

    def _ask(self, call: str, ctx: Context, prompt: str, parse: Callable[[Any], T]) -> T:
        messages = [Message("system", SYSTEM), Message("user", prompt, self._images(ctx))]
        error = ""
        for _ in range(self.max_reasks + 1):
            t0 = time.perf_counter()
            reply = self.chat.complete(messages)
            try:
                value = parse(extract_json(reply, max_chars=self.max_reply_chars))
            except (ReplyError, PlanValidationError) as e:
                error = str(e)
                self.record(call, messages[-1].text, reply, error, time.perf_counter() - t0)
                messages = [
                    *messages,
                    Message("assistant", reply[:2000]),
                    Message(
                        "user",
                        f"Your reply was invalid: {error}\nReply again with only the corrected JSON object.",
                    ),
                ]
                continue
            self.record(call, messages[-1].text, reply, "", time.perf_counter() - t0)
            return value
        raise ReasonerError(f"no valid {call} reply after {self.max_reasks + 1} tries; last problem: {error}")

    def plan(self, ctx: Context, completed: Sequence[Subtask] = (), failed: Subtask | None = None) -> Plan:
        skills = "\n".join(f"- {n}: {ctx.skill_descriptions.get(n, '')}" for n in sorted(ctx.limits.skills))
        prompt = (
            f"Goal: {ctx.goal}\nSkills (SKILLS):\n{skills}\nCameras: {_cameras(ctx)}\n{_memory_text(ctx)}\n"
        )
        if completed or failed is not None:
            prompt += "Already done: " + "; ".join(s.instruction for s in completed) + "\n"
            if failed is not None:
                prompt += (
                    f"This subtask could not be achieved: {failed.instruction!r} "
                    f"(parameters {failed.params}). Plan what remains; you may insert, skip or "
                    f"replace subtasks and must not repeat an alternative the error register "
                    f"shows failed.\n"
                )
        prompt += f"Reply with the plan as JSON: {PLAN_SCHEMA}"
        return self._ask("plan", ctx, prompt, lambda obj: parse_plan(obj, ctx.goal, ctx.limits))

    def verify(self, ctx: Context, subtask: Subtask, report: ExecutionReport) -> Verdict:
        prompt = (
            f"Subtask: {subtask.instruction!r} (skill {subtask.skill}).\n"
            f"Post-condition: {subtask.post.text} "
            f"{[str(p) for p in subtask.post.predicates]}\n"
            f"The executor stopped: {report.termination} after {report.steps} steps.\n"
            f"{_memory_text(ctx)}\nLook at the latest images. Does the post-condition hold? Reply "
            f'{{"status": "success" or "fail", "reason": str, "facts": {{str: str}}}}'
        )
        return self._ask("verify", ctx, prompt, parse_verdict)

    def update_memory(
        self, ctx: Context, subtask: Subtask, verdict: Verdict, report: ExecutionReport
    ) -> MemoryUpdate:
        prompt = (
            f"{_memory_text(ctx)}\nSubtask {subtask.instruction!r} ended: {verdict.status} "
            f"({verdict.reason}); findings {json.dumps(dict(verdict.facts))}.\n"
            f"Rewrite the working memory: a short summary of the world state and task progress "
            f'(at most 5 sentences). Reply {{"working_memory": str, "facts": {{str: str}}}}'
        )
        return self._ask("update_memory", ctx, prompt, parse_memory_update)

    def reflect(self, ctx: Context, subtask: Subtask, verdict: Verdict, attempt: int) -> Reflection:
        prompt = (
            f"Subtask {subtask.instruction!r} (skill {subtask.skill}, parameters {subtask.params}) "
            f"failed on attempt {attempt}: {verdict.status}, {verdict.reason}.\n{_memory_text(ctx)}\n"
            f"Diagnose why and choose a recovery: retry (same again), adjust_param (change "
            f"parameters or distractor boxes), or replan. Cameras: {_cameras(ctx)}. Reply "
            f'{{"diagnosis": str, "recovery": "retry"|"adjust_param"|"replan", '
            f'"parameters": {{str: str}}, "distractor_boxes": [...] or null}}'
        )
        return self._ask("reflect", ctx, prompt, lambda obj: parse_reflection(obj, ctx.limits))

    def close(self) -> None:
        self.chat.close()
