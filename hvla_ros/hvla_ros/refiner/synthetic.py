"""A synthetic refinement problem with a learnable residual (tests, benchmark, smoke runs).

Observations ``x`` (``S x O``) map to ground-truth chunks (``S x T x D``, radians, SO-101 joint
order) through a smooth nonlinear function; the gripper closes at an observation-dependent step
(or stays open). Phase 1 fits an :class:`~hvla_ros.refiner.anchor.MLPAnchor` whose head is
linear in a fixed random encoding, so the anchor is good at the coarse motion and wrong in a
systematic, observation-dependent way: what a residual refiner is meant to fix.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from hvla_ros.refiner.anchor import MLPAnchor
from hvla_ros.robot import ARM_JOINTS, GRIPPER_CLOSED, GRIPPER_OPEN, HOME_POSITION, JOINTS


def make_problem(n: int, *, obs_dim: int = 8, chunk_size: int = 8, seed: int = 0,
                 problem_seed: int = 1234) -> tuple[Tensor, Tensor]:
    """``(obs S x O, target S x T x 6)``. ``problem_seed`` fixes the function, ``seed`` the samples."""
    fn = np.random.default_rng(problem_seed)
    w1 = fn.normal(size=(obs_dim, len(ARM_JOINTS))) / np.sqrt(obs_dim)
    w2 = fn.normal(size=(obs_dim, len(ARM_JOINTS))) / np.sqrt(obs_dim)
    v = fn.normal(size=obs_dim) / np.sqrt(obs_dim)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, obs_dim))
    t = np.linspace(0.0, 1.0, chunk_size)[None, :, None]
    home = np.array([HOME_POSITION[j] for j in ARM_JOINTS])[None, None, :]
    coarse = 0.4 * np.tanh(x @ w1)[:, None, :] * t
    fine = 0.08 * np.sin(3.0 * (x @ w2))[:, None, :] * np.cos(np.pi * t)
    arm = home + coarse + fine
    s = x @ v  # > 0: the gripper closes within the chunk, at a step that depends on s
    close_step = np.where(s > 0, np.clip(((1.5 - s) * chunk_size / 2).round(), 1, chunk_size - 1), chunk_size + 1)
    steps = np.arange(chunk_size)[None, :]
    grip = np.where(steps >= close_step[:, None], GRIPPER_CLOSED, GRIPPER_OPEN)[..., None]
    target = np.concatenate([arm, grip], axis=-1)
    assert target.shape[-1] == len(JOINTS)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)


def fit_anchor(obs: Tensor, target: Tensor, *, steps: int = 300, seed: int = 0) -> MLPAnchor:
    """Phase 1: a regression anchor (fixed random encoder, linear head), then frozen."""
    torch.manual_seed(seed)
    anchor = MLPAnchor(obs.shape[1], JOINTS, target.shape[1], seed=seed)
    for p in anchor.encoder.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(anchor.head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(obs), (min(128, len(obs)),), generator=g)
        batch = {"obs": obs[idx], "action": target[idx]}
        loss = ((anchor.predict(batch, anchor.encode(batch)) - target[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    anchor.eval()
    for p in anchor.parameters():
        p.requires_grad_(False)
    return anchor


def batches(obs: Tensor, target: Tensor, batch_size: int = 256):
    """Sequential batches over the whole set (for :func:`~hvla_ros.refiner.train.collect`)."""
    for s in range(0, len(obs), batch_size):
        yield {"obs": obs[s:s + batch_size], "action": target[s:s + batch_size]}
