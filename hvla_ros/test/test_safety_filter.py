"""Every rule of the last-line safety filter, without ROS."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hvla_ros.refiner.safety import Chunk, SafetyConfig, SafetyError, SafetyFilter
from hvla_ros.robot import GRIPPER_JOINT, HOME_POSITION, JOINTS, POSITION_LIMITS, SO101, SO101_BIMANUAL, VELOCITY_LIMITS

HOME = np.array([HOME_POSITION[j] for j in JOINTS])
CFG = SafetyConfig(control_period=1 / 30, latency_budget=0.02, max_chunk_age=0.5,
                   max_step_change=0.5, watchdog_timeout=0.4)
DT = 1 / 30


def make_filter(robot=SO101, cfg=CFG, q=None) -> SafetyFilter:
    f = SafetyFilter(robot, cfg)
    if q is None:
        q = np.tile(HOME, len(robot.arms))
    f.update_joint_state(list(robot.joint_names), list(q))
    return f


def chunk_from(q0, deltas, start, names=SO101.joint_names, period=DT) -> Chunk:
    """A chunk starting at ``q0`` moving by ``deltas`` (T x D) per step."""
    pos = np.asarray(q0)[None, :] + np.cumsum(np.asarray(deltas, dtype=float), axis=0)
    return Chunk(tuple(names), pos, start + period * np.arange(len(pos)))


def small_chunk(now, T=8, step=0.01, q0=HOME):
    return chunk_from(q0, np.full((T, len(q0)), step), now + 0.05)


def test_error_codes_match_the_message_constants():
    from hvla_interfaces.msg import SafetyStatus

    for code in SafetyError:
        assert getattr(SafetyStatus, f"ERROR_{code.name}") == int(code)


def test_valid_chunk_passes_unchanged():
    f = make_filter()
    c = small_chunk(100.0)
    cmd = f.filter_chunk(c, now=100.0)
    assert not cmd.hold
    assert cmd.joint_names == SO101.joint_names
    np.testing.assert_allclose(cmd.positions, c.positions)
    np.testing.assert_allclose(cmd.stamps, c.stamps)
    assert f.counters.chunks_accepted == 1 and f.counters.steps_clamped == 0


def test_position_limits_clamp_and_count():
    upper = np.array([POSITION_LIMITS[j][1] for j in JOINTS])
    q0 = upper - 0.02
    f = make_filter(q=q0)
    c = chunk_from(q0, np.full((5, 6), 0.01), 10.05)  # walks 0.03 past the upper limits
    cmd = f.filter_chunk(c, now=10.0)
    assert not cmd.hold
    assert np.all(cmd.positions <= upper + 1e-12)
    assert f.counters.steps_clamped == 3  # steps 2, 3, 4 leave the range


def test_velocity_limit_rate_limits_steps():
    f = make_filter()
    # 0.3 rad per 1/30 s = 9 rad/s on shoulder_pan, above its 3 rad/s limit; below the jump limit.
    deltas = np.zeros((4, 6))
    deltas[:, 0] = 0.3
    c = chunk_from(HOME, deltas, 5.0 + DT)
    cmd = f.filter_chunk(c, now=5.0)
    assert not cmd.hold
    steps = np.diff(np.concatenate([[HOME[0]], cmd.positions[:, 0]]))
    dts = np.diff(np.concatenate([[5.0], cmd.stamps]))
    assert np.all(np.abs(steps) / dts <= VELOCITY_LIMITS["shoulder_pan"] + 1e-9)
    assert f.counters.steps_clamped == 4


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_targets_rejected_and_hold(bad):
    f = make_filter()
    c = small_chunk(1.0)
    c.positions[3, 2] = bad
    cmd = f.filter_chunk(c, now=1.0)
    assert cmd.hold and cmd.on_receipt and f.holding
    assert f.counters.error_code == SafetyError.NAN
    assert "elbow_flex" in f.counters.error_msg and "step 3" in f.counters.error_msg
    np.testing.assert_allclose(cmd.positions[0], HOME)  # holds where the arm is
    assert cmd.stamps[0] - 1.0 <= CFG.control_period + 1e-9


def test_step_change_rejected():
    f = make_filter()
    deltas = np.zeros((4, 6))
    deltas[2, 1] = 0.8  # one jump of 0.8 rad on shoulder_lift
    cmd = f.filter_chunk(chunk_from(HOME, deltas, 2.05), now=2.0)
    assert cmd.hold
    assert f.counters.error_code == SafetyError.LIMIT
    assert "shoulder_lift" in f.counters.error_msg and "0.800" in f.counters.error_msg


def test_gripper_jumps_are_rate_limited_not_refused():
    """A gripper stopped by the object it closes on reads far from its target: not a fault."""
    g = JOINTS.index(GRIPPER_JOINT)
    blocked = HOME.copy()
    blocked[g] = 0.45  # measured: fingers on the cube
    f = make_filter(q=blocked)
    target = blocked.copy()
    target[g] = -0.1  # the policy keeps commanding "closed": 0.55 rad from the measured opening
    cmd = f.filter_chunk(chunk_from(target, np.zeros((4, 6)), 2.05), now=2.0)
    assert not cmd.hold, f.counters.error_msg
    step = VELOCITY_LIMITS[GRIPPER_JOINT] * CFG.velocity_scale * (2.05 - 2.0)
    assert cmd.positions[0, g] == pytest.approx(0.45 - step)  # rate-limited from where it is
    assert np.all(np.diff(cmd.positions[:, g]) <= 0)
    # an arm joint with the same jump between two targets of the chunk is refused
    jump = np.zeros((4, 6))
    jump[2, 1] = -0.55
    assert f.filter_chunk(chunk_from(blocked, jump, 2.2), now=2.15).hold
    assert f.counters.error_code == SafetyError.LIMIT and "shoulder_lift" in f.counters.error_msg


def test_holds_keep_the_grip():
    """Watchdog and refusals hold the arm where it is and the gripper closed on what it carries."""
    g = JOINTS.index(GRIPPER_JOINT)
    f = make_filter()
    closing = HOME.copy()
    closing[g] = -0.1
    sent = f.filter_chunk(chunk_from(closing, np.zeros((30, 6)), 0.05), now=0.0)
    measured = HOME.copy()
    measured[g] = 0.45  # stopped by the cube
    f.update_joint_state(JOINTS, measured)
    hold = f.tick(CFG.watchdog_timeout + 0.05)
    assert hold is not None and hold.hold
    commanded = np.interp(CFG.watchdog_timeout + 0.05, sent.stamps, sent.positions[:, g])
    assert hold.positions[0, g] == pytest.approx(commanded) and commanded < 0.45
    # a later refusal keeps holding the same grip
    again = f.filter_chunk(chunk_from(HOME, np.full((3, 6), np.nan), 1.0), now=1.0)
    assert again.hold and again.positions[0, g] == pytest.approx(commanded)


def test_latency_is_not_a_jump():
    """A fast chunk planned from where the arm was, arriving after the planning latency: its first
    fresh step lies far ahead of the arm, which the velocity limit catches up, not a refusal."""
    f = make_filter()
    deltas = np.zeros((8, 6))
    deltas[:, 1] = 0.15  # shoulder_lift: 4.5 rad/s, one step of 0.15 rad every 33 ms
    chunk = chunk_from(HOME, deltas, 1.0)  # planned from the observation at 1.0 s
    cmd = f.filter_chunk(chunk, now=1.15)  # received 150 ms later: 5 steps already due
    assert not cmd.hold, f.counters.error_msg
    assert f.counters.steps_dropped_stale >= 4
    first = cmd.positions[0, 1]
    assert first - HOME[1] <= VELOCITY_LIMITS["shoulder_lift"] * (cmd.stamps[0] - 1.15) + 1e-9  # rate-limited
    # the same plan with one step of 0.6 rad in it is still refused
    deltas[3, 1] = 0.6
    assert f.filter_chunk(chunk_from(HOME, deltas, 1.2), now=1.35).hold
    assert f.counters.error_code == SafetyError.LIMIT and "step 3" in f.counters.error_msg


def test_first_step_far_from_arm_is_approached_at_the_velocity_limit():
    """A policy asking for a pose away from the arm (e.g. the wrist turning to the other grasp of a
    symmetric object) is rate-limited there, not refused: refusing would hold the arm for as long
    as the policy keeps asking, chunk after chunk."""
    f = make_filter()
    far = HOME.copy()
    far[3] += 0.7
    vmax = VELOCITY_LIMITS["wrist_flex"] * CFG.velocity_scale
    reached = HOME[3]  # where the arm is being driven when each chunk arrives
    for k in range(12):  # chunk after chunk towards the same far pose
        now = 2.0 + 0.1 * k
        cmd = f.filter_chunk(chunk_from(far, np.zeros((3, 6)), now + 0.05), now=now)
        assert not cmd.hold, f.counters.error_msg
        assert cmd.positions[0, 3] - reached <= vmax * (cmd.stamps[0] - now) + 1e-9
        reached = float(np.interp(now + 0.1, cmd.stamps, cmd.positions[:, 3]))
    assert cmd.positions[-1, 3] == pytest.approx(far[3])  # got there
    assert f.counters.steps_clamped > 0 and f.counters.chunks_rejected == 0


def test_stale_chunk_rejected():
    f = make_filter()
    c = small_chunk(0.0)  # last step at ~0.28 s
    cmd = f.filter_chunk(c, now=0.28 + CFG.max_chunk_age + 0.1)
    assert cmd.hold and f.counters.error_code == SafetyError.STALE_CHUNK


def test_chunk_from_the_far_future_rejected():
    f = make_filter()
    cmd = f.filter_chunk(small_chunk(10.0), now=10.0 - CFG.max_future - 1.0)
    assert cmd.hold and f.counters.error_code == SafetyError.STALE_CHUNK


def test_stale_steps_dropped_and_all_stale_schedules_last_on_next_tick():
    f = make_filter()
    c = small_chunk(0.0, T=8)  # steps at 0.05 + k/30
    now = 0.05 + 3 * DT  # steps 0..3 are due before now + budget
    cmd = f.filter_chunk(c, now=now)
    assert len(cmd.stamps) == 4 and np.all(cmd.stamps >= now + CFG.latency_budget)
    assert f.counters.steps_dropped_stale == 4
    np.testing.assert_allclose(cmd.positions, c.positions[4:])
    assert not cmd.on_receipt  # stamped with the sender's clock
    # All stale (but not too old): the last target goes out on the next tick.
    f2 = make_filter()
    c2 = small_chunk(0.0, T=4, step=0.002)
    now2 = c2.stamps[-1] + 0.1
    cmd2 = f2.filter_chunk(c2, now=now2)
    assert not cmd2.hold and len(cmd2.stamps) == 1
    assert cmd2.stamps[0] == pytest.approx(now2 + CFG.control_period)
    # one period after the controller receives it: a controller clock running ahead of ours
    # would otherwise refuse it as ending in the past
    assert cmd2.on_receipt
    np.testing.assert_allclose(cmd2.positions[0], c2.positions[-1])
    assert f2.counters.steps_dropped_stale == 3


@pytest.mark.parametrize("names,problem", [
    (("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "claw"), "unknown"),
    (("shoulder_pan", "shoulder_pan", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"), "duplicate"),
    (("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"), "partially"),
])
def test_wrong_joint_names_rejected(names, problem):
    f = make_filter()
    pos = np.tile(HOME[: len(names)], (3, 1))
    cmd = f.filter_chunk(Chunk(names, pos, 1.05 + DT * np.arange(3)), now=1.0)
    assert cmd.hold and f.counters.error_code == SafetyError.BAD_CHUNK
    assert problem in f.counters.error_msg


def test_wrong_dimensions_rejected():
    from hvla_ros.refiner.safety import ChunkRejected

    with pytest.raises(ChunkRejected, match=r"expected num_steps\*len"):
        Chunk.from_flat(list(SO101.joint_names), 4, np.zeros(23), 0.0, DT)
    f = make_filter()
    cmd = f.filter_chunk(Chunk(SO101.joint_names, np.zeros((3, 5)), np.arange(3.0)), now=0.0)
    assert cmd.hold and "shape" in f.counters.error_msg


def test_non_monotonic_stamps_rejected():
    f = make_filter()
    c = small_chunk(1.0)
    c.stamps[4] = c.stamps[3]
    assert f.filter_chunk(c, now=1.0).hold
    assert f.counters.error_code == SafetyError.BAD_CHUNK and "non-monotonic" in f.counters.error_msg
    # A chunk older than the previous accepted one is refused too.
    f2 = make_filter()
    assert not f2.filter_chunk(small_chunk(2.0), now=2.0).hold
    assert f2.filter_chunk(small_chunk(1.9), now=2.0).hold
    assert "previous chunk" in f2.counters.error_msg


def test_estop_holds_within_one_period_and_refuses_chunks():
    f = make_filter()
    sent = f.filter_chunk(small_chunk(0.0), now=0.0)
    assert not sent.hold
    moved = HOME + 0.03
    f.update_joint_state(SO101.joint_names, moved)
    hold = f.set_estop(True, now=0.1, reason="test")
    assert hold is not None and hold.hold
    np.testing.assert_allclose(hold.positions[0, :5], moved[:5])  # the arm where it is
    g = JOINTS.index(GRIPPER_JOINT)  # the gripper keeps its commanded target (its grip)
    assert hold.positions[0, g] == pytest.approx(np.interp(0.1, sent.stamps, sent.positions[:, g]))
    assert hold.stamps[0] - 0.1 <= CFG.control_period + 1e-12
    assert f.filter_chunk(small_chunk(0.2, q0=moved), now=0.2).hold
    assert f.counters.error_code == SafetyError.ESTOP
    f.set_estop(False, now=0.3)
    assert not f.filter_chunk(small_chunk(0.3, q0=moved), now=0.3).hold


def test_watchdog_holds_when_chunks_stop():
    f = make_filter()
    f.filter_chunk(small_chunk(0.0, T=30), now=0.0)
    assert f.tick(0.2) is None
    hold = f.tick(CFG.watchdog_timeout + 0.05)
    assert hold is not None and hold.hold
    assert f.counters.error_code == SafetyError.WATCHDOG
    assert f.tick(CFG.watchdog_timeout + 0.2) is None  # already holding, no repeated holds
    assert not f.filter_chunk(small_chunk(1.0), now=1.0).hold  # new chunk resumes


def test_a_hold_never_commands_past_a_limit():
    """An arm measured slightly past a limit (a simulated soft limit, a servo's overshoot) is held
    at the limit, not where it was measured."""
    pan = JOINTS.index("shoulder_pan")
    past = HOME.copy()
    past[pan] = POSITION_LIMITS["shoulder_pan"][1] + 1e-4
    f = make_filter(q=past)
    hold = f.set_estop(True, now=0.0, reason="test")
    assert hold is not None and hold.hold
    assert hold.positions[0, pan] == POSITION_LIMITS["shoulder_pan"][1]
    others = [i for i in range(len(JOINTS)) if i != pan]
    np.testing.assert_array_equal(hold.positions[0, others], past[others])


def test_no_joint_state_refuses_chunks_and_sends_nothing():
    f = SafetyFilter(SO101, CFG)
    cmd = f.filter_chunk(small_chunk(0.0), now=0.0)
    assert cmd.hold and cmd.positions.shape[0] == 0


def test_bimanual_chunk_for_one_arm_commands_only_that_arm():
    q = np.tile(HOME, 2)
    f = make_filter(SO101_BIMANUAL, q=q)
    left = SO101_BIMANUAL.arm("left").joint_names
    c = chunk_from(HOME, np.full((4, 6), 0.01), 0.05, names=left)
    cmd = f.filter_chunk(c, now=0.0)
    assert not cmd.hold and cmd.joint_names == left
    np.testing.assert_allclose(cmd.positions, c.positions)


def test_config_validates():
    with pytest.raises(ValueError, match="control_period"):
        SafetyConfig(control_period=0.0)
    with pytest.raises(ValueError, match="velocity_scale"):
        SafetyConfig(velocity_scale=1.5)


# ---------------------------------------------------------------- fuzz
finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.lists(st.sampled_from([*SO101.joint_names, "left_gripper", "claw", ""]), min_size=0, max_size=8),
    T=st.integers(0, 6),
    values=hnp.arrays(np.float64, st.integers(0, 48), elements=finite_or_not),
    offset=st.one_of(st.floats(-1.0, 3.0), st.floats(allow_nan=True, allow_infinity=True)),
    period=st.one_of(st.floats(-0.1, 0.2), st.just(float("nan"))),
    now=st.floats(0, 10),
)
def test_fuzz_filter_never_sends_unsafe_targets(names, T, values, offset, period, now):
    from hvla_ros.refiner.safety import ChunkRejected

    f = make_filter()
    lower = np.array([POSITION_LIMITS[j][0] for j in JOINTS])
    upper = np.array([POSITION_LIMITS[j][1] for j in JOINTS])
    try:
        chunk = Chunk.from_flat(names, T, values, now + offset, period)
    except ChunkRejected:
        return
    cmd = f.filter_chunk(chunk, now=now)
    assert np.all(np.isfinite(cmd.positions)) and np.all(np.isfinite(cmd.stamps))
    if cmd.hold:
        assert f.counters.error_code != SafetyError.NONE and f.counters.error_msg
        np.testing.assert_allclose(cmd.positions[0], HOME)
        return
    assert np.all(cmd.positions >= lower - 1e-9) and np.all(cmd.positions <= upper + 1e-9)
    assert np.all(np.diff(cmd.stamps) > 0) and cmd.stamps[0] >= now
    prev_q, prev_t = HOME, now
    for k, (q, t) in enumerate(zip(cmd.positions, cmd.stamps, strict=True)):
        assert np.all(np.abs(q - prev_q) <= 3.0 * (t - prev_t) + 1e-9)
        if k:  # from the arm to the first target: the velocity limit alone
            assert np.all(np.abs(q - prev_q) <= CFG.max_step_change + 1e-9)
        prev_q, prev_t = q, t


@settings(max_examples=200, deadline=None)
@given(
    noise=hnp.arrays(np.float64, st.tuples(st.integers(1, 10), st.just(6)), elements=st.floats(-0.4, 0.4)),
    offset=st.floats(-0.4, 0.3),
    period=st.floats(0.005, 0.1),
)
def test_fuzz_plausible_chunks_are_clamped_never_refused_for_limits(noise, offset, period):
    """Chunks near the arm are accepted or refused for a jump; what is sent is always in limits."""
    f = make_filter()
    now = 50.0
    chunk = Chunk(SO101.joint_names, HOME + noise, now + offset + period * np.arange(len(noise)))
    cmd = f.filter_chunk(chunk, now=now)
    if cmd.hold:
        assert f.counters.error_code in (SafetyError.LIMIT, SafetyError.STALE_CHUNK)
        return
    vmax = np.array([VELOCITY_LIMITS[j] for j in JOINTS])
    q_prev, t_prev = HOME, now
    for q, t in zip(cmd.positions, cmd.stamps, strict=True):
        assert np.all(np.abs(q - q_prev) <= vmax * (t - t_prev) + 1e-9)
        q_prev, t_prev = q, t
