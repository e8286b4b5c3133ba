"""Colour-keypoint image encoder: features, masking, bad input, and a keypoint skill end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from hvla_ros.cli import main as hvla
from hvla_ros.executor import keypoints as kp


def _scene(h: int = 96, w: int = 128) -> np.ndarray:
    img = np.full((h, w, 3), (150, 110, 70), dtype=np.uint8)  # brown table: no palette colour
    img[20:40, 80:100] = (220, 20, 20)  # red square: rows 20..39, columns 80..99
    return img


def _colour(feats: np.ndarray, colour: str) -> np.ndarray:
    i = kp.KEYPOINT_COLOURS.index(colour)
    return feats[i * kp.FEATURES_PER_COLOUR : (i + 1) * kp.FEATURES_PER_COLOUR]


def test_red_square_gives_centroid_area_and_spread():
    feats = kp.encode_image(_scene())
    assert feats.shape == (kp.features_per_camera(),)
    area, u, v, su, sv = _colour(feats, "red")
    assert area == pytest.approx(np.sqrt(400 / (96 * 128)), rel=1e-3)
    assert u == pytest.approx(90 / 128 * 2 - 1, abs=1e-3)  # centre column 89.5 + 0.5
    assert v == pytest.approx(30 / 96 * 2 - 1, abs=1e-3)
    assert su == pytest.approx(np.sqrt((20**2 - 1) / 12) / 128 * 2, rel=1e-3)  # uniform over 20 px
    assert sv == pytest.approx(np.sqrt((20**2 - 1) / 12) / 96 * 2, rel=1e-3)
    for other in ("green", "blue", "yellow", "grey"):
        assert not _colour(feats, other).any()


def test_resolution_does_not_change_the_features():
    small = kp.encode_image(_scene())
    big = kp.encode_image(np.kron(_scene(), np.ones((2, 2, 1), np.uint8)))
    np.testing.assert_allclose(small, big, atol=0.02)


def test_masked_out_square_disappears():
    from hvla_ros.perception.filtering import apply_mask

    img = _scene()
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[18:42, 78:102] = 1
    filtered = apply_mask(img, mask, fill="zero")
    assert not _colour(kp.encode_image(filtered), "red").any()


def _square(yaw: float, half: int = 15) -> np.ndarray:
    import cv2

    img = np.full((96, 128, 3), (150, 110, 70), dtype=np.uint8)
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]], float) @ rot.T + (64, 48)
    cv2.fillConvexPoly(img, np.round(corners).astype(np.int32), (220, 20, 20))
    return img


def test_orientation_tells_a_square_s_yaw_that_the_spread_cannot():
    """A square's centroid and spread are the same at every yaw; the orientation values change
    with the yaw, repeat every 90 degrees (a square's symmetry) and are absent for absent colours."""
    n = kp.features_per_camera()
    feats = {y: kp.encode_image(_square(y), orientation=True) for y in (0.0, 0.2, 0.4, np.pi / 2)}
    assert all(f.shape == (kp.features_per_camera(orientation=True),) for f in feats.values())
    red = kp.KEYPOINT_COLOURS.index("red") * kp.ORIENTATION_PER_COLOUR
    orient = {y: f[n + red : n + red + 2] for y, f in feats.items()}
    np.testing.assert_allclose(_colour(feats[0.0], "red"), _colour(feats[0.4], "red"), atol=0.01)
    np.testing.assert_array_equal(feats[0.0][:n], kp.encode_image(_square(0.0)))  # same leading block
    assert np.abs(orient[0.0] - orient[0.2]).max() > 0.1
    assert np.abs(orient[0.2] - orient[0.4]).max() > 0.1
    np.testing.assert_allclose(orient[0.0], orient[np.pi / 2], atol=0.02)
    # the moment's angle turns four times as far as the square (both in image coordinates)
    angle = {y: np.angle(complex(*orient[y])) for y in (0.0, 0.2)}
    assert (angle[0.2] - angle[0.0]) % (2 * np.pi) == pytest.approx(0.8, abs=0.1)
    others = np.delete(feats[0.0][n:].reshape(-1, 2), kp.KEYPOINT_COLOURS.index("red"), axis=0)
    assert not others.any()
    names = kp.feature_names(["front", "wrist"], orientation=True)
    assert len(names) == kp.feature_dim(2, orientation=True) and names[n + red] == "front.red.orient_re"


@pytest.mark.parametrize(
    "bad",
    [np.zeros((96, 128), np.uint8), np.zeros((96, 128, 3), np.float32), np.zeros((96, 128, 4), np.uint8)],
)
def test_bad_images_are_rejected(bad):
    with pytest.raises(kp.KeypointError, match="H x W x 3 uint8"):
        kp.encode_image(bad)
    with pytest.raises(kp.KeypointError, match="camera 'front'"):
        kp.encode_cameras({"front": bad}, ["front"])
    with pytest.raises(kp.KeypointError, match="needs camera 'wrist'"):
        kp.encode_cameras({"front": _scene()}, ["front", "wrist"])


@pytest.fixture(scope="module")
def keypoint_policy(tmp_path_factory):
    from hvla_ros.executor.demos import write_synthetic_dataset

    root = tmp_path_factory.mktemp("kp")
    ds = write_synthetic_dataset(root / "demos", episodes=2, frames=20, cameras=("front", "wrist"),
                                 image_hw=(24, 32))
    out = root / "pick"
    rc = hvla(["train-skill", "--dataset", str(ds), "--skill", "pick", "--out", str(out), "--steps", "3",
               "--batch-size", "4", "--down-dims", "16,32", "--horizon", "8", "--n-action-steps", "4",
               "--threads", "1", "--no-progress", "--image-encoder", "colour_keypoints",
               "--cameras", "front", "wrist"])
    assert rc == 0
    return out


def test_training_a_keypoint_policy_writes_a_low_dim_policy(keypoint_policy):
    meta = json.loads((keypoint_policy / "hvla_policy.json").read_text())
    assert meta["image_encoder"] == "colour_keypoints"
    assert meta["keypoint_cameras"] == ["front", "wrist"]
    cfg = json.loads((keypoint_policy / "config.json").read_text())
    feats = cfg["input_features"]
    assert not any(k.startswith("observation.images") for k in feats)
    assert feats["observation.environment_state"]["shape"] == [kp.feature_dim(2) + 16]
    assert json.loads((keypoint_policy / "training_log.json").read_text())["steps"] == 3


def test_keypoint_skill_loads_from_yaml_and_runs(keypoint_policy, tmp_path):
    from hvla_ros.executor.library import SkillConfigError, SkillLibrary
    from hvla_ros.executor.runner import Observation, ObservationError, SkillRunner
    from hvla_ros.robot import HOME_POSITION

    entry = {"policy": str(keypoint_policy), "cameras": ["front", "wrist"], "image_encoder": "colour_keypoints",
             "n_action_steps": 4, "denoising_steps": 2}
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"robot": "so101", "skills": {"pick": entry}}))
    lib = SkillLibrary.load(f)
    skill = lib.get("pick")
    assert skill.bundle.keypoint_dim == kp.feature_dim(2)
    runner = SkillRunner(skill, "pick up the red cube", horizon_s=1.0)
    obs = Observation(stamp=0.0, images={"front": _scene(), "wrist": _scene(48, 64)}, joints=dict(HOME_POSITION))
    chunk = runner.next_chunk([obs], now=0.0)
    assert chunk.positions.shape == (4, len(skill.spec.action_joints))
    assert np.all(np.isfinite(chunk.positions))
    with pytest.raises(ObservationError, match="needs camera 'wrist'"):
        runner.next_chunk([Observation(stamp=0.1, images={"front": _scene()}, joints=dict(HOME_POSITION))],
                          now=0.1)
    # The entry must say which encoder the policy was trained with.
    f.write_text(yaml.safe_dump({"robot": "so101", "skills": {"pick": {**entry, "image_encoder": "pixels"}}}))
    with pytest.raises(SkillConfigError, match="image encoder 'colour_keypoints'"):
        SkillLibrary.load(f)


def test_shipped_keypoint_library_loads():
    from hvla_ros.executor.library import SkillLibrary, package_dir

    lib = SkillLibrary.load(package_dir() / "config" / "skills_keypoints.yaml")
    assert lib.names() == sorted(SkillLibrary.load().names())  # the default library is this one
    for name in ("pick", "place", "push", "press", "open_drawer"):
        skill = lib.get(name)
        assert skill.bundle.image_encoder == "colour_keypoints"
        assert skill.bundle.cameras == ["front", "wrist"]


def test_train_refiner_on_a_keypoint_skill(keypoint_policy, tmp_path):
    from hvla_ros.refiner.train import load_refiner

    ds = keypoint_policy.parent / "demos"
    out = tmp_path / "refiner"
    rc = hvla(["train-refiner", "--dataset", str(ds), "--skill", "pick", "--policy", str(keypoint_policy),
               "--out", str(out), "--steps", "3", "--batch-size", "8", "--d-model", "16", "--layers", "1",
               "--val-every", "2", "--threads", "1", "--no-progress"])
    assert rc == 0
    model, _ = load_refiner(out)
    # Context per observation step: state (6) + keypoints of two cameras + instruction (16).
    assert model.cfg.context_dim == 6 + kp.feature_dim(2) + 16


@pytest.mark.parametrize(
    ("text", "targets"),
    [
        ("pick up the red cube", ("red", None)),
        ("place the blue cube on the yellow cube", ("blue", "yellow")),
        ("place the red cube in the box", ("red", "grey")),
        ("press the green button", ("green", None)),
        ("watch the cue", (None, None)),
    ],
)
def test_instruction_names_the_target_colours(text, targets):
    assert kp.instruction_targets(text) == targets


def test_target_block_copies_the_named_colours_features():
    front, wrist = kp.encode_image(_scene()), kp.encode_image(_scene()[::-1].copy())
    both = np.concatenate([front, wrist])
    block = kp.target_block(both, 2, ("red", "grey"))
    assert block.shape == (kp.target_dim(2),)
    f = kp.FEATURES_PER_COLOUR
    np.testing.assert_array_equal(block[:f], _colour(front, "red"))  # front: object
    assert not block[f : 2 * f].any()  # front: destination grey is absent from the image
    np.testing.assert_array_equal(block[2 * f : 3 * f], _colour(wrist, "red"))  # wrist: object
    assert not kp.target_block(both, 2, (None, None)).any()
    batch = kp.target_block(np.stack([both, both]), 2, ("red", None))  # works on a batch too
    np.testing.assert_array_equal(batch[1], kp.target_block(both, 2, ("red", None)))


def _train_tiny_keypoint_pick(tmp_path, dataset, *flags):
    """A 2-step colour-keypoint pick (front + wrist) trained by ``hvla train-skill`` with ``flags``,
    loaded through a skill library file."""
    from hvla_ros.executor.library import SkillLibrary

    out = tmp_path / "pick"
    rc = hvla(["train-skill", "--dataset", str(dataset), "--skill", "pick", "--out", str(out), "--steps", "2",
               "--batch-size", "4", "--down-dims", "16,32", "--horizon", "8", "--n-action-steps", "4",
               "--threads", "1", "--no-progress", "--image-encoder", "colour_keypoints", *flags,
               "--cameras", "front", "wrist"])
    assert rc == 0
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"robot": "so101", "skills": {"pick": {
        "policy": str(out), "cameras": ["front", "wrist"], "image_encoder": "colour_keypoints",
        "n_action_steps": 4, "denoising_steps": 2}}}))
    return SkillLibrary.load(f).get("pick")


def test_a_targeted_keypoint_policy_reads_what_its_instruction_names(tmp_path):
    """--keypoint-target: training data and the runner both append the named colour's features,
    so a policy sees the red square when told "red", nothing when told "blue"."""
    from hvla_ros.executor.demos import load_demos, write_synthetic_dataset
    from hvla_ros.executor.runner import Observation, SkillRunner, policy_inputs
    from hvla_ros.robot import HOME_POSITION

    ds = write_synthetic_dataset(tmp_path / "demos", episodes=2, frames=20, cameras=("front", "wrist"),
                                 image_hw=(24, 32))
    data = load_demos(ds, cameras=["front", "wrist"], image_hw=(24, 32), pattern=r"^pick up",
                      image_encoder=kp.ENCODER_NAME, keypoint_target=True)
    n_kp = kp.feature_dim(2)
    assert data.instruction.shape[1] == n_kp + kp.target_dim(2) + 16
    skill = _train_tiny_keypoint_pick(tmp_path, ds, "--keypoint-target")
    assert skill.bundle.meta["keypoint_target"] is True
    assert skill.bundle.keypoint_dim == n_kp + kp.target_dim(2)
    obs = Observation(stamp=0.0, images={"front": _scene(), "wrist": _scene()}, joints=dict(HOME_POSITION))
    red = policy_inputs(skill, obs, None, "pick up the red cube")["observation.environment_state"].numpy()
    blue = policy_inputs(skill, obs, None, "pick up the blue cube")["observation.environment_state"].numpy()
    np.testing.assert_array_equal(red[n_kp : n_kp + kp.FEATURES_PER_COLOUR], _colour(kp.encode_image(_scene()), "red"))
    assert not blue[n_kp:].any()
    chunk = SkillRunner(skill, "pick up the red cube", horizon_s=1.0).next_chunk([obs], now=0.0)
    assert np.all(np.isfinite(chunk.positions))


def test_an_orientation_keypoint_policy_gets_the_same_features_in_training_and_at_run_time(tmp_path):
    """--keypoint-orientation: the training data and the runner both put each camera's orientation
    values after its keypoints (and the target block still copies the right colour)."""
    from hvla_ros.executor.demos import load_demos, write_synthetic_dataset
    from hvla_ros.executor.runner import Observation, SkillRunner, policy_inputs
    from hvla_ros.robot import HOME_POSITION

    ds = write_synthetic_dataset(tmp_path / "demos", episodes=2, frames=20, cameras=("front", "wrist"),
                                 image_hw=(24, 32))
    n_kp = kp.feature_dim(2, orientation=True)
    data = load_demos(ds, cameras=["front", "wrist"], image_hw=(24, 32), pattern=r"^pick up",
                      image_encoder=kp.ENCODER_NAME, keypoint_target=True, keypoint_orientation=True)
    assert data.instruction.shape[1] == n_kp + kp.target_dim(2) + 16
    skill = _train_tiny_keypoint_pick(tmp_path, ds, "--keypoint-target", "--keypoint-orientation")
    assert json.loads((tmp_path / "pick" / "hvla_policy.json").read_text())["keypoint_orientation"] is True
    assert skill.bundle.keypoint_dim == n_kp + kp.target_dim(2)
    images = {"front": _square(0.3), "wrist": _scene()}
    obs = Observation(stamp=0.0, images=images, joints=dict(HOME_POSITION))
    env = policy_inputs(skill, obs, None, "pick up the red cube")["observation.environment_state"].numpy()
    np.testing.assert_array_equal(env[:n_kp], kp.encode_cameras(images, ["front", "wrist"], orientation=True))
    front_red = kp.encode_image(_square(0.3))[kp.KEYPOINT_COLOURS.index("red") * 5:][:5]
    np.testing.assert_array_equal(env[n_kp : n_kp + kp.FEATURES_PER_COLOUR], front_red)
    chunk = SkillRunner(skill, "pick up the red cube", horizon_s=1.0).next_chunk([obs], now=0.0)
    assert np.all(np.isfinite(chunk.positions))


def test_shipped_multitask_library_reads_what_the_instruction_names():
    from hvla_ros.executor.library import SkillLibrary, package_dir

    lib = SkillLibrary.load(package_dir() / "config" / "skills_multitask.yaml")
    assert lib.names() == sorted(SkillLibrary.load().names())
    for name in ("pick", "place", "press"):
        bundle = lib.get(name).bundle
        assert bundle.meta["keypoint_target"] is True
        assert bundle.keypoint_dim == kp.feature_dim(2) + kp.target_dim(2)
    assert "pick up the blue cube" in lib.get("pick").bundle.meta["tasks"]


def test_shipped_bimanual_library_drives_both_arms():
    """The handover skills: one policy per subtask over the front and both wrist cameras, each
    predicting all 12 joints of the two-arm robot; the graph picks this library for the task."""
    from hvla_ros.executor.library import SkillLibrary, skills_file_for_task
    from hvla_ros.executor.runner import Observation, SkillRunner
    from hvla_ros.robot import get_robot

    robot = get_robot("so101_bimanual")
    lib = SkillLibrary.load(skills_file_for_task("bimanual_handover"))
    assert lib.robot.name == "so101_bimanual"
    assert lib.names() == ["handover", "pick", "place"]
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for c in robot.cameras}
    joints = {j: 0.0 for j in robot.joint_names}
    for name in lib.names():
        skill = lib.get(name)
        assert skill.spec.cameras == ("front", "left_wrist", "right_wrist")
        assert skill.spec.action_joints == tuple(robot.joint_names)
        # the cube's yaw decides the wrist turn: these policies read the blobs' orientation too
        assert skill.bundle.meta["keypoint_orientation"] is True
        assert skill.bundle.keypoint_dim == kp.feature_dim(3, orientation=True)
        obs = [Observation(stamp=k / 30, images=images, joints=joints) for k in range(2)]
        chunk = SkillRunner(skill, skill.spec.description, horizon_s=1.0).next_chunk(obs, now=obs[-1].stamp)
        assert chunk.positions.shape[1] == 12 and np.all(np.isfinite(chunk.positions))


def test_shipped_flat_baselines_one_per_task_on_that_tasks_robot():
    from hvla_ros.executor.library import FLAT_SKILL_LIBRARIES, SkillLibrary, flat_skills_file_for_robot
    from hvla_ros.sim.tasks import TASKS

    names = set()
    for robot in FLAT_SKILL_LIBRARIES:
        lib = SkillLibrary.load(flat_skills_file_for_robot(robot))
        assert lib.robot.name == robot
        for name in lib.names():
            assert name.startswith("flat_") and TASKS[name[len("flat_"):]].robot_name == robot
            assert lib.get(name).spec.default_horizon_s >= 15.0  # the whole task, not one subtask
        names |= set(lib.names())
    # every task of more than one subtask has its baseline (for one-skill tasks the skill is the flat policy)
    one_skill = {"pen_in_holder", "open_drawer"}
    assert names == {f"flat_{t}" for t in set(TASKS) - one_skill}
    with pytest.raises(ValueError, match="no flat baseline library for robot 'so100'"):
        flat_skills_file_for_robot("so100")
