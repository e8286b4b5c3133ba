"""Skill library loading and its errors: missing/corrupt checkpoints, mismatched observations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hvla_ros.executor.library import SkillConfigError, SkillLibrary, UnknownSkillError
from hvla_ros.robot import JOINTS


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    import torch

    from hvla_ros.executor.training import save_untrained_policy

    torch.set_num_threads(1)
    return save_untrained_policy(
        tmp_path_factory.mktemp("pol") / "pick",
        cameras=["front"],
        joint_names=JOINTS,
        image_hw=(32, 40),
        down_dims=(16, 32, 64),
        backbone_stages=1,
    )


def _doc(policy: Path | str, **entry) -> dict:
    return {
        "robot": "so101",
        "skills": {
            "pick": {
                "description": "pick up",
                "policy": str(policy),
                "cameras": ["front"],
                "n_action_steps": 8,
                "default_horizon_s": 3.0,
                "denoising_steps": 3,
                **entry,
            },
            "observe": {"description": "hold", "policy": "hold", "default_horizon_s": 1.0},
        },
    }


def test_loads_valid_library_with_policy_and_hold(policy_dir, tmp_path):
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump(_doc(policy_dir)))
    lib = SkillLibrary.load(f)
    assert lib.names() == ["observe", "pick"]
    pick = lib.get("pick")
    assert pick.bundle is not None and pick.spec.chunk_length == 16
    assert pick.spec.step_period_s == pytest.approx(1 / 30)
    assert pick.bundle.policy.diffusion.num_inference_steps == 3
    assert lib.get("observe").spec.is_hold
    with pytest.raises(UnknownSkillError, match="unknown skill 'fly'"):
        lib.get("fly")


def test_only_keeps_the_named_skills_and_still_validates_the_rest(policy_dir, tmp_path):
    doc = _doc(policy_dir)
    doc["skills"]["place"] = {**doc["skills"]["pick"], "policy": str(tmp_path / "not_there")}
    lib = SkillLibrary.from_dict(doc, only={"pick", "fly"})  # place's missing checkpoint is not loaded
    assert lib.names() == ["pick"] and lib.get("pick").bundle is not None
    doc["skills"]["place"]["colour"] = "red"  # an unknown key: still an error
    with pytest.raises(SkillConfigError, match=r"skill 'place'.*colour"):
        SkillLibrary.from_dict(doc, only={"pick"})


def test_shipped_library_parses():
    lib = SkillLibrary.load(load_policies=False)
    assert "observe" in lib.names()


def test_missing_checkpoint_names_path_and_reason(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SkillConfigError, match=rf"skill 'pick'.*{missing}.*directory does not exist"):
        SkillLibrary.from_dict(_doc(missing))


def test_missing_weights_file(policy_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(policy_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(SkillConfigError, match=rf"{broken}.*missing file model.safetensors"):
        SkillLibrary.from_dict(_doc(broken))


def test_corrupt_weights(policy_dir, tmp_path):
    broken = tmp_path / "corrupt"
    shutil.copytree(policy_dir, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(SkillConfigError, match=rf"{broken}.*model.safetensors is corrupt"):
        SkillLibrary.from_dict(_doc(broken))


def test_weights_not_matching_config(policy_dir, tmp_path):
    broken = tmp_path / "mismatch"
    shutil.copytree(policy_dir, broken)
    cfg = json.loads((broken / "config.json").read_text())
    cfg["down_dims"] = [8, 16, 32]
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SkillConfigError, match=rf"{broken}.*weights do not match config.json"):
        SkillLibrary.from_dict(_doc(broken))


def test_corrupt_config(policy_dir, tmp_path):
    broken = tmp_path / "badcfg"
    shutil.copytree(policy_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(SkillConfigError, match=rf"{broken}.*config.json is not a valid policy config"):
        SkillLibrary.from_dict(_doc(broken))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"cameras": ["wrist"]}, r"policy reads cameras \['front'\], the entry declares \['wrist'\]"),
        ({"cameras": ["front", "wrist"]}, r"policy reads cameras"),
        ({"state_joints": list(JOINTS[:5])}, r"observation.state has 6 values, the entry declares 5"),
        ({"action_joints": list(JOINTS[:4])}, r"action has 6 values, the entry declares 4"),
        ({"instruction": "none"}, r"instruction='none' but the policy has an instruction input"),
        ({"chunk_length": 32}, r"chunk_length 32 != the policy's horizon 16"),
        ({"n_action_steps": 16}, r"n_action_steps 16 > horizon - n_obs_steps \+ 1 = 15"),
    ],
)
def test_observation_mismatch_is_a_clear_error(policy_dir, entry, message):
    with pytest.raises(SkillConfigError, match=message):
        SkillLibrary.from_dict(_doc(policy_dir, **entry))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"skills": {}}, "non-empty 'skills'"),
        ({"robot": "r2d2", "skills": {"x": {"policy": "hold"}}}, "unknown robot 'r2d2'"),
        ({"skills": {"x": {"policy": "hold", "speed": 3}}}, r"unknown keys \['speed'\]"),
        ({"skills": {"x": {"policy": "p", "cameras": ["top"]}}}, r"cameras \['top'\] are not cameras"),
        (
            {"skills": {"x": {"policy": "p", "cameras": ["front"], "state_joints": ["elbow"]}}},
            r"joints \['elbow'\]",
        ),
        ({"skills": {"x": {"policy": "hold", "default_horizon_s": -1}}}, "must be >= 0.0"),
        ({"skills": {"x": {"policy": None}}}, "'policy' must be"),
        ({"skills": {"x": {"policy": "p", "cameras": ["front"], "state_clamp": -0.1}}},
         r"'state_clamp' must be >= 0.0, got -0.1"),
        ({"skills": {"x": {"policy": "p", "cameras": ["front"], "state_clamp": "yes"}}},
         r"'state_clamp' must be a float, got 'yes'"),
        ({"skills": {"x": {"policy": "hold", "state_clamp": 0.25}}},
         r"'state_clamp' has no effect on a hold skill .* got 0\.25"),
        ({"skills": {"x": {"policy": "home", "max_speed_rad_s": 0}}}, r"'max_speed_rad_s' must be > 0, got 0"),
        ({"skills": {"x": {"policy": "hold", "max_speed_rad_s": 1.0}}},
         r"'max_speed_rad_s' applies to the 'home' motion only, got 1\.0 on a hold skill"),
        ({"skills": {"x": {"policy": "p", "cameras": ["front"], "max_speed_rad_s": 1.0}}},
         r"'max_speed_rad_s' applies to the 'home' motion only, got 1\.0 on a learned skill"),
        ({"skills": {"x": {"policy": "home", "max_speed_rad_s": "fast"}}},
         r"'max_speed_rad_s' must be a float, got 'fast'"),
    ],
)
def test_bad_entries_rejected_without_loading(doc, message):
    with pytest.raises(SkillConfigError, match=message):
        SkillLibrary.from_dict(doc, load_policies=False)


def test_unreadable_yaml(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("skills: [unclosed")
    with pytest.raises(SkillConfigError, match="not valid YAML"):
        SkillLibrary.load(f)
    with pytest.raises(SkillConfigError, match="cannot read skill library"):
        SkillLibrary.load(tmp_path / "absent.yaml")


def test_state_clamp_keeps_the_policy_state_within_the_demonstrations_range(policy_dir):
    """With state_clamp the policy sees each joint within its training range widened by that
    fraction (the untrained policy's range is the joint limits); without it, the raw reading."""
    import numpy as np

    from hvla_ros.executor.runner import Observation, policy_state
    from hvla_ros.robot import POSITION_LIMITS

    lims = np.array([POSITION_LIMITS[j] for j in JOINTS], dtype=np.float32)
    width = lims[:, 1] - lims[:, 0]
    raw = {j: 0.0 for j in JOINTS} | {JOINTS[0]: 50.0, JOINTS[1]: -50.0}
    obs = Observation(stamp=0.0, images={}, joints=raw)
    plain = SkillLibrary.from_dict(_doc(policy_dir)).get("pick")
    assert plain.state_bounds is None
    assert policy_state(plain, obs)[:2].tolist() == [50.0, -50.0]
    clamped = SkillLibrary.from_dict(_doc(policy_dir, state_clamp=0.25)).get("pick")
    q = policy_state(clamped, obs)
    assert q[0] == pytest.approx(lims[0, 1] + 0.25 * width[0], rel=1e-5)
    assert q[1] == pytest.approx(lims[1, 0] - 0.25 * width[1], rel=1e-5)
    assert q[2:].tolist() == [0.0] * (len(JOINTS) - 2)  # within range: untouched
