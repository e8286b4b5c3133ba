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
    for name in ("pick", "place"):
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
