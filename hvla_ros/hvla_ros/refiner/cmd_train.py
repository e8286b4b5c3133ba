"""``hvla train-refiner``: phase-2 training of a skill's refiner from demonstrations.

The skill policy (phase 1, ``hvla train-skill``) is the frozen anchor. Every demonstration frame
of the skill is run through it once (context + anchor chunk, detached), then the refine module
trains on those with ``L_res + lambda L_grip``; held-out segments give the anchor-only vs
refined errors and the residual-target compactness, all stored in the checkpoint's metadata::

    hvla train-refiner --dataset DEMOS --skill pick --policy POLICY_DIR --out refiners/pick
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from hvla_ros.refiner.model import ABLATIONS

    p.add_argument("--dataset", required=True, type=Path, nargs="+",
                   help="LeRobotDataset(s) of demonstrations (several: the skill's multi-task data)")
    p.add_argument("--skill", required=True, help="skill name (selects the frames by task text)")
    p.add_argument("--policy", required=True, type=Path, help="the skill's policy directory (the anchor)")
    p.add_argument("--out", required=True, type=Path, help="refiner checkpoint directory to write")
    p.add_argument("--pattern", default=None, help="task-text regex; default: the skill's standard pattern")
    p.add_argument("--ablation", default="full", choices=ABLATIONS, help="train an ablation instead")
    p.add_argument("--chunk-steps", default="executed", metavar="N|executed|window",
                   help="steps after the observation the refiner corrects: 'executed' (default) the policy's "
                        "n_action_steps, 'window' all it predicts (horizon - n_obs_steps + 1; a latency-compensated "
                        "chunk in the graph executes later steps of it), or a number")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--margin", type=float, default=0.2, help="m of the boundary-aware gripper target")
    p.add_argument("--grip-weight", type=float, default=1.0, help="lambda of L_grip")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--val-every", type=int, default=10, help="every k-th demonstration segment is held out")
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--anchor-cache", type=Path, default=None, metavar="DIR",
                   help="keep the frozen anchor's predictions here and reuse them in later runs on the same "
                        "policy, data and seed (an ablation sweep runs the anchor once)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import torch

    from hvla_ros import lerobot_compat as lc
    from hvla_ros.executor.demos import SKILL_PATTERNS, load_demos
    from hvla_ros.refiner import train as tr
    from hvla_ros.refiner.anchor import DiffusionAnchor
    from hvla_ros.refiner.model import RefineModel, RefinerConfig
    from hvla_ros.robot import ROBOTS

    t_start = time.monotonic()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pattern = args.pattern or SKILL_PATTERNS.get(args.skill)
    if pattern is None:
        log.error("no task pattern for skill %r; pass --pattern", args.skill)
        return 2
    try:
        bundle = lc.load_policy_dir(args.policy)
    except lc.PolicyLoadError as e:
        log.error("%s", e)
        return 2
    h, w = bundle.image_shape[1:] if bundle.image_encoder == "pixels" else (48, 64)  # (unused for keypoints)
    data = load_demos(args.dataset, cameras=bundle.cameras, image_hw=(h, w), pattern=pattern,
                      instruction_dim=bundle.instruction_dim, max_episodes=args.max_episodes,
                      image_encoder=bundle.image_encoder,
                      keypoint_target=bool(bundle.meta.get("keypoint_target")),
                      keypoint_orientation=bool(bundle.meta.get("keypoint_orientation")))
    joints = tuple(data.action_names)
    grippers = tuple(j for r in ROBOTS.values() for j in r.gripper_joints if j in joints)
    cfg = bundle.config
    chunk = {"window": lc.predicted_steps(cfg), "executed": int(cfg.n_action_steps)}.get(args.chunk_steps)
    try:
        anchor = DiffusionAnchor(bundle, joints, chunk if chunk is not None else int(args.chunk_steps))
    except ValueError as e:
        log.error("--chunk-steps %s: %s", args.chunk_steps, e)
        return 2
    n = len(data)
    seg = np.unique(data.seg_start, return_inverse=True)[1]
    val_mask = (seg % max(args.val_every, 2)) == 0 if seg.max() > 0 else np.arange(n) % 10 == 0

    def batches(idx: np.ndarray) -> Iterator[dict]:
        for s in range(0, len(idx), 64):
            yield data.sample(idx[s:s + 64], int(cfg.n_obs_steps), int(cfg.horizon))

    progress = not args.no_progress
    cache_file, key = None, ""
    if args.anchor_cache is not None:
        key = tr.anchor_cache_key({
            "policy": _digest(Path(args.policy)), "dataset": ",".join(str(Path(d).resolve()) for d in args.dataset),
            "frames": len(data), "pattern": pattern, "max_episodes": args.max_episodes,
            "val_every": args.val_every, "seed": args.seed, "n_obs_steps": int(cfg.n_obs_steps),
            "horizon": int(cfg.horizon), "chunk_steps": anchor.chunk_size})
        cache_file = args.anchor_cache / f"{args.skill}-{key}.pt"
    cached = tr.load_anchor_cache(cache_file, key) if cache_file is not None else None
    if cached is not None:
        train_set, val_set = cached
        log.info("anchor predictions from %s", cache_file)
    else:
        train_set = tr.collect(anchor, batches(np.flatnonzero(~val_mask)), progress=progress)
        val_set = tr.collect(anchor, batches(np.flatnonzero(val_mask)), progress=progress)
        if cache_file is not None:
            tr.save_anchor_cache(cache_file, key, train_set, val_set)
    scale, center = tr.action_statistics(train_set.target)
    # A flipped gripper decision ramps at the gripper's velocity limit (robot.py) per chunk step.
    robot = next(r for r in ROBOTS.values() if set(joints) <= set(r.joint_names))
    fps = float(bundle.meta.get("fps", 30))
    grip_step = min((robot.velocity_limit(g) for g in grippers), default=0.0) / fps
    rcfg = RefinerConfig(joint_names=joints, gripper_names=grippers, chunk_size=anchor.chunk_size,
                         context_tokens=anchor.context_tokens, context_dim=anchor.context_dim,
                         d_model=args.d_model, n_layers=args.layers, margin=args.margin,
                         grip_weight=args.grip_weight, action_scale=scale, gripper_max_step=grip_step,
                         action_center=center).with_ablation(args.ablation)
    model = RefineModel(rcfg, latent_init=anchor.action_latent_tokens())
    tcfg = tr.TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          progress=progress)
    if rcfg.detach_anchor:
        history = tr.train_cached(model, train_set, tcfg)
    else:
        rng = np.random.default_rng(args.seed)
        train_idx = np.flatnonzero(~val_mask)

        def next_batch() -> dict:
            return data.sample(rng.choice(train_idx, args.batch_size), int(cfg.n_obs_steps), int(cfg.horizon))

        history = tr.train_online(model, anchor, next_batch, tcfg)
        # The held-out anchor predictions must come from the anchor the refiner trained with.
        torch.manual_seed(args.seed)
        val_set = tr.collect(anchor, batches(np.flatnonzero(val_mask)), progress=progress)
    metrics = tr.evaluate(model, val_set)
    compact = tr.compactness(train_set, rcfg.arm_index)
    meta = {"skill": args.skill, "policy_dir": str(args.policy), "dataset": [str(d) for d in args.dataset],
            "ablation": args.ablation, "train_samples": len(train_set), "val_samples": len(val_set),
            "steps": args.steps, "seed": args.seed, "val_metrics": metrics, "compactness": compact,
            "final_loss": history[-1] if history else None}
    if not rcfg.detach_anchor:  # the anchor co-trained: the refiner is only valid with these weights
        meta["anchor_weights"] = tr.ANCHOR_WEIGHTS_FILE
    meta["train_seconds"] = round(time.monotonic() - t_start, 1)
    tr.save_refiner(model, args.out, meta)
    if not rcfg.detach_anchor:
        tr.save_anchor_weights(anchor.policy_module(), args.out)
    print(json.dumps({"out": str(args.out), "val_metrics": metrics, "compactness": compact}, indent=2))
    return 0


def _digest(policy_dir: Path) -> str:
    """Digest of a policy directory's files (weights and configs): the anchor's identity."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in policy_dir.rglob("*") if p.is_file() and "training_state" not in p.parts):
        h.update(str(f.relative_to(policy_dir)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
