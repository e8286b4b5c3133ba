"""Compose the MuJoCo work cell: SO-101 arm(s) from the shipped MJCF, a table, lights, cameras.

The arm model is the real ``so101_new_calib.xml`` (via :func:`hvla_ros.robot.so101_assets_dir`),
attached once per arm of the :class:`~hvla_ros.robot.RobotSpec` with the arm's prefix, so the
compiled joint, actuator and wrist-camera names equal those of ``robot.py``. Tasks add their
objects with the small helpers below before the spec is compiled.

World frame: the table top is the plane z = 0, +x points away from the (single) arm's base
towards the "front" camera, +z is up. Units are metres, kilograms, radians.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from hvla_ros.robot import JOINTS, POSITION_LIMITS, RobotSpec, so101_assets_dir
from hvla_ros.sim.meshes import decimated_mesh

#: Physics step: 16 steps make one 30 Hz control period exactly.
TIMESTEP = 1.0 / 480.0
CONTROL_HZ = 30.0
STEPS_PER_CONTROL = round(1.0 / (CONTROL_HZ * TIMESTEP))

#: Position-servo gains. The shipped kp=17.8 sags several millimetres under gravity at full
#: reach; the STS3215's own loop is much stiffer, so the simulated servo is too.
SERVO_KP = 60.0
SERVO_KV = 1.5

#: Table top (half extents) centred in front of the arm(s).
TABLE_HALF = (0.30, 0.40, 0.02)
TABLE_CENTER = (0.22, 0.0)

#: Where the arm bases sit for each robot configuration: prefix -> (x, y, yaw). The bimanual
#: arms face each other across the table (left arm on +y looking towards -y), so an object can
#: be passed between them along y.
ARM_POSES: dict[str, tuple[float, float, float]] = {
    "": (0.0, 0.0, 0.0),
    "left_": (0.20, 0.27, -np.pi / 2),
    "right_": (0.20, -0.27, np.pi / 2),
}

COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.10, 1.0),
    "green": (0.15, 0.70, 0.20, 1.0),
    "blue": (0.12, 0.25, 0.85, 1.0),
    "yellow": (0.95, 0.85, 0.10, 1.0),
}
GREY = (0.55, 0.55, 0.58, 1.0)
DARK = (0.18, 0.18, 0.20, 1.0)
WOOD = (0.62, 0.48, 0.33, 1.0)
LAMP_OFF = (0.25, 0.25, 0.22, 1.0)
LAMP_ON = (1.0, 1.0, 0.55, 1.0)

_PAD_GEOMS = ("fixed_jaw_pad", "moving_jaw_pad")


def _quat_yaw(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _load_arm_spec() -> mujoco.MjSpec:
    """The SO-101 MJCF as a spec, with fingertip pads enabled and stiffer servos."""
    assets = so101_assets_dir()
    arm = mujoco.MjSpec.from_file(str(assets / "so101_new_calib.xml"))
    arm.meshdir = str(assets / "assets")
    _use_light_visual_meshes(arm, assets / "assets")
    for name in _PAD_GEOMS:
        # The pads are the fingertip contact surfaces; without them a cube is pinched at two
        # mesh points and swings out of the jaws.
        pad = arm.geom(name)
        pad.contype = 1
        pad.conaffinity = 1
        pad.friction = [1.5, 0.02, 0.001]
        pad.condim = 4
    for act in arm.actuators:
        joint = act.target
        lo, hi = POSITION_LIMITS[joint]
        act.ctrlrange = [lo, hi]  # exactly the joint range (the MJCF rounds to 5 digits)
        act.gainprm[0] = SERVO_KP
        act.biasprm[1] = -SERVO_KP
        act.biasprm[2] = -SERVO_KV
    # The wrist camera rides on the gripper body, beside the fixed jaw, looking along the jaws
    # (the gripper body's -z axis is the approach direction of the "gripperframe" site).
    gripper = arm.body("gripper")
    gripper.add_camera(
        name="wrist",
        pos=[0.0, -0.045, -0.03],
        quat=[0.9659258, 0.2588190, 0.0, 0.0],
        fovy=75.0,
    )
    return arm


def _use_light_visual_meshes(arm: mujoco.MjSpec, mesh_dir: Path) -> None:
    """Point the visual geoms at decimated copies of their meshes (collision keeps the originals)."""
    lod: dict[str, str] = {}
    for mesh in list(arm.meshes):
        verts, faces = decimated_mesh(str(mesh_dir / mesh.file))
        light = arm.add_mesh(name=f"{mesh.name}_visual")
        light.uservert = verts.astype(np.float32).ravel().tolist()
        light.userface = faces.astype(np.int32).ravel().tolist()
        lod[mesh.name] = light.name
    for geom in arm.geoms:
        if geom.type == mujoco.mjtGeom.mjGEOM_MESH and geom.group == 2 and geom.meshname in lod:
            geom.meshname = lod[geom.meshname]


@dataclass(frozen=True)
class SceneConfig:
    """Render-related knobs of the compiled scene."""

    image_size: tuple[int, int] = (480, 640)  # (height, width) of offscreen buffers


def build_spec(robot: RobotSpec, config: SceneConfig | None = None) -> mujoco.MjSpec:
    """A spec with the table, lights, the "front" camera and every arm of ``robot`` attached."""
    config = config or SceneConfig()
    single = len(robot.arms) == 1 and robot.arms[0].prefix == ""
    # An unprefixed arm is the root spec itself (attaching with an empty prefix would mangle
    # names); prefixed arms are attached to frames of an empty root.
    spec = _load_arm_spec() if single else mujoco.MjSpec()
    spec.modelname = f"hvla_{robot.name}"
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.noslip_iterations = 3
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 5.0
    h, w = config.image_size
    spec.visual.global_.offheight = max(h, 480)
    spec.visual.global_.offwidth = max(w, 640)
    # Multisampling and shadows dominate software-rasterised frame time; the images stay clear.
    spec.visual.quality.offsamples = 0
    spec.visual.quality.shadowsize = 0
    spec.visual.headlight.ambient = [0.45, 0.45, 0.45]
    spec.visual.headlight.diffuse = [0.35, 0.35, 0.35]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    spec.stat.center = [0.2, 0.0, 0.1]
    spec.stat.extent = 0.6

    world = spec.worldbody
    world.add_light(name="top", pos=[0.25, 0.0, 1.2], dir=[0.0, 0.0, -1.0], diffuse=[0.55, 0.55, 0.55],
                    specular=[0.1, 0.1, 0.1], castshadow=False)
    world.add_geom(
        name="table",
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=list(TABLE_HALF),
        pos=[TABLE_CENTER[0], TABLE_CENTER[1], -TABLE_HALF[2]],
        rgba=list(WOOD),
        friction=[1.0, 0.01, 0.001],
    )
    # Fixed scene camera: in front of the table, looking back at the arm(s) and the workspace.
    world.add_camera(
        name=robot.scene_camera,
        pos=[0.66, 0.0, 0.46],
        xyaxes=[0.0, 1.0, 0.0, -0.6771, 0.0, 0.7359],
        fovy=58.0,
    )

    if not single:
        for arm in robot.arms:
            x, y, yaw = ARM_POSES[arm.prefix]
            frame = world.add_frame(pos=[x, y, 0.0], quat=_quat_yaw(yaw))
            spec.attach(_load_arm_spec(), prefix=arm.prefix, frame=frame)
    return spec


def add_box(
    spec: mujoco.MjSpec,
    name: str,
    half: Sequence[float],
    rgba: Sequence[float],
    pos: Sequence[float] = (0.0, 0.0, 0.0),
    *,
    free: bool = False,
    mass: float = 0.03,
    friction: float = 1.0,
) -> mujoco.MjsBody:
    """A box body (static unless ``free``) with one geom named like the body."""
    body = spec.worldbody.add_body(name=name, pos=list(pos))
    if free:
        body.add_freejoint(name=name)
    body.add_geom(
        name=name,
        type=mujoco.mjtGeom.mjGEOM_BOX,
        size=list(half),
        rgba=list(rgba),
        mass=mass if free else 0.0,
        friction=[friction, 0.01, 0.001],
        condim=4 if free else 3,
    )
    return body


def add_open_box(
    spec: mujoco.MjSpec,
    name: str,
    inner_half: tuple[float, float],
    height: float,
    rgba: Sequence[float],
    *,
    wall: float = 0.006,
) -> mujoco.MjsBody:
    """A static open-top container (floor + 4 walls) whose inner floor is at z = 0.

    Geoms are named ``{name}_floor`` and ``{name}_wall{i}``; the body origin is the centre of
    the inner floor.
    """
    body = spec.worldbody.add_body(name=name)
    ix, iy = inner_half
    body.add_geom(name=f"{name}_floor", type=mujoco.mjtGeom.mjGEOM_BOX, size=[ix + wall, iy + wall, 0.002],
                  pos=[0, 0, 0.002], rgba=list(rgba))
    walls = [
        ([ix + wall, wall / 2, height / 2], [0, iy + wall / 2, height / 2]),
        ([ix + wall, wall / 2, height / 2], [0, -iy - wall / 2, height / 2]),
        ([wall / 2, iy, height / 2], [ix + wall / 2, 0, height / 2]),
        ([wall / 2, iy, height / 2], [-ix - wall / 2, 0, height / 2]),
    ]
    for i, (size, pos) in enumerate(walls):
        body.add_geom(name=f"{name}_wall{i}", type=mujoco.mjtGeom.mjGEOM_BOX, size=size, pos=pos,
                      rgba=list(rgba))
    return body


def arm_joint_names() -> tuple[str, ...]:
    """Unprefixed joint names of one arm (robot.py order)."""
    return JOINTS
