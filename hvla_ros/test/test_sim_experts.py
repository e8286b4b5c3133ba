"""Scripted experts: each task's expert succeeds from a seeded reset within the robot's velocity
limits; doing nothing does not."""

from __future__ import annotations

import numpy as np
import pytest

from hvla_ros.sim.cmd_eval_experts import run_expert_episode
from hvla_ros.sim.tasks import TASKS
from hvla_ros.sim.world import SimWorld


@pytest.mark.parametrize("task", sorted(TASKS))
def test_expert_succeeds_and_reports_its_subtask(task):
    w = SimWorld(task, render=False)
    w.reset(7)
    expert = w.task.expert(w)
    n = len(expert.subtasks)
    seen = []
    # the safety filter clamps targets faster than the robot's velocity limits: demonstrations
    # must stay below them, or policies learn motions the arm is never allowed to make
    max_step = np.array([w.robot.velocity_limit(j) for j in w.joint_names]) * w.control_period
    prev = w.joint_targets().copy()
    while not expert.done and w.time < w.task.time_limit:
        q = expert.act(w)
        assert q.shape == (len(w.joint_names),) and np.all(np.isfinite(q))
        assert np.all(q >= w.lower_limits - 1e-9) and np.all(q <= w.upper_limits + 1e-9)
        too_fast = np.abs(q - prev) > max_step
        assert not too_fast.any(), (f"t={w.time:.2f} s: {np.array(w.joint_names)[too_fast]} move "
                                    f"{np.abs(q - prev)[too_fast]} rad in one step (> {max_step[too_fast]})")
        prev = q.copy()
        if not seen or seen[-1] != expert.current:
            seen.append(expert.current)
        w.set_joint_targets(q)
        w.step(w.control_steps)
    assert expert.done, f"expert still running after {w.time:.1f} s"
    assert seen[:n] == list(range(n)), seen  # every subtask, in order
    w.step(round(w.task.settle_time / w.timestep))
    assert w.success()
    assert w.subtask_success(n - 1)  # the last post-condition is the goal


@pytest.mark.parametrize("task", ["cube_in_box", "bimanual_handover"])
def test_expert_rollouts_are_deterministic(task):
    w = SimWorld(task, render=False)
    a = run_expert_episode(w, 11)
    qa = w.data.qpos.copy()
    b = run_expert_episode(w, 11)
    assert a == b
    assert np.array_equal(qa, w.data.qpos)


@pytest.mark.parametrize("task", ["cube_in_box", "stack_blue_on_yellow", "open_drawer", "button_sequence"])
def test_idle_arm_does_not_succeed(task):
    w = SimWorld(task, seed=2, render=False)
    w.step(round(6.0 / w.timestep))
    assert not w.success()
    assert not any(w.subtask_success(i) for i in range(1, len(w.task.subtasks())))


def test_pick_subtask_predicate_holds_after_the_pick():
    w = SimWorld("cube_in_box", seed=4, render=False)
    expert = w.task.expert(w)
    while expert.current == 0:
        w.set_joint_targets(expert.act(w))
        w.step(w.control_steps)
    assert w.subtask_success(0) and not w.subtask_success(1)


def test_two_arm_pick_turns_the_wrist_little_and_continuously_with_the_cube_yaw():
    """The left arm's jaws start across the world's axes: its pick turns to the cube face nearest
    them, so the wrist roll at the grasp follows the cube's yaw (one small turn, the same sign)
    instead of jumping between about +90 and -90 degrees as the yaw crosses zero."""
    w = SimWorld("bimanual_handover", render=False)
    roll = w.joint_names.index("left_wrist_roll")
    rolls = {}
    for seed in (0, 1):  # cube yaw +0.25 and -0.15 rad
        w.reset(seed)
        expert = w.task.expert(w)
        start = w.joint_positions()[roll]
        while expert.current == 0:
            w.set_joint_targets(expert.act(w))
            w.step(w.control_steps)
        assert w.subtask_success(0)
        rolls[seed] = (w.body_yaw("cube"), w.joint_positions()[roll] - start)
    (yaw0, turn0), (yaw1, turn1) = rolls[0], rolls[1]
    assert yaw0 > 0.1 and yaw1 < -0.1
    assert abs(turn0) < 0.45 and abs(turn1) < 0.45, rolls
    assert np.sign(turn0) != np.sign(turn1), rolls


def test_handover_demonstrations_cover_the_skill_horizon_and_end_still():
    """The handover skill runs for its whole horizon: the expert's handover lasts at least that
    long, and its last HANDOVER_HOLD_S hold both arms still with the cube passed on (without the
    hold the learned skill, past what it had seen, closed the left jaws on the cube again)."""
    from hvla_ros.executor.library import SkillLibrary, skills_file_for_task
    from hvla_ros.sim.tasks.bimanual_handover import HANDOVER_HOLD_S

    lib = SkillLibrary.load(skills_file_for_task("bimanual_handover"), load_policies=False)
    horizon = lib.get("handover").spec.default_horizon_s
    w = SimWorld("bimanual_handover", seed=3, render=False)
    expert = w.task.expert(w)
    targets = []
    while expert.current < 2:
        q = np.asarray(expert.act(w), dtype=float)
        if expert.current == 1:
            targets.append(q)
        w.set_joint_targets(q)
        w.step(w.control_steps)
    dt = w.control_steps * w.timestep
    assert len(targets) * dt >= horizon, (len(targets) * dt, horizon)
    hold = round(HANDOVER_HOLD_S / dt)
    assert np.allclose(targets[-hold:], targets[-1])
    assert not np.allclose(targets[-hold - 30], targets[-1])  # the arms moved before the hold
    assert w.subtask_success(1)


def test_handover_post_condition_needs_the_left_arm_clear():
    """The handover's post-condition is a clean handover: the right jaws hold the cube apart and the
    left arm is away from it. A learned handover that opened the left jaws but left the arm by the
    cube (the place then snagged the cube on it) does not count, though the right arm holds the
    cube and the left one no longer touches it."""
    import mujoco

    from hvla_ros.robot import GRIPPER_OPEN
    from hvla_ros.sim.tasks.bimanual_handover import HANDOVER_LEFT_CLEARANCE
    from hvla_ros.sim.tasks.common import is_grasped, released

    # the expert's handover, once; the left arm's targets once its jaws are open, before it retreats
    w = SimWorld("bimanual_handover", seed=3, render=False)
    expert = w.task.expert(w)
    left = [w.joint_names.index(j) for j in w.joint_names if j.startswith("left_")]
    at_release = None
    while expert.current < 2:
        q = np.asarray(expert.act(w), dtype=float)
        if expert.current == 1 and at_release is None and q[left[-1]] >= GRIPPER_OPEN - 1e-6:
            at_release = q[left].copy()
        w.set_joint_targets(q)
        w.step(w.control_steps)
    assert at_release is not None
    what = mujoco.mjtState.mjSTATE_INTEGRATION
    handed = np.empty(mujoco.mj_stateSize(w.model, what))
    mujoco.mj_getState(w.model, w.data, handed, what)

    def handed_over(back: float) -> None:
        """Back to the state after the expert's handover, then the left arm sent ``back`` of the
        way to where it let go."""
        mujoco.mj_setState(w.model, w.data, handed, what)
        mujoco.mj_forward(w.model, w.data)
        q = w.joint_targets()
        q[left] = back * at_release + (1 - back) * q[left]
        w.set_joint_targets(q)
        w.step(round(1.0 / w.timestep))

    handed_over(0.0)
    assert w.subtask_success(1) and w.task.left_clearance(w) > HANDOVER_LEFT_CLEARANCE
    # the nearest the left arm comes back without touching the cube
    for back in np.arange(1.0, 0.0, -0.05):
        handed_over(float(back))
        if released(w, "cube", ["left_"]):
            break
    assert is_grasped(w, "cube", "right_") and released(w, "cube", ["left_"])  # the old post-condition
    assert w.task.left_clearance(w) < HANDOVER_LEFT_CLEARANCE
    assert not w.subtask_success(1)
