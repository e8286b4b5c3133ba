"""The one reasoner interface behind which every backend sits (plan, verify, update_memory, reflect).

Backends: :class:`~hvla_ros.planner.rule_based.RuleBasedReasoner` (offline, the default),
:class:`~hvla_ros.planner.vlm.VLMReasoner` over a local transformers model or an
OpenAI-compatible HTTP server. All exchange the plain dataclasses below; images are
``H x W x 3`` uint8 RGB arrays keyed by camera name.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hvla_ros.planner.memory import MemoryView
from hvla_ros.planner.plan import Box, Plan, PlanLimits, Subtask

Images = Mapping[str, np.ndarray]

#: Executor termination reasons (ExecuteSubtask.Result.TERMINATION_* plus "silent" when the
#: executor never answered within horizon + margin, and "post_condition" when the planner ended
#: the attempt because it saw the post-condition hold, see :meth:`Reasoner.monitor`).
TERMINATIONS = ("horizon", "skill_done", "canceled", "preempted", "error", "silent", "post_condition")

#: Watches the camera images during an attempt: True once the post-condition holds.
StopCheck = Callable[[Mapping[str, np.ndarray]], bool]


class ReasonerError(RuntimeError):
    """A reasoner could not produce a valid answer (after its bounded re-asks); says why."""


@dataclass(frozen=True)
class ExecutionReport:
    """What the executor reports when a subtask attempt ends.

    ``images`` are the latest observation per camera after termination; ``frames`` a bounded,
    time-ordered sample of observations taken during execution (what an ``observe`` subtask saw);
    ``before`` the observation when the attempt was issued (the episode loop fills it in).
    """

    termination: str
    steps: int = 0
    elapsed_s: float = 0.0
    error: str = ""
    images: Images = field(default_factory=dict)
    frames: Sequence[Images] = ()
    before: Images = field(default_factory=dict)  # the observation when the attempt was issued

    def __post_init__(self) -> None:
        if self.termination not in TERMINATIONS:
            raise ValueError(f"`termination` must be one of {TERMINATIONS}. Got {self.termination!r}.")


@dataclass(frozen=True)
class Context:
    """What every reasoner call sees: the goal, the plan limits and memory (as switched on)."""

    goal: str
    limits: PlanLimits
    memory: MemoryView
    images: Images = field(default_factory=dict)
    skill_descriptions: Mapping[str, str] = field(default_factory=dict)
    notes: Mapping[str, str] = field(default_factory=dict)  # the current plan's notes


@dataclass(frozen=True)
class Verdict:
    """The verifier's judgement: ``status`` in success | fail | timeout, with its reason."""

    status: str
    reason: str = ""
    facts: Mapping[str, str] = field(default_factory=dict)  # findings for W (e.g. cue colour)

    def __post_init__(self) -> None:
        if self.status not in ("success", "fail", "timeout"):
            raise ValueError(f"`status` must be success, fail or timeout. Got {self.status!r}.")


@dataclass(frozen=True)
class MemoryUpdate:
    """Φ_mem's result: the new world-state summary W and facts to merge."""

    working_memory: str
    facts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reflection:
    """(diagnosis d_k, recovery ρ_k); adjust-param may change parameters and distractor boxes."""

    diagnosis: str
    recovery: str  # retry | adjust_param | replan
    parameters: Mapping[str, str] = field(default_factory=dict)
    boxes: tuple[Box, ...] | None = None

    def __post_init__(self) -> None:
        if self.recovery not in ("retry", "adjust_param", "replan"):
            raise ValueError(f"`recovery` must be retry, adjust_param or replan. Got {self.recovery!r}.")


#: Called by backends for every exchange: (call, prompt, reply, error, seconds).
Recorder = Callable[[str, str, str, str, float], None]


class Reasoner(abc.ABC):
    """Plan, verify, update memory and reflect. Raise :class:`ReasonerError` on failure."""

    name = "reasoner"

    def __init__(self) -> None:
        self._recorder: Recorder | None = None

    def set_recorder(self, recorder: Recorder | None) -> None:
        """Receive every prompt and reply (the episode log uses this)."""
        self._recorder = recorder

    def record(self, call: str, prompt: str, reply: str, error: str = "", seconds: float = 0.0) -> None:
        if self._recorder is not None:
            self._recorder(call, prompt, reply, error, seconds)

    @abc.abstractmethod
    def plan(self, ctx: Context, completed: Sequence[Subtask] = (), failed: Subtask | None = None) -> Plan:
        """Plan the goal; on a replan ``completed`` holds the subtasks already done and
        ``failed`` the one that could not be achieved. The new plan lists what remains to do
        (it may insert, skip or replace subtasks)."""

    @abc.abstractmethod
    def verify(self, ctx: Context, subtask: Subtask, report: ExecutionReport) -> Verdict:
        """Judge ``subtask``'s post-condition on the latest images (+ W): success | fail."""

    @abc.abstractmethod
    def update_memory(
        self, ctx: Context, subtask: Subtask, verdict: Verdict, report: ExecutionReport
    ) -> MemoryUpdate:
        """Φ_mem(W, o, τ, c): the new world-state summary after a subtask transition."""

    @abc.abstractmethod
    def reflect(self, ctx: Context, subtask: Subtask, verdict: Verdict, attempt: int) -> Reflection:
        """Diagnose a failed attempt and choose retry | adjust_param | replan."""

    def monitor(self, ctx: Context, subtask: Subtask, before: Images) -> StopCheck | None:
        """A cheap check of ``subtask``'s post-condition on the latest images, called many times a
        second while a ``stop_on_post`` subtask runs; None (the default) when this backend cannot
        check that fast (a VLM), and the attempt then runs to its horizon."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Free models or connections (default: nothing to free)."""


def describe(obj: Any) -> str:
    """Short text of an object for logs (images as shapes)."""
    if isinstance(obj, np.ndarray):
        return f"<image {'x'.join(map(str, obj.shape))} {obj.dtype}>"
    return str(obj)
