"""The anchor policy as the refiner sees it, and the anchor-phase gripper probability.

The refiner needs two things from the anchor (a skill policy): the observation **context**
its encoder computes, and the **anchor chunk** it predicts. :class:`AnchorPolicy` is that
contract; :class:`DiffusionAnchor` implements it for the executor's LeRobot diffusion skills
(through :mod:`hvla_ros.lerobot_compat`), :class:`MLPAnchor` is a small deterministic anchor
used by tests, the benchmark and anyone checking the training loop without a skill.

Shapes: ``batch`` is a dict of tensors with a leading batch dimension ``B``;
``encode(batch) -> B x N x C`` context tokens; ``predict(batch, context) -> B x T x D``
joint targets in radians (policy joint order); ``target(batch) -> B x T x D`` ground truth.

Anchor-phase gripper probability (LeRobot diffusion outputs a gripper *position*, not a logit):
the closing fraction of the commanded position between ``robot.GRIPPER_OPEN`` (0) and
``robot.GRIPPER_CLOSED`` (1), clamped to ``[eps, 1 - eps]``; its logit is
``log(p / (1 - p))``. A source that has real logits (``ActionChunk.gripper_logits``) uses them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from hvla_ros.robot import GRIPPER_CLOSED, GRIPPER_OPEN

#: Clamp of the anchor probability: logits stay within +-6.9.
PROB_EPS = 1e-3


def closing_fraction(q: Tensor) -> Tensor:
    """0 at ``GRIPPER_OPEN``, 1 at ``GRIPPER_CLOSED`` (unclamped, linear in the position)."""
    return (GRIPPER_OPEN - q) / (GRIPPER_OPEN - GRIPPER_CLOSED)


def gripper_position(p: Tensor) -> Tensor:
    """Inverse of :func:`closing_fraction`: the gripper position for closing fraction ``p``."""
    return GRIPPER_OPEN - p * (GRIPPER_OPEN - GRIPPER_CLOSED)


def anchor_probability(q: Tensor, eps: float = PROB_EPS) -> Tensor:
    """Anchor-phase probability that the gripper is closed, from a commanded position."""
    return closing_fraction(q).clamp(eps, 1.0 - eps)


def anchor_logit(q: Tensor, eps: float = PROB_EPS) -> Tensor:
    """``log(p / (1 - p))`` of :func:`anchor_probability` (finite by the clamp)."""
    p = anchor_probability(q, eps)
    return torch.log(p) - torch.log1p(-p)


@runtime_checkable
class AnchorPolicy(Protocol):
    """What the refiner needs from an anchor policy (see the module docstring for shapes)."""

    chunk_size: int  # T
    joint_names: tuple[str, ...]  # D names, policy order
    context_tokens: int  # N
    context_dim: int  # C

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """Observation context tokens ``B x N x C`` (the anchor's own encoder)."""
        ...

    def predict(self, batch: dict[str, Tensor], context: Tensor) -> Tensor:
        """Anchor chunk ``B x T x D`` in radians, from the batch and its context."""
        ...

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        """Ground-truth chunk ``B x T x D`` aligned with :meth:`predict` (training batches)."""
        ...

    def action_latent_tokens(self) -> Tensor | None:
        """The backbone's learnable action query tokens (``T x d``), or None if it has none."""
        ...

    def policy_module(self) -> nn.Module:
        """The module holding the anchor's parameters (frozen in phase 2)."""
        ...


class MLPAnchor(nn.Module):
    """A small deterministic anchor: ``obs (B x O) -> context (B x N x C) -> chunk (B x T x D)``.

    Batches are ``{"obs": B x O, "action": B x T x D}``. Used to test the refiner where no skill
    is at hand; it is an honest anchor (a regression policy), not a stub.
    """

    def __init__(self, obs_dim: int, joint_names: tuple[str, ...], chunk_size: int, *,
                 context_tokens: int = 2, context_dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.chunk_size = chunk_size
        self.joint_names = tuple(joint_names)
        self.context_tokens = context_tokens
        self.context_dim = context_dim
        self.encoder = nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(),
                                     nn.Linear(64, context_tokens * context_dim))
        self.head = nn.Linear(context_tokens * context_dim, chunk_size * len(joint_names))
        self.latents = nn.Parameter(torch.randn(chunk_size, 16, generator=g) * 0.02)
        for p in self.parameters():
            if p.dim() > 1:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        z = self.encoder(batch["obs"])
        return z.view(z.shape[0], self.context_tokens, self.context_dim)

    def predict(self, batch: dict[str, Tensor], context: Tensor) -> Tensor:
        out = self.head(context.flatten(1))
        return out.view(out.shape[0], self.chunk_size, len(self.joint_names))

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        return batch["action"]

    def action_latent_tokens(self) -> Tensor | None:
        return self.latents

    def policy_module(self) -> nn.Module:
        return self


class DiffusionAnchor:
    """A LeRobot diffusion skill (``lerobot_compat.PolicyBundle``) as an :class:`AnchorPolicy`.

    Context tokens: one per observation step, ``[state, image keypoint features, instruction]``
    (exactly the UNet's global conditioning, split by step). The anchor chunk is the policy's
    ``n_action_steps`` executed actions (DDIM sampling, unnormalized to radians).

    Batches are LeRobotDataset-style (unnormalized): ``observation.state`` ``B x n_obs x D``,
    ``observation.images.<cam>`` ``B x n_obs x 3 x H x W``, optional
    ``observation.environment_state`` and, for training, ``action`` ``B x horizon x D``.
    """

    def __init__(self, bundle: Any, joint_names: tuple[str, ...], chunk_size: int | None = None) -> None:
        self.bundle = bundle
        cfg = bundle.policy.config
        self.config = cfg
        # Steps after the observation the anchor chunk covers: the executed n_action_steps by
        # default; up to the whole predicted window (a latency-compensated chunk executes later
        # steps of it).
        from hvla_ros import lerobot_compat as lc

        window = lc.predicted_steps(cfg)
        self.chunk_size = int(cfg.n_action_steps) if chunk_size is None else int(chunk_size)
        if not 1 <= self.chunk_size <= window:
            raise ValueError(f"chunk_size {self.chunk_size} outside 1..{window} (the policy predicts {cfg.horizon} "
                             f"steps from {cfg.n_obs_steps} observation steps)")
        self.joint_names = tuple(joint_names)
        if len(self.joint_names) != bundle.action_dim:
            raise ValueError(f"{len(self.joint_names)} joint names for a policy with "
                             f"action_dim {bundle.action_dim}")
        self.context_tokens = int(cfg.n_obs_steps)
        # Per-step conditioning size, computed as LeRobot's DiffusionModel does.
        dim = int(cfg.robot_state_feature.shape[0])
        if cfg.image_features:
            enc = bundle.policy.diffusion.rgb_encoder
            first = enc[0] if isinstance(enc, nn.ModuleList) else enc
            feature_dim: Any = first.feature_dim
            dim += int(feature_dim) * len(cfg.image_features)
        if cfg.env_state_feature is not None:
            dim += int(cfg.env_state_feature.shape[0])
        self.context_dim = dim

    def policy_module(self) -> nn.Module:
        return self.bundle.policy

    def _normalized(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        obs = {k: v for k, v in batch.items() if k.startswith("observation.")}
        norm = dict(self.bundle.preprocessor(obs))
        keys = list(self.config.image_features)
        if keys:
            norm["observation.images"] = torch.stack([norm[k] for k in keys], dim=-4)
        return norm

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        norm = self._normalized(batch)
        cond = self.bundle.policy.diffusion._prepare_global_conditioning(norm)  # B x (n_obs * c)
        return cond.view(cond.shape[0], self.context_tokens, -1)

    def predict(self, batch: dict[str, Tensor], context: Tensor) -> Tensor:
        diff = self.bundle.policy.diffusion
        actions = diff.conditional_sample(context.shape[0], global_cond=context.flatten(1))
        start = self.context_tokens - 1
        actions = actions[:, start:start + self.chunk_size]
        return self._unnormalize(actions)

    def _unnormalize(self, actions: Tensor) -> Tensor:
        out = self.bundle.postprocessor(actions)
        return out if isinstance(out, Tensor) else torch.as_tensor(out)

    def target(self, batch: dict[str, Tensor]) -> Tensor:
        start = self.context_tokens - 1
        return batch["action"][:, start:start + self.chunk_size]

    def action_latent_tokens(self) -> Tensor | None:
        return None  # the conv UNet has no learnable action queries
