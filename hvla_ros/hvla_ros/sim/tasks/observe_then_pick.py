"""observe_then_pick: "watch which cube lights up, then put that cube in the box" (memory).

Red, green and blue cubes each stand on a flat lamp pad; the pad under one of them glows for the
first ``CUE_SECONDS`` then goes dark. Success: that cube is in the box and no other cube is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.sim.expert import Commander, up
from hvla_ros.sim.scene import GREY, LAMP_OFF, LAMP_ON, add_box, add_open_box
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.common import CUBE_HALF, add_cube, is_grasped, is_lifted, sample_positions
from hvla_ros.sim.tasks.cube_in_box import BOX_HEIGHT, BOX_INNER, box_geoms, in_box

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

COLORS3 = ("red", "green", "blue")
CUE_SECONDS = 1.0
PAD_HALF = (0.026, 0.026, 0.002)


class ObserveThenPick(Task):
    name = "observe_then_pick"
    goal = "watch which cube lights up, then put that cube in the box"
    kind = "memory"

    def __init__(self) -> None:
        self.target = "red"
        self._lit = False

    def build(self, spec: mujoco.MjSpec) -> None:
        for c in COLORS3:
            add_box(spec, f"{c}_pad", PAD_HALF, LAMP_OFF)
            add_cube(spec, c)
        add_open_box(spec, "box", BOX_INNER, BOX_HEIGHT, GREY)

    def segmentation_objects(self) -> dict[str, list[str]]:
        objs = {f"{c}_cube": [f"{c}_cube"] for c in COLORS3}
        objs.update({f"{c}_pad": [f"{c}_pad"] for c in COLORS3})
        objs["box"] = box_geoms()
        return objs

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        box, *cubes = sample_positions(rng, 4, [0.09, 0.035, 0.035, 0.035])
        for c, p in zip(COLORS3, cubes, strict=True):
            world.set_static_pose(f"{c}_pad", [*p, PAD_HALF[2]])
            world.set_free_pose(f"{c}_cube", [*p, 2 * PAD_HALF[2] + CUBE_HALF], rng.uniform(-0.6, 0.6))
        world.set_static_pose("box", [*box, 0.0], rng.uniform(-0.3, 0.3))
        self.target = COLORS3[int(rng.integers(3))]
        self._set_cue(world, True)

    def _set_cue(self, world: SimWorld, on: bool) -> None:
        for c in COLORS3:
            world.set_rgba(f"{c}_pad", LAMP_ON if (on and c == self.target) else LAMP_OFF)
        self._lit = on

    def update(self, world: SimWorld) -> None:
        if self._lit and world.time >= CUE_SECONDS:
            self._set_cue(world, False)

    def subtasks(self) -> list[ExpertSubtask]:
        c = self.target
        return [
            ExpertSubtask("observe", "watch the cue", {"horizon_s": f"{CUE_SECONDS + 0.2:.1f}"}),
            ExpertSubtask("pick", f"pick up the {c} cube", {"color": c}),
            ExpertSubtask("place", f"place the {c} cube in the box", {"color": c}),
        ]

    def success(self, world: SimWorld) -> bool:
        return in_box(world, f"{self.target}_cube") and not any(
            in_box(world, f"{c}_cube") for c in COLORS3 if c != self.target)

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        cube = f"{self.target}_cube"
        if index == 0:
            return world.time >= CUE_SECONDS
        if index == 1:
            return is_grasped(world, cube) and is_lifted(world, cube, 2 * PAD_HALF[2] + CUBE_HALF)
        return self.success(world)

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()
        cube = f"{self.target}_cube"

        def observe():  # type: ignore[no-untyped-def]
            while world.time < CUE_SECONDS + 0.2:
                yield

        def place():  # type: ignore[no-untyped-def]
            yield from arm.place(cube, world.body_pos("box") + up(CUBE_HALF + 0.004))

        return Expert(cmd, self.subtasks(), [observe, lambda: arm.pick(cube, CUBE_HALF), place])
