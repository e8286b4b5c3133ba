"""Expert demonstrations recorded to a LeRobotDataset (v3, image frames) and a rosbag2 MCAP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hvla_ros import topics
from hvla_ros.robot import SO101

H, W = 32, 40


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    from hvla_ros.cli import main

    root = tmp_path_factory.mktemp("demos") / "cube_in_box"
    rc = main(["record-demos", "--task", "cube_in_box", "--episodes", "1", "--root", str(root),
               "--image-size", f"{H}x{W}", "--bag", "--first-seed", "3"])
    assert rc == 0
    return root


def test_dataset_loads_back_with_subtask_instructions_as_tasks(recorded):
    from hvla_ros.lerobot_compat import open_dataset
    from hvla_ros.sim.world import SimWorld

    ds = open_dataset(recorded)
    assert ds.meta.total_episodes == 1
    assert ds.fps == 30
    n = len(ds)
    assert n > 30
    first, last = ds[0], ds[n - 1]
    for cam in SO101.cameras:
        assert tuple(first[f"observation.images.{cam}"].shape) == (3, H, W)
    assert tuple(first["observation.state"].shape) == (6,)
    assert tuple(first["action"].shape) == (6,)
    # Segmented by subtask: the instruction of the canonical subtasks, in order.
    world = SimWorld("cube_in_box", seed=3, render=False)
    try:
        expected = [s.instruction for s in world.task.expert(world).subtasks]
    finally:
        world.close()
    assert first["task"] == expected[0]
    assert last["task"] == expected[-1]
    tasks = [ds[i]["task"] for i in range(n)]
    switches = [tasks[i] for i in range(n) if i == 0 or tasks[i] != tasks[i - 1]]
    assert switches == expected
    # The state starts at the home pose and the action moves the arm (it is not a copy of the state).
    states = np.stack([ds[i]["observation.state"].numpy() for i in range(0, n, 10)])
    actions = np.stack([ds[i]["action"].numpy() for i in range(0, n, 10)])
    assert np.ptp(states[:, 0]) > 0.05
    assert not np.allclose(states, actions)


def test_bag_is_readable_by_rosbags_and_mcap(recorded):
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    bag = recorded / "bags" / "episode_000000"
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        n = counts[topics.JOINT_STATES]
        assert n > 30
        assert counts[topics.camera_image("front")] == counts[topics.camera_image("wrist")] == n
        assert counts[topics.trajectory_topic("arm_controller")] == n
        conns = [c for c in reader.connections if c.topic == topics.camera_image("front")]
        _, _, raw = next(iter(reader.messages(connections=conns)))
        img = reader.deserialize(raw, conns[0].msgtype)
        assert (img.height, img.width, img.encoding) == (H, W, "rgb8")
        assert img.data.size == H * W * 3

    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    mcap_file = next(bag.glob("*.mcap"))
    with mcap_file.open("rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        instructions = [m.data for _, _, _, m in reader.iter_decoded_messages(topics=["expert/instruction"])]
    assert instructions == ["pick up the red cube", "place the red cube in the box"]


def test_existing_root_is_refused(recorded):
    from hvla_ros.cli import main

    assert main(["record-demos", "--task", "cube_in_box", "--episodes", "1", "--root", str(recorded)]) == 2


def _rollout_with_executed_targets(world, seed, noise):
    """A recorded rollout and the targets the arm really received at each step."""
    from hvla_ros.sim.recorder import rollout

    executed: list[np.ndarray] = []
    real = world.set_joint_targets

    def spy(q):
        executed.append(np.asarray(q, dtype=float).copy())
        real(q)

    world.set_joint_targets = spy
    try:
        rec = rollout(world, seed, [], noise)
    finally:
        del world.set_joint_targets
    return rec, np.array(executed)


def test_dart_noise_perturbs_what_the_arm_executes_not_what_is_recorded():
    from hvla_ros.sim.recorder import DartNoise
    from hvla_ros.sim.world import SimWorld

    world = SimWorld("cube_in_box", render=False)
    noise = DartNoise(0.03, 0.5, ("place",))
    rec, executed = _rollout_with_executed_targets(world, 4, noise)
    actions = np.array(rec.actions, dtype=float)
    placing = np.array(["place" in i for i in rec.instructions])
    assert placing.any() and (~placing).any()
    diff = executed - actions
    grip = [world.joint_names.index(j) for j in world.robot.gripper_joints]
    arm = [i for i in range(len(world.joint_names)) if i not in grip]
    assert np.allclose(diff[:, grip], 0.0, atol=1e-6)  # grippers are never perturbed
    assert np.allclose(diff[~placing], 0.0, atol=1e-6)  # only the named skill's subtask
    # the arm joints of the place are perturbed by about sigma (an OU process, time constant 0.5 s)
    assert 0.01 < np.std(diff[placing][:, arm]) < 0.06
    # the recording is the expert's response to the perturbed world: same seed, same recording
    again, _ = _rollout_with_executed_targets(world, 4, noise)
    assert np.array_equal(np.array(again.actions), np.array(rec.actions))
    clean, _ = _rollout_with_executed_targets(world, 4, None)
    n = int(np.argmax(placing))  # the pick is the clean expert's; the place differs
    assert np.array_equal(np.array(clean.states[:n]), np.array(rec.states[:n]))
    assert not np.allclose(np.array(clean.states[n:n + 60]), np.array(rec.states[n:n + 60]), atol=1e-3)


def test_bad_noise_and_grasp_variation_are_refused_naming_the_value(tmp_path):
    from hvla_ros.cli import main
    from hvla_ros.sim.recorder import DartNoise
    from hvla_ros.sim.world import SimWorld

    with pytest.raises(ValueError, match=r"sigma must be within .* got -0\.1"):
        DartNoise(-0.1)
    with pytest.raises(ValueError, match=r"time constant must be > 0 s, got 0\.0"):
        DartNoise(0.02, 0.0)
    world = SimWorld("cube_in_box", render=False)
    with pytest.raises(ValueError, match="'cube_in_box': its expert has no grasp variation"):
        world.task.set_grasp_jitter(0.003)
    root = tmp_path / "demos"
    assert main(["record-demos", "--task", "cube_in_box", "--episodes", "1", "--root", str(root),
                 "--grasp-jitter", "0.003"]) == 2
    assert not root.exists()
    assert main(["record-demos", "--task", "cube_in_box", "--episodes", "1", "--root", str(root),
                 "--dart-noise", "0.03", "--dart-skills", "handover"]) == 2  # no such subtask: nothing perturbed
    assert not root.exists()


def test_grasp_jitter_moves_the_right_grasp_and_keeps_the_scene():
    from hvla_ros.sim.world import SimWorld

    world = SimWorld("bimanual_handover", render=False)
    world.reset(3)
    cube = world.body_pos("cube").copy()
    assert np.array_equal(world.task._grasp_offset, np.zeros(3))
    world.task.set_grasp_jitter(0.003)
    world.reset(3)
    offset = world.task._grasp_offset.copy()
    assert np.array_equal(world.body_pos("cube"), cube)  # the seed's scene does not change
    assert 0 < np.abs(offset).max() <= 0.003 and offset[1] == 0.0
    world.reset(4)
    assert not np.array_equal(world.task._grasp_offset, offset)  # drawn per episode
    with pytest.raises(ValueError, match=r"within \[0, 0\.01\] m, got 0\.05"):
        world.task.set_grasp_jitter(0.05)
