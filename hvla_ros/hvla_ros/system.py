"""The whole stack in one process on the simulator, for evaluation at scale.

The same cores the nodes wrap, composed without ROS: the planner's episode loop (Algorithm 1)
drives a :class:`SimSystemExecutor` that, for each subtask, initialises the perception masks
from the subtask's distractor boxes, then at every control step renders the cameras, propagates
and applies the masks, feeds the filtered observation to the skill runner, passes each chunk
through the optional refiner and the safety filter, and commands the simulated arm. The
simulator's ground-truth success is read only to score the episode, never by the planner.

This is what ``benchmarks/bench_e2e.py`` measures success rates and ablations with, and the
one-process baseline the ROS graph's overhead is compared against.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hvla_ros.executor.library import SkillLibrary
from hvla_ros.executor.runner import Observation, ObservationBuffer, PlannedChunk, SkillRunner
from hvla_ros.planner.episode import EpisodeResult, EpisodeRunner, Executor, PlannerConfig
from hvla_ros.planner.plan import Subtask
from hvla_ros.planner.reasoner import ExecutionReport, Images, Reasoner, StopCheck

log = logging.getLogger(__name__)

#: A refinement hook: (anchor chunk, the observation it was predicted from) -> chunk to execute.
ChunkRefiner = Callable[[PlannedChunk, Observation], PlannedChunk]


@dataclass(frozen=True)
class SystemConfig:
    image_size: tuple[int, int] = (240, 320)
    segmenter: str = "classical"
    fill: str = "zero"
    mask_distractors: bool = True
    frames_per_observe_s: float = 4.0  # frames kept per second of an observe subtask (for the verifier)

    def __post_init__(self) -> None:
        h, w = self.image_size
        if h < 16 or w < 16:
            raise ValueError(f"`image_size` must be at least 16x16. Got {self.image_size}.")


@dataclass
class StepTimings:
    """Seconds spent per stage over an episode (for the one-process latency baseline)."""

    render: list[float] = field(default_factory=list)
    perception: list[float] = field(default_factory=list)
    policy: list[float] = field(default_factory=list)
    refine_and_safety: list[float] = field(default_factory=list)


class SimSystemExecutor(Executor):
    """The planner's executor interface, implemented by perception + skills + safety on the sim."""

    def __init__(self, world: Any, library: SkillLibrary, config: SystemConfig | None = None,
                 refiner: ChunkRefiner | None = None) -> None:
        from hvla_ros.perception.segmenter import make_segmenter
        from hvla_ros.refiner.safety import SafetyConfig, SafetyFilter

        self.world = world
        self.library = library
        self.config = config or SystemConfig()
        self.refiner = refiner
        self._segmenter = make_segmenter(self.config.segmenter)
        # In one process inference costs no simulated time, so no step is stale on arrival.
        self._safety = SafetyFilter(world.robot, SafetyConfig(
            control_period=float(world.control_period), latency_budget=0.0,
            watchdog_timeout=max(1.0, 4 * float(world.control_period))))
        self.timings = StepTimings()
        self.steps_total = 0

    # -- Executor interface -----------------------------------------------------------------
    def skills(self) -> Mapping[str, str]:
        return {name: self.library.get(name).spec.description for name in self.library.names()}

    def observe(self) -> Images:
        return {cam: self.world.render(cam) for cam in self.world.camera_names}

    def settle(self, seconds: float) -> Images:
        """Step the simulation ``seconds`` with the arm held at its last targets, then render."""
        for _ in range(round(seconds / float(self.world.control_period))):
            self.world.step(self._physics_steps())
        return self.observe()

    def execute(self, subtask: Subtask, subtask_id: int, attempt: int, until: StopCheck | None = None
                ) -> ExecutionReport:
        from hvla_ros.executor.runner import StaleObservationError

        started = time.monotonic()
        skill = self.library.get(subtask.skill)
        runner = SkillRunner(skill, subtask.instruction, subtask.horizon_s, max_obs_age_s=1.0)
        cameras = tuple(skill.spec.cameras) if skill.spec.cameras else ()
        propagators = self._init_perception(subtask, cameras)
        buffer = ObservationBuffer()
        queue: list[tuple[tuple[str, ...], np.ndarray]] = []
        frames: list[Images] = []
        frame_every = max(1, round(1.0 / (self.config.frames_per_observe_s * float(self.world.control_period))))
        names = tuple(self.world.robot.joint_names)
        targets = self.world.joint_positions().copy()
        steps = 0
        error = ""
        met = False
        while queue or not (runner.done or met):
            raw, filtered = self._observe(cameras, propagators)
            now = float(self.world.time)
            joints = dict(zip(names, self.world.joint_positions().tolist()))
            obs = Observation(stamp=now, images=filtered, joints=joints)
            buffer.add(obs)
            self._safety.update_joint_state(names, self.world.joint_positions())
            if not queue and not (runner.done or met):
                t0 = time.perf_counter()
                try:
                    chunk = runner.next_chunk(buffer.history(runner.n_obs_steps, runner.step_period), now)
                except (StaleObservationError, FloatingPointError) as exc:
                    error = str(exc)
                    break
                self.timings.policy.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                if self.refiner is not None:
                    chunk = self.refiner(chunk, obs)
                queue = self._safe_targets(chunk, now)
                self.timings.refine_and_safety.append(time.perf_counter() - t0)
                if not queue:
                    # As the refiner node does: a refused chunk makes the arm hold for its
                    # duration, and the skill goes on with its next chunk.
                    log.warning(f"safety filter refused chunk {chunk.index}: {self._safety.counters.error_msg}")
                    queue = [(names, self.world.joint_positions().copy())] * chunk.num_steps
            target_row, queue = queue[0], queue[1:]
            targets = self._full_targets(targets, target_row[0], target_row[1])
            self.world.set_joint_targets(targets)
            self.world.step(self._physics_steps())
            steps += 1
            if steps % frame_every == 0 and "front" in raw:
                frames.append({"front": raw["front"]})
                # The planner node checks at its frame rate, here at the rate frames are kept. Once
                # met, no new chunk: the arm finishes the one it has (as the trajectory already sent
                # to the controller does in the graph).
                met = met or (until is not None and until(raw))
        self.steps_total += steps
        final = self.observe()
        termination = "error" if error else "post_condition" if met else "horizon"
        return ExecutionReport(termination=termination, steps=steps,
                               elapsed_s=time.monotonic() - started, error=error, images=final,
                               frames=tuple(frames[-64:]))

    # -- internals ----------------------------------------------------------------------------
    def _physics_steps(self) -> int:
        return max(1, round(float(self.world.control_period) / float(self.world.timestep)))

    def _init_perception(self, subtask: Subtask, cameras: Sequence[str]) -> dict[str, Any]:
        from hvla_ros.perception.propagation import MaskPropagator

        propagators: dict[str, Any] = {}
        if not self.config.mask_distractors:
            return propagators
        for cam in cameras:
            boxes = [b for b in subtask.boxes if b.camera == cam]
            if not boxes:
                continue
            prop = MaskPropagator(self._segmenter)
            try:
                prop.initialize(self.world.render(cam), boxes)
            except ValueError as exc:  # bad boxes are reported and the camera left unmasked
                log.warning(f"perception on {cam}: {exc}")
                continue
            propagators[cam] = prop
        return propagators

    def _observe(self, cameras: Sequence[str], propagators: Mapping[str, Any]
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        from hvla_ros.perception.filtering import apply_mask

        t0 = time.perf_counter()
        wanted = set(cameras) | {"front"}
        raw = {cam: self.world.render(cam) for cam in self.world.camera_names if cam in wanted}
        self.timings.render.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        filtered = {}
        for cam in cameras:
            prop = propagators.get(cam)
            filtered[cam] = raw[cam] if prop is None else apply_mask(raw[cam], prop.update(raw[cam]),
                                                                     self.config.fill)
        self.timings.perception.append(time.perf_counter() - t0)
        return raw, filtered

    def _safe_targets(self, chunk: PlannedChunk, now: float) -> list[tuple[tuple[str, ...], np.ndarray]]:
        from hvla_ros.refiner.safety import Chunk, ChunkRejected

        stamps = chunk.start_time + chunk.step_period * np.arange(chunk.num_steps)
        try:
            command = self._safety.filter_chunk(Chunk(chunk.joint_names, chunk.positions, stamps), now)
        except ChunkRejected as exc:
            log.warning(f"chunk {chunk.index} refused: {exc}")
            return []
        if command.hold:
            return []
        return [(tuple(command.joint_names), row) for row in np.asarray(command.positions)]

    def _full_targets(self, current: np.ndarray, joint_names: Sequence[str], row: np.ndarray) -> np.ndarray:
        out = current.copy()
        index = {n: i for i, n in enumerate(self.world.robot.joint_names)}
        for name, value in zip(joint_names, row):
            out[index[name]] = value
        return out


@dataclass(frozen=True)
class EpisodeScore:
    task: str
    seed: int
    success: bool  # simulator ground truth (evaluation only)
    planner: EpisodeResult | None
    control_steps: int
    wall_s: float


def run_episode(task: str, seed: int, library: SkillLibrary, reasoner: Reasoner, log_dir: Path, *,
                planner_config: PlannerConfig | None = None, config: SystemConfig | None = None,
                refiner: ChunkRefiner | None = None) -> EpisodeScore:
    """One planner-driven episode on the sim; scored by the task's ground truth."""
    from hvla_ros.sim.world import SimWorld

    config = config or SystemConfig()
    world = SimWorld(task, seed=seed, image_size=config.image_size)
    started = time.monotonic()
    try:
        executor = SimSystemExecutor(world, library, config, refiner)
        result = EpisodeRunner(reasoner, executor, log_dir, planner_config).run(world.task.goal)
        success = bool(world.success())
        return EpisodeScore(task, seed, success, result, executor.steps_total, time.monotonic() - started)
    finally:
        world.close()


def run_flat_episode(task: str, seed: int, library: SkillLibrary, skill: str, horizon_s: float, *,
                     config: SystemConfig | None = None) -> EpisodeScore:
    """The flat baseline: one policy for the whole task, no planner, no masks."""
    from hvla_ros.sim.world import SimWorld

    config = config or SystemConfig(mask_distractors=False)
    world = SimWorld(task, seed=seed, image_size=config.image_size)
    started = time.monotonic()
    try:
        executor = SimSystemExecutor(world, library, config)
        executor.execute(Subtask(instruction=world.task.goal, skill=skill, horizon_s=horizon_s), 0, 1)
        return EpisodeScore(task, seed, bool(world.success()), None, executor.steps_total,
                            time.monotonic() - started)
    finally:
        world.close()
