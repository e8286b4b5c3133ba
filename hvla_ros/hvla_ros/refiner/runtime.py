"""Refinement at inference: anchor chunk (+ observation context) -> refined chunk (numpy in/out).

:class:`ChunkRefiner` holds one trained :class:`~hvla_ros.refiner.model.RefineModel` per skill
and a *context provider* per skill: a callable returning the anchor's context tokens
(``N x C``) for the observation the chunk was planned from, or None when none is available (the
chunk then passes through unrefined, counted). :func:`observation_context_provider` builds that
provider from an executor skill (its diffusion encoder) and an observation buffer.

Shapes: ``positions`` ``T x D`` (radians, the chunk's joint order) -> ``T x D`` and gripper
probabilities ``T x G``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvla_ros.refiner.anchor import anchor_probability
from hvla_ros.refiner.model import RefineModel
from hvla_ros.refiner.shipped import SHIPPED_VARIANT, shipped_refiner_dir

log = logging.getLogger(__name__)

__all__ = [
    "SHIPPED_VARIANT",
    "ChunkRefiner",
    "RefineResult",
    "load_chunk_refiner",
    "observation_context_provider",
    "shipped_refiner_dir",
]

#: (chunk start stamp) -> context tokens N x C, or None
ContextProvider = Callable[[float], "torch.Tensor | None"]


@dataclass
class RefineResult:
    positions: np.ndarray  # T x D
    gripper_probabilities: np.ndarray  # T x G (anchor's where not refined)
    refined: bool
    reason: str = ""


@dataclass
class ChunkRefiner:
    """Per-skill refine modules and context providers."""

    models: dict[str, RefineModel] = field(default_factory=dict)
    providers: dict[str, ContextProvider] = field(default_factory=dict)
    passed_through: int = 0
    refined: int = 0

    def add(self, skill: str, model: RefineModel, provider: ContextProvider) -> None:
        model.eval()
        self.models[skill] = model
        self.providers[skill] = provider

    @torch.inference_mode()
    def refine(self, skill: str, joint_names: Sequence[str], positions: np.ndarray, gripper_names: Sequence[str],
               start: float, anchor_logits: np.ndarray | None = None,
               context: torch.Tensor | None = None) -> RefineResult:
        """Refine one chunk; passes it through (with the reason) when it cannot.

        ``context`` is the anchor's observation context for the chunk (``N x C``, e.g. carried in
        the ActionChunk by the executor); without it the skill's context provider is asked.
        """
        grip_cols = [list(joint_names).index(g) for g in gripper_names if g in joint_names]
        p_anchor = anchor_probability(torch.as_tensor(positions[:, grip_cols])).numpy()
        model = self.models.get(skill)
        if model is None:
            return self._pass(positions, p_anchor, f"no refiner for skill {skill!r}")
        cfg = model.cfg
        if tuple(joint_names) != cfg.joint_names:
            return self._pass(positions, p_anchor,
                              f"chunk joints {list(joint_names)} differ from the refiner's {list(cfg.joint_names)}")
        if positions.shape[0] > cfg.chunk_size:
            # A chunk longer than the refiner's window (a refiner trained with --chunk-steps
            # executed, and a latency-compensated chunk: the executor sends steps that go stale in
            # transit on top): refine the steps the refiner was trained on; the rest stay the anchor's.
            n = cfg.chunk_size
            head_logits = None
            if anchor_logits is not None and anchor_logits.size == positions.shape[0] * len(cfg.gripper_names):
                head_logits = np.asarray(anchor_logits).reshape(positions.shape[0], -1)[:n].ravel()
            head = self.refine(skill, joint_names, positions[:n], gripper_names, start, head_logits, context)
            if not head.refined:  # counted as passed through by the call above
                return RefineResult(positions, p_anchor, False, head.reason)
            return RefineResult(np.concatenate([head.positions, positions[n:]]),
                                np.concatenate([head.gripper_probabilities, p_anchor[n:]]), True)
        if context is None:
            provider = self.providers.get(skill)
            context = provider(start) if provider is not None else None
        if context is None:
            return self._pass(positions, p_anchor, "no observation context for the chunk")
        if tuple(context.shape) != (cfg.context_tokens, cfg.context_dim):
            return self._pass(positions, p_anchor, f"context of shape {tuple(context.shape)} is not the refiner's "
                              f"({cfg.context_tokens}, {cfg.context_dim}): trained for another skill policy?")
        T = positions.shape[0]
        anchor = torch.as_tensor(positions, dtype=torch.float32)
        if cfg.chunk_size > T:  # a short last chunk: pad with its last step, crop after
            anchor = torch.cat([anchor, anchor[-1:].expand(cfg.chunk_size - T, -1)])
        logits = None
        if anchor_logits is not None and anchor_logits.size == T * len(cfg.gripper_names):
            lg = torch.as_tensor(anchor_logits, dtype=torch.float32).reshape(T, -1)
            logits = torch.cat([lg, lg[-1:].expand(cfg.chunk_size - T, -1)])[None]
        out, p = model.refine(context[None].float(), anchor[None], logits)
        self.refined += 1
        return RefineResult(out[0, :T].double().numpy(), p[0, :T].numpy(), True)

    def _pass(self, positions: np.ndarray, p_anchor: np.ndarray, reason: str) -> RefineResult:
        self.passed_through += 1
        log.debug("chunk passed through unrefined: %s", reason)
        return RefineResult(positions, p_anchor, False, reason)


def load_chunk_refiner(refiner_dir: Path | str, providers: dict[str, ContextProvider]) -> ChunkRefiner:
    """Load ``<refiner_dir>/<skill>/`` checkpoints for every skill that has a provider."""
    from hvla_ros.refiner.train import load_refiner

    root = Path(refiner_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"refiner directory {root} does not exist")
    cr = ChunkRefiner()
    for skill, provider in providers.items():
        if (root / skill).is_dir():
            model, _ = load_refiner(root / skill)
            cr.add(skill, model, provider)
    if not cr.models:
        raise FileNotFoundError(f"no refiner checkpoints for skills {sorted(providers)} under {root}")
    return cr


def observation_context_provider(skill: Any, buffer: Any, instruction: Callable[[], str]) -> ContextProvider:
    """Context from an executor ``Skill`` (diffusion encoder) and an ``ObservationBuffer``.

    The history ends at the newest observation not after the chunk's start (the one the
    executor planned from), spaced by the skill's step period, as the executor builds it.
    """
    from hvla_ros.executor.instruction import encode_instruction
    from hvla_ros.executor.runner import policy_inputs
    from hvla_ros.refiner.anchor import DiffusionAnchor

    anchor = DiffusionAnchor(skill.bundle, tuple(skill.spec.action_joints))
    n_obs = anchor.context_tokens
    period = skill.spec.step_period_s

    def provide(start: float) -> torch.Tensor | None:
        hist = buffer.history(n_obs, period, until=start)
        if not hist:
            return None
        instr, text = None, instruction()
        if skill.bundle.instruction_dim > 0:
            instr = encode_instruction(text, skill.bundle.instruction_dim)
        inputs = [policy_inputs(skill, o, instr, text) for o in hist]
        batch = {k: torch.stack([i[k] for i in inputs])[None] for k in inputs[0]}  # type: ignore[misc]
        with torch.no_grad():
            return anchor.encode(batch)[0]

    return provide
