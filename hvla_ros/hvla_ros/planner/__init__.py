"""The Goal2Skill planner core: plans, structured memory, verifier, reflection and the episode loop.

Plain Python (no rclpy); ``hvla_ros.nodes.planner_node`` wires it to ROS. Backends of the one
reasoner interface: rule-based (default, offline), a local transformers VLM, an OpenAI-compatible
HTTP server (see :func:`hvla_ros.planner.factory.make_reasoner`).
"""

from hvla_ros.planner.episode import (
    EpisodeResult,
    EpisodeRunner,
    EpisodeStatus,
    Executor,
    ExecutorUnavailable,
    PlannerConfig,
)
from hvla_ros.planner.memory import Memory, MemoryConfig, MemoryView
from hvla_ros.planner.plan import Box, Condition, Plan, PlanLimits, PlanValidationError, Predicate, Subtask
from hvla_ros.planner.reasoner import (
    Context,
    ExecutionReport,
    MemoryUpdate,
    Reasoner,
    ReasonerError,
    Reflection,
    Verdict,
)

__all__ = [
    "Box",
    "Condition",
    "Context",
    "EpisodeResult",
    "EpisodeRunner",
    "EpisodeStatus",
    "ExecutionReport",
    "Executor",
    "ExecutorUnavailable",
    "Memory",
    "MemoryConfig",
    "MemoryUpdate",
    "MemoryView",
    "Plan",
    "PlanLimits",
    "PlanValidationError",
    "PlannerConfig",
    "Predicate",
    "Reasoner",
    "ReasonerError",
    "Reflection",
    "Subtask",
    "Verdict",
]
