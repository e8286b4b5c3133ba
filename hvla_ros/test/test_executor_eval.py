"""hvla eval-skills: closed-loop rollout of the skill library in the MuJoCo work cell."""

from __future__ import annotations

import json

import numpy as np
import yaml

from hvla_ros.cli import main as hvla
from hvla_ros.robot import JOINTS


def test_eval_runs_each_subtask_with_its_skill(tmp_path, capsys):
    from hvla_ros.executor.training import save_untrained_policy

    pol = save_untrained_policy(tmp_path / "pol", cameras=["front"], joint_names=JOINTS, image_hw=(24, 32),
                                down_dims=(16, 32, 64), backbone_stages=1)
    entry = {"policy": str(pol), "cameras": ["front"], "n_action_steps": 8, "denoising_steps": 2}
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"skills": {"pick": entry, "place": entry}}))
    out = tmp_path / "eval.json"
    args = ["eval-skills", "--task", "cube_in_box", "--seeds", "0", "--skills-file", str(f), "--horizon-s", "0.3",
            "--image-size", "48x64", "--threads", "1", "--out", str(out)]
    assert hvla(args) == 0
    text = capsys.readouterr().out
    assert "subtask 0 pick" in text and "subtask 1 place" in text and "task success: 0%" in text
    doc = json.loads(out.read_text())
    assert doc["episodes"][0]["subtasks"] == [False, False]  # an untrained policy does not pick anything up


def test_eval_reports_missing_skills(tmp_path):
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"skills": {"observe": {"policy": "hold"}}}))
    assert hvla(["eval-skills", "--task", "cube_in_box", "--seeds", "0", "--skills-file", str(f)]) == 2


def test_observe_subtasks_last_as_long_as_their_cue(tmp_path):
    """An observe subtask carries the cue's duration: eval-skills holds that long (the skill's
    default of 0.5 s, or --horizon-s, would end it before the cue and judge it failed)."""
    from hvla_ros.executor.training import save_untrained_policy

    pol = save_untrained_policy(tmp_path / "pol", cameras=["front"], joint_names=JOINTS, image_hw=(24, 32),
                                down_dims=(16, 32, 64), backbone_stages=1)
    entry = {"policy": str(pol), "cameras": ["front"], "n_action_steps": 8, "denoising_steps": 2}
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"skills": {"pick": entry, "place": entry,
                                            "observe": {"policy": "hold", "default_horizon_s": 0.5}}}))
    out = tmp_path / "eval.json"
    args = ["eval-skills", "--task", "observe_then_pick", "--seeds", "0", "--skills-file", str(f),
            "--horizon-s", "0.3", "--image-size", "48x64", "--threads", "1", "--out", str(out)]
    assert hvla(args) == 0
    assert json.loads(out.read_text())["episodes"][0]["subtasks"] == [True, False, False]


def test_eval_can_run_the_first_subtasks_alone(tmp_path, capsys):
    """--subtasks 1: only pick runs (place is neither loaded as needed nor judged), and the task's
    success is reported as not judged; a count the task does not have is refused."""
    from hvla_ros.executor.training import save_untrained_policy

    pol = save_untrained_policy(tmp_path / "pol", cameras=["front"], joint_names=JOINTS, image_hw=(24, 32),
                                down_dims=(16, 32, 64), backbone_stages=1)
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"skills": {"pick": {"policy": str(pol), "cameras": ["front"],
                                                     "n_action_steps": 8, "denoising_steps": 2}}}))
    out = tmp_path / "eval.json"
    base = ["eval-skills", "--task", "cube_in_box", "--seeds", "0", "--skills-file", str(f), "--horizon-s", "0.3",
            "--image-size", "48x64", "--threads", "1"]
    assert hvla([*base, "--subtasks", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "subtask 0 pick" in text and "subtask 1" not in text and "not judged" in text
    doc = json.loads(out.read_text())
    assert doc["episodes"][0]["subtasks"] == [False] and doc["task_success"] is None
    assert hvla([*base, "--subtasks", "3"]) == 2


def test_expert_subtasks_are_judged_when_the_expert_finishes_each():
    """The scripted expert's pick and handover both count as done: the pick is judged when the
    expert moves on from it (judged after the handover, the left arm no longer holds the cube)."""
    from hvla_ros.executor.evaluate import run_episode
    from hvla_ros.sim.world import SimWorld

    world = SimWorld("bimanual_handover", image_size=(24, 32))
    try:
        ep = run_episode(world, None, 0, horizon_s=0.3, image_hw=(24, 32), cameras=[], expert_subtasks=2,
                         subtasks=2)
    finally:
        world.close()
    assert ep["subtasks"] == [True, True] and ep["success"] is None


def test_the_same_seed_gives_the_same_rollout(tmp_path):
    """The denoising noise is seeded with the episode: an (untrained, so noisy) policy drives the
    arm to the same joints on two runs of one seed, and elsewhere on another seed."""
    from hvla_ros.executor.evaluate import run_episode
    from hvla_ros.executor.library import SkillLibrary
    from hvla_ros.executor.training import save_untrained_policy
    from hvla_ros.sim.world import SimWorld

    pol = save_untrained_policy(tmp_path / "pol", cameras=["front"], joint_names=JOINTS, image_hw=(24, 32),
                                down_dims=(16, 32, 64), backbone_stages=1)
    entry = {"policy": str(pol), "cameras": ["front"], "n_action_steps": 8, "denoising_steps": 2}
    f = tmp_path / "skills.yaml"
    f.write_text(yaml.safe_dump({"skills": {"pick": entry, "place": entry}}))
    lib = SkillLibrary.load(f)
    world = SimWorld("cube_in_box", image_size=(24, 32))
    try:
        finals = []
        for seed in (3, 3, 4):
            run_episode(world, lib, seed, horizon_s=0.3, image_hw=(24, 32), cameras=["front"], subtasks=1)
            finals.append(world.joint_positions().copy())
    finally:
        world.close()
    assert np.array_equal(finals[0], finals[1])
    assert not np.allclose(finals[0], finals[2])
