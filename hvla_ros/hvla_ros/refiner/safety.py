"""Last-line safety in front of the arm(s): validate, clamp, drop stale steps, hold.

Plain Python (no rclpy): the refiner node feeds it chunks, joint states, e-stop requests and
control ticks, and sends exactly what it returns. Every limit comes from :mod:`hvla_ros.robot`.

Rules, in the order they are applied to a chunk (``obs: T steps x D joints -> cmd: K x D``):

1. **e-stop** engaged -> the chunk is refused (``ESTOP``) and the arm keeps holding.
2. **shape/names**: every name a joint of the robot, no duplicates, whole arms only, ``T >= 1``,
   ``positions`` exactly ``T x D`` -> otherwise ``BAD_CHUNK``.
3. **stamps**: finite and strictly increasing, not older than the previous chunk's first step
   -> otherwise ``BAD_CHUNK`` (non-monotonic).
4. **NaN/inf** anywhere in the positions -> ``NAN``, the whole chunk is refused.
5. **stale chunk**: its last step ended more than ``max_chunk_age`` ago, or its first step lies
   more than ``max_future`` ahead (clock mismatch) -> ``STALE_CHUNK``.
6. **stale steps**: steps due before ``now + latency_budget`` are dropped (counted); if all are
   stale the last one is scheduled on the next control tick (diffusion_policy's real-robot rule).
7. **step change**: a jump larger than ``max_step_change`` between consecutive targets of the
   chunk (a discontinuity inside a policy's chunk is a glitch) -> ``LIMIT``, the chunk is refused.
   Checked on the chunk as planned, before rule 6 drops stale steps. The first target's distance
   from where the arm is being driven is not a jump: the velocity limit (rule 9) rate-limits the
   approach. Refusing it would hold the arm for as long as a policy keeps asking for a pose away
   from the current one (e.g. the wrist turning to the other grasp of a symmetric object), and
   the planning latency alone puts a fast chunk's first fresh step ahead of the arm. Arm joints
   only: a gripper closing on an object is stopped by it, and open/close commands are jumps by
   nature; a gripper's target is rate-limited by rule 9 instead.
8. **position limits**: clamped into the joint range (counted per step).
9. **velocity limits**: each step's change is limited to ``v_max * dt`` (counted per step).

Whenever a chunk is refused the arm holds (position measured at that moment, reached within one
control period) until a valid chunk arrives; so does the **watchdog** when no chunk has arrived
for ``watchdog_timeout`` while a trajectory is still running. A gripper holds its last commanded
target rather than its measured position: one closed on an object keeps its grip (holding it at
the measured opening would let go of what it carries).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from hvla_ros.robot import RobotSpec

log = logging.getLogger(__name__)


class SafetyError(IntEnum):
    """Reason codes; the values are those of ``hvla_interfaces/msg/SafetyStatus`` (tested)."""

    NONE = 0
    ESTOP = 1
    WATCHDOG = 2
    NAN = 3
    LIMIT = 4
    STALE_CHUNK = 5
    BAD_CHUNK = 6


class ChunkRejected(ValueError):
    """A chunk the safety layer refused; ``code`` says which rule, the message names the value."""

    def __init__(self, code: SafetyError, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SafetyConfig:
    """Tunable safety parameters. Joint limits are not here: they come from the robot spec."""

    control_period: float = 1.0 / 30.0  # s; holds are reached within one period
    latency_budget: float = 0.05  # s; steps due earlier than now + budget are dropped
    max_chunk_age: float = 0.5  # s; a chunk whose last step ended longer ago is refused
    max_future: float = 2.0  # s; a chunk starting further ahead than this is refused
    max_step_change: float = 0.5  # rad between consecutive targets; larger jumps refuse the chunk
    watchdog_timeout: float = 0.5  # s without a chunk while moving -> hold
    velocity_scale: float = 1.0  # fraction of the robot's velocity limits allowed (0, 1]

    def __post_init__(self) -> None:
        for name in ("control_period", "latency_budget", "max_chunk_age", "max_future",
                     "max_step_change", "watchdog_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0) and not (name == "latency_budget" and value == 0):
                raise ValueError(f"`{name}` must be a finite positive number. Got {value!r}.")
        if not 0 < self.velocity_scale <= 1:
            raise ValueError(f"`velocity_scale` must be in (0, 1]. Got {self.velocity_scale!r}.")


@dataclass
class Chunk:
    """A chunk of joint targets: ``positions`` is ``T x D``, ``stamps`` (s) is ``T``."""

    joint_names: tuple[str, ...]
    positions: np.ndarray
    stamps: np.ndarray

    @classmethod
    def from_flat(cls, joint_names: list[str] | tuple[str, ...], num_steps: int, flat_positions,
                  start: float, step_period: float) -> Chunk:
        """Build from ActionChunk fields (row-major positions, first-step stamp, period).

        Raises :class:`ChunkRejected` (``BAD_CHUNK``) when the sizes do not match.
        """
        flat = np.asarray(flat_positions, dtype=float).ravel()
        d = len(joint_names)
        if num_steps <= 0 or d == 0:
            raise ChunkRejected(SafetyError.BAD_CHUNK,
                                f"chunk has num_steps={num_steps} and {d} joint names; both must be > 0")
        if flat.size != num_steps * d:
            raise ChunkRejected(
                SafetyError.BAD_CHUNK,
                f"chunk has {flat.size} positions, expected num_steps*len(joint_names) = "
                f"{num_steps}*{d} = {num_steps * d}")
        stamps = float(start) + float(step_period) * np.arange(num_steps)
        return cls(tuple(joint_names), flat.reshape(num_steps, d), stamps)


@dataclass
class Command:
    """What to send to the arm(s): targets ``positions`` (K x D) due at ``stamps`` (K)."""

    joint_names: tuple[str, ...]
    positions: np.ndarray
    stamps: np.ndarray
    hold: bool = False  # True: a hold at the measured position (e-stop, watchdog, refusal)
    #: True: ``stamps`` count from when the controller receives the command (a hold, or a chunk
    #: that was all stale: its last target on the next tick), not from the sender's clock, which
    #: may run behind the controller's by more than the one period these commands span
    on_receipt: bool = False


@dataclass
class SafetyCounters:
    """Counters and the latest intervention, mirrored in ``SafetyStatus``."""

    chunks_accepted: int = 0
    chunks_rejected: int = 0
    steps_clamped: int = 0
    steps_dropped_stale: int = 0
    error_code: SafetyError = SafetyError.NONE
    error_msg: str = ""
    rejections: dict[str, int] = field(default_factory=dict)


class SafetyFilter:
    """Validates and clamps chunks for ``robot``; tracks e-stop, watchdog and the hold state.

    Feed it :meth:`update_joint_state` (measured positions), :meth:`filter_chunk` for each
    incoming chunk and :meth:`tick` every control period; send every :class:`Command` returned.
    """

    def __init__(self, robot: RobotSpec, config: SafetyConfig | None = None) -> None:
        self.robot = robot
        self.config = config or SafetyConfig()
        self.joint_names: tuple[str, ...] = robot.joint_names
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        lims = np.array([robot.position_limits(n) for n in self.joint_names], dtype=float)
        self.lower, self.upper = lims[:, 0], lims[:, 1]
        self.vmax = np.array([robot.velocity_limit(n) for n in self.joint_names]) * self.config.velocity_scale
        self.counters = SafetyCounters()
        self.estop_engaged = False
        self.holding = False
        self._measured: np.ndarray | None = None  # full robot joint vector
        self._last_chunk_time: float | None = None  # receive time of the latest accepted chunk
        self._last_chunk_start: float | None = None  # first-step stamp of the latest accepted chunk
        self._active_full: Command | None = None  # latest trajectory sent (all robot joints)
        self._gripper_cols = np.array([self._index[g] for g in robot.gripper_joints if g in self._index], dtype=int)
        self._arm_mask = np.ones(len(self.joint_names), dtype=bool)  # joints under the step-change rule
        self._arm_mask[self._gripper_cols] = False
        self._gripper_target: np.ndarray | None = None  # gripper targets when the last hold began

    # ------------------------------------------------------------------ inputs
    def update_joint_state(self, names, positions) -> None:
        """Record measured positions (any order/subset; unknown names are ignored)."""
        if len(names) != len(positions):
            log.error("joint state has %d names but %d positions; ignored", len(names), len(positions))
            return
        if self._measured is None:
            self._measured = np.full(len(self.joint_names), np.nan)
        for n, p in zip(names, positions, strict=True):
            i = self._index.get(n)
            if i is not None and math.isfinite(float(p)):
                self._measured[i] = float(p)

    @property
    def measured(self) -> np.ndarray | None:
        """Measured positions of all robot joints, or None until every joint was seen."""
        if self._measured is None or not np.all(np.isfinite(self._measured)):
            return None
        return self._measured.copy()

    def set_estop(self, engaged: bool, now: float, reason: str = "") -> Command | None:
        """Engage/release the e-stop. Engaging returns the hold command to send at once."""
        self.estop_engaged = bool(engaged)
        if engaged:
            self._note(SafetyError.ESTOP, f"e-stop engaged{': ' + reason if reason else ''}")
            return self._hold(now)
        log.info("e-stop released%s", f": {reason}" if reason else "")
        return None

    def tick(self, now: float) -> Command | None:
        """Call every control period. Returns a hold command when the watchdog fires."""
        if self.holding or self._active_full is None or self._last_chunk_time is None:
            return None
        if now - self._last_chunk_time > self.config.watchdog_timeout:
            self._note(SafetyError.WATCHDOG,
                       f"no chunk for {now - self._last_chunk_time:.3f} s "
                       f"(> watchdog_timeout {self.config.watchdog_timeout} s)")
            return self._hold(now)
        return None

    # ------------------------------------------------------------------ chunks
    def filter_chunk(self, chunk: Chunk, now: float) -> Command:
        """Validate and clamp ``chunk``; return what to send.

        A refused chunk yields a hold command (``hold=True``) and the reason in
        ``counters.error_code``/``error_msg``; the offending values are logged.
        """
        try:
            cmd = self._accept(chunk, now)
        except ChunkRejected as exc:
            return self.refuse(exc, now)
        self.counters.chunks_accepted += 1
        self.holding = False
        self._last_chunk_time = now
        self._last_chunk_start = float(chunk.stamps[0])
        return cmd

    def refuse(self, exc: ChunkRejected, now: float) -> Command:
        """Count a chunk refused before it could be built (e.g. by :meth:`Chunk.from_flat`); hold."""
        self.counters.chunks_rejected += 1
        self.counters.rejections[exc.code.name] = self.counters.rejections.get(exc.code.name, 0) + 1
        self._note(exc.code, str(exc))
        return self._hold(now)

    def hold(self, now: float) -> Command:
        """Hold where the arm is now (e.g. on deactivation)."""
        return self._hold(now)

    def validate(self, chunk: Chunk) -> np.ndarray:
        """Rules 2-4: names, dims, stamps, NaN. Returns the column index of each chunk joint."""
        names = tuple(chunk.joint_names)
        pos = np.asarray(chunk.positions)
        stamps = np.asarray(chunk.stamps, dtype=float)
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise ChunkRejected(SafetyError.BAD_CHUNK,
                                f"unknown joint names {unknown}; robot {self.robot.name!r} has "
                                f"{list(self.joint_names)}")
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ChunkRejected(SafetyError.BAD_CHUNK, f"duplicate joint names {dup}")
        for arm in self.robot.arms:
            present = [n in names for n in arm.joint_names]
            if any(present) and not all(present):
                missing = [n for n, p in zip(arm.joint_names, present, strict=True) if not p]
                raise ChunkRejected(SafetyError.BAD_CHUNK,
                                    f"chunk commands arm {arm.name!r} partially; missing {missing}")
        if pos.ndim != 2 or pos.shape[1] != len(names) or pos.shape[0] < 1:
            raise ChunkRejected(SafetyError.BAD_CHUNK,
                                f"positions have shape {pos.shape}, expected (T>=1, {len(names)})")
        if stamps.shape != (pos.shape[0],):
            raise ChunkRejected(SafetyError.BAD_CHUNK,
                                f"{stamps.size} stamps for {pos.shape[0]} steps")
        if not np.all(np.isfinite(stamps)):
            raise ChunkRejected(SafetyError.BAD_CHUNK, f"non-finite stamps {stamps.tolist()}")
        if stamps.size > 1 and not np.all(np.diff(stamps) > 0):
            k = int(np.argmax(np.diff(stamps) <= 0))
            raise ChunkRejected(SafetyError.BAD_CHUNK,
                                f"non-monotonic stamps: step {k + 1} at {stamps[k + 1]:.6f} s is not "
                                f"after step {k} at {stamps[k]:.6f} s")
        if self._last_chunk_start is not None and stamps[0] < self._last_chunk_start:
            raise ChunkRejected(SafetyError.BAD_CHUNK,
                                f"non-monotonic stamps: chunk starts at {stamps[0]:.6f} s, before the "
                                f"previous chunk ({self._last_chunk_start:.6f} s)")
        bad = ~np.isfinite(pos)
        if bad.any():
            k, j = (int(v) for v in np.argwhere(bad)[0])
            raise ChunkRejected(SafetyError.NAN,
                                f"non-finite target {pos[k, j]!r} for {names[j]!r} at step {k} "
                                f"({int(bad.sum())} non-finite values in chunk)")
        return np.array([self._index[n] for n in names])

    def _accept(self, chunk: Chunk, now: float) -> Command:
        cfg = self.config
        if self.estop_engaged:
            raise ChunkRejected(SafetyError.ESTOP, "e-stop engaged; chunk refused")
        cols = self.validate(chunk)
        stamps = np.asarray(chunk.stamps, dtype=float)
        pos = np.asarray(chunk.positions, dtype=float)
        if now - stamps[-1] > cfg.max_chunk_age:
            raise ChunkRejected(SafetyError.STALE_CHUNK,
                                f"stale chunk: last step due {now - stamps[-1]:.3f} s ago "
                                f"(> max_chunk_age {cfg.max_chunk_age} s)")
        if stamps[0] - now > cfg.max_future:
            raise ChunkRejected(SafetyError.STALE_CHUNK,
                                f"chunk starts {stamps[0] - now:.3f} s in the future "
                                f"(> max_future {cfg.max_future} s); clocks disagree?")
        measured = self.measured
        if measured is None:
            raise ChunkRejected(SafetyError.BAD_CHUNK,
                                "no joint state received yet for every joint; cannot check the chunk")
        reference = self._reference_at(np.array([now]), measured)[0]  # where the arm is driven now
        # Step change (refuse) between consecutive targets of the chunk as planned, arm joints
        # only; the first target is approached at the velocity limit below (see rule 7).
        jumps = np.abs(np.diff(pos, axis=0))
        jumps[:, ~self._arm_mask[cols]] = 0.0
        if (jumps > cfg.max_step_change).any():
            k, j = (int(v) for v in np.argwhere(jumps > cfg.max_step_change)[0])
            raise ChunkRejected(SafetyError.LIMIT,
                                f"step {k + 1} jumps {jumps[k, j]:.3f} rad on {chunk.joint_names[j]!r} "
                                f"(> max_step_change {cfg.max_step_change} rad)")
        # Stale steps: keep those due at or after now + latency budget.
        due = now + cfg.latency_budget
        keep = stamps >= due
        dropped = int((~keep).sum())
        on_receipt = not keep.any()
        if not on_receipt:
            stamps, pos = stamps[keep], pos[keep]
        else:  # all stale: the last target, one control tick after the controller receives it
            stamps = np.array([now + cfg.control_period])
            pos = pos[-1:]
            dropped = max(dropped - 1, 0)
        self.counters.steps_dropped_stale += dropped
        # Full joint vectors: joints not in the chunk keep following their own reference.
        full = self._reference_at(stamps, reference)
        full[:, cols] = pos
        prev_t = now
        prev_q = reference
        lim = np.clip(full, self.lower, self.upper)
        clamped = np.any(lim != full, axis=1)
        for k in range(len(stamps)):
            dt = max(stamps[k] - prev_t, 1e-6)
            q = prev_q + np.clip(lim[k] - prev_q, -self.vmax * dt, self.vmax * dt)
            if np.any(np.abs(q - lim[k]) > 1e-12):
                clamped[k] = True
            lim[k] = q
            prev_q, prev_t = q, stamps[k]
        n_clamped = int(clamped.sum())
        if n_clamped:
            self.counters.steps_clamped += n_clamped
            log.warning("chunk: %d of %d steps clamped to position/velocity limits", n_clamped, len(stamps))
        self._active_full = Command(self.joint_names, lim, stamps)
        # Send only the arms the chunk commands; the others keep their running trajectory.
        arm_cols = np.array(sorted({int(c) for c in cols}))
        return Command(tuple(self.joint_names[c] for c in arm_cols), lim[:, arm_cols], stamps,
                       on_receipt=on_receipt)

    # ------------------------------------------------------------------ helpers
    def _reference_at(self, ts: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """The active trajectory at times ``ts`` (K x D); measured where none is running.

        Before the active trajectory's first target the arm is between ``measured`` and that
        target; we use ``measured`` there (the conservative choice for jump/velocity checks).
        """
        out = np.repeat(measured[None, :], len(ts), axis=0)
        active = self._active_full
        if active is None or self.holding:
            return out
        st, pos = active.stamps, active.positions
        inside = ts > st[0]
        if inside.any():
            for j in range(pos.shape[1]):
                out[inside, j] = np.interp(ts[inside], st, pos[:, j])
        return out

    def _hold(self, now: float) -> Command:
        """Hold where the arm is now (measured; grippers: their commanded target), within one period."""
        q = self.measured
        if q is not None and self._active_full is not None and not self.holding:
            # the grippers' targets at this moment, kept by this and every following hold
            self._gripper_target = self._reference_at(np.array([now]), q)[0, self._gripper_cols]
        self.holding = True
        self._active_full = None
        if q is None:  # nothing measured yet: no safe target to send; the caller sends nothing
            return Command(self.joint_names, np.zeros((0, len(self.joint_names))), np.zeros(0), hold=True,
                           on_receipt=True)
        # A joint measured a little past its limit (a simulated joint's soft limit, a servo's
        # overshoot) is held at the limit: no command leaves this filter outside the limits.
        q = np.clip(q, self.lower, self.upper)
        if self._gripper_target is not None:  # keep the grip (see the module docstring)
            q[self._gripper_cols] = self._gripper_target
        return Command(self.joint_names, q[None, :], np.array([now + self.config.control_period]), hold=True,
                       on_receipt=True)

    def _note(self, code: SafetyError, msg: str) -> None:
        self.counters.error_code = code
        self.counters.error_msg = msg
        log.error("safety: %s: %s", code.name, msg)
