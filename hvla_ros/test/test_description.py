"""The ros2_control descriptions of the real arms: well-formed, up to date, same joints and limits
as the SO-101 MJCF/URDF and as hvla_ros.robot."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import yaml

from hvla_ros import description_gen
from hvla_ros.robot import JOINTS, POSITION_LIMITS, ROBOTS, VELOCITY_LIMITS, so101_assets_dir

DESC = description_gen.DESCRIPTION_DIR
XACRO_NS = "{http://www.ros.org/wiki/xacro}"


def test_committed_files_equal_generator_output():
    generated = description_gen.generate()
    assert set(generated) == {p.name for p in DESC.iterdir() if p.is_file()}
    for name, text in generated.items():
        assert (DESC / name).read_text() == text, f"{name} is stale: run `hvla gen-description`"


def _mjcf_ranges() -> dict[str, tuple[float, float]]:
    root = ET.parse(so101_assets_dir() / "so101_new_calib.xml").getroot()
    return {j.attrib["name"]: tuple(float(v) for v in j.attrib["range"].split())  # type: ignore[misc]
            for j in root.iter("joint") if "range" in j.attrib and j.get("name") in JOINTS}


def test_robot_limits_equal_mjcf_and_shipped_urdf():
    assert _mjcf_ranges() == POSITION_LIMITS
    urdf = ET.parse(so101_assets_dir() / "so101_new_calib.urdf").getroot()
    for joint in urdf.findall("joint"):
        if joint.attrib["name"] in JOINTS:
            lim = joint.find("limit")
            assert lim is not None
            lo, hi = POSITION_LIMITS[joint.attrib["name"]]
            # The shipped URDF rounds to 5 decimals.
            assert float(lim.attrib["lower"]) == pytest.approx(lo, abs=1e-5)
            assert float(lim.attrib["upper"]) == pytest.approx(hi, abs=1e-5)


@pytest.mark.parametrize("robot_name", sorted(ROBOTS))
@pytest.mark.parametrize("suffix", [".urdf", "_mock.urdf", ".urdf.xacro"])
def test_urdf_joints_and_limits_match_robot(robot_name, suffix):
    robot = ROBOTS[robot_name]
    root = ET.parse(DESC / f"{robot_name}{suffix}").getroot()
    assert root.tag == "robot" and root.attrib["name"] == robot_name
    movable = {j.attrib["name"]: j for j in root.findall("joint") if j.attrib["type"] != "fixed"}
    assert sorted(movable) == sorted(robot.joint_names)
    ranges = _mjcf_ranges()
    for name, joint in movable.items():
        base = name.removeprefix("left_").removeprefix("right_")
        lim = joint.find("limit")
        assert lim is not None
        limits = (float(lim.attrib["lower"]), float(lim.attrib["upper"]))
        assert limits == ranges[base] == robot.position_limits(name)
        assert float(lim.attrib["velocity"]) == VELOCITY_LIMITS[base]
    # Kinematic tree: every link but "world" has exactly one parent joint.
    links = {link.attrib["name"] for link in root.findall("link")}
    children = [j.find("child").attrib["link"] for j in root.findall("joint")]  # type: ignore[union-attr]
    assert sorted(children) == sorted(links - {"world"})


def _systems(root: ET.Element, *, mock: bool) -> list[ET.Element]:
    if root.find(f"{XACRO_NS}if") is None:
        return root.findall("ros2_control")
    tag = f"{XACRO_NS}if" if mock else f"{XACRO_NS}unless"
    return [s for block in root.findall(tag) for s in block.findall("ros2_control")]


@pytest.mark.parametrize("robot_name", sorted(ROBOTS))
@pytest.mark.parametrize(("suffix", "mock"), [(".urdf", False), ("_mock.urdf", True),
                                              (".urdf.xacro", False), (".urdf.xacro", True)])
def test_ros2_control_tags(robot_name, suffix, mock):
    robot = ROBOTS[robot_name]
    root = ET.parse(DESC / f"{robot_name}{suffix}").getroot()
    systems = _systems(root, mock=mock)
    assert len(systems) == len(robot.arms)
    plugin = "mock_components/GenericSystem" if mock else "feetech_ros2_driver/FeetechHardwareInterface"
    for arm, system in zip(robot.arms, systems, strict=True):
        assert system.findtext("hardware/plugin") == plugin
        if not mock:
            assert system.find("hardware/param[@name='usb_port']") is not None
        joints = system.findall("joint")
        assert tuple(j.attrib["name"] for j in joints) == arm.joint_names
        ids = []
        for j in joints:
            assert [c.attrib["name"] for c in j.findall("command_interface")] == ["position"]
            assert [s.attrib["name"] for s in j.findall("state_interface")] == ["position", "velocity"]
            lo, hi = robot.position_limits(j.attrib["name"])
            assert float(j.findtext("command_interface/param[@name='min']")) == lo  # type: ignore[arg-type]
            assert float(j.findtext("command_interface/param[@name='max']")) == hi  # type: ignore[arg-type]
            if not mock:
                ids.append(int(j.findtext("param[@name='id']")))  # type: ignore[arg-type]
        if not mock:
            assert ids == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("robot_name", sorted(ROBOTS))
def test_controllers_yaml(robot_name):
    robot = ROBOTS[robot_name]
    doc = yaml.safe_load((DESC / f"{robot_name}_controllers.yaml").read_text())
    cm = doc["controller_manager"]["ros__parameters"]
    assert cm["update_rate"] > 0
    assert cm["joint_state_broadcaster"]["type"] == "joint_state_broadcaster/JointStateBroadcaster"
    for arm in robot.arms:
        assert cm[arm.controller]["type"] == "joint_trajectory_controller/JointTrajectoryController"
        params = doc[arm.controller]["ros__parameters"]
        assert tuple(params["joints"]) == arm.joint_names
        assert params["command_interfaces"] == ["position"]
        assert params["state_interfaces"] == ["position", "velocity"]
        assert params["allow_partial_joints_goal"] is False
    assert set(doc) == {"controller_manager", *robot.controllers}


def test_check_mode_reports_stale_files(tmp_path):
    import argparse

    args = argparse.Namespace(out=tmp_path, check=True)
    assert description_gen.run(args) == 1
    assert description_gen.run(argparse.Namespace(out=tmp_path, check=False)) == 0
    assert description_gen.run(args) == 0
    (tmp_path / "so101.urdf").write_text("<robot/>")
    assert description_gen.run(args) == 1
