"""Scripted-expert motion primitives on the real SO-101 kinematics.

A :class:`Commander` keeps the joint targets the expert is sending (one :class:`ArmCommander`
per arm). Primitives are generators that change those targets and yield once per control step:
straight-line Cartesian moves of the grasp point with a minimum-jerk profile (top-down IK at
every step), gripper open/close ramps, holds, and the composite pick / place / press motions the
tasks reuse. Programs read privileged state (object poses) from the world when they start a
motion, so they correct for where things really are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from hvla_ros.robot import GRIPPER_CLOSED, GRIPPER_OPEN, ArmSpec
from hvla_ros.sim.ik import ArmIK

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

#: Cartesian speed of free moves (m/s) and of careful moves near objects.
FAST_SPEED = 0.25
SLOW_SPEED = 0.10
#: Fraction of the robot's joint velocity limits the expert's targets may use. The safety filter
#: in front of the arm clamps anything faster, so demonstrations above it teach a policy motions
#: the arm will never be allowed to make.
SPEED_MARGIN = 0.8
#: Peak speed of a minimum-jerk profile over its mean speed (15/8).
MIN_JERK_PEAK = 1.875
#: Gripper joint target while squeezing an object (below the closed limit: the object stops it).
GRIP_SQUEEZE = GRIPPER_CLOSED
HOVER = 0.07  # grasp point above an object's top before descending
#: Distance from the grasp point to the fixed jaw's inner pad face, along the jaw axis (m).
FIXED_JAW_FACE = 0.0196


def up(dz: float) -> np.ndarray:
    """A vertical offset vector."""
    return np.array([0.0, 0.0, dz])


def min_jerk(s: float) -> float:
    """Minimum-jerk time scaling on [0, 1]."""
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10 - 15 * s + 6 * s * s)


def wrap_quarter(yaw: float) -> float:
    """Map a box's yaw to (-pi/4, pi/4]: a square face pair repeats every 90 degrees."""
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class ArmCommander:
    """Joint targets of one arm plus the Cartesian state of its commanded grasp point."""

    def __init__(self, world: SimWorld, arm: ArmSpec) -> None:
        self.world = world
        self.arm = arm
        self.ik = ArmIK(world.model, arm)
        idx = [world.joint_names.index(n) for n in arm.joint_names]
        self.index = np.array(idx)
        q = world.joint_targets()[self.index]
        self.q_arm = q[:5].copy()
        self.gripper = float(q[5])
        point, rot = self.ik.forward(self.q_arm)
        self.point = point
        self.yaw = float(np.arctan2(rot[1, 2], rot[0, 2]))
        self.tilt = 0.0
        #: per-joint speed allowed to the targets (rad/s), arm joints then gripper
        self.vmax = SPEED_MARGIN * np.array([world.robot.velocity_limit(n) for n in arm.joint_names])

    @property
    def dt(self) -> float:
        return self.world.control_period

    def measured_grasp_point(self) -> np.ndarray:
        """Where the grasp point really is now (from the simulation state)."""
        return self.ik.grasp_point(self.world.data)

    # --------------------------------------------------------------- primitives
    def move(self, target: np.ndarray, yaw: float | None = None, *, speed: float = FAST_SPEED,
             min_time: float = 0.25, tilt: float | None = None) -> Iterator[None]:
        """Move the grasp point along a straight line to ``target`` (and the jaws to ``yaw``)."""
        start = self.point.copy()
        target = np.asarray(target, dtype=float)
        yaw0 = self.yaw
        yaw1 = self.yaw if yaw is None else float(yaw)
        dyaw = (yaw1 - yaw0 + np.pi / 2) % np.pi - np.pi / 2  # jaws are symmetric by pi
        tilt0 = self.tilt
        tilt1 = self.tilt if tilt is None else tilt
        dist = float(np.linalg.norm(target - start))
        duration = max(min_time, dist / speed, abs(dyaw) / 2.0)
        n = max(1, round(duration / self.dt))
        # The IK solution at the line's start can lie on another branch than the current joints
        # (e.g. from the home pose): get there in joint space first, within the speed limits.
        q_start, _ = self.ik.solve(start, yaw0, self.q_arm, tilt=tilt0)
        if np.any(np.abs(q_start - self.q_arm) > self.vmax[:5] * self.dt):
            yield from self.go_joints(q_start, duration=0.0)
            self.point, self.yaw = start.copy(), yaw0
        path = self._line(start, target, yaw0, dyaw, tilt0, tilt1, n)
        for _ in range(8):  # slow down until no joint step exceeds its speed limit
            steps = np.abs(np.diff(np.vstack([self.q_arm[None, :], path]), axis=0))
            ratio = float((steps / (self.vmax[:5] * self.dt)).max())
            if ratio <= 1.0:
                break
            n = int(np.ceil(n * ratio * 1.05))
            path = self._line(start, target, yaw0, dyaw, tilt0, tilt1, n)
        for q in path:
            self.q_arm = q
            yield
        self.point = target.copy()
        self.yaw = yaw0 + dyaw
        self.tilt = tilt1

    def _line(self, start: np.ndarray, target: np.ndarray, yaw0: float, dyaw: float, tilt0: float,
              tilt1: float, n: int) -> np.ndarray:
        """Joint targets (``n x 5``) along the minimum-jerk line, each IK seeded by the previous."""
        q = self.q_arm
        path = np.empty((n, q.size))
        for k in range(1, n + 1):
            s = min_jerk(k / n)
            p = start + s * (target - start)
            q, _ = self.ik.solve(p, yaw0 + s * dyaw, q, tilt=tilt0 + s * (tilt1 - tilt0))
            path[k - 1] = q
        return path

    def _steps(self, duration: float, delta: np.ndarray, vmax: np.ndarray) -> int:
        """Control steps of a minimum-jerk ramp by ``delta``: ``duration`` or more, within ``vmax``."""
        shortest = MIN_JERK_PEAK * float(np.max(np.abs(delta) / vmax)) if delta.size else 0.0
        return max(1, round(duration / self.dt), int(np.ceil(shortest / self.dt)))

    def set_gripper(self, value: float, duration: float = 0.4) -> Iterator[None]:
        """Ramp the gripper target to ``value`` (rad) over ``duration`` (longer if too fast)."""
        g0 = self.gripper
        n = self._steps(duration, np.array([value - g0]), self.vmax[5:])
        for k in range(1, n + 1):
            self.gripper = g0 + min_jerk(k / n) * (value - g0)
            yield

    def hold(self, seconds: float) -> Iterator[None]:
        for _ in range(max(1, round(seconds / self.dt))):
            yield

    def go_joints(self, q_arm: np.ndarray, duration: float = 1.0) -> Iterator[None]:
        """Joint-space move (e.g. back home) over ``duration`` (longer if too fast)."""
        q0 = self.q_arm.copy()
        n = self._steps(duration, np.asarray(q_arm) - q0, self.vmax[:5])
        for k in range(1, n + 1):
            self.q_arm = q0 + min_jerk(k / n) * (np.asarray(q_arm) - q0)
            yield
        self.point, rot = self.ik.forward(self.q_arm)
        self.yaw = float(np.arctan2(rot[1, 2], rot[0, 2]))

    # --------------------------------------------------------------- composites
    def jaw_axis(self) -> np.ndarray:
        """Commanded direction from the fixed towards the moving jaw (world)."""
        return np.asarray(self.ik.forward(self.q_arm)[1][:, 2])

    def pick(self, body: str, half_height: float, *, half_width: float | None = None,
             grasp_depth: float | None = None, lift: float = 0.08, yaw_offset: float = 0.0,
             jaw_clearance: float | None = None, nearest_yaw: bool = False) -> Iterator[None]:
        """Top-down grasp of a box-like body and lift it to ``lift`` (grasp point height).

        The jaws turn to the body's yaw modulo 90 degrees in (-45, 45] (world frame); with
        ``nearest_yaw`` to the one of its four face yaws nearest the jaws' current yaw instead: a
        small wrist turn that varies continuously with the body's yaw. An arm whose jaws start
        across the world's axes (the two-arm cell's arms face each other along y) otherwise turns
        its wrist by about +90 or -90 degrees depending on the sign of the body's yaw, a choice a
        policy imitating the motion cannot make from the body's image.

        By default the fixed jaw is placed just beside the body's face (1.5 mm away), so closing
        the moving jaw does not shove the body sideways. ``jaw_clearance`` (m) places it that far
        from the face instead (the body centred more in the open jaws; closing slides it against
        the fixed jaw): a wider margin for a learned policy imitating the motion.
        """
        w = self.world
        pos = w.body_pos(body)
        face = w.body_yaw(body)
        yaw = (self.yaw + wrap_quarter(face - self.yaw) if nearest_yaw else wrap_quarter(face)) + yaw_offset
        top = pos[2] + half_height
        depth = grasp_depth if grasp_depth is not None else min(half_height, 0.010)
        half_w = half_height if half_width is None else half_width
        yield from self.set_gripper(GRIPPER_OPEN, 0.2)
        yield from self.move(np.array([pos[0], pos[1], top + HOVER]), yaw)
        # re-read the pose right before descending (it may have been nudged)
        pos = w.body_pos(body)
        if jaw_clearance is None:
            along = max(0.0, FIXED_JAW_FACE - half_w - 0.0015)
        else:
            along = FIXED_JAW_FACE - half_w - jaw_clearance
        shift = along * self.jaw_axis()
        shift[2] = 0.0
        yield from self.move(np.array([pos[0], pos[1], top + 0.02]) + shift, yaw, speed=SLOW_SPEED)
        yield from self.move(np.array([pos[0], pos[1], top - depth]) + shift, yaw, speed=SLOW_SPEED)
        yield from self.hold(0.15)
        yield from self.set_gripper(GRIP_SQUEEZE, 0.35)
        yield from self.hold(0.2)
        p = self.point
        yield from self.move(np.array([p[0], p[1], max(lift, top + 0.04)]), speed=SLOW_SPEED)

    def place(self, body: str, goal: np.ndarray, *, carry: float = 0.08, release_clearance: float = 0.004,
              yaw: float | None = None, open_to: float = GRIPPER_OPEN) -> Iterator[None]:
        """Carry a held body so its centre lands at ``goal`` (x, y, z of the centre), release, retreat.

        The offset between the grasp point and the body centre is measured when the motion
        starts, so a body that slipped in the jaws still lands on target.
        """
        w = self.world
        offset = self.measured_grasp_point() - w.body_pos(body)
        aim = np.asarray(goal, dtype=float) + offset
        yield from self.move(np.array([aim[0], aim[1], max(carry, aim[2] + 0.05)]), yaw)
        offset = self.measured_grasp_point() - w.body_pos(body)
        aim = np.asarray(goal, dtype=float) + offset
        yield from self.move(np.array([aim[0], aim[1], aim[2] + 0.03]), speed=SLOW_SPEED)
        yield from self.move(np.array([aim[0], aim[1], aim[2] + release_clearance]), speed=SLOW_SPEED)
        yield from self.hold(0.15)
        yield from self.set_gripper(open_to, 0.3)
        yield from self.hold(0.1)
        p = self.point
        yield from self.move(np.array([p[0], p[1], p[2] + 0.06]), speed=SLOW_SPEED)

    def press(self, point: np.ndarray, depth: float, *, yaw: float = np.pi / 2) -> Iterator[None]:
        """Press straight down on ``point`` (top of a button) by ``depth``, then rise again."""
        point = np.asarray(point, dtype=float)
        yield from self.set_gripper(GRIPPER_CLOSED, 0.2)
        yield from self.move(point + up(0.06), yaw)
        yield from self.move(point + up(0.01), speed=SLOW_SPEED)
        yield from self.move(point - up(depth), speed=SLOW_SPEED * 0.6)
        yield from self.hold(0.2)
        yield from self.move(point + up(0.06), speed=SLOW_SPEED)

    def targets(self) -> np.ndarray:
        return np.concatenate([self.q_arm, [self.gripper]])


class Commander:
    """Joint targets of every arm of the robot, in ``robot.joint_names`` order."""

    def __init__(self, world: SimWorld) -> None:
        self.world = world
        self.arms = {a.name: ArmCommander(world, a) for a in world.robot.arms}

    def arm(self, name: str = "arm") -> ArmCommander:
        return self.arms[name]

    def targets(self) -> np.ndarray:
        q = self.world.joint_targets()
        for a in self.arms.values():
            q[a.index] = a.targets()
        return q
