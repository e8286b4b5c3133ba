"""The refiners shipped for the default skills (pick, place, push, press, open_drawer) load and
refine those skills' chunks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hvla_ros.robot import GRIPPER_CLOSED, GRIPPER_JOINT, GRIPPER_OPEN, HOME_POSITION

INSTRUCTIONS = {"pick": "pick up the red cube", "place": "place the red cube in the box",
                "push": "push the pen into the holder", "press": "press the red button",
                "open_drawer": "pull the drawer open"}
#: The gripper in a typical chunk of each skill: closing on the cube (or the drawer's handle),
#: releasing it; push and press keep the jaws closed.
GRIPPER_MOTION = {"pick": (GRIPPER_OPEN, GRIPPER_CLOSED), "place": (GRIPPER_CLOSED, GRIPPER_OPEN),
                  "push": (GRIPPER_CLOSED, GRIPPER_CLOSED), "press": (GRIPPER_CLOSED, GRIPPER_CLOSED),
                  "open_drawer": (GRIPPER_OPEN, GRIPPER_CLOSED)}
SHIPPED = sorted(INSTRUCTIONS)


@pytest.mark.parametrize("skill", SHIPPED)
def test_shipped_refiner_loads_and_refines_a_chunk(skill):
    """Fast path (no LeRobot): the checkpoint fits the shipped policy's config, and a chunk goes
    through ChunkRefiner refined, finite and close to the anchor."""
    import torch

    from hvla_ros.executor.library import package_dir
    from hvla_ros.refiner.runtime import ChunkRefiner, shipped_refiner_dir
    from hvla_ros.refiner.train import load_refiner

    torch.set_num_threads(1)
    model, meta = load_refiner(shipped_refiner_dir() / skill)
    cfg = model.cfg
    policy = json.loads((package_dir() / "skills" / "keypoints" / skill / "config.json").read_text())
    assert meta["skill"] == skill and meta["ablation"] == "full"
    assert cfg.chunk_size == policy["n_action_steps"] and cfg.context_tokens == policy["n_obs_steps"]
    # One context token per observation step: the policy's state + environment-state features.
    assert cfg.context_dim == sum(f["shape"][0] for f in policy["input_features"].values())
    assert len(cfg.joint_names) == policy["output_features"]["action"]["shape"][0]
    # Its training record: refinement beat the anchor on held-out demonstrations.
    val = meta["val_metrics"]
    assert val["arm_mse_refined"] < val["arm_mse_anchor"] and val["grip_acc_refined"] >= val["grip_acc_anchor"]

    cr = ChunkRefiner()
    context = torch.zeros(cfg.context_tokens, cfg.context_dim)  # the normalized mean observation
    cr.add(skill, model, lambda start: context)
    home = np.array([HOME_POSITION[j] for j in cfg.joint_names])
    positions = np.repeat(home[None], cfg.chunk_size, axis=0)
    g = cfg.joint_names.index(GRIPPER_JOINT)
    positions[:, g] = np.linspace(*GRIPPER_MOTION[skill], cfg.chunk_size)
    res = cr.refine(skill, cfg.joint_names, positions, [GRIPPER_JOINT], 0.0)
    assert res.refined and res.positions.shape == positions.shape and np.all(np.isfinite(res.positions))
    assert np.all((res.gripper_probabilities >= 0) & (res.gripper_probabilities <= 1))
    arm = [i for i in range(len(cfg.joint_names)) if i != g]
    change = np.abs(res.positions[:, arm] - positions[:, arm])
    assert 1e-4 < change.max() < 0.3, change.max()
    # A latency-compensated chunk (extra steps after the policy's chunk): the refiner's steps are
    # refined exactly as alone, the extra ones stay the anchor's.
    longer = np.vstack([positions, np.repeat(positions[-1:], 5, axis=0)])
    res_long = cr.refine(skill, cfg.joint_names, longer, [GRIPPER_JOINT], 0.0)
    assert res_long.refined and res_long.positions.shape == longer.shape
    np.testing.assert_allclose(res_long.positions[:cfg.chunk_size], res.positions, atol=1e-6)
    np.testing.assert_array_equal(res_long.positions[cfg.chunk_size:], longer[cfg.chunk_size:])
    assert res_long.gripper_probabilities.shape == (longer.shape[0], 1)


@pytest.fixture(scope="module")
def library():
    import torch

    from hvla_ros.executor.library import SkillLibrary

    torch.set_num_threads(1)
    return SkillLibrary.load(None)


def _observations(skill, n: int, rng: np.random.Generator):
    from hvla_ros.executor.runner import Observation

    period = skill.spec.step_period_s
    joints = {j: float(HOME_POSITION[j]) for j in skill.spec.state_joints}
    # Coloured rectangles on a grey table: the keypoint encoder finds blobs in them.
    out = []
    for k in range(n):
        images = {}
        for cam in skill.spec.cameras:
            img = np.full((96, 128, 3), 128, np.uint8)
            y, x = rng.integers(10, 70), rng.integers(10, 100)
            img[y:y + 12, x:x + 12] = (200, 30, 30)
            images[cam] = img
        out.append(Observation(stamp=k * period, images=images, joints=joints))
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_refiner_matches_the_shipped_skill_and_refines_its_chunk(library, name):
    from hvla_ros.executor.runner import ObservationBuffer, SkillRunner
    from hvla_ros.refiner.anchor import DiffusionAnchor
    from hvla_ros.refiner.runtime import load_chunk_refiner, observation_context_provider, shipped_refiner_dir
    from hvla_ros.refiner.train import load_refiner

    skill = library.get(name)
    root = shipped_refiner_dir()
    model, meta = load_refiner(root / name)
    assert meta["skill"] == name and meta["ablation"] == "full"
    cfg = model.cfg
    anchor = DiffusionAnchor(skill.bundle, tuple(skill.spec.action_joints))
    # Trained against this skill: same joints, chunk length and encoder context.
    assert cfg.joint_names == tuple(skill.spec.action_joints)
    assert cfg.gripper_names == (GRIPPER_JOINT,)
    assert cfg.chunk_size == skill.spec.n_action_steps
    assert (cfg.context_tokens, cfg.context_dim) == (anchor.context_tokens, anchor.context_dim)

    buf = ObservationBuffer(maxlen=8)
    for obs in _observations(skill, 2, np.random.default_rng(0)):
        buf.add(obs)
    runner = SkillRunner(skill, INSTRUCTIONS[name], max_obs_age_s=1e9)
    chunk = runner.next_chunk(buf.history(runner.n_obs_steps, runner.step_period), now=buf.history(1, 1.0)[-1].stamp)
    refiner = load_chunk_refiner(root, {name: observation_context_provider(skill, buf, lambda: INSTRUCTIONS[name])})
    grip = [GRIPPER_JOINT]
    res = refiner.refine(name, chunk.joint_names, chunk.positions, grip, chunk.start_time)
    assert res.refined and refiner.refined == 1, res.reason
    assert res.positions.shape == chunk.positions.shape and np.all(np.isfinite(res.positions))
    assert np.all((res.gripper_probabilities >= 0) & (res.gripper_probabilities <= 1))
    arm = [i for i, j in enumerate(chunk.joint_names) if j != GRIPPER_JOINT]
    change = np.abs(res.positions[:, arm] - chunk.positions[:, arm])
    # A trained residual: not the identity, and a correction of the anchor, not a new trajectory.
    assert change.max() > 1e-4
    assert change.max() < 0.3, change.max()


def test_a_context_of_another_policy_passes_the_chunk_through_unrefined():
    import torch

    from hvla_ros.refiner.runtime import ChunkRefiner, shipped_refiner_dir
    from hvla_ros.refiner.train import load_refiner

    model, _ = load_refiner(shipped_refiner_dir() / "place")
    cfg = model.cfg
    cr = ChunkRefiner()
    wrong = torch.zeros(cfg.context_tokens, cfg.context_dim + 5)
    cr.add("place", model, lambda start: wrong)
    positions = np.repeat(np.array([[HOME_POSITION[j] for j in cfg.joint_names]]), cfg.chunk_size, axis=0)
    res = cr.refine("place", cfg.joint_names, positions, [GRIPPER_JOINT], 0.0)
    assert not res.refined and "context of shape" in res.reason and cr.passed_through == 1
    assert np.array_equal(res.positions, positions)


def test_the_graph_points_the_refiner_at_the_shipped_refiners_for_the_shipped_skills():
    from hvla_ros.graph import build_graph
    from hvla_ros.refiner.runtime import shipped_refiner_dir

    params = {n.name: n.parameters for n in build_graph().nodes}["refiner"]
    # refine:=auto (the default): on, since the shipped skills have shipped refiners
    assert params["refiner_dir"] == str(shipped_refiner_dir()) and params["refine"] is True
    assert all((shipped_refiner_dir() / skill).is_dir() for skill in SHIPPED)
    off = {n.name: n.parameters for n in build_graph({"refine": "false"}).nodes}["refiner"]
    assert off["refine"] is False
    # Another skill library: no default (the shipped refiners were trained for the shipped skills),
    # so auto leaves refinement off instead of failing for want of refiners.
    custom = {n.name: n.parameters for n in build_graph({"skills_file": "my_skills.yaml"}).nodes}["refiner"]
    assert "refiner_dir" not in custom and custom["refine"] is False
    given = {n.name: n.parameters for n in build_graph({"refiner_dir": "mine"}).nodes}["refiner"]
    assert given["refiner_dir"] == "mine" and given["refine"] is False  # auto: no such directory
    asked = {n.name: n.parameters for n in build_graph({"refiner_dir": "mine", "refine": "true"}).nodes}["refiner"]
    assert asked["refine"] is True  # explicit: the node then fails configure naming the directory
