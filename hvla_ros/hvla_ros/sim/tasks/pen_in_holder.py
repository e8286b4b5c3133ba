"""pen_in_holder: "push the pen into the holder" (precision).

A pen (a slim bar lying across the table) must be pushed, not carried, into a U-shaped holder
whose open side faces the arm. Success: the pen lies inside the holder's bay, roughly aligned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.robot import GRIPPER_CLOSED
from hvla_ros.sim.expert import SLOW_SPEED, Commander
from hvla_ros.sim.scene import GREY, add_box
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.common import released

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hvla_ros.sim.world import SimWorld

PEN_HALF = (0.04, 0.011, 0.008)  # long axis = body x
PEN_RGBA = (0.15, 0.15, 0.70, 1.0)
BAY_HALF = (0.016, 0.072)  # inner half extents (x depth, y length)
WALL = 0.006
WALL_HEIGHT = 0.02
PUSH_Z = 0.012  # grasp-point height while pushing


class PenInHolder(Task):
    name = "pen_in_holder"
    goal = "push the pen into the holder"
    kind = "precision"

    def build(self, spec: mujoco.MjSpec) -> None:
        add_box(spec, "pen", PEN_HALF, PEN_RGBA, free=True, mass=0.02, friction=0.6)
        holder = spec.worldbody.add_body(name="holder")
        bx, by = BAY_HALF
        h = WALL_HEIGHT / 2
        walls = {
            "holder_back": ([WALL / 2, by + WALL, h], [bx + WALL / 2, 0, h]),
            "holder_left": ([bx, WALL / 2, h], [0, by + WALL / 2, h]),
            "holder_right": ([bx, WALL / 2, h], [0, -by - WALL / 2, h]),
        }
        for name, (size, pos) in walls.items():
            holder.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_BOX, size=size, pos=pos, rgba=list(GREY))

    def segmentation_objects(self) -> dict[str, list[str]]:
        return {"pen": ["pen"], "holder": ["holder_back", "holder_left", "holder_right"]}

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        hx, hy = rng.uniform(0.26, 0.275), rng.uniform(-0.06, 0.06)
        world.set_static_pose("holder", [hx, hy, 0.0])
        px = hx - rng.uniform(0.06, 0.075)
        py = hy + rng.uniform(-0.012, 0.012)
        world.set_free_pose("pen", [px, py, PEN_HALF[2]], np.pi / 2 + rng.uniform(-0.15, 0.15))

    def subtasks(self) -> list[ExpertSubtask]:
        return [ExpertSubtask("push", "push the pen into the holder")]

    def in_holder(self, world: SimWorld) -> bool:
        p, h = world.body_pos("pen"), world.body_pos("holder")
        yaw_err = abs((world.body_yaw("pen") - np.pi / 2 + np.pi / 2) % np.pi - np.pi / 2)
        return bool(
            h[0] - BAY_HALF[0] - 0.004 < p[0] < h[0] + BAY_HALF[0]
            and abs(p[1] - h[1]) < BAY_HALF[1] - PEN_HALF[0] + 0.004
            and yaw_err < 0.3
        )

    def success(self, world: SimWorld) -> bool:
        return self.in_holder(world) and released(world, "pen")

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        return self.success(world)

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()

        def push() -> Iterator[None]:
            pen = world.body_pos("pen")
            goal_x = world.body_pos("holder")[0] + BAY_HALF[0] - PEN_HALF[1] - 0.002
            yaw = np.pi / 2
            yield from arm.set_gripper(GRIPPER_CLOSED, 0.2)
            start = np.array([pen[0] - 0.035, pen[1], 0.06])
            yield from arm.move(start, yaw)
            yield from arm.move(np.array([start[0], start[1], PUSH_Z]), speed=SLOW_SPEED)
            # push in small steps, re-centring on the pen as it moves
            # The contact point shifts along the pen against its yaw error: pushing off-centre
            # turns a bar, so the offset steers it back square to the holder.
            x = start[0]
            for _ in range(int(4.0 / world.control_period)):
                pen = world.body_pos("pen")
                if pen[0] >= goal_x:
                    break
                err = (world.body_yaw("pen") - np.pi / 2 + np.pi / 2) % np.pi - np.pi / 2
                y = start[1] + float(np.clip(0.08 * err, -0.02, 0.02))
                x += 0.05 * world.control_period
                yield from arm.move(np.array([x, y, PUSH_Z]), min_time=world.control_period)
            yield from arm.hold(0.2)
            p = arm.point
            yield from arm.move(np.array([p[0] - 0.03, p[1], PUSH_Z]), speed=SLOW_SPEED)
            yield from arm.move(np.array([p[0] - 0.03, p[1], 0.07]), speed=SLOW_SPEED)

        return Expert(cmd, self.subtasks(), [push])
