"""open_drawer: "open the drawer" (precision).

A cabinet with one drawer faces the arm; the drawer slides out towards the arm (-x) on a slide
joint. The expert grasps the handle top-down and pulls. Success: the drawer is open at least
``OPEN_DISTANCE`` and the gripper has let go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.robot import GRIPPER_OPEN
from hvla_ros.sim.expert import FIXED_JAW_FACE, SLOW_SPEED, Commander
from hvla_ros.sim.scene import DARK, WOOD
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.common import released

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hvla_ros.sim.world import SimWorld

HALF = (0.06, 0.065, 0.025)  # cabinet outer half extents
WALL = 0.005
TRAVEL = 0.085
OPEN_DISTANCE = 0.06
HANDLE_HALF = (0.017, 0.014, 0.007)
HANDLE_Z = 0.032
CABINET_RGBA = (0.80, 0.78, 0.72, 1.0)

_BOX = mujoco.mjtGeom.mjGEOM_BOX


class OpenDrawer(Task):
    name = "open_drawer"
    goal = "open the drawer"
    kind = "precision"

    def build(self, spec: mujoco.MjSpec) -> None:
        hx, hy, hz = HALF
        cab = spec.worldbody.add_body(name="cabinet")
        rgba = list(CABINET_RGBA)
        cab.add_geom(name="cabinet_left", type=_BOX, size=[hx, WALL / 2, hz], pos=[0, hy - WALL / 2, hz], rgba=rgba)
        cab.add_geom(name="cabinet_right", type=_BOX, size=[hx, WALL / 2, hz], pos=[0, -hy + WALL / 2, hz],
                     rgba=rgba)
        cab.add_geom(name="cabinet_back", type=_BOX, size=[WALL / 2, hy, hz], pos=[hx - WALL / 2, 0, hz], rgba=rgba)
        cab.add_geom(name="cabinet_top", type=_BOX, size=[hx, hy, WALL / 2], pos=[0, 0, 2 * hz + WALL / 2],
                     rgba=rgba)
        drawer = cab.add_body(name="drawer")
        drawer.add_joint(name="drawer_slide", type=mujoco.mjtJoint.mjJNT_SLIDE, axis=[-1, 0, 0],
                         range=[0.0, TRAVEL], damping=1.5, frictionloss=0.05)
        ix, iy = hx - WALL, hy - WALL - 0.002
        wood = list(WOOD)
        drawer.add_geom(name="drawer_bottom", type=_BOX, size=[ix - 0.004, iy, 0.002], pos=[0, 0, 0.006],
                        rgba=wood, mass=0.05)
        for name, y in (("drawer_left", iy - 0.002), ("drawer_right", -iy + 0.002)):
            drawer.add_geom(name=name, type=_BOX, size=[ix - 0.004, 0.002, 0.016], pos=[0, y, 0.024],
                            rgba=wood, mass=0.01)
        drawer.add_geom(name="drawer_front", type=_BOX, size=[0.004, hy, hz - 0.002],
                        pos=[-hx - 0.004, 0, hz + 0.001], rgba=list(CABINET_RGBA), mass=0.03)
        drawer.add_geom(name="drawer_handle", type=_BOX, size=list(HANDLE_HALF),
                        pos=[-hx - 0.008 - HANDLE_HALF[0], 0, HANDLE_Z], rgba=list(DARK), mass=0.01,
                        friction=[1.5, 0.02, 0.001])

    def segmentation_objects(self) -> dict[str, list[str]]:
        return {
            "cabinet": ["cabinet_left", "cabinet_right", "cabinet_back", "cabinet_top"],
            "drawer": ["drawer_bottom", "drawer_left", "drawer_right", "drawer_front"],
            "handle": ["drawer_handle"],
        }

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        world.set_static_pose("cabinet", [rng.uniform(0.315, 0.335), rng.uniform(-0.08, 0.08), 0.0])

    def opening(self, world: SimWorld) -> float:
        """How far the drawer is pulled out (m)."""
        return float(world.data.qpos[world.model.joint("drawer_slide").qposadr[0]])

    def handle_pos(self, world: SimWorld) -> np.ndarray:
        return np.asarray(world.data.geom("drawer_handle").xpos.copy())

    def subtasks(self) -> list[ExpertSubtask]:
        return [ExpertSubtask("open_drawer", "pull the drawer open")]

    def success(self, world: SimWorld) -> bool:
        return self.opening(world) >= OPEN_DISTANCE and released(world, "drawer")

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        return self.success(world)

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()

        def pull() -> Iterator[None]:
            h = self.handle_pos(world)
            yaw = np.pi / 2  # jaws close across the handle's y faces
            yield from arm.set_gripper(GRIPPER_OPEN, 0.2)
            yield from arm.move(np.array([h[0], h[1], h[2] + 0.06]), yaw)
            # fixed jaw beside the handle's face: closing then does not drag the arm sideways
            shift = (FIXED_JAW_FACE - HANDLE_HALF[1] - 0.0015) * arm.jaw_axis()
            shift[2] = 0.0
            yield from arm.move(np.array([h[0], h[1], h[2] + 0.002]) + shift, speed=SLOW_SPEED)
            yield from arm.hold(0.15)
            yield from arm.set_gripper(-0.1, 0.35)
            yield from arm.hold(0.2)
            p = arm.point
            yield from arm.move(np.array([p[0] - TRAVEL + 0.008, p[1], p[2]]), speed=0.06)
            yield from arm.hold(0.2)
            yield from arm.set_gripper(GRIPPER_OPEN, 0.3)
            p = arm.point
            yield from arm.move(np.array([p[0], p[1], p[2] + 0.05]), speed=SLOW_SPEED)

        return Expert(cmd, self.subtasks(), [pull])
