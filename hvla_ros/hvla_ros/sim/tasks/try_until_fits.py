"""try_until_fits: "insert the peg into the slot that accepts it" (memory).

Three square sockets stand in a row; slots are numbered 1..3 from the left of the front image
(increasing world y). Two hide a blocker a little below the rim, so a peg dropped in them stands
visibly out; only one lets the peg sink to the floor. The expert tries the slots in order 1, 2, 3
(picking the peg up again after each refusal) until the peg goes in, which is what a planner with
verification and reflection has to do too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.sim.expert import Commander, up
from hvla_ros.sim.scene import DARK, add_box, add_open_box
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Program, Task
from hvla_ros.sim.tasks.common import inside_xy, is_grasped, released

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

PEG_HALF = (0.011, 0.011, 0.022)
PEG_RGBA = (0.95, 0.55, 0.12, 1.0)
SLOT_INNER = (0.016, 0.016)
SLOT_HEIGHT = 0.028
SLOT_FLOOR = 0.004
BLOCK_HEIGHT = 0.018
SLOT_SPACING = 0.065
SLOTS = (1, 2, 3)


def slot_name(i: int) -> str:
    return f"slot_{i}"


class TryUntilFits(Task):
    name = "try_until_fits"
    goal = "insert the peg into the slot that accepts it"
    kind = "memory"
    time_limit = 60.0

    def __init__(self) -> None:
        self.accepting = 1

    def build(self, spec: mujoco.MjSpec) -> None:
        add_box(spec, "peg", PEG_HALF, PEG_RGBA, free=True, mass=0.03, friction=1.2)
        for i in SLOTS:
            body = add_open_box(spec, slot_name(i), SLOT_INNER, SLOT_HEIGHT, DARK)
            body.add_geom(name=f"{slot_name(i)}_block", type=mujoco.mjtGeom.mjGEOM_BOX,
                          size=[SLOT_INNER[0], SLOT_INNER[1], BLOCK_HEIGHT / 2],
                          pos=[0, 0, SLOT_FLOOR + BLOCK_HEIGHT / 2], rgba=list(DARK))

    def segmentation_objects(self) -> dict[str, list[str]]:
        objs = {"peg": ["peg"]}
        for i in SLOTS:
            n = slot_name(i)
            objs[n] = [f"{n}_floor", *(f"{n}_wall{k}" for k in range(4)), f"{n}_block"]
        return objs

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        x = rng.uniform(0.245, 0.265)
        y0 = rng.uniform(-0.02, 0.02)
        self.accepting = int(rng.integers(1, 4))
        for i in SLOTS:
            n = slot_name(i)
            world.set_static_pose(n, [x + rng.uniform(-0.005, 0.005), y0 + (i - 2) * SLOT_SPACING, 0.0])
            # the accepting slot's blocker sinks into the table, out of sight and out of the way
            gid = world.model.geom(f"{n}_block").id
            z = SLOT_FLOOR + BLOCK_HEIGHT / 2 if i != self.accepting else -0.05
            world.model.geom_pos[gid][2] = z
        peg_y = rng.uniform(-0.11, 0.11)
        world.set_free_pose("peg", [rng.uniform(0.165, 0.185), peg_y, PEG_HALF[2]], rng.uniform(-0.5, 0.5))

    def tried_slots(self) -> list[int]:
        return list(range(1, self.accepting + 1))

    def subtasks(self) -> list[ExpertSubtask]:
        out = []
        for i in self.tried_slots():
            out.append(ExpertSubtask("pick", "pick up the peg"))
            out.append(ExpertSubtask("place", f"insert the peg into slot {i}", {"slot": str(i)}))
        return out

    def inserted(self, world: SimWorld, slot: int) -> bool:
        """Peg down on the floor of ``slot`` (not resting on a blocker)."""
        p = world.body_pos("peg")
        s = world.body_pos(slot_name(slot))
        return inside_xy(p, s, SLOT_INNER) and p[2] < SLOT_FLOOR + PEG_HALF[2] + 0.008

    def success(self, world: SimWorld) -> bool:
        return self.inserted(world, self.accepting) and released(world, "peg")

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        st = self.subtasks()[index]
        if st.skill == "pick":
            return is_grasped(world, "peg") and world.body_pos("peg")[2] > PEG_HALF[2] + 0.02
        return self.inserted(world, int(st.parameters["slot"])) and released(world, "peg")

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()

        def insert(slot: int) -> Program:
            def run():  # type: ignore[no-untyped-def]
                goal = world.body_pos(slot_name(slot)) + up(SLOT_FLOOR + PEG_HALF[2] + 0.003)
                yield from arm.place("peg", goal, carry=0.085, release_clearance=0.0,
                                     open_to=0.5)
            return run

        programs: list[Program] = []
        for i in self.tried_slots():
            programs.append(lambda: arm.pick("peg", PEG_HALF[2], half_width=PEG_HALF[0],
                                                   grasp_depth=0.012, lift=0.085))
            programs.append(insert(i))
        return Expert(cmd, self.subtasks(), programs)
