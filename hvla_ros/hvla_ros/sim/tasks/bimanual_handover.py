"""bimanual_handover: "hand the cube from the left arm to the right arm and put it in the box".

Robot ``so101_bimanual``: the two arms face each other across the table (left arm on +y). The
cube starts on the left arm's side, the box on the right arm's side. The left arm picks the cube
top-down and holds it up between the arms; the right arm takes it from the side (an approach
tilted ``RIGHT_TILT`` from vertical, jaws on the two faces the left jaws also hold, below them);
the left lets go; the right drops it into the box. Success: the cube rests in the box and was
held by the right arm alone at some point (a real handover, not a push).
The handover subtask's post-condition asks for a clean handover: the right jaws hold the cube
(held apart by it) and the left arm is clear of it (``HANDOVER_LEFT_CLEARANCE``), as the expert
leaves it; a left arm left by the cube makes the place snag it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.robot import GRIPPER_OPEN
from hvla_ros.sim.expert import SLOW_SPEED, Commander, up
from hvla_ros.sim.scene import COLORS, GREY, add_box, add_open_box
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.common import arm_geoms, geoms_of_body, is_grasped, released, sample_positions, touching
from hvla_ros.sim.tasks.cube_in_box import BOX_HEIGHT, BOX_INNER, box_geoms, in_box

if TYPE_CHECKING:
    from collections.abc import Iterator

    from hvla_ros.sim.world import SimWorld

HALF = 0.021
#: where the cube centre is held for the handover
HANDOVER = np.array([0.20, 0.03, 0.058])
RIGHT_TILT = 0.9
RIGHT_GRASP = np.array([0.0, -0.010, -0.009])  # right grasp point relative to the cube centre
#: Gap (m) between the left fixed jaw and the cube's face before closing (see cube_in_box's
#: PICK_JAW_CLEARANCE): room for a learned pick that lands off along the jaw axis.
PICK_JAW_CLEARANCE = 0.002
#: Seconds the left arm holds the lifted cube before the pick subtask ends: the pick skill runs
#: for its whole horizon, so its demonstrations show what to do once the cube is up.
PICK_HOLD_S = 0.6
#: Seconds both arms hold still once the handover is done (cube in the right jaws, left arm clear
#: and open) before the handover subtask ends. The handover skill runs for its whole horizon (12 s)
#: and the expert's handover takes about 8 s: without the hold, its demonstrations never show what
#: to do once the handover is done, and the learned skill closed the left jaws on the cube again.
HANDOVER_HOLD_S = 4.5
#: A clean handover (its post-condition): both left jaw pads at least this far from the cube's
#: centre (m; after the expert's retreat at least 7 cm; open jaws that stopped touching it 4-5 cm) ...
HANDOVER_LEFT_CLEARANCE = 0.05
#: ... and the right jaws held apart by the cube (rad; about 0.35 on the expert's grasp, -0.1 when
#: they close past a corner of it, which drops the cube as soon as the arm moves).
HANDOVER_MIN_RIGHT_JAW = 0.1
#: Axes along which the right grasp point may be varied (``set_grasp_jitter``): along the jaw
#: faces (x) and up/down (z); across the jaws (y) the jaws centre the cube anyway.
GRASP_JITTER_AXES = np.array([1.0, 0.0, 1.0])


def parallel(*programs: Iterator[None]) -> Iterator[None]:
    """Run several arm programs side by side, one control step each per step."""
    running = list(programs)
    while running:
        still = []
        for p in running:
            try:
                next(p)
                still.append(p)
            except StopIteration:
                pass
        running = still
        if running:
            yield


class BimanualHandover(Task):
    name = "bimanual_handover"
    goal = "hand the cube from the left arm to the right arm and put it in the box"
    kind = "bimanual"
    robot_name = "so101_bimanual"

    def __init__(self) -> None:
        self.handed = False
        self._jitter = 0.0
        self._grasp_offset = np.zeros(3)

    def set_grasp_jitter(self, metres: float) -> None:
        """The right arm's grasp point moves up to ``metres`` along the cube's faces per episode."""
        if not (np.isfinite(metres) and 0.0 <= metres <= 0.01):
            raise ValueError(f"grasp jitter must be within [0, 0.01] m, got {metres}")
        self._jitter = float(metres)

    def build(self, spec: mujoco.MjSpec) -> None:
        add_box(spec, "cube", (HALF, HALF, HALF), COLORS["red"], (0.2, 0.1, HALF), free=True, mass=0.03,
                friction=1.2)
        add_open_box(spec, "box", BOX_INNER, BOX_HEIGHT, GREY)

    def bind(self, world: SimWorld) -> None:
        self._cube = geoms_of_body(world.model, "cube")
        self._left = arm_geoms(world, "left_")
        self._left_pads = [world.model.geom(f"left_{g}").id for g in ("fixed_jaw_pad", "moving_jaw_pad")]
        self._right_jaw = world.joint_names.index("right_gripper")
        self._steps = 0

    def left_clearance(self, world: SimWorld) -> float:
        """Distance (m) from the cube's centre to the nearer left jaw pad."""
        cube = world.body_pos("cube")
        return float(min(np.linalg.norm(world.data.geom_xpos[g] - cube) for g in self._left_pads))

    def segmentation_objects(self) -> dict[str, list[str]]:
        return {"cube": ["cube"], "box": box_geoms()}

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        (cube,) = sample_positions(rng, 1, [0.03], x_range=(0.16, 0.24), y_range=(0.06, 0.10), max_radius=None)
        (box,) = sample_positions(rng, 1, [0.06], x_range=(0.17, 0.23), y_range=(-0.12, -0.09),
                                  max_radius=None)
        world.set_free_pose("cube", [*cube, HALF], rng.uniform(-0.4, 0.4))
        world.set_static_pose("box", [*box, 0.0], rng.uniform(-0.2, 0.2))
        self.handed = False
        self._steps = 0
        # drawn last, so the object poses of a seed do not depend on the jitter
        self._grasp_offset = rng.uniform(-1.0, 1.0, 3) * GRASP_JITTER_AXES * self._jitter

    def update(self, world: SimWorld) -> None:
        self._steps += 1
        if self.handed or self._steps % 8:
            return
        if is_grasped(world, "cube", "right_") and not touching(world, self._cube, self._left):
            self.handed = True

    def subtasks(self) -> list[ExpertSubtask]:
        return [
            ExpertSubtask("pick", "pick up the cube with the left arm", arm="left"),
            ExpertSubtask("handover", "hand the cube to the right arm", arm="both"),
            ExpertSubtask("place", "place the cube in the box", arm="right"),
        ]

    def success(self, world: SimWorld) -> bool:
        return self.handed and in_box(world, "cube")

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        if index == 0:
            return is_grasped(world, "cube", "left_") and world.body_pos("cube")[2] > HALF + 0.03
        if index == 1:
            return (is_grasped(world, "cube", "right_") and released(world, "cube", ["left_"])
                    and self.left_clearance(world) >= HANDOVER_LEFT_CLEARANCE
                    and float(world.joint_positions()[self._right_jaw]) >= HANDOVER_MIN_RIGHT_JAW)
        return self.success(world)

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        left, right = cmd.arm("left"), cmd.arm("right")
        approach = np.array([0.0, np.sin(RIGHT_TILT), -np.cos(RIGHT_TILT)])

        def pick() -> Iterator[None]:
            yield from left.pick("cube", HALF, grasp_depth=0.007, lift=0.075, jaw_clearance=PICK_JAW_CLEARANCE,
                                 nearest_yaw=True)
            yield from left.hold(PICK_HOLD_S)

        def handover() -> Iterator[None]:
            offset = left.measured_grasp_point() - world.body_pos("cube")
            yield from parallel(
                left.move(HANDOVER + offset, 0.0, speed=SLOW_SPEED),
                right.set_gripper(GRIPPER_OPEN, 0.3),
            )
            yield from left.hold(0.2)
            cube = world.body_pos("cube")
            grasp = cube + RIGHT_GRASP + self._grasp_offset
            yield from right.move(grasp - 0.07 * approach, 0.0, tilt=RIGHT_TILT)
            yield from right.move(grasp - 0.015 * approach, speed=SLOW_SPEED)
            cube = world.body_pos("cube")
            yield from right.move(cube + RIGHT_GRASP + self._grasp_offset, speed=SLOW_SPEED * 0.5)
            yield from right.hold(0.15)
            yield from right.set_gripper(-0.1, 0.35)
            yield from right.hold(0.2)
            yield from left.set_gripper(GRIPPER_OPEN, 0.3)
            p = left.point
            yield from left.move(p + up(0.04), speed=SLOW_SPEED)
            p = left.point
            yield from left.move(p + np.array([0.0, 0.06, 0.0]))
            yield from left.hold(HANDOVER_HOLD_S)

        def place() -> Iterator[None]:
            offset = right.measured_grasp_point() - world.body_pos("cube")
            goal = world.body_pos("box") + up(BOX_HEIGHT + HALF + 0.012)
            # the side grasp holds the cube by one corner region: carry it gently
            yield from right.move(right.point + up(0.02), speed=SLOW_SPEED)
            yield from right.move(goal + offset + up(0.02), speed=SLOW_SPEED)
            yield from right.move(goal + offset, speed=SLOW_SPEED)
            yield from right.hold(0.1)
            yield from right.set_gripper(GRIPPER_OPEN, 0.3)
            yield from right.hold(0.2)
            p = right.point
            yield from right.move(p - 0.05 * approach, speed=SLOW_SPEED)

        return Expert(cmd, self.subtasks(), [pick, handover, place])
