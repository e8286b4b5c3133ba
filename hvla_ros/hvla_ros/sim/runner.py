"""Run a :class:`~hvla_ros.sim.world.SimWorld` like a robot: controllers, clock, cameras (no ROS).

:class:`SimRunner` is the plain-Python core of the sim node. It owns one
:class:`~hvla_ros.sim.trajectory.TrajectoryFollower` per arm controller, steps the physics at the
control rate with their commanded positions, and renders the cameras at the camera rate. The
node (or a benchmark) receives everything through callbacks:

- ``on_state(RobotState)`` after every control step (physics thread);
- ``on_frame(CameraFrame)`` for every rendered camera image;
- ``on_success(bool)`` when the ground-truth task success changes (evaluation only).

Pacing: ``real_time_factor`` 0 runs as fast as possible in lockstep (each camera frame is
rendered at exactly its sim time, none dropped: deterministic recordings). A factor > 0 paces the
physics against the wall clock (sim time = factor x wall time) and renders in a separate thread
from a copy of the scene taken under the lock; a camera that cannot keep up drops frames instead
of slowing the physics (:meth:`SimRunner.stats` reports achieved rates and drops).

The clock (:attr:`SimRunner.clock`) is monotonic across resets (the world's own time restarts at
0 on reset; the runner adds an offset), so ROS time never jumps backwards.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hvla_ros.sim.trajectory import Trajectory, TrajectoryFollower, TrajectoryPoint

if TYPE_CHECKING:  # mujoco is imported late so default_gl_backend() can still pick the backend
    import mujoco

    from hvla_ros.sim.world import SimWorld

_log = logging.getLogger(__name__)


def default_gl_backend() -> None:
    """Render offscreen with EGL unless a display or an explicit ``MUJOCO_GL`` says otherwise.

    Must run before mujoco creates its first renderer.
    """
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@dataclass(frozen=True)
class RunnerConfig:
    """How the runner paces physics and cameras."""

    control_rate: float = 120.0  # Hz; rounded to a whole number of physics steps
    camera_rate_hz: float = 30.0
    real_time_factor: float = 1.0  # 0 = as fast as possible (lockstep cameras)
    ground_truth: bool = False  # also render segmentation (evaluation only)
    success_period: float = 0.1  # s of sim time between ground-truth success checks

    def __post_init__(self) -> None:
        if not self.control_rate > 0:
            raise ValueError(f"`control_rate` must be > 0 Hz. Got {self.control_rate}.")
        if not self.camera_rate_hz >= 0:
            raise ValueError(
                f"`camera_rate_hz` must be >= 0 (0 disables cameras). Got {self.camera_rate_hz}.")
        if not (self.real_time_factor >= 0 and math.isfinite(self.real_time_factor)):
            raise ValueError(f"`real_time_factor` must be >= 0 (0 = as fast as possible). "
                             f"Got {self.real_time_factor}.")


@dataclass(frozen=True)
class RobotState:
    """Joint state after a control step (order ``world.robot.joint_names``)."""

    time: float
    names: tuple[str, ...]
    positions: np.ndarray
    velocities: np.ndarray
    efforts: np.ndarray


@dataclass(frozen=True)
class CameraFrame:
    """One rendered camera image with its intrinsics."""

    camera: str
    time: float
    rgb: np.ndarray  # H x W x 3 uint8
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy
    segmentation: np.ndarray | None = None  # H x W int32 object ids (ground truth)


@dataclass
class _CameraClock:
    next_due: float = 0.0
    published: int = 0
    dropped: int = 0


@dataclass
class _Window:
    wall: float = field(default_factory=time.monotonic)
    sim: float = 0.0
    frames: dict[str, int] = field(default_factory=dict)


class SimRunner:
    """Controllers + paced physics + cameras around one SimWorld. Thread-safe public methods."""

    def __init__(
        self,
        world: SimWorld,
        config: RunnerConfig | None = None,
        *,
        on_state: Callable[[RobotState], None] | None = None,
        on_frame: Callable[[CameraFrame], None] | None = None,
        on_success: Callable[[bool], None] | None = None,
        cameras: Sequence[str] | None = None,
    ) -> None:
        self.config = config or RunnerConfig()
        self.on_state = on_state
        self.on_frame = on_frame
        self.on_success = on_success
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._render_ready = threading.Event()  # the render thread's GL contexts exist
        self._threads: list[threading.Thread] = []
        self._clock_offset = 0.0
        self._generation = 0  # bumped when the world object is replaced
        self._cameras_wanted = tuple(cameras) if cameras is not None else None
        self._install_world(world)

    # ------------------------------------------------------------------ world and controllers
    def _install_world(self, world: SimWorld) -> None:
        self.world = world
        self.robot = world.robot
        limits = {j: world.robot.position_limits(j) for j in world.robot.joint_names}
        q = world.joint_positions()
        self.followers: dict[str, TrajectoryFollower] = {}
        start = 0
        for arm in world.robot.arms:
            n = len(arm.joint_names)
            self.followers[arm.controller] = TrajectoryFollower(arm.controller, arm.joint_names, limits,
                                                                q[start:start + n])
            start += n
        self._act_ids = np.array([world.model.actuator(n).id for n in world.robot.joint_names])
        cams = self._cameras_wanted if self._cameras_wanted is not None else world.camera_names
        self.cameras: tuple[str, ...] = tuple(c for c in cams if c in world.camera_names)
        self._cam_clock = {c: _CameraClock(next_due=self.clock) for c in self.cameras}
        self._steps_per_control = max(1, round(1.0 / (self.config.control_rate * world.timestep)))
        self._next_success_check = self.clock
        self._last_success: bool | None = None
        self._window = _Window(sim=self.clock, frames={c: 0 for c in self.cameras})
        self._last_stats: dict[str, float] = {}
        self._generation += 1

    @property
    def clock(self) -> float:
        """Sim time (s), monotonic across resets."""
        return self._clock_offset + self.world.time

    @property
    def control_period(self) -> float:
        """Seconds of sim time per control step (whole physics steps)."""
        return self._steps_per_control * self.world.timestep

    def submit_trajectory(
        self, controller: str, joint_names: Sequence[str], points: Sequence[TrajectoryPoint], stamp: float
    ) -> Trajectory | None:
        """Give a trajectory message to ``controller`` (see TrajectoryFollower.set_trajectory).

        Raises KeyError for an unknown controller and TrajectoryRejected for a bad trajectory.
        """
        with self._lock:
            follower = self.followers.get(controller)
            if follower is None:
                raise KeyError(f"no controller {controller!r}; controllers: {list(self.followers)}")
            return follower.set_trajectory(joint_names, points, stamp=stamp, now=self.clock)

    def reset(self, seed: int | None = None, task: str | None = None) -> None:
        """Reset the world (a new task builds a new world for the same robot); hold the home pose.

        Raises ValueError for an unknown task or one that needs a different robot.
        """
        from hvla_ros.sim.world import SimWorld

        with self._lock:
            offset = self.clock
            if task is not None and task != self.world.task.name:
                new = SimWorld(task, seed=self.world.seed if seed is None else seed,
                               image_size=self.world.image_size, cameras=self.world.camera_names,
                               render=self.config.camera_rate_hz > 0)
                if new.robot.name != self.robot.name:
                    new.close()
                    raise ValueError(f"task {task!r} needs robot {new.robot.name!r}; this simulator runs "
                                     f"{self.robot.name!r} (restart it with the new task)")
                old = self.world
                self._clock_offset = offset
                self._install_world(new)
                try:
                    old.close()
                except Exception as exc:  # GL teardown from another thread must not kill a reset
                    _log.warning(f"closing the previous world failed: {exc}")
            else:
                self.world.reset(seed)
                self._clock_offset = offset
                q = self.world.joint_positions()
                start = 0
                for f in self.followers.values():
                    f.reset(q[start:start + len(f.joint_names)])
                    start += len(f.joint_names)
                for c in self._cam_clock.values():
                    c.next_due = self.clock
                self._next_success_check = self.clock
                self._last_success = None

    # ------------------------------------------------------------------ stepping
    def _commanded(self, now: float) -> np.ndarray:
        return np.concatenate([f.sample(now) for f in self.followers.values()])

    def _state(self) -> RobotState:
        w = self.world
        return RobotState(time=self.clock, names=w.robot.joint_names, positions=w.joint_positions(),
                          velocities=w.joint_velocities(),
                          efforts=w.data.actuator_force[self._act_ids].copy())

    def step_control(self) -> RobotState:
        """One control step: sample the controllers, step the physics, check success (no pacing)."""
        success_changed: bool | None = None
        with self._lock:
            self.world.set_joint_targets(self._commanded(self.clock))
            self.world.step(self._steps_per_control)
            state = self._state()
            if self.clock >= self._next_success_check:
                self._next_success_check = self.clock + self.config.success_period
                ok = self.world.success()
                if ok != self._last_success:
                    self._last_success = ok
                    success_changed = ok
        if self.on_state is not None:
            self.on_state(state)
        if success_changed is not None and self.on_success is not None:
            self.on_success(success_changed)
        return state

    def _due_cameras(self, now: float, *, drop: bool) -> list[str]:
        if self.config.camera_rate_hz <= 0:
            return []
        period = 1.0 / self.config.camera_rate_hz
        due = []
        for cam, c in self._cam_clock.items():
            if now + 1e-9 >= c.next_due:
                due.append(cam)
                # max(): within the 1e-9 tolerance now - next_due may be a hair below 0, and a
                # floor of -1 would leave next_due unchanged and render the frame twice.
                late = max(0, int((now - c.next_due) // period)) if drop else 0
                c.dropped += late
                c.next_due += (late + 1) * period
        return due

    def _frame(self, cam: str, now: float, rgb: np.ndarray) -> CameraFrame:
        seg = None
        if self.config.ground_truth:
            with self._lock:
                seg = self.world.render_segmentation(cam)
        return CameraFrame(camera=cam, time=now, rgb=rgb, intrinsics=self.world.camera_intrinsics(cam),
                           segmentation=seg)

    def _emit(self, frame: CameraFrame) -> None:
        c = self._cam_clock.get(frame.camera)
        if c is not None:
            c.published += 1
            self._window.frames[frame.camera] = self._window.frames.get(frame.camera, 0) + 1
        if self.on_frame is not None:
            self.on_frame(frame)

    def render_due_lockstep(self) -> int:
        """Render every camera due at the current sim time in this thread (lockstep mode)."""
        with self._lock:
            now = self.clock
            due = self._due_cameras(now, drop=False)
            frames = [self._frame(cam, now, self.world.render(cam)) for cam in due]
        for f in frames:
            self._emit(f)
        return len(frames)

    def run_steps(self, n: int) -> None:
        """Run ``n`` control steps as fast as possible with lockstep cameras (tests, recording)."""
        for _ in range(int(n)):
            self.render_due_lockstep()
            self.step_control()

    # ------------------------------------------------------------------ threads
    def start(self) -> None:
        """Start the physics thread (and the render thread when paced in real time)."""
        if self._threads:
            return
        self._stop.clear()
        self._render_ready.clear()
        self._threads = [threading.Thread(target=self._physics_loop, name="sim-physics", daemon=True)]
        if self.config.real_time_factor > 0 and self.cameras and self.config.camera_rate_hz > 0:
            self._threads.append(threading.Thread(target=self._render_loop, name="sim-render", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join the threads."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def _physics_loop(self) -> None:
        rtf = self.config.real_time_factor
        if len(self._threads) > 1:
            # Creating GL contexts takes a while; start the clock once the cameras can render.
            self._render_ready.wait(30.0)
        anchor_wall, anchor_sim = time.monotonic(), self.clock
        try:
            while not self._stop.is_set():
                if rtf <= 0:
                    self.render_due_lockstep()
                    self.step_control()
                    continue
                self.step_control()
                now_sim = self.clock
                if now_sim < anchor_sim:  # a reset re-anchors (the clock stays monotonic anyway)
                    anchor_wall, anchor_sim = time.monotonic(), now_sim
                target = anchor_wall + (now_sim - anchor_sim) / rtf
                delay = target - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                elif delay < -1.0:
                    # More than a second behind (an overloaded machine): re-anchor, don't sprint.
                    _log.warning(f"physics is {-delay:.1f} s behind wall time; re-anchoring the clock")
                    anchor_wall, anchor_sim = time.monotonic(), now_sim
        except Exception:
            _log.exception("physics loop failed; the simulated arm has stopped")
            raise

    def _render_loop(self) -> None:
        import mujoco

        renderer: mujoco.Renderer | None = None
        generation = -1
        rtf = self.config.real_time_factor
        try:
            while not self._stop.is_set():
                if generation != self._generation:
                    # Built outside the lock: creating a GL context takes long enough to stall
                    # the physics.
                    with self._lock:
                        model, (h, w), gen = self.world.model, self.world.image_size, self._generation
                    if renderer is not None:
                        renderer.close()
                    renderer = mujoco.Renderer(model, height=h, width=w)
                    if self.config.ground_truth and self.cameras:
                        with self._lock:  # warm the world's segmentation renderer up in this thread
                            self.world.render_segmentation(self.cameras[0])
                    generation = gen
                    self._render_ready.set()
                    continue
                with self._lock:
                    now = self.clock
                    due = self._due_cameras(now, drop=True)
                    wait = min((c.next_due for c in self._cam_clock.values()), default=now + 0.1) - now
                assert renderer is not None
                for cam in due:
                    with self._lock:
                        if generation != self._generation:
                            break
                        # update_scene copies the geometry out of the world; the slow part,
                        # render(), then runs outside the lock while the physics steps on.
                        renderer.update_scene(self.world.data, camera=cam)
                        t = self.clock
                    self._emit(self._frame(cam, t, renderer.render()))
                if not due:
                    self._stop.wait(min(max(wait / rtf, 0.001), 0.05))
        except Exception:
            _log.exception("render loop failed; cameras have stopped")
            raise
        finally:
            self._render_ready.set()
            if renderer is not None:
                renderer.close()

    # ------------------------------------------------------------------ statistics
    def stats(self, *, reset_window: bool = True) -> dict[str, float]:
        """Achieved rates since the last call: real-time factor, camera fps (wall), drops."""
        wall = time.monotonic()
        win = self._window
        dt = max(wall - win.wall, 1e-9)
        out: dict[str, float] = {"wall_s": dt, "sim_s": self.clock - win.sim,
                                 "real_time_factor": (self.clock - win.sim) / dt}
        for cam, c in self._cam_clock.items():
            out[f"{cam}_fps"] = win.frames.get(cam, 0) / dt
            out[f"{cam}_published"] = float(c.published)
            out[f"{cam}_dropped"] = float(c.dropped)
        if reset_window:
            self._window = _Window(wall=wall, sim=self.clock, frames={c: 0 for c in self.cameras})
        return out
