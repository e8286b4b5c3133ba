"""SimWorld: one MuJoCo work cell (SO-101 arm(s), table, task objects, cameras) behind a small API.

This is the plain-Python physics core the sim node, the demonstration recorder, the benchmarks and
the tests drive; it imports no ROS. Example::

    world = SimWorld("cube_in_box", seed=3, image_size=(240, 320))
    expert = world.task.expert(world)
    while not expert.done:
        world.set_joint_targets(expert.act(world))
        world.step(world.control_steps)
    assert world.success()
    rgb = world.render("front")

Ground truth (``success``, ``render_segmentation``, ``object_ids``, ``model``/``data``) is for
evaluation, experts and the simulator itself; the planner never sees it.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.robot import HOME_POSITION, RobotSpec, base_joint_name, get_robot
from hvla_ros.sim.scene import STEPS_PER_CONTROL, TIMESTEP, SceneConfig, build_spec

if TYPE_CHECKING:
    from hvla_ros.sim.tasks.base import Task

_log = logging.getLogger(__name__)

#: A 3-vector or colour given as a list or an array.
Vec = Sequence[float] | np.ndarray

# Worlds whose GL contexts must be released before the interpreter tears EGL down. The hook is
# registered after the first renderer exists, i.e. after mujoco's own EGL exit hook, so it runs
# before that one (atexit is last-in, first-out).
_OPEN_WORLDS: weakref.WeakSet[SimWorld] = weakref.WeakSet()
_exit_hook_registered = False


def _close_open_worlds() -> None:
    for w in list(_OPEN_WORLDS):
        w.close()


#: Segmentation id of pixels that show no object (background, sky).
BACKGROUND_ID = 0


class SimWorld:
    """A deterministic, seeded MuJoCo scene for one task of the suite.

    Args:
        task: task id (see :data:`hvla_ros.sim.tasks.TASKS`).
        seed: seed of the first reset; the same seed gives the same initial state.
        image_size: (height, width) of rendered images.
        cameras: cameras that may be rendered (default: all of the robot's cameras).
        render: False builds no renderer (headless physics only); ``render()`` then raises.
    """

    def __init__(
        self,
        task: str,
        *,
        seed: int = 0,
        image_size: tuple[int, int] = (480, 640),
        cameras: Sequence[str] | None = None,
        render: bool = True,
    ) -> None:
        from hvla_ros.sim.tasks import make_task

        self.task: Task = make_task(task)
        self.robot: RobotSpec = get_robot(self.task.robot_name)
        h, w = int(image_size[0]), int(image_size[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"image_size must be positive (height, width); got {image_size!r}")
        self.image_size = (h, w)
        spec = build_spec(self.robot, SceneConfig(image_size=self.image_size))
        self.task.build(spec)
        self.model: mujoco.MjModel = spec.compile()
        self.data: mujoco.MjData = mujoco.MjData(self.model)
        self.timestep: float = float(self.model.opt.timestep)
        #: physics steps per 30 Hz control period (experts, recording)
        self.control_steps: int = STEPS_PER_CONTROL
        #: seconds per control period
        self.control_period: float = STEPS_PER_CONTROL * TIMESTEP

        self.joint_names: tuple[str, ...] = self.robot.joint_names
        self._qpos_adr = np.array([self.model.joint(n).qposadr[0] for n in self.joint_names])
        self._qvel_adr = np.array([self.model.joint(n).dofadr[0] for n in self.joint_names])
        self._act_ids = np.array([self.model.actuator(n).id for n in self.joint_names])
        lim = np.array([self.robot.position_limits(n) for n in self.joint_names])
        self.lower_limits: np.ndarray = lim[:, 0].copy()
        self.upper_limits: np.ndarray = lim[:, 1].copy()
        self.home: np.ndarray = np.array([HOME_POSITION[base_joint_name(n, self.robot)]
                                          for n in self.joint_names])

        all_cams = tuple(mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i)
                         for i in range(self.model.ncam))
        wanted = tuple(cameras) if cameras is not None else self.robot.cameras
        for cam in wanted:
            if cam not in all_cams:
                raise ValueError(f"unknown camera {cam!r}; this scene has {list(all_cams)}")
        self.camera_names: tuple[str, ...] = wanted

        self.object_ids: dict[str, int] = {}
        self._geom_to_object = self._build_segmentation_table()
        self._render_enabled = render
        self._renderers: dict[tuple[int, int, bool], mujoco.Renderer] = {}
        self.task.bind(self)
        self.seed = seed
        self.reset(seed)

    # ------------------------------------------------------------------ state
    @property
    def time(self) -> float:
        """Simulated time since the last reset (s)."""
        return float(self.data.time)

    def reset(self, seed: int | None = None) -> None:
        """Reset arm(s) to home and re-sample the task's object poses from ``seed``.

        ``None`` reuses the seed of the previous reset.
        """
        if seed is not None:
            self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._qpos_adr] = self.home
        self.data.ctrl[self._act_ids] = self.home
        self.task.reset(self, rng)
        mujoco.mj_forward(self.model, self.data)

    def joint_positions(self) -> np.ndarray:
        """Joint positions (rad), order ``robot.joint_names``."""
        return self.data.qpos[self._qpos_adr].copy()

    def joint_velocities(self) -> np.ndarray:
        """Joint velocities (rad/s), order ``robot.joint_names``."""
        return self.data.qvel[self._qvel_adr].copy()

    def joint_targets(self) -> np.ndarray:
        """The position targets the servos currently track."""
        return self.data.ctrl[self._act_ids].copy()

    def set_joint_targets(self, q: np.ndarray) -> None:
        """Set servo position targets (order ``robot.joint_names``), clipped to the joint limits.

        Raises:
            ValueError: wrong length or a non-finite value.
        """
        q = np.asarray(q, dtype=float)
        if q.shape != (len(self.joint_names),):
            raise ValueError(f"expected {len(self.joint_names)} joint targets {self.joint_names}, "
                             f"got shape {q.shape}")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"joint targets must be finite, got {q.tolist()}")
        self.data.ctrl[self._act_ids] = np.clip(q, self.lower_limits, self.upper_limits)

    def step(self, n: int = 1) -> None:
        """Advance the physics by ``n`` steps of ``timestep`` (task cues update after each)."""
        for _ in range(int(n)):
            mujoco.mj_step(self.model, self.data)
            self.task.update(self)

    def success(self) -> bool:
        """Ground-truth task success (evaluation only)."""
        return bool(self.task.success(self))

    def subtask_success(self, index: int) -> bool:
        """Ground-truth post-condition of canonical subtask ``index`` (evaluation only)."""
        return bool(self.task.subtask_success(self, index))

    # ------------------------------------------------------------------ privileged helpers
    def body_pos(self, name: str) -> np.ndarray:
        """World position of a body (privileged)."""
        return self.data.body(name).xpos.copy()

    def body_yaw(self, name: str) -> float:
        """Rotation of a body about world z (privileged)."""
        m = self.data.body(name).xmat.reshape(3, 3)
        return float(np.arctan2(m[1, 0], m[0, 0]))

    def set_free_pose(self, joint: str, pos: Vec, yaw: float = 0.0) -> None:
        """Place a free-jointed object (at reset)."""
        adr = self.model.joint(joint).qposadr[0]
        self.data.qpos[adr:adr + 3] = pos
        self.data.qpos[adr + 3:adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        dadr = self.model.joint(joint).dofadr[0]
        self.data.qvel[dadr:dadr + 6] = 0.0

    def set_static_pose(self, body: str, pos: Vec, yaw: float = 0.0) -> None:
        """Move a static (world-attached) body (at reset)."""
        bid = self.model.body(body).id
        self.model.body_pos[bid] = pos
        self.model.body_quat[bid] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]

    def set_rgba(self, geom: str, rgba: Vec) -> None:
        """Change a geom's colour at run time (cues, lamps)."""
        self.model.geom_rgba[self.model.geom(geom).id] = rgba

    # ------------------------------------------------------------------ rendering
    def _build_segmentation_table(self) -> np.ndarray:
        """geom id -> object id lookup, from the task's named objects plus "table" and "arm"."""
        names = self.task.segmentation_objects()
        groups: dict[str, list[int]] = {"table": [self.model.geom("table").id]}
        arm_geoms = []
        for arm in self.robot.arms:
            root = self.model.body(f"{arm.prefix}base").id
            for g in range(self.model.ngeom):
                b = int(self.model.geom_bodyid[g])
                if b == root or self.model.body_rootid[b] == root or self._descends(b, root):
                    arm_geoms.append(g)
        groups["arm"] = sorted(set(arm_geoms))
        for obj, geom_names in names.items():
            groups[obj] = [self.model.geom(g).id for g in geom_names]
        lut = np.zeros(self.model.ngeom, dtype=np.int32)
        for i, (obj, ids) in enumerate(groups.items(), start=1):
            self.object_ids[obj] = i
            lut[ids] = i
        return lut

    def _descends(self, body: int, root: int) -> bool:
        while body > 0:
            if body == root:
                return True
            body = int(self.model.body_parentid[body])
        return False

    def _renderer(self, segmentation: bool) -> mujoco.Renderer:
        if not self._render_enabled:
            raise RuntimeError("this SimWorld was created with render=False")
        h, w = self.image_size
        key = (h, w, segmentation)
        r = self._renderers.get(key)
        if r is None:
            r = mujoco.Renderer(self.model, height=h, width=w)
            if segmentation:
                r.enable_segmentation_rendering()
            self._renderers[key] = r
            _OPEN_WORLDS.add(self)
            global _exit_hook_registered
            if not _exit_hook_registered:
                atexit.register(_close_open_worlds)
                _exit_hook_registered = True
        return r

    def _check_camera(self, camera: str) -> None:
        if camera not in self.camera_names:
            raise ValueError(f"unknown camera {camera!r}; available: {list(self.camera_names)}")

    def render(self, camera: str) -> np.ndarray:
        """RGB image (H x W x 3 uint8) from ``camera``."""
        self._check_camera(camera)
        r = self._renderer(False)
        r.update_scene(self.data, camera=camera)
        return r.render()

    def render_segmentation(self, camera: str) -> np.ndarray:
        """Ground-truth object ids (H x W int32, values of :attr:`object_ids`, 0 = background)."""
        self._check_camera(camera)
        r = self._renderer(True)
        r.update_scene(self.data, camera=camera)
        seg = r.render()
        ids, types = seg[..., 0], seg[..., 1]
        is_geom = (types == int(mujoco.mjtObj.mjOBJ_GEOM)) & (ids >= 0)
        out = np.zeros(ids.shape, dtype=np.int32)
        out[is_geom] = self._geom_to_object[ids[is_geom]]
        return out

    def camera_intrinsics(self, camera: str) -> tuple[float, float, float, float]:
        """Pinhole intrinsics (fx, fy, cx, cy) in pixels at ``image_size``."""
        h, w = self.image_size
        fovy = float(self.model.cam_fovy[self.model.camera(camera).id])
        fy = 0.5 * h / np.tan(np.deg2rad(fovy) / 2)
        return (float(fy), float(fy), w / 2.0, h / 2.0)

    def project(self, camera: str, point: Vec) -> tuple[float, float]:
        """Pixel (u, v) of a world point in ``camera`` at ``image_size`` (u right, v down)."""
        cam = self.model.camera(camera).id
        rot = self.data.cam_xmat[cam].reshape(3, 3)
        pc = rot.T @ (np.asarray(point, dtype=float) - self.data.cam_xpos[cam])
        fx, fy, cx, cy = self.camera_intrinsics(camera)
        depth = -pc[2]
        if depth <= 1e-6:
            raise ValueError(f"point {list(point)} is behind camera {camera!r}")
        return (float(cx + fx * pc[0] / depth), float(cy - fy * pc[1] / depth))

    def close(self) -> None:
        """Free the renderers (GL contexts)."""
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    def __enter__(self) -> SimWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
