"""hvla train-skill: trains from a LeRobotDataset, writes a loadable policy dir, resumes, is seeded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hvla_ros.cli import main as hvla


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from hvla_ros.executor.demos import write_synthetic_dataset

    return write_synthetic_dataset(
        tmp_path_factory.mktemp("ds") / "demos",
        episodes=2,
        frames=20,
        cameras=("front", "wrist"),
        image_hw=(24, 32),
    )


def _args(dataset, out, steps, *extra):
    return [
        "train-skill",
        "--dataset",
        str(dataset),
        "--skill",
        "pick",
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--batch-size",
        "4",
        "--image-size",
        "24x32",
        "--down-dims",
        "16,32",
        "--backbone-stages",
        "1",
        "--horizon",
        "8",
        "--n-action-steps",
        "4",
        "--checkpoint-every",
        "2",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


def test_segments_follow_the_task_field(dataset):
    from hvla_ros.executor.demos import load_demos

    data = load_demos(dataset, cameras=None, image_hw=(24, 32), pattern=r"^pick up")
    assert len(data) == 20 and data.num_segments == 2 and data.tasks == ["pick up the red cube"]
    assert set(data.images) == {"front", "wrist"} and data.images["front"].shape == (20, 3, 24, 32)
    batch = data.sample(np.array([0, 9]), n_obs_steps=2, horizon=8)
    pad = batch["action_is_pad"].numpy()
    assert pad[0].tolist() == [True] + [False] * 7  # before the segment start
    assert pad[1].tolist() == [False] * 2 + [True] * 6  # past the segment end (frame 9 of 0..9)
    assert np.allclose(batch["observation.state"][0, 0], batch["observation.state"][0, 1])  # padded history
    flat = load_demos(dataset, cameras=["front"], image_hw=(24, 32), pattern=None, flat_instruction="do it")
    assert len(flat) == 40 and flat.num_segments == 2 and flat.tasks == ["do it"]


def test_train_resume_and_load(dataset, tmp_path, capsys):
    from hvla_ros.executor.library import SkillLibrary

    out = tmp_path / "pick"
    assert hvla(_args(dataset, out, 3)) == 0
    assert "trained 'pick': 3 steps" in capsys.readouterr().out
    log1 = json.loads((out / "training_log.json").read_text())
    assert log1["steps"] == 3 and log1["frames"] == 20
    assert hvla(_args(dataset, out, 6, "--resume", "--stop-after", "4")) == 0  # 6-step schedule, stop at 4
    assert "trained 'pick': 4 steps" in capsys.readouterr().out
    assert hvla(_args(dataset, out, 5, "--resume")) == 0
    assert "trained 'pick': 5 steps" in capsys.readouterr().out
    meta = json.loads((out / "hvla_policy.json").read_text())
    assert meta["training"]["steps_done"] == 5 and meta["fps"] == 30
    assert meta["state_names"][0] == "shoulder_pan"
    import torch

    state = torch.load(out / "training_state" / "state.pt", weights_only=False)
    assert state["step"] == 5 and len(state["losses"]) == 5  # 3 + 2 resumed steps, not 5 new ones
    lib = SkillLibrary.from_dict(
        {"skills": {"pick": {"policy": str(out), "cameras": ["front", "wrist"], "n_action_steps": 4}}}
    )
    assert lib.get("pick").bundle.config.horizon == 8


def test_training_is_seeded(dataset, tmp_path):
    import torch

    from hvla_ros import lerobot_compat as lc

    for name in ("a", "b"):
        assert hvla(_args(dataset, tmp_path / name, 2, "--seed", "7")) == 0
    wa = lc.load_policy_dir(tmp_path / "a").policy.state_dict()
    wb = lc.load_policy_dir(tmp_path / "b").policy.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_arguments_fail_cleanly(dataset, tmp_path):
    assert hvla(_args(dataset, tmp_path / "x", 1, "--pattern", "^fly")) == 2  # no frames match
    assert hvla(_args(tmp_path / "nowhere", tmp_path / "y", 1)) == 2
    assert hvla(_args(dataset, tmp_path / "z", 1, "--cameras", "top")) == 2


def test_observation_context_for_the_refiner(dataset, tmp_path):
    from hvla_ros import lerobot_compat as lc
    from hvla_ros.executor.demos import load_demos

    assert hvla(_args(dataset, tmp_path / "ctx", 1)) == 0
    bundle = lc.load_policy_dir(tmp_path / "ctx")
    data = load_demos(dataset, cameras=None, image_hw=(24, 32), pattern=r"^pick up")
    batch = data.sample(np.arange(3), n_obs_steps=2, horizon=8)
    ctx = lc.observation_context(bundle, batch)
    # 2 obs steps x (2 cameras x 64 keypoint features + 6 joints + 16 instruction values)
    assert tuple(ctx.shape) == (3, 2 * (2 * 64 + 6 + 16))
    assert bool(ctx.isfinite().all())


def test_one_skill_from_several_tasks_datasets(dataset, tmp_path):
    """A multi-task skill: frames of every dataset, segments never joined across datasets."""
    from hvla_ros.executor.demos import load_demos, write_synthetic_dataset

    blue = write_synthetic_dataset(
        tmp_path / "blue", episodes=3, frames=10, cameras=("front", "wrist"), image_hw=(24, 32),
        tasks=("pick up the blue cube", "place the blue cube on the yellow cube"), seed=1,
    )
    one = load_demos(dataset, cameras=None, image_hw=(24, 32), pattern=r"^pick up")
    both = load_demos([dataset, blue], cameras=None, image_hw=(24, 32), pattern=r"^pick up")
    assert len(both) == len(one) + 15 and both.num_segments == one.num_segments + 3
    assert both.tasks == ["pick up the blue cube", "pick up the red cube"]
    assert np.array_equal(both.state[: len(one)], one.state)
    # the first frame of the second dataset starts its own segment
    assert both.seg_start[len(one)] == len(one) and both.seg_end[len(one) - 1] == len(one)
    batch = both.sample(np.array([len(one)]), n_obs_steps=2, horizon=8)
    assert batch["action_is_pad"].numpy()[0, 0]  # history padded, not taken from dataset one
    assert not np.allclose(both.instruction[0], both.instruction[len(one)])  # red vs blue instruction
    out = tmp_path / "pick"
    assert hvla([*_args(dataset, out, 2)[:3], str(blue), *_args(dataset, out, 2)[3:]]) == 0
    meta = json.loads((out / "hvla_policy.json").read_text())
    assert meta["training"]["dataset"] == [str(dataset), str(blue)]
    assert meta["tasks"] == ["pick up the blue cube", "pick up the red cube"]


def test_datasets_that_disagree_are_refused(dataset, tmp_path):
    from hvla_ros.executor.demos import load_demos, write_synthetic_dataset

    other = write_synthetic_dataset(tmp_path / "fps", episodes=1, frames=10, cameras=("front", "wrist"),
                                    image_hw=(24, 32), fps=15)
    with pytest.raises(ValueError, match=r"fps.*15.*30|fps 15"):
        load_demos([dataset, other], cameras=None, image_hw=(24, 32), pattern=r"^pick up")
