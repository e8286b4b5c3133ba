"""hvla train-refiner on a tiny dataset and skill: checkpoint, metrics, and inference refinement."""

from __future__ import annotations

import numpy as np
import pytest

from hvla_ros.cli import main as hvla
from hvla_ros.robot import GRIPPER_JOINT, HOME_POSITION, JOINTS


@pytest.fixture(scope="module")
def skill_and_data(tmp_path_factory):
    from hvla_ros.executor.demos import write_synthetic_dataset
    from hvla_ros.executor.training import save_untrained_policy

    root = tmp_path_factory.mktemp("refiner_cli")
    ds = write_synthetic_dataset(root / "ds", episodes=3, frames=20, cameras=("front",), image_hw=(24, 32))
    pol = save_untrained_policy(root / "pol", cameras=("front",), joint_names=JOINTS, image_hw=(24, 32),
                                horizon=8, n_action_steps=4, down_dims=(16, 32), backbone_stages=1)
    return root, ds, pol


def test_train_refiner_writes_a_loadable_checkpoint(skill_and_data, capsys):
    import torch

    from hvla_ros import lerobot_compat as lc
    from hvla_ros.refiner.anchor import DiffusionAnchor
    from hvla_ros.refiner.runtime import ChunkRefiner
    from hvla_ros.refiner.train import load_refiner

    torch.set_num_threads(1)
    root, ds, pol = skill_and_data
    out = root / "refiners" / "pick"
    rc = hvla(["train-refiner", "--dataset", str(ds), "--skill", "pick", "--policy", str(pol), "--out", str(out),
               "--steps", "20", "--batch-size", "8", "--d-model", "32", "--layers", "1", "--val-every", "3",
               "--threads", "1", "--no-progress"])
    assert rc == 0
    assert '"val_metrics"' in capsys.readouterr().out
    model, meta = load_refiner(out)
    assert meta["skill"] == "pick" and meta["train_samples"] > 0 and meta["val_samples"] > 0
    assert set(meta["val_metrics"]) == {"arm_mse_anchor", "arm_mse_refined", "grip_acc_anchor", "grip_acc_refined"}
    assert meta["compactness"]["raw_mean_norm"] > 0
    cfg = model.cfg
    # by default the executed steps (n_action_steps 4)
    assert cfg.joint_names == JOINTS and cfg.gripper_names == (GRIPPER_JOINT,) and cfg.chunk_size == 4
    # The anchor's encoder gives the context the refiner was trained on (one token per obs step).
    anchor = DiffusionAnchor(lc.load_policy_dir(pol), JOINTS)
    assert (anchor.context_tokens, anchor.context_dim) == (cfg.context_tokens, cfg.context_dim)
    batch = {"observation.state": torch.zeros(1, 2, 6), "observation.images.front": torch.rand(1, 2, 3, 24, 32),
             "observation.environment_state": torch.zeros(1, 2, anchor.bundle.instruction_dim)}
    with torch.no_grad():
        ctx = anchor.encode(batch)
        chunk = anchor.predict(batch, ctx)
    assert ctx.shape == (1, 2, cfg.context_dim) and chunk.shape == (1, 4, 6)
    # Inference path of the node: numpy chunk in, refined chunk out.
    cr = ChunkRefiner()
    cr.add("pick", model, lambda start: ctx[0])
    home = np.array([HOME_POSITION[j] for j in JOINTS])
    positions = np.repeat(home[None], 3, axis=0)  # a short (last) chunk: 3 < 4 steps
    res = cr.refine("pick", JOINTS, positions, [GRIPPER_JOINT], 0.0)
    assert res.refined and res.positions.shape == (3, 6) and res.gripper_probabilities.shape == (3, 1)
    assert np.all(np.isfinite(res.positions))
    assert np.all((res.gripper_probabilities >= 0) & (res.gripper_probabilities <= 1))
    passed = cr.refine("place", JOINTS, positions, [GRIPPER_JOINT], 0.0)
    assert not passed.refined and "no refiner" in passed.reason and cr.passed_through == 1


def test_train_refiner_rejects_a_bad_policy_dir(skill_and_data, tmp_path):
    _, ds, _ = skill_and_data
    rc = hvla(["train-refiner", "--dataset", str(ds), "--skill", "pick", "--policy", str(tmp_path / "none"),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2


def test_no_detach_keeps_its_co_trained_anchor(skill_and_data):
    import torch

    from hvla_ros import lerobot_compat as lc
    from hvla_ros.refiner import train as tr

    torch.set_num_threads(1)
    root, ds, pol = skill_and_data
    out = root / "refiners_nd" / "pick"
    rc = hvla(["train-refiner", "--dataset", str(ds), "--skill", "pick", "--policy", str(pol), "--out", str(out),
               "--ablation", "no_detach", "--steps", "3", "--batch-size", "4", "--d-model", "32", "--layers", "1",
               "--val-every", "3", "--threads", "1", "--no-progress"])
    assert rc == 0
    _, meta = tr.load_refiner(out)
    assert meta["ablation"] == "no_detach" and meta["anchor_weights"] == tr.ANCHOR_WEIGHTS_FILE
    # The refiner is only valid with the anchor it trained with: those weights differ from phase 1's.
    policy = lc.load_policy_dir(pol).policy
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    tr.load_anchor_weights(policy, out)
    after = policy.state_dict()
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(tr.RefinerLoadError, match="missing"):
        tr.load_anchor_weights(policy, root)


def test_an_anchor_cache_is_reused_and_gives_the_same_refiner(skill_and_data, caplog):
    """An ablation sweep runs the frozen anchor once: the second run loads its predictions and
    trains exactly the refiner an uncached run trains; other inputs get their own cache entry."""
    import logging

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    root, ds, pol = skill_and_data
    cache = root / "anchor_cache"
    common = ["train-refiner", "--dataset", str(ds), "--skill", "pick", "--policy", str(pol), "--steps", "5",
              "--batch-size", "8", "--d-model", "32", "--layers", "1", "--val-every", "3", "--threads", "1",
              "--no-progress"]
    assert hvla([*common, "--out", str(root / "c_plain")]) == 0
    assert hvla([*common, "--out", str(root / "c_first"), "--anchor-cache", str(cache)]) == 0
    files = list(cache.glob("pick-*.pt"))
    assert len(files) == 1
    with caplog.at_level(logging.INFO, logger="hvla_ros.refiner.cmd_train"):
        assert hvla([*common, "--out", str(root / "c_second"), "--anchor-cache", str(cache)]) == 0
    assert any("anchor predictions from" in r.getMessage() for r in caplog.records)
    weights = [load_file(str(root / d / "model.safetensors")) for d in ("c_plain", "c_first", "c_second")]
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]) and torch.equal(weights[0][k], weights[2][k]), k
    # Another seed is another anchor sample: a new entry, not a wrong reuse.
    assert hvla([*common, "--out", str(root / "c_seed1"), "--anchor-cache", str(cache), "--seed", "1"]) == 0
    assert len(list(cache.glob("pick-*.pt"))) == 2
    # A damaged cache file is recomputed, not trusted.
    files[0].write_bytes(b"not a cache")
    assert hvla([*common, "--out", str(root / "c_third"), "--anchor-cache", str(cache)]) == 0
    third = load_file(str(root / "c_third" / "model.safetensors"))
    assert all(torch.equal(weights[0][k], third[k]) for k in third)


def test_chunk_steps_choose_the_window_the_refiner_corrects(skill_and_data, capsys):
    from hvla_ros.refiner.train import load_refiner

    root, ds, pol = skill_and_data
    common = ["train-refiner", "--dataset", str(ds), "--skill", "pick", "--policy", str(pol), "--steps", "2",
              "--batch-size", "4", "--d-model", "32", "--layers", "1", "--val-every", "3", "--threads", "1",
              "--no-progress"]
    for value, size in (("window", 7), ("5", 5)):  # window: horizon 8 from 2 observation steps
        out = root / f"chunk_{value}"
        assert hvla([*common, "--out", str(out), "--chunk-steps", value]) == 0
        assert load_refiner(out)[0].cfg.chunk_size == size
    assert hvla([*common, "--out", str(root / "chunk_bad"), "--chunk-steps", "9"]) == 2  # past the window (7)
    assert not (root / "chunk_bad").exists()
