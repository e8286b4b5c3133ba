"""Structured memory M = {H, W, E} of Goal2Skill.

- H (episodic history): the last ``n_history`` attempts verbatim; older ones are folded into a
  bounded digest that is part of W, so memory stays bounded however long the episode runs.
- W (working memory): the natural-language world-state summary the reasoner rewrites after every
  subtask transition, plus ``facts`` (short key/value findings such as ``cue_color=green``) that
  placeholders in later subtasks are filled from.
- E (error register): (subtask, attempt, diagnosis, recovery, adjusted parameters), bounded.

Each part can be switched off for the paper's ablations; a switched-off part stays empty and
the reasoners see it as empty.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("success", "fail", "timeout")
RECOVERIES = ("none", "retry", "adjust_param", "replan")
MAX_WORLD_CHARS = 2000
MAX_FACTS = 64


@dataclass(frozen=True)
class HistoryEntry:
    """One attempt of one subtask and its outcome."""

    subtask_id: int
    attempt: int
    instruction: str
    skill: str
    status: str
    summary: str
    stamp: float = 0.0


@dataclass(frozen=True)
class ErrorEntry:
    """One entry of E: what failed, why, and what reflection decided."""

    subtask_id: int
    attempt: int
    instruction: str
    skill: str
    diagnosis: str
    recovery: str
    parameters: Mapping[str, str] = field(default_factory=dict)  # the failed attempt's parameters
    adjusted: Mapping[str, str] = field(default_factory=dict)  # what adjust-param changed
    stamp: float = 0.0


@dataclass
class _Digest:
    """What H forgot: counts and the latest few failed instructions (bounded)."""

    attempts: int = 0
    successes: int = 0
    failures: int = 0
    timeouts: int = 0
    failed: list[str] = field(default_factory=list)

    def add(self, e: HistoryEntry) -> None:
        self.attempts += 1
        if e.status == "success":
            self.successes += 1
        elif e.status == "timeout":
            self.timeouts += 1
        else:
            self.failures += 1
        if e.status != "success":
            self.failed.append(e.instruction)
            del self.failed[:-5]

    def text(self) -> str:
        if not self.attempts:
            return ""
        s = (
            f"Earlier: {self.attempts} attempts ({self.successes} succeeded, {self.failures} failed, "
            f"{self.timeouts} timed out)."
        )
        if self.failed:
            s += " Recently failed: " + "; ".join(self.failed) + "."
        return s


@dataclass(frozen=True)
class MemoryConfig:
    """Sizes and ablation switches of the memory."""

    n_history: int = 50
    max_errors: int = 50
    use_history: bool = True
    use_working_memory: bool = True
    use_error_register: bool = True

    def __post_init__(self) -> None:
        if self.n_history < 1:
            raise ValueError(f"`n_history` must be >= 1. Got {self.n_history}.")
        if self.max_errors < 1:
            raise ValueError(f"`max_errors` must be >= 1. Got {self.max_errors}.")


@dataclass(frozen=True)
class MemoryView:
    """A read-only snapshot the reasoners get (switched-off parts are empty)."""

    history: tuple[HistoryEntry, ...]
    working_memory: str
    facts: Mapping[str, str]
    errors: tuple[ErrorEntry, ...]

    def failed_parameters(self, instruction_skill: str | None = None) -> list[dict[str, str]]:
        """Parameters of every failed attempt (optionally only those of one skill)."""
        return [
            dict(e.parameters)
            for e in self.errors
            if instruction_skill is None or e.skill == instruction_skill
        ]


def _entry_dict(e: HistoryEntry | ErrorEntry) -> dict[str, Any]:
    d = dict(e.__dict__)
    for key in ("parameters", "adjusted"):
        if key in d:
            d[key] = dict(d[key])
    return d


class Memory:
    """M = {H, W, E} with bounded size (H by ``n_history``, E by ``max_errors``, W by characters)."""

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config or MemoryConfig()
        self._history: deque[HistoryEntry] = deque(maxlen=self.config.n_history)
        self._digest = _Digest()
        self._world = ""
        self._facts: dict[str, str] = {}
        self._errors: deque[ErrorEntry] = deque(maxlen=self.config.max_errors)

    # --- H -------------------------------------------------------------------------------
    def add_history(self, entry: HistoryEntry) -> None:
        if not self.config.use_history:
            return
        if len(self._history) == self._history.maxlen:
            # The oldest entry leaves H: fold it into W's digest (if W is on).
            self._digest.add(self._history[0])
        self._history.append(entry)

    # --- W -------------------------------------------------------------------------------
    def set_world(self, text: str, facts: Mapping[str, str] | None = None) -> None:
        """Replace the world-state summary and merge ``facts`` (no-op when W is off)."""
        if not self.config.use_working_memory:
            return
        self._world = text[:MAX_WORLD_CHARS]
        for k, v in (facts or {}).items():
            if k in self._facts or len(self._facts) < MAX_FACTS:
                self._facts[str(k)[:64]] = str(v)[:256]

    @property
    def working_memory(self) -> str:
        if not self.config.use_working_memory:
            return ""
        parts = [self._world, self._digest.text()]
        if self._facts:
            parts.append("Facts: " + ", ".join(f"{k}={v}" for k, v in sorted(self._facts.items())) + ".")
        return " ".join(p for p in parts if p)

    @property
    def facts(self) -> dict[str, str]:
        return dict(self._facts) if self.config.use_working_memory else {}

    # --- E -------------------------------------------------------------------------------
    def add_error(self, entry: ErrorEntry) -> None:
        if self.config.use_error_register:
            self._errors.append(entry)

    # --- views and persistence -------------------------------------------------------------
    def view(self) -> MemoryView:
        return MemoryView(tuple(self._history), self.working_memory, self.facts, tuple(self._errors))

    def size(self) -> int:
        """Number of stored entries (H + E + facts); bounded by the configuration."""
        return len(self._history) + len(self._errors) + len(self._facts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (what checkpoints store); entries are converted field by field,
        not with ``dataclasses.asdict`` (which deep-copies and dominated the decision overhead)."""
        return {
            "history": [_entry_dict(e) for e in self._history],
            "digest": asdict(self._digest),
            "world": self._world,
            "facts": dict(self._facts),
            "errors": [_entry_dict(e) for e in self._errors],
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], config: MemoryConfig | None = None) -> Memory:
        m = cls(config)
        for e in obj.get("history", []):
            m._history.append(HistoryEntry(**e))
        m._digest = _Digest(**obj.get("digest", {}))
        m._world = str(obj.get("world", ""))
        m._facts = {str(k): str(v) for k, v in obj.get("facts", {}).items()}
        for e in obj.get("errors", []):
            m._errors.append(ErrorEntry(**e))
        return m
