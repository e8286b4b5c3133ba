"""stack_blue_on_yellow: "stack the blue cube on the yellow cube" (precision, stable 5 s)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.sim.expert import Commander, up
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.common import (
    CUBE_HALF,
    add_cube,
    is_grasped,
    is_lifted,
    released,
    sample_positions,
)

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

#: Seconds the stack must stand (blue resting on yellow, untouched) to count as success.
STABLE_SECONDS = 5.0


def stacked(world: SimWorld, top: str, bottom: str, half: float = CUBE_HALF) -> bool:
    """``top`` rests on ``bottom`` (centre within half a cube in xy, one cube height above)."""
    t, b = world.body_pos(top), world.body_pos(bottom)
    return bool(np.linalg.norm(t[:2] - b[:2]) < half and abs(t[2] - b[2] - 2 * half) < 0.006)


class StackBlueOnYellow(Task):
    name = "stack_blue_on_yellow"
    goal = "stack the blue cube on the yellow cube"
    kind = "precision"
    settle_time = STABLE_SECONDS + 0.5

    def build(self, spec: mujoco.MjSpec) -> None:
        add_cube(spec, "blue")
        add_cube(spec, "yellow")

    def segmentation_objects(self) -> dict[str, list[str]]:
        return {"blue_cube": ["blue_cube"], "yellow_cube": ["yellow_cube"]}

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        blue, yellow = sample_positions(rng, 2, [0.04, 0.04])
        world.set_free_pose("blue_cube", [*blue, CUBE_HALF], rng.uniform(-0.6, 0.6))
        world.set_free_pose("yellow_cube", [*yellow, CUBE_HALF], rng.uniform(-0.6, 0.6))
        self._stacked_since: float | None = None

    def update(self, world: SimWorld) -> None:
        if stacked(world, "blue_cube", "yellow_cube"):
            if self._stacked_since is None:
                self._stacked_since = world.time
        else:
            self._stacked_since = None

    def stable_for(self, world: SimWorld) -> float:
        """Seconds the stack has stood without interruption (0 if not stacked)."""
        return 0.0 if self._stacked_since is None else world.time - self._stacked_since

    def subtasks(self) -> list[ExpertSubtask]:
        return [
            ExpertSubtask("pick", "pick up the blue cube"),
            ExpertSubtask("place", "place the blue cube on the yellow cube"),
        ]

    def success(self, world: SimWorld) -> bool:
        return (
            stacked(world, "blue_cube", "yellow_cube")
            and self.stable_for(world) >= STABLE_SECONDS
            and released(world, "blue_cube")
        )

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        if index == 0:
            return is_grasped(world, "blue_cube") and is_lifted(world, "blue_cube", CUBE_HALF)
        return stacked(world, "blue_cube", "yellow_cube") and released(world, "blue_cube")

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()

        def place():  # type: ignore[no-untyped-def]
            goal = world.body_pos("yellow_cube") + up(2 * CUBE_HALF + 0.003)
            yield from arm.place("blue_cube", goal)

        return Expert(cmd, self.subtasks(), [lambda: arm.pick("blue_cube", CUBE_HALF), place])
