"""Phase-2 training of the refine module (the anchor is already trained: phase 1).

With the anchor frozen and detached (the method), the anchor's context, chunk and the ground
truth of every training sample are computed once (:func:`collect`) and the refine module trains
on that cache. The ``no_detach`` ablation cannot cache: the anchor is trainable and every step
re-runs it with gradients (:func:`train_online`).

Checkpoint layout (:func:`save_refiner` / :func:`load_refiner`)::

    refiner_config.json        RefinerConfig (+ "meta": anchor policy, skill, training record)
    model.safetensors          RefineModel weights
    anchor_policy.safetensors  no_detach only: the co-trained anchor's weights (meta "anchor_weights")

An ablation sweep runs the same frozen anchor over the same frames once per variant; with an
anchor cache (:func:`save_anchor_cache` / :func:`load_anchor_cache`, ``hvla train-refiner
--anchor-cache DIR``) it runs once, and the later variants load its predictions, together with
the torch random state that followed them, so a cached run trains exactly as an uncached one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hvla_ros.refiner.anchor import AnchorPolicy, anchor_probability, closing_fraction
from hvla_ros.refiner.model import RefineModel, RefinerConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "refiner_config.json"
WEIGHTS_FILE = "model.safetensors"
#: ``no_detach`` only: the co-trained anchor policy's weights (the refiner is only valid with them)
ANCHOR_WEIGHTS_FILE = "anchor_policy.safetensors"


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    anchor_lr: float = 1e-4  # no_detach only: the anchor becomes trainable
    seed: int = 0
    progress: bool = True


@dataclass
class Cached:
    """Per-sample context ``N x C``, anchor chunk ``T x D`` and ground truth ``T x D`` (radians)."""

    context: Tensor
    anchor: Tensor
    target: Tensor

    def __len__(self) -> int:
        return int(self.context.shape[0])

    def split(self, frac: float, seed: int = 0) -> tuple[Cached, Cached]:
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        k = round(len(self) * frac)
        a, b = perm[:k], perm[k:]
        return (Cached(self.context[a], self.anchor[a], self.target[a]),
                Cached(self.context[b], self.anchor[b], self.target[b]))


@torch.no_grad()
def collect(anchor: AnchorPolicy, batches: Iterator[dict[str, Tensor]], *, progress: bool = False) -> Cached:
    """Run the frozen anchor over ``batches``: contexts, anchor chunks and targets, detached."""
    from tqdm import tqdm

    anchor.policy_module().eval()
    ctx, anc, tgt = [], [], []
    for batch in tqdm(batches, desc="anchor predictions", disable=not progress, unit="batch"):
        c = anchor.encode(batch)
        ctx.append(c.float())
        anc.append(anchor.predict(batch, c).float())
        tgt.append(anchor.target(batch).float())
    if not ctx:
        raise ValueError("no batches to collect anchor predictions from")
    return Cached(torch.cat(ctx), torch.cat(anc), torch.cat(tgt))


def anchor_cache_key(fields: dict[str, Any]) -> str:
    """A key for the anchor predictions a training run would compute from ``fields``
    (policy weights digest, dataset, frame selection, seed, ...): any change gives another key."""
    import hashlib

    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


def save_anchor_cache(path: Path | str, key: str, train: Cached, val: Cached) -> Path:
    """Write the frozen anchor's predictions (train and held-out) and the torch RNG state after them."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"key": key, "rng_state": torch.get_rng_state(),
                "train": (train.context, train.anchor, train.target),
                "val": (val.context, val.anchor, val.target)}, tmp)
    tmp.replace(out)  # a reader never sees half a file
    return out


def load_anchor_cache(path: Path | str, key: str) -> tuple[Cached, Cached] | None:
    """The cached predictions for ``key`` (restoring the RNG state saved with them), or None when
    the file is missing, unreadable or was made for another key (then it is recomputed)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        doc = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: recompute rather than fail the run
        log.warning("ignoring anchor cache %s: %s", p, e)
        return None
    if doc.get("key") != key:
        log.warning("ignoring anchor cache %s: made for other inputs (key %s, wanted %s)", p, doc.get("key"), key)
        return None
    torch.set_rng_state(doc["rng_state"])
    return Cached(*doc["train"]), Cached(*doc["val"])


def action_statistics(target: Tensor) -> tuple[list[float], list[float]]:
    """Per-joint scale (half range, floored) and centre of ground-truth chunks ``S x T x D``."""
    flat = target.reshape(-1, target.shape[-1])
    lo, hi = flat.min(0).values, flat.max(0).values
    scale = ((hi - lo) / 2).clamp_min(1e-2)
    return scale.tolist(), ((hi + lo) / 2).tolist()


def train_cached(model: RefineModel, data: Cached, cfg: TrainConfig,
                 on_step: Callable[[int, dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``model`` on a cache (detached anchor). Returns the loss history (every 50 steps)."""
    from tqdm import tqdm

    if not model.cfg.detach_anchor:
        raise ValueError("a cached dataset holds detached anchors; use train_online for no_detach")
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1))
    history: list[dict[str, float]] = []
    model.train()
    bar = tqdm(range(cfg.steps), desc="refiner", disable=not cfg.progress, unit="step")
    n = len(data)
    for step in bar:
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        losses = model.losses(data.context[idx], data.anchor[idx], data.target[idx])
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            rec = {k: float(v.detach()) for k, v in losses.items()} | {"step": step}
            history.append(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", res=f"{rec['res']:.4f}", grip=f"{rec['grip']:.4f}")
            if on_step is not None:
                on_step(step, rec)
    model.eval()
    return history


def train_online(model: RefineModel, anchor: AnchorPolicy, batches: Callable[[], dict[str, Tensor]],
                 cfg: TrainConfig) -> list[dict[str, float]]:
    """Train with the anchor in the loop. With ``detach_anchor`` False (the ablation) the
    anchor's parameters train too, driven only by the residual loss through ``a_gt - a_anchor``."""
    from tqdm import tqdm

    anchor_mod = anchor.policy_module()
    params: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": cfg.lr}]
    if not model.cfg.detach_anchor:
        anchor_mod.train()
        for p in anchor_mod.parameters():
            p.requires_grad_(True)
        params.append({"params": [p for p in anchor_mod.parameters()], "lr": cfg.anchor_lr})
    else:
        anchor_mod.eval()
    opt = torch.optim.AdamW(params, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    model.train()
    for step in tqdm(range(cfg.steps), desc="refiner (online)", disable=not cfg.progress, unit="step"):
        batch = batches()
        with torch.set_grad_enabled(not model.cfg.detach_anchor):
            ctx = anchor.encode(batch)
            anc = anchor.predict(batch, ctx)
        if model.cfg.detach_anchor:
            ctx, anc = ctx.detach(), anc.detach()
        losses = model.losses(ctx.float(), anc.float(), anchor.target(batch).float())
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({k: float(v.detach()) for k, v in losses.items()} | {"step": step})
    model.eval()
    anchor_mod.eval()
    return history


@torch.no_grad()
def evaluate(model: RefineModel, data: Cached) -> dict[str, float]:
    """Held-out errors: arm MSE (rad^2) anchor-only vs refined; gripper decision accuracy
    (the refined decision ``p > 0.5``, before any ramp of the command)."""
    cfg = model.cfg
    model.eval()
    out, p = model.refine(data.context, data.anchor)
    ai, gi = cfg.arm_index, cfg.gripper_index
    res: dict[str, float] = {
        "arm_mse_anchor": float(((data.anchor[..., ai] - data.target[..., ai]) ** 2).mean()),
        "arm_mse_refined": float(((out[..., ai] - data.target[..., ai]) ** 2).mean()),
    }
    if gi:
        truth = closing_fraction(data.target[..., gi]) > 0.5
        res["grip_acc_anchor"] = float(((anchor_probability(data.anchor[..., gi]) > 0.5) == truth).float().mean())
        refined = p > 0.5 if cfg.gripper_refinement else anchor_probability(data.anchor[..., gi]) > 0.5
        res["grip_acc_refined"] = float((refined == truth).float().mean())
    return res


def compactness(data: Cached, arm_index: list[int]) -> dict[str, float]:
    """Residual-target compactness: mean norm and covariance trace, raw actions vs residuals."""
    raw = data.target[..., arm_index].reshape(len(data), -1).double()
    res = (data.target - data.anchor)[..., arm_index].reshape(len(data), -1).double()

    def stats(x: Tensor) -> tuple[float, float]:
        cov_trace = float(x.var(dim=0, unbiased=True).sum()) if x.shape[0] > 1 else float("nan")
        return float(x.norm(dim=1).mean()), cov_trace

    (rn, rt), (qn, qt) = stats(raw), stats(res)
    return {"raw_mean_norm": rn, "raw_cov_trace": rt, "residual_mean_norm": qn, "residual_cov_trace": qt,
            "norm_ratio": qn / rn if rn else math.nan, "trace_ratio": qt / rt if rt else math.nan}


def save_refiner(model: RefineModel, path: Path | str, meta: dict[str, Any] | None = None) -> Path:
    """Write ``refiner_config.json`` + ``model.safetensors`` into ``path``."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"config": model.cfg.to_dict(), "meta": meta or {}}
    (out / CONFIG_FILE).write_text(json.dumps(doc, indent=2, sort_keys=True, default=_json_default) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


class RefinerLoadError(RuntimeError):
    """A refiner checkpoint that cannot be loaded; the message names the path and the reason."""


def load_refiner(path: Path | str) -> tuple[RefineModel, dict[str, Any]]:
    """Load a refiner checkpoint (eval mode) and its metadata."""
    from safetensors.torch import load_file

    p = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (p / name).is_file():
            raise RefinerLoadError(f"cannot load refiner from {p}: missing {name}")
    try:
        doc = json.loads((p / CONFIG_FILE).read_text())
        cfg = RefinerConfig.from_dict(doc["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise RefinerLoadError(f"cannot load refiner from {p}: bad {CONFIG_FILE} ({e})") from e
    model = RefineModel(cfg)
    try:
        model.load_state_dict(load_file(str(p / WEIGHTS_FILE)), strict=True)
    except Exception as e:  # safetensors raises its own error type for a corrupt file
        raise RefinerLoadError(f"cannot load refiner from {p}: weights do not match the config ({e})") from e
    model.eval()
    return model, dict(doc.get("meta", {}))


def save_anchor_weights(policy: torch.nn.Module, path: Path | str) -> Path:
    """Write a co-trained anchor's weights (``no_detach``) beside its refiner."""
    from safetensors.torch import save_model

    out = Path(path) / ANCHOR_WEIGHTS_FILE
    save_model(policy, str(out))
    return out


def load_anchor_weights(policy: torch.nn.Module, path: Path | str) -> None:
    """Load the weights :func:`save_anchor_weights` wrote into ``policy`` (the same architecture)."""
    from safetensors.torch import load_model

    f = Path(path) / ANCHOR_WEIGHTS_FILE
    if not f.is_file():
        raise RefinerLoadError(f"cannot load the co-trained anchor from {Path(path)}: missing {ANCHOR_WEIGHTS_FILE}")
    try:
        load_model(policy, str(f), strict=True)
    except Exception as e:  # safetensors raises its own error type for a corrupt file
        raise RefinerLoadError(f"cannot load the co-trained anchor from {f}: {e}") from e
    policy.eval()
