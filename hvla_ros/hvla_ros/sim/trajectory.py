"""joint_trajectory_controller semantics in plain Python (no rclpy).

One :class:`TrajectoryFollower` per controller reproduces what ros2_controllers'
``joint_trajectory_controller`` (JTC) does with a ``trajectory_msgs/JointTrajectory`` received on
``<controller>/joint_trajectory``, so the simulated arm behaves like a real one behind ros2_control:

- Validation (:func:`validate_trajectory`): a message naming an unknown joint, naming a joint
  twice, leaving out a joint of the controller (JTC's default ``allow_partial_joints_goal:
  false``), with a positions/velocities/accelerations list of the wrong length, a NaN or infinite
  value, a negative or non-increasing ``time_from_start``, or a position beyond the joint's limits
  (:mod:`hvla_ros.robot`) is rejected with a :class:`TrajectoryRejected` naming the problem. A
  rejected message changes nothing: the arm keeps following (or holding) what it had.
- Sampling (:meth:`TrajectoryFollower.sample`): positions are interpolated linearly in time
  between points; from the trajectory's start to its first point the follower moves linearly from
  where it was commanded at the start time; after the last point it holds the last point.
- Replacement: a new trajectory replaces the rest of the current one from its start time
  (``header.stamp``; a zero stamp means "now"). Before that start time the old trajectory still
  runs, as in JTC's trajectory replacement.
- A message with joint names and no points stops the controller: it holds the position it is
  commanded at the time of receipt.

Times are seconds of the simulation clock (the ``/clock`` the simulator publishes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Positions = Sequence[float] | np.ndarray

#: Positions may exceed a limit by this much (rad) to absorb float rounding of a client's clamp.
LIMIT_TOLERANCE = 1e-6


class TrajectoryRejected(ValueError):
    """A trajectory message that the controller refuses; the message says why."""


@dataclass(frozen=True)
class TrajectoryPoint:
    """One point of a trajectory, the plain counterpart of trajectory_msgs/JointTrajectoryPoint."""

    time_from_start: float
    positions: Sequence[float]
    velocities: Sequence[float] = ()
    accelerations: Sequence[float] = ()


@dataclass(frozen=True)
class Trajectory:
    """A validated trajectory in the controller's joint order with absolute start time."""

    start_time: float
    times: np.ndarray  # (N,) seconds from start, strictly increasing, >= 0
    positions: np.ndarray  # (N, J) in the controller's joint order

    @property
    def end_time(self) -> float:
        return self.start_time + float(self.times[-1])


def validate_trajectory(
    joint_names: Sequence[str],
    points: Sequence[TrajectoryPoint],
    *,
    controller_joints: Sequence[str],
    limits: Mapping[str, tuple[float, float]],
    controller: str = "controller",
) -> tuple[np.ndarray, np.ndarray]:
    """Check a trajectory message against a controller; return (times, positions).

    ``positions`` is reordered to ``controller_joints``. Raises :class:`TrajectoryRejected`
    naming the first problem found. An empty ``points`` list is valid (it means "stop") and
    returns arrays with zero rows.
    """
    names = list(joint_names)
    if not names:
        raise TrajectoryRejected(f"{controller}: trajectory has no joint names")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise TrajectoryRejected(f"{controller}: joint {name!r} appears more than once in joint_names")
        seen.add(name)
    unknown = [n for n in names if n not in controller_joints]
    if unknown:
        raise TrajectoryRejected(
            f"{controller}: unknown joint(s) {unknown}; this controller has {list(controller_joints)}"
        )
    missing = [j for j in controller_joints if j not in seen]
    if missing:
        raise TrajectoryRejected(
            f"{controller}: trajectory leaves out joint(s) {missing}; partial joint goals are not "
            f"allowed (allow_partial_joints_goal is false)"
        )
    n = len(names)
    order = [names.index(j) for j in controller_joints]
    times = np.zeros(len(points))
    positions = np.zeros((len(points), n))
    previous = -math.inf
    for i, point in enumerate(points):
        t = float(point.time_from_start)
        if not math.isfinite(t):
            raise TrajectoryRejected(f"{controller}: point {i} has non-finite time_from_start {t}")
        if t < 0.0:
            raise TrajectoryRejected(f"{controller}: point {i} has negative time_from_start {t}")
        if t <= previous:
            raise TrajectoryRejected(
                f"{controller}: time_from_start must increase strictly; point {i} has {t} s after "
                f"point {i - 1} at {previous} s"
            )
        previous = t
        if len(point.positions) != n:
            raise TrajectoryRejected(
                f"{controller}: point {i} has {len(point.positions)} positions for {n} joints"
            )
        for field_name in ("velocities", "accelerations"):
            values = getattr(point, field_name)
            if len(values) not in (0, n):
                raise TrajectoryRejected(
                    f"{controller}: point {i} has {len(values)} {field_name} for {n} joints "
                    f"(give none or one per joint)"
                )
            bad = [names[k] for k, v in enumerate(values) if not math.isfinite(float(v))]
            if bad:
                raise TrajectoryRejected(f"{controller}: point {i} has non-finite {field_name} for {bad}")
        row = np.asarray(point.positions, dtype=float)
        for k, value in enumerate(row):
            joint = names[k]
            if not math.isfinite(value):
                raise TrajectoryRejected(
                    f"{controller}: point {i} has non-finite position {value} for {joint!r}"
                )
            lo, hi = limits[joint]
            if value < lo - LIMIT_TOLERANCE or value > hi + LIMIT_TOLERANCE:
                raise TrajectoryRejected(
                    f"{controller}: point {i} position {value:.4f} for {joint!r} is beyond its limits "
                    f"[{lo:.4f}, {hi:.4f}]"
                )
        times[i] = t
        positions[i] = np.clip(row[order], [limits[j][0] for j in controller_joints],
                               [limits[j][1] for j in controller_joints])
    return times, positions


class TrajectoryFollower:
    """The command side of one joint_trajectory_controller.

    Holds the accepted trajectories and answers "what position is commanded at time t". Not
    thread-safe by itself; the owner serialises :meth:`set_trajectory` and :meth:`sample`.
    """

    def __init__(
        self,
        name: str,
        joint_names: Sequence[str],
        limits: Mapping[str, tuple[float, float]],
        initial_positions: Positions,
    ) -> None:
        self.name = name
        self.joint_names: tuple[str, ...] = tuple(joint_names)
        self.limits = {j: (float(limits[j][0]), float(limits[j][1])) for j in self.joint_names}
        self._hold = self._checked_positions(initial_positions)
        # Accepted trajectories by start time, each in force from its start until the next one's
        # start; with the position commanded at its start (resolved when it starts).
        self._entries: list[tuple[Trajectory, np.ndarray | None]] = []
        self.accepted = 0
        self.rejected = 0
        self.last_rejection: str | None = None

    def _checked_positions(self, q: Positions) -> np.ndarray:
        arr = np.asarray(q, dtype=float).reshape(-1)
        if arr.shape != (len(self.joint_names),):
            raise ValueError(f"{self.name}: expected {len(self.joint_names)} positions, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{self.name}: positions must be finite, got {arr.tolist()}")
        return arr.copy()

    def reset(self, positions: Positions) -> None:
        """Drop every trajectory and hold ``positions``."""
        self._hold = self._checked_positions(positions)
        self._entries = []

    @property
    def active(self) -> bool:
        """True while a trajectory is pending or being followed."""
        return bool(self._entries)

    def set_trajectory(
        self,
        joint_names: Sequence[str],
        points: Sequence[TrajectoryPoint],
        *,
        stamp: float,
        now: float,
    ) -> Trajectory | None:
        """Validate and install a trajectory message received at sim time ``now``.

        ``stamp`` is the header stamp in seconds (0 = start now). Returns the installed
        trajectory, or None for a stop (empty points). Raises :class:`TrajectoryRejected`
        (nothing changes then).
        """
        try:
            if not math.isfinite(stamp) or stamp < 0:
                raise TrajectoryRejected(f"{self.name}: header stamp {stamp} is not a valid time")
            times, positions = validate_trajectory(
                joint_names, points, controller_joints=self.joint_names, limits=self.limits,
                controller=self.name,
            )
            start = now if stamp == 0.0 else float(stamp)
            if len(times) and start + times[-1] < now:
                raise TrajectoryRejected(
                    f"{self.name}: trajectory ends in the past (start {start:.3f} s + "
                    f"{times[-1]:.3f} s < now {now:.3f} s)"
                )
        except TrajectoryRejected as exc:
            self.rejected += 1
            self.last_rejection = str(exc)
            raise
        self.accepted += 1
        if len(times) == 0:
            self.reset(self.sample(now))
            return None
        traj = Trajectory(start_time=start, times=times, positions=positions)
        if start <= now:
            # Replaces everything from now on, starting from what is commanded now.
            q_now = self.sample(now)
            self._hold = q_now
            self._entries = [(traj, q_now)]
        else:
            self._entries = [e for e in self._entries if e[0].start_time < start]
            self._entries.append((traj, None))
        return traj

    def _start_position(self, index: int) -> np.ndarray:
        traj, start_q = self._entries[index]
        if start_q is None:
            start_q = self._hold.copy() if index == 0 else self._sample_entry(index - 1, traj.start_time)
            self._entries[index] = (traj, start_q)
        return start_q

    def _sample_entry(self, index: int, t: float) -> np.ndarray:
        traj = self._entries[index][0]
        start_q = self._start_position(index)
        rel = t - traj.start_time
        if rel < 0.0:
            return start_q.copy()
        times, pos = traj.times, traj.positions
        if rel >= times[-1]:
            return pos[-1].copy()
        k = int(np.searchsorted(times, rel, side="right"))  # times[k-1] <= rel < times[k]
        t0, q0 = (0.0, start_q) if k == 0 else (float(times[k - 1]), pos[k - 1])
        t1, q1 = float(times[k]), pos[k]
        return q0 + (rel - t0) / (t1 - t0) * (q1 - q0)

    def sample(self, now: float) -> np.ndarray:
        """The commanded positions (controller joint order) at sim time ``now``."""
        # Retire trajectories replaced by one that has started.
        while len(self._entries) > 1 and self._entries[1][0].start_time <= now:
            self._start_position(1)
            self._entries.pop(0)
        if not self._entries or now < self._entries[0][0].start_time:
            return self._hold.copy()
        q = self._sample_entry(0, now)
        if len(self._entries) == 1 and now >= self._entries[0][0].end_time:
            self._hold = q.copy()
            self._entries = []
        return q
