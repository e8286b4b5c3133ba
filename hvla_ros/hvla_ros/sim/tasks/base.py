"""The task interface of the simulated suite, and the scripted-expert runner.

A :class:`Task` adds its objects to the scene spec, randomises them at reset from a seeded
generator, updates run-time cues (lamps) as the physics advances, and answers ground-truth
questions (success, per-subtask post-conditions) for evaluation. Its ``expert`` builds an
:class:`Expert`: the episode's canonical subtasks (skill + instruction exactly as in the task
suite contract) each paired with a scripted program that uses privileged state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import mujoco
import numpy as np

if TYPE_CHECKING:
    from hvla_ros.sim.expert import Commander
    from hvla_ros.sim.world import SimWorld


@dataclass(frozen=True)
class ExpertSubtask:
    """One canonical subtask: what the planner would issue and the executor would run."""

    skill: str  # pick, place, push, press, open_drawer, observe, handover
    instruction: str
    parameters: dict[str, str] = field(default_factory=dict)
    arm: str = "arm"  # "arm" (single), "left", "right" or "both"


#: A subtask program: a generator that advances one control step per ``next()``.
Program = Callable[[], Iterator[None]]


class Expert:
    """Runs the subtask programs in order, one control step per :meth:`act` call.

    Attributes:
        subtasks: the canonical subtasks of this episode.
        current: index of the subtask being executed (``len(subtasks)`` once done).
        done: True once every program has finished.
    """

    def __init__(self, commander: Commander, subtasks: list[ExpertSubtask], programs: list[Program]) -> None:
        if len(subtasks) != len(programs):
            raise ValueError(f"{len(subtasks)} subtasks but {len(programs)} programs")
        self.commander = commander
        self.subtasks = subtasks
        self._programs = programs
        self.current = 0
        self._running: Iterator[None] | None = None
        self.steps = 0

    @property
    def done(self) -> bool:
        return self.current >= len(self.subtasks)

    def act(self, world: SimWorld) -> np.ndarray:
        """Advance by one control step and return the joint targets (order robot.joint_names)."""
        while not self.done:
            if self._running is None:
                self._running = self._programs[self.current]()
            try:
                next(self._running)
                break
            except StopIteration:
                self._running = None
                self.current += 1
        self.steps += 1
        return self.commander.targets()


class Task:
    """Base class of a simulated task. Subclasses set the class attributes and override hooks."""

    name: ClassVar[str]
    goal: ClassVar[str]
    kind: ClassVar[str] = "precision"  # precision | memory | bimanual
    robot_name: ClassVar[str] = "so101"
    #: seconds an expert rollout may take before it counts as failed
    time_limit: ClassVar[float] = 40.0
    #: seconds to keep simulating after the expert finished before judging success
    settle_time: ClassVar[float] = 1.0

    def set_grasp_jitter(self, metres: float) -> None:
        """Vary the expert's grasp point by up to ``metres`` per episode (drawn from the episode's
        seed), for demonstrations that start later subtasks from the range of grasps a learned
        skill leaves. Only tasks whose expert implements it accept a value other than 0."""
        if metres != 0.0:
            raise ValueError(f"task {self.name!r}: its expert has no grasp variation (asked for {metres} m)")

    def build(self, spec: mujoco.MjSpec) -> None:
        """Add the task's bodies to the scene spec (before compilation)."""

    def bind(self, world: SimWorld) -> None:
        """Called once after compilation (look up ids)."""

    def segmentation_objects(self) -> dict[str, list[str]]:
        """Object name -> geom names, for ground-truth segmentation ids."""
        return {}

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        """Randomise object poses and cues from ``rng``."""

    def update(self, world: SimWorld) -> None:
        """Called after every physics step (time-based cues, lamps)."""

    def subtasks(self) -> list[ExpertSubtask]:
        """Canonical subtasks of the current episode (valid after reset)."""
        raise NotImplementedError

    def success(self, world: SimWorld) -> bool:
        raise NotImplementedError

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        """Ground-truth post-condition of subtask ``index`` in the current state."""
        raise NotImplementedError

    def expert(self, world: SimWorld) -> Expert:
        raise NotImplementedError

    def _check_index(self, index: int) -> None:
        n = len(self.subtasks())
        if not 0 <= index < n:
            raise IndexError(f"subtask index {index} out of range for task {self.name!r} ({n} subtasks)")
