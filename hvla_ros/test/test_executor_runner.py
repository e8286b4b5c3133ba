"""Receding-horizon runner: chunk sizes and stamps, step budget, stale observations, hold and home skills."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hvla_ros.executor.instruction import encode_instruction, tokens
from hvla_ros.executor.library import SkillLibrary
from hvla_ros.executor.runner import (
    Observation,
    ObservationBuffer,
    ObservationError,
    SkillRunner,
    StaleObservationError,
)
from hvla_ros.robot import HOME_POSITION, JOINTS, POSITION_LIMITS

PERIOD = 1 / 30


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> SkillLibrary:
    import torch

    from hvla_ros.executor.training import save_untrained_policy

    torch.set_num_threads(1)
    pol = save_untrained_policy(
        tmp_path_factory.mktemp("pol") / "pick",
        cameras=["front"],
        joint_names=JOINTS,
        image_hw=(32, 40),
        down_dims=(16, 32, 64),
        backbone_stages=1,
    )
    return SkillLibrary.from_dict(
        {
            "robot": "so101",
            "skills": {
                "pick": {"policy": str(pol), "cameras": ["front"], "n_action_steps": 8, "denoising_steps": 2},
                "observe": {"policy": "hold", "n_action_steps": 5, "default_horizon_s": 0.5},
                "home": {"policy": "home", "n_action_steps": 8, "max_speed_rad_s": 1.5, "default_horizon_s": 6.0},
            },
        }
    )


def _obs(t: float, shape=(48, 64, 3), joints=None) -> Observation:
    img = np.random.default_rng(int(t * 1000)).integers(0, 255, shape, dtype=np.uint8)
    return Observation(stamp=t, images={"front": img}, joints=dict(joints or HOME_POSITION))


def test_receding_horizon_chunks_and_stamps(library):
    r = SkillRunner(library.get("pick"), "pick up the red cube", horizon_s=20 * PERIOD)
    assert r.horizon_steps == 20 and r.n_obs_steps == 2
    buf = ObservationBuffer()
    chunks = []
    t = 1.0
    while not r.done:
        buf.add(_obs(t - PERIOD))
        buf.add(_obs(t))
        assert r.next_due(0.05) <= t + 1e-9  # due: the previous chunk has (nearly) run out
        chunks.append(r.next_chunk(buf.history(r.n_obs_steps, r.step_period), now=t + 0.01))
        t = chunks[-1].end_time
    assert [c.num_steps for c in chunks] == [8, 8, 4]  # n_action_steps each, last one cut at the horizon
    assert [c.index for c in chunks] == [0, 1, 2]
    assert chunks[0].start_time == pytest.approx(1.0)  # stamped at the newest observation
    for a, b in itertools.pairwise(chunks):
        assert b.start_time == pytest.approx(a.end_time)
    assert r.progress == 1.0 and r.steps_planned == 20
    for c in chunks:
        assert c.joint_names == JOINTS and c.positions.shape == (c.num_steps, 6)
        lo = np.array([POSITION_LIMITS[j][0] for j in JOINTS])
        hi = np.array([POSITION_LIMITS[j][1] for j in JOINTS])
        assert np.all(c.positions >= lo - 1e-6) and np.all(c.positions <= hi + 1e-6)
    with pytest.raises(RuntimeError, match="horizon"):
        r.next_chunk(buf.history(2, PERIOD), now=t)


def test_latency_compensation_adds_the_steps_that_go_stale_in_transit(library):
    r = SkillRunner(library.get("pick"), "pick up the red cube", horizon_s=20 * PERIOD)
    horizon, n_obs = library.get("pick").bundle.config.horizon, r.n_obs_steps
    c = r.next_chunk([_obs(0.0), _obs(PERIOD)], now=PERIOD, latency_s=0.1)  # 3 steps stale on arrival
    assert c.num_steps == 8 + 3 and c.start_time == pytest.approx(PERIOD)  # still from the observation
    assert r.steps_planned == 8  # the horizon counts fresh steps only
    # the first steps are those of the uncompensated chunk (the same sample, longer)
    c2 = r.next_chunk([_obs(1.0), _obs(1.0 + PERIOD)], now=1.0 + PERIOD, latency_s=10.0)
    assert c2.num_steps == horizon - n_obs + 1  # no more than the policy predicts
    c3 = r.next_chunk([_obs(2.0), _obs(2.0 + PERIOD)], now=2.0 + PERIOD, latency_s=0.05)
    assert c3.num_steps == 4 + 2 and r.done  # the last chunk: 4 fresh steps left, plus 2
    hold = SkillRunner(library.get("observe"), "watch", horizon_s=0)
    assert hold.next_chunk([_obs(0.0)], now=0.0, latency_s=0.1).num_steps == 5 + 3


def test_next_observation_due_is_n_action_steps_after_the_last_chunks(library):
    """Receding horizon with latency: chunks are predicted from observations n_action_steps apart
    (as in training), whatever the latency made each chunk carry."""
    r = SkillRunner(library.get("pick"), "pick up the red cube", horizon_s=20 * PERIOD)
    assert r.next_observation_due() == -np.inf
    c = r.next_chunk([_obs(0.0), _obs(PERIOD)], now=PERIOD + 0.2, latency_s=0.25)
    assert c.num_steps == 15  # 8 fresh + 8 stale, capped at what the policy predicts
    assert r.next_observation_due() == pytest.approx(PERIOD + 8 * PERIOD)  # not the chunk's end
    assert r.next_due(0.1) == pytest.approx(c.end_time - 0.1)  # the fallback: before it runs out
    t = r.next_observation_due()
    r.next_chunk([_obs(t - PERIOD), _obs(t)], now=t + 0.2, latency_s=0.25)
    t = r.next_observation_due()
    r.next_chunk([_obs(t - PERIOD), _obs(t)], now=t + 0.2)
    assert r.last_fresh_steps == 4 and r.next_observation_due() == pytest.approx(t + 4 * PERIOD)


def test_next_due_waits_for_the_running_chunk(library):
    r = SkillRunner(library.get("pick"), "pick up the red cube", horizon_s=2.0)
    c = r.next_chunk([_obs(0.0), _obs(PERIOD)], now=PERIOD)
    assert r.next_due(0.1) == pytest.approx(c.end_time - 0.1)
    assert r.next_due(0.1) > PERIOD


def test_stale_observation_gives_no_chunk(library):
    r = SkillRunner(library.get("pick"), "pick up the red cube", horizon_s=1.0, max_obs_age_s=0.2)
    with pytest.raises(StaleObservationError, match=r"0\.500 s old \(limit 0\.200 s\)"):
        r.next_chunk([_obs(0.0), _obs(0.5)], now=1.0)
    with pytest.raises(StaleObservationError, match="no observation"):
        r.next_chunk([], now=1.0)
    assert r.chunks_planned == 0 and r.steps_planned == 0 and r.last_chunk is None
    assert r.next_chunk([_obs(0.9), _obs(0.95)], now=1.0).index == 0  # fresh again: chunk 0


def test_no_second_chunk_from_the_observation_of_the_last_one(library):
    """An observation gap must not make the runner re-plan from the moment the last chunk was
    planned from (the arm has moved on): no chunk, a stale status, until a newer one arrives."""
    r = SkillRunner(library.get("pick"), "pick up the red cube", horizon_s=1.0, max_obs_age_s=0.5)
    first = r.next_chunk([_obs(0.0), _obs(PERIOD)], now=PERIOD)
    with pytest.raises(StaleObservationError, match=r"no observation newer than the one chunk 0 was predicted from"):
        r.next_chunk([_obs(0.0), _obs(PERIOD)], now=first.end_time)
    assert r.chunks_planned == 1 and r.steps_planned == 8
    second = r.next_chunk([_obs(PERIOD), _obs(2 * PERIOD)], now=first.end_time)
    assert second.index == 1 and second.start_time > first.start_time


def test_bad_observations_are_rejected(library):
    r = SkillRunner(library.get("pick"), "pick up the red cube", horizon_s=1.0)
    no_cam = Observation(stamp=1.0, images={"wrist": np.zeros((8, 8, 3), np.uint8)}, joints=HOME_POSITION)
    with pytest.raises(ObservationError, match="needs camera 'front'"):
        r.next_chunk([no_cam], now=1.0)
    with pytest.raises(ObservationError, match=r"lacks \['gripper'\]"):
        r.next_chunk([_obs(1.0, joints={j: 0.0 for j in JOINTS[:5]})], now=1.0)
    with pytest.raises(ObservationError, match="H x W x 3 uint8"):
        r.next_chunk([_obs(1.0, shape=(48, 64))], now=1.0)


def test_images_of_any_size_are_resized_to_the_policy_input(library):
    r = SkillRunner(library.get("pick"), "pick up the red cube", horizon_s=1.0)
    assert r.next_chunk([_obs(1.0, shape=(480, 640, 3))], now=1.0).num_steps == 8


def test_observe_holds_the_starting_pose(library):
    r = SkillRunner(library.get("observe"), "watch the cue", horizon_s=0)  # 0 -> default 0.5 s
    assert r.horizon_steps == 15
    start = {**HOME_POSITION, "shoulder_pan": 0.3}
    chunks = [r.next_chunk([_obs(0.0, joints=start)], now=0.0)]
    moved = {**start, "shoulder_pan": 0.6}  # drift of the measured state must not move the target
    while not r.done:
        chunks.append(r.next_chunk([_obs(chunks[-1].end_time, joints=moved)], now=chunks[-1].end_time))
    assert [c.num_steps for c in chunks] == [5, 5, 5]
    for c in chunks:
        assert np.allclose(c.positions, [start[j] for j in JOINTS])


def test_home_opens_the_jaws_goes_home_within_its_speed_and_ends_there(library):
    """From a half-closed grasp away from home: the gripper opens before any other joint moves,
    no joint moves faster than max_speed_rad_s, the last target is the home pose (grippers at
    their home value), and the skill ends there, well before its 6 s horizon."""
    from hvla_ros.robot import GRIPPER_OPEN

    r = SkillRunner(library.get("home"), "return to the home pose", horizon_s=0)
    start = {"shoulder_pan": 0.5, "shoulder_lift": -0.2, "elbow_flex": 0.3, "wrist_flex": 1.2,
             "wrist_roll": 0.4, "gripper": 0.1}
    q, t, executed = dict(start), 0.0, [np.array([start[j] for j in JOINTS])]
    while not r.done:
        c = r.next_chunk([_obs(t, joints=q)], now=t, latency_s=0.1)  # latency: stale extra steps
        assert c.num_steps == 8 + 3 or r.done
        fresh = c.positions[: min(8, c.num_steps)]
        executed += list(fresh)
        q, t = dict(zip(JOINTS, fresh[-1], strict=True)), t + len(fresh) * PERIOD
    path = np.array(executed)
    g = JOINTS.index("gripper")
    assert r.motion_complete and r.steps_planned < r.horizon_steps
    assert np.allclose(path[-1], [HOME_POSITION[j] for j in JOINTS])
    assert np.abs(np.diff(path, axis=0)).max() <= 1.5 * PERIOD + 1e-9
    opened = int(np.argmax(path[:, g] >= GRIPPER_OPEN - 1e-9))
    assert opened > 0 and np.allclose(path[: opened + 1, :g], path[0, :g], atol=1e-6)  # only the jaws moved
    arm_moving = np.abs(np.diff(path[:, :g], axis=0)).max(axis=1) > 1e-6  # (the state arrives as float32)
    assert arm_moving.any() and (path[1:][arm_moving, g] >= GRIPPER_OPEN - 1e-9).all()  # jaws open meanwhile
    # The stale extra steps of a chunk repeat the motion's last target, never run past it.
    assert np.allclose(c.positions[-1], path[-1])


def test_home_from_home_ends_after_opening_and_closing_the_jaws(library):
    r = SkillRunner(library.get("home"), "return to the home pose", horizon_s=0)
    c = r.next_chunk([_obs(0.0)], now=0.0)
    while not r.done:
        c = r.next_chunk([_obs(c.end_time)], now=c.end_time)
    assert r.motion_complete and np.allclose(c.positions[-1], [HOME_POSITION[j] for j in JOINTS])


def test_buffer_history_spacing_and_padding():
    buf = ObservationBuffer()
    assert buf.history(2, PERIOD) == []
    buf.add(_obs(1.0))
    assert [o.stamp for o in buf.history(2, PERIOD)] == [1.0, 1.0]  # padded with the oldest
    for k in range(1, 6):
        buf.add(_obs(1.0 + k * 0.01))  # 100 Hz images, 30 Hz policy
    buf.add(_obs(0.5))  # out of order: ignored
    hist = buf.history(2, PERIOD)
    assert hist[-1].stamp == pytest.approx(1.05)
    assert hist[0].stamp == pytest.approx(1.02)  # nearest to 1.05 - 1/30
    # ending at a given stamp (the observation a chunk was planned from)
    assert [o.stamp for o in buf.history(2, PERIOD, until=1.03)] == pytest.approx([1.0, 1.03])
    assert buf.history(2, PERIOD, until=0.9) == []


def test_instruction_encoding_is_stable_and_separates_colours():
    red, blue = encode_instruction("pick up the red cube"), encode_instruction("Pick up the BLUE cube!")
    assert red.shape == (16,) and red.dtype == np.float32
    assert np.linalg.norm(red) == pytest.approx(1.0)
    assert not np.allclose(red, blue)
    assert np.allclose(red, encode_instruction("pick up red cube"))  # function words ignored
    assert tokens("Place the cube, then press") == ["place", "cube", "press"]
    assert not np.any(encode_instruction(""))


def test_joint_history_reads_the_arm_at_a_frame_stamp():
    from hvla_ros.executor.runner import JointHistory

    h = JointHistory(maxlen=8)
    assert h.at(1.0) is None
    for k in range(5):  # 100 Hz joint states, the arm moving 0.01 rad per sample
        h.add(1.0 + 0.01 * k, {"a": 0.01 * k, "b": -0.01 * k})
    h.add(1.045, {"a": 0.05})  # a partial state keeps the other joints' last positions
    stamp, pos = h.at(1.015)  # a camera frame between two samples: interpolated
    assert stamp == 1.015 and pos["a"] == pytest.approx(0.015) and pos["b"] == pytest.approx(-0.015)
    assert h.at(2.0) == (1.045, {"a": 0.05, "b": -0.04})  # newer than every sample: the newest
    assert h.at(0.5)[0] == 1.0  # older than the history: its oldest
    h.add(1.02, {"a": 9.0})  # out of order: ignored
    assert h.latest()[1]["a"] == 0.05
    for k in range(20):  # bounded
        h.add(2.0 + k, {"a": 0.0})
    assert len(h) == 8


def test_observation_pairs_the_frames_of_one_instant():
    """Frames of two cameras stamped alike arrive one after the other: the observation waits for
    the second, so it never shows the front camera's new frame with the wrist camera's previous
    one; cameras stamped independently give one observation per frame of the slower."""
    from hvla_ros.executor.runner import ObservationAssembler, ObservationBuffer

    buf = ObservationBuffer()
    asm = ObservationAssembler(["front", "wrist"], buf)
    frame = {t: np.full((2, 2, 3), t, dtype=np.uint8) for t in range(10)}
    for k in range(5):
        asm.add_joints(k / 30, {"shoulder_pan": float(k)})
    assert asm.add_image("front", 0 / 30, frame[0]) is None  # no wrist frame yet
    for t in (0, 1, 2):
        if t:
            assert asm.add_image("front", t / 30, frame[t]) is None  # the wrist frame of t not in yet
        obs = asm.add_image("wrist", t / 30, frame[t])
        assert obs is not None and obs.stamp == pytest.approx(t / 30)
        assert obs.images["front"][0, 0, 0] == obs.images["wrist"][0, 0, 0] == t
        assert obs.joints["shoulder_pan"] == pytest.approx(t)
    assert [o.stamp for o in buf.history(3, 1 / 30)] == pytest.approx([0, 1 / 30, 2 / 30])  # one per instant
    assert asm.add_image("wrist", 2 / 30, frame[2]) is None  # the same instant again: nothing new
    # independent stamps: the front camera ahead; an observation each time the wrist moves on
    asm.add_image("front", 4 / 30, frame[4])
    obs = asm.add_image("wrist", 3.5 / 30, frame[3])
    assert obs is not None and obs.stamp == pytest.approx(3.5 / 30)
    asm.clear()
    assert asm.add_image("front", 5 / 30, frame[5]) is None  # after clear, both cameras again


def test_observation_without_cameras_follows_joint_states():
    from hvla_ros.executor.runner import ObservationAssembler, ObservationBuffer

    buf = ObservationBuffer()
    asm = ObservationAssembler([], buf)
    for k in range(3):
        obs = asm.add_joints(k / 120, {"shoulder_pan": float(k)})
        assert obs is not None and obs.stamp == pytest.approx(k / 120) and obs.images == {}
    assert buf.latest().joints["shoulder_pan"] == 2.0


def test_observation_waits_for_the_joint_state_of_its_frames():
    """Frames that arrive before the joint states of their instant (those callbacks queued behind
    a busy thread) are paired with the arm's position at the frames' stamp once it is in, not
    with the older position held over."""
    from hvla_ros.executor.runner import ObservationAssembler, ObservationBuffer

    buf = ObservationBuffer()
    asm = ObservationAssembler(["front"], buf)
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    asm.add_joints(0.0, {"shoulder_pan": 0.0})
    assert asm.add_image("front", 0.1, img) is None  # joint states only up to 0.0
    assert asm.add_joints(0.05, {"shoulder_pan": 0.5}) is None
    obs = asm.add_joints(0.15, {"shoulder_pan": 1.5})
    assert obs is not None and obs.stamp == pytest.approx(0.1)
    assert obs.joints["shoulder_pan"] == pytest.approx(1.0)  # interpolated at the frame, not 0.0
    assert asm.add_joints(0.2, {"shoulder_pan": 2.0}) is None  # that frame is done
