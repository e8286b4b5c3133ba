"""Receding-horizon execution of one skill (plain Python, clock-agnostic).

One :class:`SkillRunner` per subtask attempt. The caller (the executor node, a test, the
evaluation loop) feeds it observations and the current time; it answers with
:class:`PlannedChunk` objects::

    history (n_obs_steps observations, oldest first) --policy--> chunk a_t .. a_t+n-1 (n x D)

Timing: the policy predicts actions for the time of the newest observation onwards, so step k of
a chunk is stamped ``newest.stamp + k * step_period`` (the diffusion-policy real-robot convention:
whatever inference latency has eaten of the chunk's head is stale and dropped downstream). A chunk
holds ``n_action_steps`` steps (fewer for the last one), plus the steps that go stale in transit
when the caller compensates latency. The next chunk is due when an observation stamped
``n_action_steps`` after the last chunk's is in (:meth:`SkillRunner.next_observation_due`:
observations ``n_action_steps`` apart, as in training, so the arm executes that many steps of
each chunk), or at the latest when the current chunk would run out before the next one is
computed (:meth:`SkillRunner.next_due`).
The subtask horizon is a step budget: ``round(horizon_s / step_period)`` steps in all.

A stale newest observation (older than ``max_obs_age_s``) raises
:class:`StaleObservationError` and produces no chunk. The skills without a learned policy are
scripted: ``hold`` (``observe``) repeats the current joint positions; ``home`` opens the grippers,
moves every joint to the robot's home pose and closes the grippers to their home value
(:func:`home_motion`), then ends (:attr:`SkillRunner.done`) however much of its horizon is left.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hvla_ros.executor.instruction import DEFAULT_DIM, encode_instruction
from hvla_ros.executor.library import HOME, Skill


class StaleObservationError(RuntimeError):
    """The newest observation is too old to act on, or the last chunk was already predicted from
    it; no chunk was produced."""


class ObservationError(ValueError):
    """An observation that does not fit the skill (missing camera or joint, bad image)."""


@dataclass(frozen=True)
class Observation:
    """What the skill sees at one instant.

    ``images``: camera -> H x W x 3 uint8 RGB (the *filtered* images); ``joints``: joint name ->
    position (rad); ``stamp``: seconds on the caller's clock (the oldest of the parts' stamps).
    """

    stamp: float
    images: Mapping[str, np.ndarray]
    joints: Mapping[str, float]


@dataclass(frozen=True)
class PlannedChunk:
    """One action chunk: ``positions`` is T x D joint targets; step k executes at start + k*period."""

    skill: str
    index: int
    start_time: float
    step_period: float
    joint_names: tuple[str, ...]
    positions: np.ndarray
    #: the policy's observation context (n_obs_steps x C) the chunk was sampled with; None for holds
    context: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        return int(self.positions.shape[0])

    @property
    def end_time(self) -> float:
        """Time just after the last step (when the next chunk should take over)."""
        return self.start_time + self.num_steps * self.step_period


class JointHistory:
    """Recent joint states, to read the arm's position at a camera frame's stamp.

    Cameras are slower than joint states and their frames arrive later (perception sits in
    between): pairing a frame with the newest joint state would tell the policy the arm was where
    it got to tens of milliseconds after the picture, which is not what the demonstrations showed.
    Partial states (a subset of the joints) are merged into the previous one.
    """

    def __init__(self, maxlen: int = 256):
        self._items: deque[tuple[float, dict[str, float]]] = deque(maxlen=maxlen)

    def add(self, stamp: float, positions: Mapping[str, float]) -> None:
        prev = self._items[-1][1] if self._items else {}
        if self._items and stamp < self._items[-1][0]:
            return  # out of order: keep the history monotonic
        self._items.append((stamp, {**prev, **positions}))

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def latest(self) -> tuple[float, dict[str, float]] | None:
        return self._items[-1] if self._items else None

    def at(self, stamp: float) -> tuple[float, dict[str, float]] | None:
        """``(stamp, positions)`` interpolated linearly at ``stamp``; clamped to the history's ends."""
        items = self._items
        if not items:
            return None
        if stamp >= items[-1][0]:
            return items[-1]
        if stamp <= items[0][0]:
            return items[0]
        k = len(items) - 1
        while items[k - 1][0] > stamp:  # the newest sample before stamp; frames lag by a few only
            k -= 1
        (t0, a), (t1, b) = items[k - 1], items[k]
        w = (stamp - t0) / (t1 - t0) if t1 > t0 else 1.0
        return stamp, {n: a[n] + w * (b[n] - a[n]) if n in a else b[n] for n in b}


class ObservationBuffer:
    """Thread-safe ring buffer of recent observations; picks a history spaced by the step period."""

    def __init__(self, maxlen: int = 32):
        self._obs: deque[Observation] = deque(maxlen=maxlen)
        self._lock = threading.Lock()

    def add(self, obs: Observation) -> None:
        with self._lock:
            if self._obs and obs.stamp < self._obs[-1].stamp:
                return  # out of order: keep the buffer monotonic
            self._obs.append(obs)

    def clear(self) -> None:
        with self._lock:
            self._obs.clear()

    def latest(self) -> Observation | None:
        with self._lock:
            return self._obs[-1] if self._obs else None

    def history(self, n: int, period: float, until: float | None = None) -> list[Observation]:
        """``n`` observations, oldest first, nearest to ``newest - (n-1-k) * period`` (k = 0..n-1).

        Repeats the oldest available one when the buffer does not reach back far enough (the
        policy saw the same padding at episode starts in training). ``until``: the history ends
        at the newest observation stamped at or before it (half a millisecond of slack for
        stamps that went through a clock conversion); empty when there is none.
        """
        with self._lock:
            obs = list(self._obs)
        if until is not None:
            obs = [o for o in obs if o.stamp <= until + 5e-4]
        if not obs:
            return []
        newest = obs[-1].stamp
        out = []
        for k in range(n):
            target = newest - (n - 1 - k) * period
            out.append(min(obs, key=lambda o, t=target: abs(o.stamp - t)))  # type: ignore[misc]
        return out


class ObservationAssembler:
    """Observations from the newest frame of every camera and the joint state at their stamp.

    One is added to ``buffer`` each time the oldest of the cameras' newest frames moves forward.
    With cameras that share frame stamps (the simulator's, a hardware-triggered rig) that is when
    the last camera's frame of an instant arrives, so an observation never pairs one camera's
    new frame with another's previous one (assembling on the first camera's frame did that
    whenever the second camera's frame of the same instant came in after it). Cameras stamped
    independently give one observation per frame of the one that is furthest behind. An
    observation also waits for a joint state stamped at or after its frames, so the arm's
    position is interpolated at the frames' instant, never an older one held over. Without
    cameras, one per joint state. Not thread-safe: call from one thread (the node's executor).
    """

    def __init__(self, cameras: Sequence[str], buffer: ObservationBuffer, joints: JointHistory | None = None):
        self.cameras = list(cameras)
        self.buffer = buffer
        self.joints = joints if joints is not None else JointHistory()
        self._images: dict[str, tuple[float, np.ndarray]] = {}
        self._assembled: float | None = None  # the frame stamp of the last observation added

    def clear(self) -> None:
        self._images.clear()
        self.joints.clear()
        self._assembled = None

    def add_image(self, camera: str, stamp: float, rgb: np.ndarray) -> Observation | None:
        """Keep ``camera``'s newest frame; return the observation added, if this completed one."""
        self._images[camera] = (stamp, rgb)
        return self._assemble()

    def add_joints(self, stamp: float, positions: Mapping[str, float]) -> Observation | None:
        """Add a joint state; return the observation added, if it completed one."""
        self.joints.add(stamp, positions)
        return self._assemble()

    def _assemble(self) -> Observation | None:
        if any(c not in self._images for c in self.cameras):
            return None
        frame = min((self._images[c][0] for c in self.cameras), default=math.inf)  # no camera: newest state
        if self.cameras and self._assembled is not None and frame <= self._assembled:
            return None  # still waiting for a camera's frame of a newer instant
        newest = self.joints.latest()
        if newest is None or (self.cameras and newest[0] < frame - 1e-4):
            # The joint state of the frame's instant is not in yet (callbacks queued behind a
            # busy thread): wait for it rather than tell the policy the arm was where it was
            # before the picture.
            return None
        js = self.joints.at(frame)
        assert js is not None
        obs = Observation(stamp=min(frame, js[0]), images={c: self._images[c][1] for c in self.cameras},
                          joints=js[1])
        self._assembled = frame
        self.buffer.add(obs)
        return obs


def policy_inputs(
    skill: Skill, obs: Observation, instruction_vec: np.ndarray | None, instruction: str = ""
) -> dict[str, object]:
    """Feature dict (unbatched torch tensors) for ``skill``'s policy from one observation
    (``instruction``: the text, for a keypoint policy with a target block)."""
    import cv2
    import torch

    from hvla_ros import lerobot_compat as lc

    bundle = skill.bundle
    out: dict[str, object] = {}
    if bundle.image_encoder != "pixels":
        return _keypoint_inputs(skill, obs, instruction_vec, instruction)
    _, h, w = bundle.image_shape
    for cam in skill.spec.cameras:
        img = obs.images.get(cam)
        if img is None:
            raise ObservationError(
                f"skill {skill.name!r} needs camera {cam!r}; observation has {sorted(obs.images)}"
            )
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ObservationError(f"camera {cam!r}: expected H x W x 3 uint8, got {img.shape} {img.dtype}")
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        out[lc.image_key(cam)] = (
            torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div_(255.0)
        )
    out[lc.STATE_KEY] = torch.from_numpy(policy_state(skill, obs))
    if instruction_vec is not None:
        out[lc.INSTRUCTION_KEY] = torch.from_numpy(instruction_vec)
    return out


def _keypoint_inputs(
    skill: Skill, obs: Observation, instruction_vec: np.ndarray | None, instruction: str
) -> dict[str, object]:
    """Inputs of a colour-keypoint policy: keypoints (+ target block + instruction) as the
    environment state."""
    import torch

    from hvla_ros import lerobot_compat as lc
    from hvla_ros.executor.keypoints import KeypointError, encode_cameras, instruction_targets, target_block

    bundle = skill.bundle
    orientation = bool(bundle.meta.get("keypoint_orientation"))
    try:
        kps = encode_cameras(obs.images, bundle.cameras, orientation=orientation)
    except KeypointError as e:
        raise ObservationError(f"skill {skill.name!r}: {e}") from None
    if bundle.meta.get("keypoint_target"):
        kps = np.concatenate([kps, target_block(kps, len(bundle.cameras), instruction_targets(instruction),
                                                 orientation=orientation)])
    if kps.shape[0] != bundle.keypoint_dim:
        raise ObservationError(
            f"skill {skill.name!r}: {kps.shape[0]} keypoint values, the policy expects {bundle.keypoint_dim}"
        )
    parts = [kps] if instruction_vec is None else [kps, instruction_vec.astype(np.float32)]
    return {
        lc.STATE_KEY: torch.from_numpy(policy_state(skill, obs)),
        lc.INSTRUCTION_KEY: torch.from_numpy(np.concatenate(parts)),
    }


def policy_state(skill: Skill, obs: Observation) -> np.ndarray:
    """The skill's state joints from ``obs``, clamped to ``skill.state_bounds`` when it has them."""
    q = joint_vector(obs, skill.spec.state_joints)
    if skill.state_bounds is not None:
        np.clip(q, skill.state_bounds[0], skill.state_bounds[1], out=q)
    return q


def joint_vector(obs: Observation, names: Sequence[str]) -> np.ndarray:
    missing = [n for n in names if n not in obs.joints]
    if missing:
        raise ObservationError(f"joint state lacks {missing}; has {sorted(obs.joints)}")
    return np.array([obs.joints[n] for n in names], dtype=np.float32)


def home_motion(start: np.ndarray, home: np.ndarray, gripper: np.ndarray, max_speed: float,
                step_period: float) -> np.ndarray:
    """Joint targets, one per step, from ``start`` to ``home``: the joints flagged in ``gripper``
    open (to at least ``GRIPPER_OPEN``), then the others go home, then the grippers go to their home
    value. Each phase follows a minimum-jerk profile whose peak joint speed is ``max_speed``
    (rad/s); the last row is ``home``."""
    from hvla_ros.robot import GRIPPER_OPEN

    q0 = np.asarray(start, dtype=np.float64)
    opened = np.where(gripper, np.maximum(q0, GRIPPER_OPEN), q0)
    at_home_open = np.where(gripper, opened, home)
    rows = [q0[None, :]]
    for a, b in ((q0, opened), (opened, at_home_open), (at_home_open, np.asarray(home, dtype=np.float64))):
        dist = float(np.max(np.abs(b - a)))
        if dist < 1e-6:
            continue
        n = max(2, math.ceil(1.875 * dist / max_speed / step_period))  # min jerk peaks at 1.875x the mean
        s = np.arange(1, n + 1) / n
        rows.append(a[None, :] + (s**3 * (10 - 15 * s + 6 * s * s))[:, None] * (b - a)[None, :])
    return np.concatenate(rows[1:]) if len(rows) > 1 else q0[None, :].copy()


class SkillRunner:
    """Runs one subtask attempt with ``skill``: a step budget, chunk counter and stamping."""

    def __init__(
        self, skill: Skill, instruction: str, horizon_s: float | None = None, *, max_obs_age_s: float = 0.5
    ):
        spec = skill.spec
        self.skill = skill
        self.instruction = instruction
        self.step_period = spec.step_period_s
        horizon = horizon_s if horizon_s and horizon_s > 0 else spec.default_horizon_s
        self.horizon_s = horizon
        self.horizon_steps = max(1, round(horizon / self.step_period))
        self.max_obs_age_s = max_obs_age_s
        self.steps_planned = 0
        self.chunks_planned = 0
        self.last_chunk: PlannedChunk | None = None
        self.last_fresh_steps = 0  # fresh steps (the horizon's share) of the last chunk
        self._instruction_vec: np.ndarray | None = None
        self._script: np.ndarray | None = None  # the home motion, planned at its first chunk
        self._script_pos = 0
        if not spec.is_scripted and skill.bundle.instruction_dim > 0:
            self._instruction_vec = encode_instruction(
                instruction, skill.bundle.instruction_dim or DEFAULT_DIM
            )

    @property
    def n_obs_steps(self) -> int:
        return 1 if self.skill.spec.is_scripted else int(self.skill.bundle.config.n_obs_steps)

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.skill.spec.action_joints

    @property
    def remaining_steps(self) -> int:
        return self.horizon_steps - self.steps_planned

    @property
    def motion_complete(self) -> bool:
        """The ``home`` motion has been planned to its end (the skill is done before its horizon)."""
        return self._script is not None and self._script_pos >= len(self._script)

    @property
    def done(self) -> bool:
        return self.motion_complete or self.remaining_steps <= 0

    @property
    def progress(self) -> float:
        return min(1.0, self.steps_planned / self.horizon_steps)

    def next_due(self, expected_latency_s: float = 0.0) -> float:
        """Time at which to start predicting the next chunk (-inf before the first)."""
        if self.last_chunk is None:
            return -math.inf
        return self.last_chunk.end_time - expected_latency_s

    def next_observation_due(self) -> float:
        """Stamp of the observation the next chunk should be predicted from: the last chunk's plus
        its fresh steps (-inf before the first chunk)."""
        if self.last_chunk is None:
            return -math.inf
        return self.last_chunk.start_time + self.last_fresh_steps * self.step_period

    def check_fresh(self, obs: Observation | None, now: float) -> Observation:
        """The observation if it is fresh enough, else :class:`StaleObservationError`."""
        if obs is None:
            raise StaleObservationError("no observation received yet (filtered images and joint states)")
        age = now - obs.stamp
        if age > self.max_obs_age_s:
            raise StaleObservationError(
                f"newest observation is {age:.3f} s old (limit {self.max_obs_age_s:.3f} s); not predicting"
            )
        return obs

    @property
    def max_chunk_steps(self) -> int:
        """All the steps the policy predicts from its newest observation on."""
        if self.skill.spec.is_scripted:
            return 10**6
        from hvla_ros import lerobot_compat as lc

        return lc.predicted_steps(self.skill.bundle.config)

    def next_chunk(self, history: Sequence[Observation], now: float, latency_s: float = 0.0) -> PlannedChunk:
        """Predict the next chunk from ``history`` (oldest first; the newest must be fresh).

        ``latency_s``: how long after its observation a chunk starts to be executed (observation
        age + inference + transport). Its first steps are stale by then and get dropped in front
        of the arm, so the chunk carries that many extra steps (as far as the policy predicts):
        the arm executes ``n_action_steps`` fresh ones and keeps moving while the next chunk is
        computed. The horizon counts the ``n_action_steps`` only. Zero: exactly
        ``n_action_steps`` (lockstep simulation).
        """
        if self.done:
            raise RuntimeError(
                f"skill {self.skill.name!r}: horizon of {self.horizon_steps} steps already planned"
            )
        newest = self.check_fresh(history[-1] if history else None, now)
        if self.last_chunk is not None and newest.stamp <= self.last_chunk.start_time:
            # A second chunk from the same observation would repeat the plan from a moment the
            # arm has left (its first steps already executed): wait for a new one instead.
            raise StaleObservationError(
                f"no observation newer than the one chunk {self.last_chunk.index} was predicted from "
                f"(stamp {newest.stamp:.3f} s); not predicting"
            )
        fresh = min(self.skill.spec.n_action_steps, self.remaining_steps)
        extra = math.ceil(latency_s / self.step_period - 1e-9) if latency_s > 0 and math.isfinite(latency_s) else 0
        n = min(fresh + extra, self.max_chunk_steps)
        if self.skill.spec.motion == HOME:
            if self._script is None:
                spec = self.skill.spec
                self._script = home_motion(joint_vector(newest, self.joint_names).astype(np.float64),
                                           np.array(spec.home_pose), np.array(spec.gripper_mask),
                                           spec.max_speed_rad_s, self.step_period)
            # Fresh steps come out of the motion; the stale extra ones repeat its last target.
            fresh = min(fresh, len(self._script) - self._script_pos)
            part = self._script[self._script_pos : self._script_pos + n]
            pad = n - len(part)
            positions = np.concatenate([part, np.repeat(self._script[-1:], pad, axis=0)]) if pad > 0 else part
            self._script_pos += fresh
            context = None
        elif self.skill.spec.is_hold:
            # Hold where the arm was when the subtask started: repeated targets, no drift.
            base = (
                self.last_chunk.positions[-1]
                if self.last_chunk is not None
                else joint_vector(newest, self.joint_names).astype(np.float64)
            )
            positions = np.repeat(base[None, :], n, axis=0)
            context = None
        else:
            actions, context = self._predict(history, n)
            positions = actions[:n]
        chunk = PlannedChunk(
            skill=self.skill.name,
            index=self.chunks_planned,
            start_time=newest.stamp,
            step_period=self.step_period,
            joint_names=self.joint_names,
            positions=np.ascontiguousarray(positions, dtype=np.float64),
            context=context,
        )
        self.steps_planned += fresh
        self.chunks_planned += 1
        self.last_chunk = chunk
        self.last_fresh_steps = fresh
        return chunk

    def _predict(self, history: Sequence[Observation], n_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The policy's actions (float64) and the observation context they were sampled with."""
        from hvla_ros import lerobot_compat as lc

        k = self.n_obs_steps
        hist = list(history)[-k:]
        hist = [hist[0]] * (k - len(hist)) + hist
        inputs = [policy_inputs(self.skill, o, self._instruction_vec, self.instruction) for o in hist]
        actions_t, context = lc.predict_chunk_with_context(self.skill.bundle, inputs, n_steps=n_steps)
        actions = actions_t.numpy()
        if not np.all(np.isfinite(actions)):
            raise FloatingPointError(f"skill {self.skill.name!r} produced non-finite actions")
        return actions.astype(np.float64), context.numpy()
