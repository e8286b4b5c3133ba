"""joint_trajectory_controller semantics of the simulated arm (plain Python, no ROS)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hvla_ros.robot import HOME_POSITION, JOINTS, POSITION_LIMITS, SO101_BIMANUAL
from hvla_ros.sim.trajectory import (
    TrajectoryFollower,
    TrajectoryPoint,
    TrajectoryRejected,
    validate_trajectory,
)

HOME = [HOME_POSITION[j] for j in JOINTS]


def follower() -> TrajectoryFollower:
    return TrajectoryFollower("arm_controller", JOINTS, POSITION_LIMITS, HOME)


def pose(**changes: float) -> list[float]:
    q = dict(HOME_POSITION)
    q.update(changes)
    return [q[j] for j in JOINTS]


def test_linear_interpolation_between_points_and_hold_after_last():
    f = follower()
    f.set_trajectory(JOINTS, [TrajectoryPoint(1.0, pose(shoulder_pan=0.5)),
                              TrajectoryPoint(3.0, pose(shoulder_pan=-0.5))], stamp=0.0, now=10.0)
    pan = JOINTS.index("shoulder_pan")
    assert f.sample(10.0)[pan] == pytest.approx(0.0)  # starts from the commanded hold
    assert f.sample(10.5)[pan] == pytest.approx(0.25)  # half way to the first point
    assert f.sample(11.0)[pan] == pytest.approx(0.5)
    assert f.sample(12.0)[pan] == pytest.approx(0.0)  # half way between the points
    assert f.sample(13.0)[pan] == pytest.approx(-0.5)
    assert f.sample(20.0)[pan] == pytest.approx(-0.5)  # holds the last point
    assert not f.active
    np.testing.assert_allclose(f.sample(30.0), pose(shoulder_pan=-0.5))


def test_joint_order_of_message_is_mapped_to_controller_order():
    f = follower()
    names = list(reversed(JOINTS))
    target = pose(shoulder_pan=0.3, gripper=1.0)
    f.set_trajectory(names, [TrajectoryPoint(0.5, list(reversed(target)))], stamp=0.0, now=0.0)
    np.testing.assert_allclose(f.sample(1.0), target)


def test_first_point_at_zero_time_jumps_there():
    f = follower()
    f.set_trajectory(JOINTS, [TrajectoryPoint(0.0, pose(elbow_flex=0.2))], stamp=0.0, now=1.0)
    np.testing.assert_allclose(f.sample(1.0), pose(elbow_flex=0.2))


def test_new_trajectory_replaces_rest_of_current_from_now():
    f = follower()
    pan = JOINTS.index("shoulder_pan")
    f.set_trajectory(JOINTS, [TrajectoryPoint(2.0, pose(shoulder_pan=1.0))], stamp=0.0, now=0.0)
    assert f.sample(1.0)[pan] == pytest.approx(0.5)
    f.set_trajectory(JOINTS, [TrajectoryPoint(1.0, pose(shoulder_pan=-1.0))], stamp=0.0, now=1.0)
    # Continues from 0.5 (where it was commanded) towards -1.0: never reaches the old goal.
    assert f.sample(1.5)[pan] == pytest.approx(-0.25)
    assert f.sample(5.0)[pan] == pytest.approx(-1.0)


def test_future_stamp_keeps_current_trajectory_until_it_starts():
    f = follower()
    pan = JOINTS.index("shoulder_pan")
    f.set_trajectory(JOINTS, [TrajectoryPoint(4.0, pose(shoulder_pan=1.0))], stamp=0.0, now=0.0)
    f.set_trajectory(JOINTS, [TrajectoryPoint(1.0, pose(shoulder_pan=0.0))], stamp=2.0, now=1.0)
    assert f.sample(1.0)[pan] == pytest.approx(0.25)
    assert f.sample(2.0)[pan] == pytest.approx(0.5)  # old one still in force until stamp 2.0
    assert f.sample(2.5)[pan] == pytest.approx(0.25)  # new one from 0.5 towards 0.0
    assert f.sample(3.0)[pan] == pytest.approx(0.0)
    assert f.sample(6.0)[pan] == pytest.approx(0.0)  # the old goal (1.0) is never resumed


def test_empty_points_stop_and_hold_current_command():
    f = follower()
    pan = JOINTS.index("shoulder_pan")
    f.set_trajectory(JOINTS, [TrajectoryPoint(2.0, pose(shoulder_pan=1.0))], stamp=0.0, now=0.0)
    assert f.set_trajectory(JOINTS, [], stamp=0.0, now=1.0) is None
    assert f.sample(5.0)[pan] == pytest.approx(0.5)


def test_trajectory_ending_in_the_past_is_rejected():
    f = follower()
    with pytest.raises(TrajectoryRejected, match="ends in the past"):
        f.set_trajectory(JOINTS, [TrajectoryPoint(1.0, pose())], stamp=2.0, now=5.0)


BAD = [
    ("nan", JOINTS, [TrajectoryPoint(1.0, pose(elbow_flex=math.nan))], "non-finite position"),
    ("inf_time", JOINTS, [TrajectoryPoint(math.inf, pose())], "non-finite time_from_start"),
    ("nan_velocity", JOINTS, [TrajectoryPoint(1.0, pose(), velocities=[math.nan] * 6)],
     "non-finite velocities"),
    ("unknown", (*JOINTS[:5], "elbow"), [TrajectoryPoint(1.0, pose())], "unknown joint"),
    ("duplicate", (*JOINTS[:5], "wrist_flex"), [TrajectoryPoint(1.0, pose())], "more than once"),
    ("partial", JOINTS[:5], [TrajectoryPoint(1.0, pose()[:5])], "leaves out"),
    ("short", JOINTS, [TrajectoryPoint(1.0, pose()[:4])], "4 positions for 6 joints"),
    ("long_vel", JOINTS, [TrajectoryPoint(1.0, pose(), velocities=[0.0] * 7)], "7 velocities"),
    ("non_increasing", JOINTS, [TrajectoryPoint(1.0, pose()), TrajectoryPoint(1.0, pose())],
     "increase strictly"),
    ("decreasing", JOINTS, [TrajectoryPoint(2.0, pose()), TrajectoryPoint(1.0, pose())], "increase strictly"),
    ("negative", JOINTS, [TrajectoryPoint(-0.5, pose())], "negative time_from_start"),
    ("beyond_upper", JOINTS, [TrajectoryPoint(1.0, pose(shoulder_pan=2.5))], "beyond its limits"),
    ("beyond_lower", JOINTS, [TrajectoryPoint(1.0, pose(gripper=-0.5))], "beyond its limits"),
    ("no_names", (), [TrajectoryPoint(1.0, [])], "no joint names"),
]


@pytest.mark.parametrize(("case", "names", "points", "reason"), BAD, ids=[b[0] for b in BAD])
def test_bad_trajectory_is_rejected_with_reason_and_arm_holds(case, names, points, reason):
    f = follower()
    pan = JOINTS.index("shoulder_pan")
    f.set_trajectory(JOINTS, [TrajectoryPoint(2.0, pose(shoulder_pan=1.0))], stamp=0.0, now=0.0)
    before = [f.sample(t) for t in (0.5, 1.0)]
    with pytest.raises(TrajectoryRejected, match=reason):
        f.set_trajectory(names, points, stamp=0.0, now=1.0)
    assert f.rejected == 1 and reason.split()[0] in (f.last_rejection or "")
    # Nothing changed: the accepted trajectory keeps running to its goal.
    np.testing.assert_allclose(before[1], pose(shoulder_pan=0.5))
    assert f.sample(1.5)[pan] == pytest.approx(0.75)
    assert f.sample(3.0)[pan] == pytest.approx(1.0)


def test_rejection_message_names_the_offending_joint_and_value():
    with pytest.raises(TrajectoryRejected) as err:
        validate_trajectory(JOINTS, [TrajectoryPoint(1.0, pose(wrist_roll=3.5))],
                            controller_joints=JOINTS, limits=POSITION_LIMITS, controller="arm_controller")
    text = str(err.value)
    assert "wrist_roll" in text and "3.5" in text and "arm_controller" in text


def test_limits_inclusive_at_boundary():
    lo, hi = POSITION_LIMITS["elbow_flex"]
    times, positions = validate_trajectory(
        JOINTS, [TrajectoryPoint(1.0, pose(elbow_flex=lo)), TrajectoryPoint(2.0, pose(elbow_flex=hi))],
        controller_joints=JOINTS, limits=POSITION_LIMITS)
    assert list(times) == [1.0, 2.0]
    assert positions[1, JOINTS.index("elbow_flex")] == pytest.approx(hi)


def test_bimanual_controllers_reject_other_arms_joints():
    left, right = SO101_BIMANUAL.arms
    limits = {j: SO101_BIMANUAL.position_limits(j) for j in SO101_BIMANUAL.joint_names}
    f = TrajectoryFollower(left.controller, left.joint_names, limits, HOME)
    with pytest.raises(TrajectoryRejected, match="unknown joint"):
        f.set_trajectory(right.joint_names, [TrajectoryPoint(1.0, HOME)], stamp=0.0, now=0.0)
    f.set_trajectory(left.joint_names, [TrajectoryPoint(1.0, pose(shoulder_pan=0.4))], stamp=0.0, now=0.0)
    assert f.sample(1.0)[0] == pytest.approx(0.4)


def test_reset_drops_trajectories():
    f = follower()
    f.set_trajectory(JOINTS, [TrajectoryPoint(2.0, pose(shoulder_pan=1.0))], stamp=0.0, now=0.0)
    f.reset(pose(shoulder_pan=-0.2))
    np.testing.assert_allclose(f.sample(1.0), pose(shoulder_pan=-0.2))
    with pytest.raises(ValueError, match="finite"):
        f.reset(pose(shoulder_pan=math.nan))
