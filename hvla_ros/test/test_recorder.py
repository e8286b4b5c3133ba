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
