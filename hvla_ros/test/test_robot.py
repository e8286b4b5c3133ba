"""robot.py is the single definition of the SO-101 joints; it must match the shipped model."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from hvla_ros import robot


def _mjcf_joints() -> dict[str, tuple[float, float]]:
    root = ET.parse(robot.so101_assets_dir() / "so101_new_calib.xml").getroot()
    out = {}
    for j in root.iter("joint"):
        if j.get("name") and j.get("range"):
            lo, hi = (float(x) for x in j.get("range", "").split())
            out[j.get("name", "")] = (lo, hi)
    return out


def _urdf_joints() -> dict[str, tuple[float, float]]:
    root = ET.parse(robot.so101_assets_dir() / "so101_new_calib.urdf").getroot()
    out = {}
    for j in root.iter("joint"):
        limit = j.find("limit")
        if j.get("type") == "revolute" and limit is not None:
            out[j.get("name", "")] = (float(limit.get("lower", "nan")), float(limit.get("upper", "nan")))
    return out


def test_joint_names_and_limits_match_the_mjcf() -> None:
    mjcf = _mjcf_joints()
    assert set(robot.JOINTS) <= set(mjcf), f"MJCF joints: {sorted(mjcf)}"
    for name in robot.JOINTS:
        assert robot.POSITION_LIMITS[name] == pytest.approx(mjcf[name], abs=1e-9), name


def test_limits_match_the_urdf() -> None:
    urdf = _urdf_joints()
    for name in robot.JOINTS:
        assert robot.POSITION_LIMITS[name] == pytest.approx(urdf[name], abs=1e-4), name


def test_home_pose_and_gripper_constants_are_inside_limits() -> None:
    for name, q in robot.HOME_POSITION.items():
        lo, hi = robot.POSITION_LIMITS[name]
        assert lo < q < hi, name
    lo, hi = robot.POSITION_LIMITS[robot.GRIPPER_JOINT]
    assert lo <= robot.GRIPPER_CLOSED < robot.GRIPPER_OPEN <= hi
    assert all(0 < v < 4.7 for v in robot.VELOCITY_LIMITS.values())


def test_single_and_bimanual_layouts() -> None:
    single = robot.get_robot("so101")
    assert single.joint_names == robot.JOINTS
    assert single.controllers == ("arm_controller",)
    assert single.cameras == ("front", "wrist")
    bi = robot.get_robot("so101_bimanual")
    assert bi.bimanual and not single.bimanual
    assert bi.joint_names == tuple(f"left_{j}" for j in robot.JOINTS) + tuple(f"right_{j}" for j in robot.JOINTS)
    assert bi.controllers == ("left_arm_controller", "right_arm_controller")
    assert bi.arm("right").trajectory_topic == "right_arm_controller/joint_trajectory"
    assert bi.gripper_joints == ("left_gripper", "right_gripper")
    assert bi.position_limits("right_elbow_flex") == robot.POSITION_LIMITS["elbow_flex"]
    assert math.isclose(bi.velocity_limit("left_gripper"), robot.VELOCITY_LIMITS["gripper"])


def test_unknown_names_raise_with_the_offending_value() -> None:
    with pytest.raises(ValueError, match="'so100'"):
        robot.get_robot("so100")
    with pytest.raises(KeyError, match="left_elbow_flex"):
        robot.SO101.position_limits("left_elbow_flex")
    with pytest.raises(KeyError, match="'middle'"):
        robot.SO101_BIMANUAL.arm("middle")
