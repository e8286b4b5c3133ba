"""cube_in_box: "put the red cube in the box" (precision)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.sim.expert import Commander, up
from hvla_ros.sim.scene import GREY, add_open_box
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.common import (
    CUBE_HALF,
    add_cube,
    body_speed,
    inside_xy,
    is_grasped,
    is_lifted,
    released,
    sample_positions,
)

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

BOX_INNER = (0.045, 0.045)
BOX_HEIGHT = 0.035
#: Seconds the expert holds the lifted cube before the pick subtask ends.
PICK_HOLD_S = 0.6
#: Gap (m) between the fixed jaw and the cube's face before closing: the cube sits nearer the
#: middle of the open jaws, so an imitating policy that is off by up to this much along the jaw
#: axis does not land the fixed jaw on the cube's top.
PICK_JAW_CLEARANCE = 0.012


def box_geoms(name: str = "box") -> list[str]:
    return [f"{name}_floor", *(f"{name}_wall{i}" for i in range(4))]


def in_box(world: SimWorld, body: str, box: str = "box", inner: tuple[float, float] = BOX_INNER) -> bool:
    """Body centre inside the box's inner rectangle and below its rim, resting, not held."""
    p = world.body_pos(body)
    b = world.body_pos(box)
    return (
        inside_xy(p, b, inner, world.body_yaw(box))
        and p[2] < b[2] + BOX_HEIGHT
        and body_speed(world, body) < 0.02
        and released(world, body, [a.prefix for a in world.robot.arms])
    )


class CubeInBox(Task):
    name = "cube_in_box"
    goal = "put the red cube in the box"
    kind = "precision"

    def build(self, spec: mujoco.MjSpec) -> None:
        add_cube(spec, "red")
        add_open_box(spec, "box", BOX_INNER, BOX_HEIGHT, GREY)

    def segmentation_objects(self) -> dict[str, list[str]]:
        return {"red_cube": ["red_cube"], "box": box_geoms()}

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        cube, box = sample_positions(rng, 2, [0.03, 0.075])
        world.set_free_pose("red_cube", [*cube, CUBE_HALF], rng.uniform(-0.6, 0.6))
        world.set_static_pose("box", [*box, 0.0], rng.uniform(-0.3, 0.3))

    def subtasks(self) -> list[ExpertSubtask]:
        return [
            ExpertSubtask("pick", "pick up the red cube"),
            ExpertSubtask("place", "place the red cube in the box"),
        ]

    def success(self, world: SimWorld) -> bool:
        return in_box(world, "red_cube")

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        if index == 0:
            return is_grasped(world, "red_cube") and is_lifted(world, "red_cube", CUBE_HALF)
        return self.success(world)

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()

        def pick():  # type: ignore[no-untyped-def]
            yield from arm.pick("red_cube", CUBE_HALF, jaw_clearance=PICK_JAW_CLEARANCE)
            # Keep the cube up for a moment: the pick skill runs for its whole horizon (longer
            # than the motion), so its demonstrations show what to do once the cube is lifted.
            yield from arm.hold(PICK_HOLD_S)

        def place():  # type: ignore[no-untyped-def]
            goal = world.body_pos("box") + up(CUBE_HALF + 0.004)
            yield from arm.place("red_cube", goal)

        return Expert(cmd, self.subtasks(), [pick, place])
