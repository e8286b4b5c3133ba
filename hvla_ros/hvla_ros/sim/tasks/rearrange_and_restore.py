"""rearrange_and_restore: "move the cubes off the mat, then put them back where they were" (memory).

A red and a green cube stand on a flat mat. The expert moves each to a free spot beside the mat,
then returns each to its original position; the "place back" subtasks carry that position as
``target_px="u,v"``: the cube's original centre in the front image (at the world's image size),
which a planner remembers from the first frame. Success: both cubes were off the mat at some
point and now rest within ``RESTORE_TOLERANCE`` of where they started, released.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.robot import GRIPPER_OPEN
from hvla_ros.sim.expert import Commander, up
from hvla_ros.sim.scene import add_box
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Program, Task
from hvla_ros.sim.tasks.common import (
    CUBE_HALF,
    add_cube,
    inside_xy,
    is_grasped,
    is_lifted,
    released,
    sample_positions,
)

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

CUBES = ("red", "green")
MAT_HALF = (0.055, 0.055, 0.001)
MAT_RGBA = (0.30, 0.36, 0.50, 1.0)
RESTORE_TOLERANCE = 0.02


class RearrangeAndRestore(Task):
    name = "rearrange_and_restore"
    goal = "move the cubes off the mat, then put them back where they were"
    kind = "memory"
    time_limit = 60.0

    def __init__(self) -> None:
        self.origin: dict[str, np.ndarray] = {}
        self.beside: dict[str, np.ndarray] = {}
        self.target_px: dict[str, str] = {}
        self._was_off = dict.fromkeys(CUBES, False)

    def build(self, spec: mujoco.MjSpec) -> None:
        add_box(spec, "mat", MAT_HALF, MAT_RGBA)
        for c in CUBES:
            add_cube(spec, c)

    def segmentation_objects(self) -> dict[str, list[str]]:
        objs = {f"{c}_cube": [f"{c}_cube"] for c in CUBES}
        objs["mat"] = ["mat"]
        return objs

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        mat, *spots = sample_positions(rng, 3, [0.085, 0.035, 0.035])
        world.set_static_pose("mat", [*mat, MAT_HALF[2]])
        while True:
            offs = [rng.uniform(-0.03, 0.03, size=2) for _ in CUBES]
            if np.linalg.norm(offs[0] - offs[1]) > 0.045:
                break
        z = 2 * MAT_HALF[2] + CUBE_HALF
        for c, off, spot in zip(CUBES, offs, spots, strict=True):
            self.origin[c] = np.array([*(mat + off), z])
            self.beside[c] = np.array([*spot, CUBE_HALF])
            world.set_free_pose(f"{c}_cube", self.origin[c], rng.uniform(-0.6, 0.6))
        mujoco.mj_kinematics(world.model, world.data)
        mujoco.mj_camlight(world.model, world.data)
        cam = world.robot.scene_camera
        for c in CUBES:
            u, v = world.project(cam, self.origin[c])
            self.target_px[c] = f"{round(u)},{round(v)}"
        self._was_off = dict.fromkeys(CUBES, False)

    def off_mat(self, world: SimWorld, color: str) -> bool:
        p = world.body_pos(f"{color}_cube")
        margin = (MAT_HALF[0] + CUBE_HALF * 0.5, MAT_HALF[1] + CUBE_HALF * 0.5)
        return not inside_xy(p, world.body_pos("mat"), margin)

    def restored(self, world: SimWorld, color: str) -> bool:
        p = world.body_pos(f"{color}_cube")
        return bool(np.linalg.norm(p[:2] - self.origin[color][:2]) < RESTORE_TOLERANCE
                    and abs(p[2] - self.origin[color][2]) < 0.005)

    def update(self, world: SimWorld) -> None:
        for c in CUBES:
            if not self._was_off[c] and self.off_mat(world, c):
                self._was_off[c] = True

    def subtasks(self) -> list[ExpertSubtask]:
        out = []
        for c in CUBES:
            out.append(ExpertSubtask("pick", f"pick up the {c} cube", {"color": c}))
            out.append(ExpertSubtask("place", f"place the {c} cube beside the mat", {"color": c}))
        for c in CUBES:
            out.append(ExpertSubtask("pick", f"pick up the {c} cube", {"color": c}))
            out.append(ExpertSubtask("place", f"place the {c} cube back on the mat",
                                     {"color": c, "target_px": self.target_px[c]}))
        return out

    def success(self, world: SimWorld) -> bool:
        return all(self._was_off[c] and self.restored(world, c) and released(world, f"{c}_cube")
                   for c in CUBES)

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        st = self.subtasks()[index]
        c = st.parameters["color"]
        cube = f"{c}_cube"
        if st.skill == "pick":
            return is_grasped(world, cube) and is_lifted(world, cube, CUBE_HALF + 2 * MAT_HALF[2])
        if "target_px" in st.parameters:
            return self.restored(world, c) and released(world, cube)
        return self.off_mat(world, c) and released(world, cube)

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()

        def place(c: str, goal: np.ndarray, open_to: float = GRIPPER_OPEN) -> Program:
            return lambda: arm.place(f"{c}_cube", goal + up(0.003), open_to=open_to)

        def pick(c: str) -> Program:
            return lambda: arm.pick(f"{c}_cube", CUBE_HALF)

        programs: list[Program] = []
        for c in CUBES:
            programs += [pick(c), place(c, self.beside[c])]
        for c in CUBES:
            # back on the mat the other cube is close: open just enough to let go, so the
            # swinging jaw does not knock it off its restored spot
            programs += [pick(c), place(c, self.origin[c], open_to=0.55)]
        return Expert(cmd, self.subtasks(), programs)
