"""AnchorRefine's refine module: residual arm actions and decision-aware gripper correction.

Shapes (B batch, N context tokens of size C, T chunk steps, D joints, A arm joints, G grippers)::

    context  B x N x C   (the anchor's encoder output, see refiner.anchor)
    anchor   B x T x D   (anchor chunk, radians)
    ->  residual B x T x A  (arm joints, radians)      final arm = anchor + residual
        delta    B x T x G  (gripper correction)       p = clip(sigma(anchor logit) + delta, 0, 1)

Equations as implemented (README.md in this directory gives the reasoning):

- Eq. 8, directional correction signal: ``d = 2 y - 1`` with ``y = 1[c(q_gt) > 0.5]`` the
  demonstrated closed/open decision (``c`` = closing fraction, see refiner.anchor).
- Eq. 9, boundary-aware target with margin ``m``: ``delta* = d * relu(m - d (p_a - 0.5))``:
  zero when the anchor's decision is right by at least ``m``, otherwise the smallest correction
  that puts ``p`` on the right side of 0.5 by ``m``.
- Eq. 10: ``L_grip = mean((delta - delta*)^2)``.
- Eq. 11: ``p = clip(sigma(z_a) + delta, 0, 1)``.
- Residual: ``L_res = mean(((r - (a_gt - sg(a_anchor))) / s)^2)`` over arm joints, ``s`` the
  per-joint action scale; objective ``L_res + lambda L_grip``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hvla_ros.refiner.anchor import anchor_probability, closing_fraction, gripper_position

ABLATIONS = ("full", "no_gripper", "naive_gripper_mse", "no_detach", "anchor_concat", "direct")


@dataclass
class RefinerConfig:
    """Architecture, equation constants and the ablation switches of one refiner."""

    joint_names: tuple[str, ...]
    gripper_names: tuple[str, ...]
    chunk_size: int
    context_tokens: int
    context_dim: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    ff_dim: int = 128
    dropout: float = 0.0
    margin: float = 0.2  # m of Eq. 9
    grip_weight: float = 1.0  # lambda
    action_scale: list[float] = field(default_factory=list)  # per joint (radians per unit)
    action_center: list[float] = field(default_factory=list)  # per joint (radians), direct mode
    gripper_mode: str = "decision"  # how p becomes a gripper position: "decision" | "continuous"
    # Largest gripper command change between chunk steps (rad; 0 = none): a flipped decision
    # ramps at the gripper's velocity limit instead of jumping open/closed, which the safety
    # filter's step-change guard would refuse (the whole chunk, so the arm would hold).
    gripper_max_step: float = 0.0
    # Ablation switches (paper table): each False/"full" is the method as published.
    gripper_refinement: bool = True  # False: gripper straight from the anchor
    naive_gripper_mse: bool = False  # True: target delta* = c(q_gt) - p_a (plain MSE)
    detach_anchor: bool = True  # False: gradients reach the (then trainable) anchor
    anchor_concat: bool = False  # True: the anchor chunk is concatenated to the action tokens
    direct: bool = False  # True: predict the final arm action instead of a residual

    def __post_init__(self) -> None:
        self.joint_names = tuple(self.joint_names)
        self.gripper_names = tuple(self.gripper_names)
        missing = [g for g in self.gripper_names if g not in self.joint_names]
        if missing:
            raise ValueError(f"`gripper_names` {missing} are not in `joint_names` {list(self.joint_names)}.")
        if self.chunk_size < 1 or self.context_tokens < 1 or self.context_dim < 1:
            raise ValueError(f"sizes must be >= 1. Got chunk_size={self.chunk_size}, "
                             f"context_tokens={self.context_tokens}, context_dim={self.context_dim}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"`d_model` ({self.d_model}) must be divisible by `n_heads` ({self.n_heads}).")
        if not 0 <= self.margin < 0.5:
            raise ValueError(f"`margin` must be in [0, 0.5). Got {self.margin}.")
        if self.gripper_mode not in ("decision", "continuous"):
            raise ValueError(f"`gripper_mode` must be 'decision' or 'continuous'. Got {self.gripper_mode!r}.")
        if self.action_scale and len(self.action_scale) != len(self.joint_names):
            raise ValueError(f"`action_scale` has {len(self.action_scale)} entries for "
                             f"{len(self.joint_names)} joints.")
        if self.action_center and len(self.action_center) != len(self.joint_names):
            raise ValueError(f"`action_center` has {len(self.action_center)} entries for "
                             f"{len(self.joint_names)} joints.")
        if not (self.gripper_max_step >= 0 and math.isfinite(self.gripper_max_step)):
            raise ValueError(f"`gripper_max_step` must be finite and >= 0. Got {self.gripper_max_step}.")
        if self.action_scale and not all(s > 0 and math.isfinite(s) for s in self.action_scale):
            raise ValueError(f"`action_scale` entries must be finite and > 0. Got {self.action_scale}.")

    @property
    def arm_index(self) -> list[int]:
        return [i for i, n in enumerate(self.joint_names) if n not in self.gripper_names]

    @property
    def gripper_index(self) -> list[int]:
        return [self.joint_names.index(g) for g in self.gripper_names]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["joint_names"] = list(self.joint_names)
        d["gripper_names"] = list(self.gripper_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RefinerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown refiner config keys {unknown}")
        return cls(**d)

    def with_ablation(self, name: str) -> RefinerConfig:
        """A copy with one ablation switch flipped (``name`` in :data:`ABLATIONS`)."""
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; expected one of {list(ABLATIONS)}")
        d = self.to_dict()
        d.update({
            "full": {},
            "no_gripper": {"gripper_refinement": False},
            "naive_gripper_mse": {"naive_gripper_mse": True},
            "no_detach": {"detach_anchor": False},
            "anchor_concat": {"anchor_concat": True},
            "direct": {"direct": True},
        }[name])
        return RefinerConfig.from_dict(d)


# ---------------------------------------------------------------- gripper equations
def directional_signal(q_gt: Tensor) -> Tensor:
    """Eq. 8: +1 where the demonstration closes the gripper, -1 where it opens it."""
    return torch.where(closing_fraction(q_gt) > 0.5, 1.0, -1.0).to(q_gt.dtype)


def boundary_target(p_anchor: Tensor, direction: Tensor, margin: float) -> Tensor:
    """Eq. 9: the correction that puts ``p`` on the demonstrated side of 0.5 by ``margin``."""
    return direction * F.relu(margin - direction * (p_anchor - 0.5))


def gripper_target(p_anchor: Tensor, q_gt: Tensor, cfg: RefinerConfig) -> Tensor:
    """delta*: Eq. 9 (decision-aware) or, for the naive-MSE ablation, ``c(q_gt) - p_a``."""
    if cfg.naive_gripper_mse:
        return closing_fraction(q_gt).clamp(0.0, 1.0) - p_anchor
    return boundary_target(p_anchor, directional_signal(q_gt), cfg.margin)


def refine_probability(anchor_logit_or_prob: Tensor, delta: Tensor, *, is_logit: bool = True) -> Tensor:
    """Eq. 11: ``p = clip(sigma(z_a) + delta, 0, 1)``."""
    p_a = torch.sigmoid(anchor_logit_or_prob) if is_logit else anchor_logit_or_prob
    return (p_a + delta).clamp(0.0, 1.0)


def gripper_command(p: Tensor, p_anchor: Tensor, q_anchor: Tensor, mode: str, max_step: float = 0.0) -> Tensor:
    """Turn the refined probability into gripper positions (``... x T x G``).

    ``decision``: keep the anchor's position where the open/close decision is unchanged, and
    command the fully closed/open position where the refinement flips it (the paper's grippers
    take a binary command thresholded at 0.5). ``continuous``: invert the closing fraction.
    ``max_step`` > 0 ramps the command at most that far per step, starting from the anchor's
    first step; in ``decision`` mode a chunk without a flip stays exactly the anchor's.
    """
    if mode == "continuous":
        cmd = gripper_position(p)
    else:
        flipped = (p > 0.5) != (p_anchor > 0.5)
        extreme = gripper_position((p > 0.5).to(p.dtype))
        cmd = torch.where(flipped, extreme, q_anchor)
    if max_step <= 0:
        return cmd
    limited = rate_limit(cmd, q_anchor[..., 0, :], max_step)
    if mode == "continuous":
        return limited
    any_flip = flipped.any(dim=-2, keepdim=True)
    return torch.where(any_flip, limited, q_anchor)


def rate_limit(x: Tensor, start: Tensor, max_step: float) -> Tensor:
    """``x`` (``... x T x G``) with each step at most ``max_step`` from the previous one; the
    first step is measured from ``start`` (``... x G``)."""
    prev = start
    out = []
    for t in range(x.shape[-2]):
        prev = prev + (x[..., t, :] - prev).clamp(-max_step, max_step)
        out.append(prev)
    return torch.stack(out, dim=-2)


# ---------------------------------------------------------------- the module
class RefineModel(nn.Module):
    """Transformer over ``[context tokens; action latent tokens]`` with residual/gripper heads."""

    def __init__(self, cfg: RefinerConfig, latent_init: Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d, T = cfg.d_model, cfg.chunk_size
        n_arm, n_grip, D = len(cfg.arm_index), len(cfg.gripper_names), len(cfg.joint_names)
        self.ctx_proj = nn.Linear(cfg.context_dim, d)
        self.ctx_pos = nn.Parameter(torch.randn(cfg.context_tokens, d) * 0.02)
        self.action_tokens = nn.Parameter(self._initial_latents(latent_init, T, d))
        self.anchor_proj = nn.Linear(d + D, d) if cfg.anchor_concat else None
        layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.ff_dim, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.arm_head = nn.Linear(d, n_arm)
        # The gripper head sees its step's token and the anchor's probability for that step:
        # the correction is decided relative to the anchor's decision.
        self.grip_head = (nn.Sequential(nn.Linear(d + n_grip, d), nn.GELU(), nn.Linear(d, n_grip))
                          if n_grip else None)
        # Start as the identity refinement: zero residual, zero correction.
        nn.init.zeros_(self.arm_head.weight)
        nn.init.zeros_(self.arm_head.bias)
        if self.grip_head is not None:
            last = self.grip_head[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        scale = torch.tensor(cfg.action_scale or [1.0] * D, dtype=torch.float32)
        self.register_buffer("scale", scale)
        center = torch.tensor(cfg.action_center or [0.0] * D, dtype=torch.float32)
        self.register_buffer("center", center)

    @staticmethod
    def _initial_latents(init: Tensor | None, T: int, d: int) -> Tensor:
        """Learnable action tokens; copied from the anchor's where it has them (cropped/padded)."""
        out = torch.randn(T, d) * 0.02
        if init is not None:
            src = init.detach().float().reshape(init.shape[0], -1)
            t, k = min(T, src.shape[0]), min(d, src.shape[1])
            out[:t, :k] = src[:t, :k]
        return out

    def forward(self, context: Tensor, anchor: Tensor) -> tuple[Tensor, Tensor]:
        """``(arm B x T x A, delta B x T x G)``: residual (or, ``direct``, final arm action) in radians."""
        cfg = self.cfg
        B = context.shape[0]
        scale: Tensor = self.scale  # type: ignore[assignment]
        ctx = self.ctx_proj(context) + self.ctx_pos
        act = self.action_tokens.unsqueeze(0).expand(B, -1, -1)
        if self.anchor_proj is not None:
            act = self.anchor_proj(torch.cat([act, anchor / scale], dim=-1))
        h = self.encoder(torch.cat([ctx, act], dim=1))[:, cfg.context_tokens:]
        h = self.norm(h)
        arm = self.arm_head(h) * scale[cfg.arm_index]
        if cfg.direct:  # the final arm action itself, around the data's centre
            center: Tensor = self.center  # type: ignore[assignment]
            arm = arm + center[cfg.arm_index]
        if self.grip_head is None or not cfg.gripper_refinement:
            delta = torch.zeros(B, cfg.chunk_size, len(cfg.gripper_names), dtype=h.dtype, device=h.device)
        else:
            p_a = anchor_probability(anchor[..., cfg.gripper_index])
            delta = torch.tanh(self.grip_head(torch.cat([h, p_a - 0.5], dim=-1)))
        return arm, delta

    def refine(self, context: Tensor, anchor: Tensor,
               anchor_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Final chunk ``B x T x D`` (radians) and gripper probabilities ``B x T x G``."""
        cfg = self.cfg
        arm, delta = self(context, anchor)
        out = anchor.clone()
        out[..., cfg.arm_index] = arm if cfg.direct else anchor[..., cfg.arm_index] + arm
        gi = cfg.gripper_index
        q_a = anchor[..., gi]
        p_a = torch.sigmoid(anchor_logits) if anchor_logits is not None else anchor_probability(q_a)
        p = refine_probability(p_a, delta, is_logit=False)
        if cfg.gripper_refinement and gi:
            out[..., gi] = gripper_command(p, p_a, q_a, cfg.gripper_mode, cfg.gripper_max_step)
        return out, p

    def losses(self, context: Tensor, anchor: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"loss", "res", "grip"}`` for one batch. ``anchor`` must already be detached or not,
        as the training loop decides (``detach_anchor``)."""
        cfg = self.cfg
        scale: Tensor = self.scale  # type: ignore[assignment]
        ai, gi = cfg.arm_index, cfg.gripper_index
        arm, delta = self(context, anchor)
        s = scale[ai]
        goal = target[..., ai] if cfg.direct else target[..., ai] - anchor[..., ai]
        res = (((arm - goal) / s) ** 2).mean()
        if cfg.gripper_refinement and gi:
            p_a = anchor_probability(anchor[..., gi])
            grip = ((delta - gripper_target(p_a, target[..., gi], cfg)) ** 2).mean()
        else:
            grip = torch.zeros((), device=arm.device)
        return {"loss": res + cfg.grip_weight * grip, "res": res, "grip": grip}
