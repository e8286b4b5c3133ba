"""Refine module: equations, shapes, detach, ablation switches, training, checkpoints."""

from __future__ import annotations

import pytest
import torch

from hvla_ros.refiner import synthetic as syn
from hvla_ros.refiner import train as tr
from hvla_ros.refiner.anchor import AnchorPolicy, anchor_logit, anchor_probability, closing_fraction
from hvla_ros.refiner.model import (
    ABLATIONS,
    RefineModel,
    RefinerConfig,
    boundary_target,
    directional_signal,
    gripper_command,
    gripper_target,
    refine_probability,
)
from hvla_ros.robot import GRIPPER_CLOSED, GRIPPER_JOINT, GRIPPER_OPEN, JOINTS

torch.set_num_threads(1)
T = 8


def small_cfg(**kw) -> RefinerConfig:
    base = dict(joint_names=JOINTS, gripper_names=(GRIPPER_JOINT,), chunk_size=T, context_tokens=2,
                context_dim=32, d_model=32, n_heads=2, n_layers=1, ff_dim=64)
    base.update(kw)
    return RefinerConfig(**base)


@pytest.fixture(scope="module")
def problem():
    obs, tgt = syn.make_problem(1200, chunk_size=T, seed=0)
    anchor = syn.fit_anchor(obs, tgt, steps=150)
    data = tr.collect(anchor, syn.batches(obs, tgt))
    train, val = data.split(0.8)
    return anchor, obs, tgt, train, val


def test_anchor_probability_maps_open_closed_and_clamps():
    q = torch.tensor([GRIPPER_OPEN, GRIPPER_CLOSED, (GRIPPER_OPEN + GRIPPER_CLOSED) / 2, GRIPPER_OPEN + 1.0])
    p = anchor_probability(q)
    assert p[0] == pytest.approx(1e-3) and p[1] == pytest.approx(1 - 1e-3)
    assert p[2] == pytest.approx(0.5) and p[3] == pytest.approx(1e-3)
    assert torch.all(torch.isfinite(anchor_logit(q)))
    assert torch.allclose(torch.sigmoid(anchor_logit(q)), p, atol=1e-6)


def test_gripper_equations():
    closed = torch.tensor([GRIPPER_CLOSED])
    opened = torch.tensor([GRIPPER_OPEN])
    assert directional_signal(closed).item() == 1.0 and directional_signal(opened).item() == -1.0
    m = 0.2
    p = torch.tensor([0.3, 0.6, 0.9, 0.7, 0.4, 0.1])
    d = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    target = boundary_target(p, d, m)
    # wrong side -> pushed to 0.5 +- m; right side within margin -> topped up; beyond margin -> 0
    assert torch.allclose(p + target, torch.tensor([0.7, 0.7, 0.9, 0.3, 0.3, 0.1]), atol=1e-6)
    assert target[2] == 0 and target[5] == 0
    # Eq. 11 clips to [0, 1]
    z = torch.logit(torch.tensor([0.95, 0.05]))
    assert torch.allclose(refine_probability(z, torch.tensor([0.2, -0.2])), torch.tensor([1.0, 0.0]))
    # naive MSE target: regress the closing fraction
    naive = gripper_target(torch.tensor([0.3]), closed, small_cfg(naive_gripper_mse=True))
    assert naive.item() == pytest.approx(closing_fraction(closed).item() - 0.3)


def test_flipped_gripper_decision_ramps_within_the_step_limit():
    # A chunk holding the gripper closed whose last steps the refinement flips to "open": the
    # command ramps towards open at <= max_step per step instead of jumping (a jump over the
    # safety filter's step-change limit would make it refuse the whole chunk).
    q_a = torch.full((1, T, 1), GRIPPER_CLOSED)
    p_a = anchor_probability(q_a)
    p = p_a.clone()
    p[:, 5:] = 0.1  # flipped to open from step 5
    jump = gripper_command(p, p_a, q_a, "decision")
    assert torch.allclose(jump[0, 5:, 0], torch.full((3,), GRIPPER_OPEN))  # unlimited: jumps 1.3 rad
    ramp = gripper_command(p, p_a, q_a, "decision", max_step=0.1)
    steps = torch.diff(torch.cat([q_a[:, :1], ramp], dim=1), dim=1).abs()
    assert float(steps.max()) <= 0.1 + 1e-6
    assert torch.allclose(ramp[0, :5], q_a[0, :5])  # unchanged before the flip
    assert torch.allclose(ramp[0, 5:, 0], GRIPPER_CLOSED + 0.1 * torch.arange(1, 4).float())  # opening
    # No flip: the anchor's own command, exactly (even where it moves faster than max_step).
    q_b = torch.linspace(GRIPPER_OPEN, GRIPPER_CLOSED, T).reshape(1, T, 1)
    p_b = anchor_probability(q_b)
    assert torch.equal(gripper_command(p_b, p_b, q_b, "decision", max_step=0.1), q_b)
    with pytest.raises(ValueError, match="gripper_max_step"):
        small_cfg(gripper_max_step=-1.0)


def test_identity_at_initialisation_and_shapes():
    cfg = small_cfg()
    model = RefineModel(cfg)
    ctx, anc = torch.randn(3, 2, 32), torch.randn(3, T, 6) * 0.3
    arm, delta = model(ctx, anc)
    assert arm.shape == (3, T, 5) and delta.shape == (3, T, 1)
    out, p = model.refine(ctx, anc)
    assert out.shape == (3, T, 6) and p.shape == (3, T, 1)
    assert torch.allclose(out, anc)  # zero residual and zero correction before training
    assert torch.allclose(p, anchor_probability(anc[..., 5:]))


def test_latent_tokens_initialised_from_the_anchor():
    latents = torch.randn(T, 16)
    model = RefineModel(small_cfg(), latent_init=latents)
    assert torch.equal(model.action_tokens[:, :16].detach(), latents)


def test_mlp_anchor_satisfies_the_protocol(problem):
    anchor = problem[0]
    assert isinstance(anchor, AnchorPolicy)


def _one_online_step(cfg: RefinerConfig, anchor, obs, tgt):
    model = RefineModel(cfg)
    before = {k: v.clone() for k, v in anchor.state_dict().items()}
    for p in anchor.parameters():
        p.requires_grad_(True)
    tr.train_online(model, anchor, lambda: {"obs": obs[:32], "action": tgt[:32]},
                    tr.TrainConfig(steps=2, progress=False, anchor_lr=1e-2))
    changed = any(not torch.equal(before[k], v) for k, v in anchor.state_dict().items())
    for k, v in before.items():  # restore for other tests
        anchor.state_dict()[k].copy_(v)
    for p in anchor.parameters():
        p.requires_grad_(False)
        p.grad = None
    return changed


def test_detach_stops_gradients_into_the_anchor(problem):
    anchor, obs, tgt, *_ = problem
    # Method: the anchor is frozen and detached, so even with requires_grad its weights never move.
    assert not _one_online_step(small_cfg(), anchor, obs, tgt)
    assert all(p.grad is None for p in anchor.parameters())
    # Ablation: without detach, the residual loss trains the anchor.
    assert _one_online_step(small_cfg(detach_anchor=False), anchor, obs, tgt)


def test_detached_loss_has_no_path_to_the_anchor(problem):
    anchor, obs, tgt, *_ = problem
    batch = {"obs": obs[:16], "action": tgt[:16]}
    for p in anchor.parameters():
        p.requires_grad_(True)
    try:
        ctx = anchor.encode(batch)
        anc = anchor.predict(batch, ctx)
        model = RefineModel(small_cfg())
        model.losses(ctx.detach(), anc.detach(), tgt[:16])["loss"].backward()
        assert all(p.grad is None for p in anchor.parameters())
        model.losses(ctx, anc, tgt[:16])["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in anchor.parameters())
    finally:
        for p in anchor.parameters():
            p.requires_grad_(False)
            p.grad = None


def test_ablation_switches_change_what_is_trained():
    ctx, anc, tgt = torch.randn(8, 2, 32), torch.randn(8, T, 6) * 0.3, torch.randn(8, T, 6) * 0.3
    tgt[..., 5] = GRIPPER_CLOSED
    assert set(ABLATIONS) == {"full", "no_gripper", "naive_gripper_mse", "no_detach", "anchor_concat", "direct"}
    full = small_cfg()
    # no gripper refinement: no gripper loss, no gradient into the gripper head, gripper = anchor
    m = RefineModel(full.with_ablation("no_gripper"))
    losses = m.losses(ctx, anc, tgt)
    assert losses["grip"].item() == 0.0
    losses["loss"].backward()
    assert m.grip_head is not None and all(p.grad is None for p in m.grip_head.parameters())
    # naive MSE: a different gripper target for the same anchor
    p_a = anchor_probability(anc[..., 5:])
    assert not torch.allclose(gripper_target(p_a, tgt[..., 5:], full),
                              gripper_target(p_a, tgt[..., 5:], full.with_ablation("naive_gripper_mse")))
    # explicit anchor concatenation: the output depends on the anchor arm values (after training
    # moves the heads off zero); the method's output residual does not see them.
    for name, depends in (("full", False), ("anchor_concat", True)):
        m = RefineModel(full.with_ablation(name))
        torch.nn.init.normal_(m.arm_head.weight)
        anc2 = anc.clone()
        anc2[..., :5] += 0.5
        r1, _ = m(ctx, anc)
        r2, _ = m(ctx, anc2)
        assert (not torch.allclose(r1, r2)) == depends, name
    # direct: the arm output is the final action, not anchor + residual
    m = RefineModel(full.with_ablation("direct"))
    out, _ = m.refine(ctx, anc)
    assert not torch.allclose(out[..., :5], anc[..., :5])
    assert torch.allclose(out[..., :5], torch.zeros_like(out[..., :5]))  # centre 0, zero head
    with pytest.raises(ValueError, match="unknown ablation"):
        full.with_ablation("nope")


def test_training_reduces_held_out_error(problem):
    anchor, _, _, train, val = problem
    scale, center = tr.action_statistics(train.target)
    cfg = small_cfg(action_scale=scale, action_center=center)
    model = RefineModel(cfg, latent_init=anchor.action_latent_tokens())
    before = tr.evaluate(model, val)
    assert before["arm_mse_refined"] == pytest.approx(before["arm_mse_anchor"])
    tr.train_cached(model, train, tr.TrainConfig(steps=300, batch_size=64, lr=2e-3, progress=False))
    after = tr.evaluate(model, val)
    assert after["arm_mse_refined"] < 0.8 * after["arm_mse_anchor"], after
    assert after["grip_acc_refined"] >= after["grip_acc_anchor"], after


def test_compactness_residual_smaller_than_raw(problem):
    _, _, _, train, _ = problem
    c = tr.compactness(train, small_cfg().arm_index)
    assert c["residual_mean_norm"] < c["raw_mean_norm"]
    assert c["norm_ratio"] < 1 and c["trace_ratio"] > 0


def test_checkpoint_roundtrip(tmp_path, problem):
    _, _, _, _, val = problem
    model = RefineModel(small_cfg(naive_gripper_mse=True))
    torch.nn.init.normal_(model.arm_head.weight, std=0.01)
    tr.save_refiner(model, tmp_path / "r", meta={"skill": "pick"})
    loaded, meta = tr.load_refiner(tmp_path / "r")
    assert meta == {"skill": "pick"} and loaded.cfg.naive_gripper_mse
    a, _ = model.refine(val.context[:4], val.anchor[:4])
    b, _ = loaded.refine(val.context[:4], val.anchor[:4])
    assert torch.allclose(a, b)
    (tmp_path / "r" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(tr.RefinerLoadError, match="r"):
        tr.load_refiner(tmp_path / "r")


def test_config_validation():
    with pytest.raises(ValueError, match="gripper_names"):
        small_cfg(gripper_names=("claw",))
    with pytest.raises(ValueError, match="margin"):
        small_cfg(margin=0.7)
    with pytest.raises(ValueError, match="action_scale"):
        small_cfg(action_scale=[1.0, 2.0])
