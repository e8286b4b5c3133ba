"""Demonstration frames from a LeRobotDataset, held in memory for fast CPU training.

A skill trains on the frames whose task (the subtask instruction the recorder wrote) matches the
skill; contiguous matching frames of an episode form a *segment*, and samples never cross a
segment boundary (observation history is padded with the segment's first frame, action targets
past its end are padded and masked, like LeRobotDataset's ``*_is_pad``). The flat baseline uses
whole episodes with one instruction (the task goal).

Images are resized once (INTER_AREA, as the runner does at inference) and stored as uint8.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hvla_ros.executor.instruction import encode_instruction

log = logging.getLogger(__name__)

#: Default task-text pattern that selects a skill's frames (the task suite's instruction wording).
SKILL_PATTERNS: dict[str, str] = {
    "pick": r"^pick up\b",
    "place": r"^(place|insert)\b",
    "push": r"^push\b",
    "press": r"^press\b",
    "open_drawer": r"\bdrawer\b",
    "handover": r"^hand\b",
}


@dataclass
class DemoData:
    """Selected frames: ``images[cam]`` N x 3 x H x W uint8, ``state``/``action`` N x D float32,
    ``instruction`` N x E float32, ``seg_start``/``seg_end`` (exclusive) per frame, ``fps``."""

    images: dict[str, np.ndarray]
    state: np.ndarray
    action: np.ndarray
    instruction: np.ndarray
    seg_start: np.ndarray
    seg_end: np.ndarray
    fps: int
    state_names: list[str]
    action_names: list[str]
    tasks: list[str]
    num_segments: int
    cameras: list[str] = field(default_factory=list)  # cameras read (images or keypoints), in order

    def __len__(self) -> int:
        return int(self.state.shape[0])

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """Normalization statistics in LeRobot's layout (feature -> stat -> array)."""
        from hvla_ros import lerobot_compat as lc

        out: dict[str, dict[str, np.ndarray]] = {}
        for key, arr in ((lc.STATE_KEY, self.state), (lc.ACTION_KEY, self.action)):
            lo, hi = arr.min(0), arr.max(0)
            hi = np.where(hi - lo < 1e-3, lo + 1e-3, hi)  # constant joints: avoid a zero range
            out[key] = {"min": lo, "max": hi, "mean": arr.mean(0), "std": arr.std(0)}
        for cam, imgs in self.images.items():
            sub = imgs[:: max(1, len(imgs) // 500)].astype(np.float32) / 255.0
            mean = sub.mean(axis=(0, 2, 3)).reshape(3, 1, 1)
            std = np.maximum(sub.std(axis=(0, 2, 3)), 1e-3).reshape(3, 1, 1)
            out[lc.image_key(cam)] = {
                "mean": mean,
                "std": std,
                "min": np.zeros((3, 1, 1)),
                "max": np.ones((3, 1, 1)),
            }
        return out

    def sample(self, idx: np.ndarray, n_obs_steps: int, horizon: int) -> dict[str, object]:
        """A training batch (torch tensors, unnormalized) for frame indices ``idx``."""
        import torch

        from hvla_ros import lerobot_compat as lc

        idx = np.asarray(idx)
        start, end = self.seg_start[idx][:, None], self.seg_end[idx][:, None]
        obs_idx = np.clip(idx[:, None] + np.arange(1 - n_obs_steps, 1)[None, :], start, end - 1)
        act_raw = idx[:, None] + np.arange(1 - n_obs_steps, 1 - n_obs_steps + horizon)[None, :]
        act_idx = np.clip(act_raw, start, end - 1)
        batch: dict[str, object] = {
            lc.STATE_KEY: torch.from_numpy(self.state[obs_idx]),
            lc.ACTION_KEY: torch.from_numpy(self.action[act_idx]),
            "action_is_pad": torch.from_numpy((act_raw < start) | (act_raw >= end)),
        }
        if self.instruction.shape[1]:
            batch[lc.INSTRUCTION_KEY] = torch.from_numpy(self.instruction[obs_idx])
        for cam, imgs in self.images.items():
            batch[lc.image_key(cam)] = torch.from_numpy(imgs[obs_idx]).float().div_(255.0)
        return batch


def _task_names(ds) -> dict[int, str]:
    tasks = ds.meta.tasks
    if hasattr(tasks, "iterrows"):  # v3: DataFrame indexed by task text
        return {int(row["task_index"]): str(name) for name, row in tasks.iterrows()}
    return {int(k): str(v) for k, v in dict(tasks).items()}


def load_demos(
    root: Path | str | Sequence[Path | str],
    *,
    cameras: Sequence[str] | None,
    image_hw: tuple[int, int],
    pattern: str | None,
    flat_instruction: str | None = None,
    instruction_dim: int = 16,
    max_episodes: int | None = None,
    image_encoder: str = "pixels",
    keypoint_target: bool = False,
    keypoint_orientation: bool = False,
) -> DemoData:
    """Read the frames of one dataset, or of several concatenated, matching ``pattern``.

    ``root``: a LeRobotDataset root, or a sequence of them (a multi-task skill trains on the
    demonstrations of several tasks; they must share fps, state and action names and cameras).
    ``max_episodes`` applies to each dataset. Other arguments: see ``_load_one``.
    """
    roots = [root] if isinstance(root, (str, Path)) else list(root)
    if not roots:
        raise ValueError("no dataset given")
    kw = dict(cameras=cameras, image_hw=image_hw, pattern=pattern, flat_instruction=flat_instruction,
              instruction_dim=instruction_dim, max_episodes=max_episodes, image_encoder=image_encoder,
              keypoint_target=keypoint_target, keypoint_orientation=keypoint_orientation)
    parts = [_load_one(r, **kw) for r in roots]  # type: ignore[arg-type]
    return parts[0] if len(parts) == 1 else concat_demos(parts, [str(r) for r in roots])


def concat_demos(parts: Sequence[DemoData], names: Sequence[str]) -> DemoData:
    """One DemoData of ``parts`` in order (segments stay within their part)."""
    first = parts[0]
    for name, d in zip(names[1:], parts[1:]):
        for attr in ("fps", "state_names", "action_names", "cameras"):
            if getattr(d, attr) != getattr(first, attr):
                raise ValueError(
                    f"dataset {name} has {attr} {getattr(d, attr)!r}, "
                    f"but {names[0]} has {getattr(first, attr)!r}: they cannot train one skill"
                )
        if d.instruction.shape[1] != first.instruction.shape[1] or set(d.images) != set(first.images):
            raise ValueError(f"dataset {name} has other observation features than {names[0]}")
    offsets = np.cumsum([0] + [len(d) for d in parts[:-1]])
    data = DemoData(
        images={c: np.concatenate([d.images[c] for d in parts]) for c in first.images},
        state=np.concatenate([d.state for d in parts]),
        action=np.concatenate([d.action for d in parts]),
        instruction=np.concatenate([d.instruction for d in parts]),
        seg_start=np.concatenate([d.seg_start + o for d, o in zip(parts, offsets)]),
        seg_end=np.concatenate([d.seg_end + o for d, o in zip(parts, offsets)]),
        fps=first.fps,
        state_names=first.state_names,
        action_names=first.action_names,
        tasks=sorted({t for d in parts for t in d.tasks}),
        num_segments=sum(d.num_segments for d in parts),
        cameras=first.cameras,
    )
    log.info("%d datasets: %d frames in %d segments", len(parts), len(data), data.num_segments)
    return data


def _load_one(
    root: Path | str,
    *,
    cameras: Sequence[str] | None,
    image_hw: tuple[int, int],
    pattern: str | None,
    flat_instruction: str | None = None,
    instruction_dim: int = 16,
    max_episodes: int | None = None,
    image_encoder: str = "pixels",
    keypoint_target: bool = False,
    keypoint_orientation: bool = False,
) -> DemoData:
    """Read the frames of ``root`` matching ``pattern`` (regex on the task text) into memory.

    ``flat_instruction``: use every frame of every episode, all with this instruction (the flat
    baseline). ``instruction_dim`` 0 disables the instruction input. ``image_encoder``
    ``colour_keypoints``: no images are kept; the colour keypoints of ``cameras`` (in that order,
    see executor.keypoints) are computed from the full-size frames and put in front of the
    instruction encoding in ``instruction`` (the policy's environment state); with
    ``keypoint_target`` followed by the features of the colours each frame's instruction names
    (``keypoints.target_block``); with ``keypoint_orientation`` each camera's keypoints carry the
    blobs' orientation values (``keypoints.encode_image``).
    """
    import cv2

    from hvla_ros import lerobot_compat as lc
    from hvla_ros.executor import keypoints as kp

    if image_encoder not in kp.IMAGE_ENCODERS:
        raise ValueError(f"image encoder must be one of {list(kp.IMAGE_ENCODERS)}, got {image_encoder!r}")
    use_kp = image_encoder == kp.ENCODER_NAME

    ds = lc.open_dataset(root)
    feats = ds.meta.features
    all_cams = [k[len(lc.IMAGE_PREFIX) :] for k in feats if k.startswith(lc.IMAGE_PREFIX)]
    cams = list(cameras) if cameras else all_cams
    missing = [c for c in cams if c not in all_cams]
    if missing:
        raise ValueError(f"dataset {root} has no cameras {missing}; it has {all_cams}")
    for key in (lc.STATE_KEY, lc.ACTION_KEY):
        if key not in feats:
            raise ValueError(f"dataset {root} lacks feature {key!r}; features: {sorted(feats)}")
    task_of = _task_names(ds)
    hf = ds.hf_dataset
    cols = hf.select_columns(["episode_index", "task_index", lc.STATE_KEY, lc.ACTION_KEY])[:]
    ep = np.asarray(cols["episode_index"], dtype=np.int64)
    tidx = np.asarray(cols["task_index"], dtype=np.int64)
    state = np.stack([np.asarray(s, dtype=np.float32) for s in cols[lc.STATE_KEY]])
    action = np.stack([np.asarray(a, dtype=np.float32) for a in cols[lc.ACTION_KEY]])
    texts = np.array([task_of.get(int(t), "") for t in tidx], dtype=object)
    if max_episodes is not None:
        keep_eps = np.unique(ep)[:max_episodes]
        ep_ok = np.isin(ep, keep_eps)
    else:
        ep_ok = np.ones(len(ep), dtype=bool)
    if flat_instruction is not None:
        sel = ep_ok
    else:
        if not pattern:
            raise ValueError("a task pattern is required unless training the flat baseline")
        rx = re.compile(pattern)
        sel = ep_ok & np.array([bool(rx.search(t)) for t in texts])
    rows = np.flatnonzero(sel)
    if rows.size == 0:
        raise ValueError(
            f"no frames of {root} match task pattern {pattern!r}; tasks: {sorted(set(task_of.values()))}"
        )
    # Segments: runs of consecutive selected rows within one episode (and one task unless flat).
    seg_key = ep[rows] if flat_instruction is not None else ep[rows] * 100003 + tidx[rows]
    brk = np.ones(rows.size, dtype=bool)
    brk[1:] = (np.diff(rows) != 1) | (np.diff(seg_key) != 0)
    seg_id = np.cumsum(brk) - 1
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], rows.size)
    seg_start, seg_end = starts[seg_id], ends[seg_id]
    instr_text = [flat_instruction] * rows.size if flat_instruction is not None else list(texts[rows])
    cache: dict[str, np.ndarray] = {}
    instruction: np.ndarray = np.zeros((rows.size, instruction_dim), dtype=np.float32)
    if instruction_dim:
        for i, t in enumerate(instr_text):
            if t not in cache:
                cache[t] = encode_instruction(t, instruction_dim)
            instruction[i] = cache[t]
    h, w = image_hw
    images = {} if use_kp else {c: np.empty((rows.size, 3, h, w), dtype=np.uint8) for c in cams}
    fpc = kp.features_per_camera(orientation=keypoint_orientation)
    keypoints = np.zeros((rows.size, fpc * len(cams)), dtype=np.float32)
    img_cols = hf.select_columns([lc.image_key(c) for c in cams])
    chunk = 256
    for s in range(0, rows.size, chunk):
        part = img_cols.select(rows[s : s + chunk].tolist())[:]
        for ci, c in enumerate(cams):
            for j, t in enumerate(part[lc.image_key(c)]):
                arr = (t.numpy().transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
                if use_kp:
                    keypoints[s + j, ci * fpc : (ci + 1) * fpc] = kp.encode_image(arr, orientation=keypoint_orientation)
                    continue
                if arr.shape[:2] != (h, w):
                    arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_AREA)
                images[c][s + j] = arr.transpose(2, 0, 1)
    if use_kp:
        parts = [keypoints]
        if keypoint_target:
            target = np.zeros((rows.size, kp.target_dim(len(cams))), np.float32)
            for t in set(instr_text):
                sel_t = np.array([x == t for x in instr_text])
                target[sel_t] = kp.target_block(keypoints[sel_t], len(cams), kp.instruction_targets(t),
                                                 orientation=keypoint_orientation)
            parts.append(target)
        instruction = np.concatenate([*parts, instruction], axis=1)
    names = feats[lc.STATE_KEY].get("names") or [f"s{i}" for i in range(state.shape[1])]
    anames = feats[lc.ACTION_KEY].get("names") or [f"a{i}" for i in range(action.shape[1])]
    if isinstance(names, dict):  # some datasets nest names under "motors"
        names = next(iter(names.values()))
    if isinstance(anames, dict):
        anames = next(iter(anames.values()))
    data = DemoData(
        images=images,
        state=state[rows],
        action=action[rows],
        instruction=instruction,
        seg_start=seg_start,
        seg_end=seg_end,
        fps=int(ds.meta.fps),
        state_names=list(names),
        action_names=list(anames),
        tasks=sorted(set(instr_text)),
        num_segments=int(starts.size),
        cameras=list(cams),
    )
    log.info(
        "loaded %d frames in %d segments from %s (tasks: %s)", len(data), data.num_segments, root, data.tasks
    )
    return data


def write_synthetic_dataset(
    root: Path | str,
    *,
    episodes: int = 2,
    frames: int = 24,
    cameras: Sequence[str] = ("front",),
    image_hw: tuple[int, int] = (48, 64),
    joint_names: Sequence[str] | None = None,
    fps: int = 30,
    tasks: Sequence[str] = ("pick up the red cube", "place the red cube in the box"),
    seed: int = 0,
) -> Path:
    """A small LeRobotDataset with the recorder's layout, for tests and benchmarks.

    Each episode is split evenly into one segment per entry of ``tasks``; the images show a red
    square whose position follows the first joint, the action is the next state. Not a
    demonstration of anything; it exercises the data path end to end.
    """
    from hvla_ros import lerobot_compat as lc
    from hvla_ros.robot import JOINTS

    names = list(joint_names or JOINTS)
    h, w = image_hw
    rng = np.random.default_rng(seed)
    ds = lc.create_dataset(
        root, "local/synthetic", fps, lc.standard_features({c: (h, w) for c in cameras}, names)
    )
    per_task = max(1, frames // len(tasks))
    for _ in range(episodes):
        q = rng.uniform(-0.5, 0.5, size=len(names)).astype(np.float32)
        goal = rng.uniform(-0.5, 0.5, size=len(names)).astype(np.float32)
        for f in range(frames):
            nxt = (q + 0.2 * (goal - q)).astype(np.float32)
            frame: dict[str, object] = {
                lc.STATE_KEY: q.copy(),
                lc.ACTION_KEY: nxt,
                "task": tasks[min(f // per_task, len(tasks) - 1)],
            }
            for c in cameras:
                img = np.full((h, w, 3), 40, dtype=np.uint8)
                u = int((q[0] + 1) / 2 * (w - 8))
                img[h // 2 - 4 : h // 2 + 4, max(0, u) : max(0, u) + 8] = (220, 30, 30)
                frame[lc.image_key(c)] = img
            ds.add_frame(frame)
            q = nxt
        ds.save_episode()
    ds.finalize()
    return Path(root)
