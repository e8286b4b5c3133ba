"""Training a skill's diffusion policy from demonstrations (CPU or GPU, seeded, resumable).

The output directory is a policy directory (see hvla_ros.lerobot_compat) that the skill library
loads directly; while training it also holds ``training_state/`` (optimizer, LR schedule, step,
RNG state) so ``--resume`` continues where the last checkpoint left off. Delete
``training_state/`` before shipping a checkpoint (it doubles the size).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hvla_ros.executor.demos import SKILL_PATTERNS, DemoData, load_demos
from hvla_ros.executor.instruction import DEFAULT_DIM, ENCODING_NAME

log = logging.getLogger(__name__)
STATE_DIR = "training_state"


@dataclass
class TrainConfig:
    dataset: Path | list[Path]  # one LeRobotDataset root, or several (a multi-task skill)
    skill: str
    out: Path
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    device: str = "cpu"
    seed: int = 0
    cameras: list[str] | None = None
    image_hw: tuple[int, int] = (48, 64)
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    down_dims: tuple[int, ...] = (32, 64, 128)
    backbone_stages: int = 3
    instruction_dim: int = DEFAULT_DIM
    pattern: str | None = None
    flat_instruction: str | None = None
    max_episodes: int | None = None
    checkpoint_every: int = 250
    stop_after: int | None = None  # stop (and checkpoint) at this step of the ``steps`` schedule
    resume: bool = False
    num_threads: int = 2
    denoising_steps: int = 10
    image_encoder: str = "pixels"  # pixels | colour_keypoints (see executor.keypoints)
    keypoint_target: bool = False  # colour keypoints: add the instruction's target block
    keypoint_orientation: bool = False  # colour keypoints: add each blob's four-fold orientation
    progress: bool = True


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    mean_loss_last_100: float
    seconds: float
    frames: int
    segments: int
    weights_bytes: int
    losses: list[float] = field(default_factory=list)


def _meta(cfg: TrainConfig, data: DemoData) -> dict[str, Any]:
    from hvla_ros.executor import keypoints as kp

    extra: dict[str, Any] = {"image_encoder": cfg.image_encoder}
    if cfg.image_encoder == kp.ENCODER_NAME:
        extra.update(
            keypoint_cameras=list(data.cameras),
            keypoint_colours=list(kp.KEYPOINT_COLOURS),
            instruction_dim=cfg.instruction_dim,
            keypoint_target=cfg.keypoint_target,
            keypoint_orientation=cfg.keypoint_orientation,
        )
    return {
        **extra,
        "skill": cfg.skill,
        "fps": data.fps,
        "state_names": data.state_names,
        "action_names": data.action_names,
        "instruction_encoding": ENCODING_NAME if cfg.instruction_dim else "none",
        "tasks": data.tasks,
        "training": {
            k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "dataset" and isinstance(v, list) else v)
            for k, v in asdict(cfg).items()
            if k not in ("progress", "resume", "stop_after")
        },
    }


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume training) and write the policy directory ``cfg.out``."""
    import torch
    from tqdm import tqdm

    from hvla_ros import lerobot_compat as lc

    torch.set_num_threads(cfg.num_threads)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {cfg.device!r} requested but CUDA is not available")
    pattern = cfg.pattern if cfg.pattern is not None else SKILL_PATTERNS.get(cfg.skill)
    t0 = time.monotonic()
    data = load_demos(
        cfg.dataset,
        cameras=cfg.cameras,
        image_hw=cfg.image_hw,
        pattern=pattern,
        flat_instruction=cfg.flat_instruction,
        instruction_dim=cfg.instruction_dim,
        max_episodes=cfg.max_episodes,
        image_encoder=cfg.image_encoder,
        keypoint_target=cfg.keypoint_target,
        keypoint_orientation=cfg.keypoint_orientation,
    )
    log.info("demonstrations loaded in %.1f s", time.monotonic() - t0)
    low_dim = cfg.image_encoder != "pixels"
    cams = [] if low_dim else (list(cfg.cameras) if cfg.cameras else list(data.images))
    out = Path(cfg.out)
    state_dir = out / STATE_DIR
    start_step = 0
    losses: list[float] = []
    if cfg.resume and (state_dir / "state.pt").is_file():
        bundle = lc.load_policy_dir(out, device=cfg.device)
        bundle.policy.train()
        ts = torch.load(state_dir / "state.pt", map_location="cpu", weights_only=False)
        start_step, losses = int(ts["step"]), list(ts["losses"])
        log.info("resuming %s at step %d", out, start_step)
    else:
        if cfg.resume:
            log.warning("--resume: no checkpoint under %s; starting from scratch", out)
        torch.manual_seed(cfg.seed)
        config = lc.make_diffusion_config(
            cameras=cams,
            image_hw=cfg.image_hw,
            state_dim=data.state.shape[1],
            action_dim=data.action.shape[1],
            instruction_dim=int(data.instruction.shape[1]),
            n_obs_steps=cfg.n_obs_steps,
            horizon=cfg.horizon,
            n_action_steps=cfg.n_action_steps,
            num_inference_steps=cfg.denoising_steps,
            down_dims=cfg.down_dims,
            device=cfg.device,
        )
        bundle = lc.new_policy_bundle(
            config, data.stats(), backbone_stages=cfg.backbone_stages, meta=_meta(cfg, data)
        )
        bundle.policy.to(cfg.device)
        ts = None
    bundle.meta.update(_meta(cfg, data))
    policy = bundle.policy
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.95, 0.999), weight_decay=1e-6)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    rng = np.random.default_rng(cfg.seed)
    if ts is not None:
        opt.load_state_dict(ts["optimizer"])
        rng.bit_generator.state = ts["numpy_rng"]
        torch.set_rng_state(ts["torch_rng"])

    def checkpoint(step: int) -> None:
        bundle.meta["training"]["steps_done"] = step
        lc.save_policy_dir(bundle, out)
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / "state.pt.tmp"
        torch.save(
            {
                "step": step,
                "losses": losses,
                "optimizer": opt.state_dict(),
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )
        tmp.replace(state_dir / "state.pt")

    t_train = time.monotonic()
    last = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    bar = tqdm(
        range(start_step, last),
        initial=start_step,
        total=cfg.steps,
        desc=f"train {cfg.skill}",
        disable=not cfg.progress,
        dynamic_ncols=True,
    )
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        idx = rng.integers(0, len(data), size=cfg.batch_size)
        batch: dict[str, Any] = data.sample(idx, cfg.n_obs_steps, cfg.horizon)
        loss = lc.training_loss(bundle, {k: v.to(cfg.device) for k, v in batch.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        opt.step()
        losses.append(float(loss.item()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", lr=f"{lr_at(step):.1e}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < last:
            checkpoint(step + 1)
    bar.close()
    final_step = max(last, start_step)
    checkpoint(final_step)
    policy.eval()
    (out / "training_log.json").write_text(
        json.dumps(
            {
                "steps": final_step,
                "losses_every_10": losses[::10],
                "seconds_this_run": time.monotonic() - t_train,
                "frames": len(data),
                "segments": data.num_segments,
            },
            indent=1,
        )
        + "\n"
    )
    return TrainResult(
        steps=final_step,
        final_loss=losses[-1] if losses else float("nan"),
        mean_loss_last_100=float(np.mean(losses[-100:])) if losses else float("nan"),
        seconds=time.monotonic() - t_train,
        frames=len(data),
        segments=data.num_segments,
        weights_bytes=(out / "model.safetensors").stat().st_size,
        losses=losses,
    )


def save_untrained_policy(
    out: Path | str,
    *,
    cameras: Sequence[str],
    joint_names: Sequence[str],
    image_hw: tuple[int, int] = (48, 64),
    fps: int = 30,
    n_obs_steps: int = 2,
    horizon: int = 16,
    n_action_steps: int = 8,
    instruction_dim: int = DEFAULT_DIM,
    down_dims: Sequence[int] = (32, 64, 128),
    backbone_stages: int = 2,
    seed: int = 0,
) -> Path:
    """A randomly initialised skill policy with plausible normalization (joint limits, mid-grey images).

    For tests, benchmarks and wiring checks; its actions stay inside the joint limits but mean
    nothing.
    """
    import torch

    from hvla_ros import lerobot_compat as lc
    from hvla_ros.robot import POSITION_LIMITS

    torch.manual_seed(seed)
    lims = np.array(
        [
            POSITION_LIMITS[j.split("_", 1)[1] if j.startswith(("left_", "right_")) else j]
            for j in joint_names
        ],
        dtype=np.float32,
    )
    d = len(joint_names)
    stats: dict[str, dict[str, Any]] = {
        lc.STATE_KEY: {"min": lims[:, 0], "max": lims[:, 1]},
        lc.ACTION_KEY: {"min": lims[:, 0], "max": lims[:, 1]},
    }
    for c in cameras:
        stats[lc.image_key(c)] = {
            "mean": np.full((3, 1, 1), 0.5, np.float32),
            "std": np.full((3, 1, 1), 0.25, np.float32),
        }
    config = lc.make_diffusion_config(
        cameras=cameras,
        image_hw=image_hw,
        state_dim=d,
        action_dim=d,
        instruction_dim=instruction_dim,
        n_obs_steps=n_obs_steps,
        horizon=horizon,
        n_action_steps=n_action_steps,
        down_dims=down_dims,
    )
    meta = {
        "skill": "untrained",
        "fps": fps,
        "state_names": list(joint_names),
        "action_names": list(joint_names),
        "instruction_encoding": ENCODING_NAME if instruction_dim else "none",
    }
    bundle = lc.new_policy_bundle(config, stats, backbone_stages=backbone_stages, meta=meta)
    bundle.policy.eval()
    return lc.save_policy_dir(bundle, out)
