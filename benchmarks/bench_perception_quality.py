"""Quality of the classical segmenter and of mask propagation against MuJoCo ground truth.

For every task of the simulated suite and a few seeds: box each task object (not the table or
the arm) from the ground-truth segmentation, with a margin as a planner's box would have, then
1. segment it with the classical backend -> IoU with the ground-truth mask (goal: mean >= 0.8);
2. propagate the masks while the scripted expert moves the arm for 90 frames (30 Hz), both
   cameras -> IoU at the last frame (goal: >= 0.7), re-segmentations counted;
3. perception_node's pipelined mode applies the mask of the previous frame, dilated by
   ``--lag-dilate`` px (the node's default: 2): the IoU of that mask with the last frame's ground
   truth, for 0 px and the chosen dilation (the cost of publishing without waiting for propagation).

    .venv/bin/python benchmarks/bench_perception_quality.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, write_result

from hvla_ros.perception import Box, MaskPropagator, make_segmenter

SKIP = ("table", "arm")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def gt_boxes(seg: np.ndarray, ids: dict[str, int], min_px: int, margin: float) -> list[tuple[str, Box]]:
    """Boxes around every task object visible with at least ``min_px`` pixels."""
    h, w = seg.shape
    out = []
    for name, oid in ids.items():
        if name in SKIP:
            continue
        ys, xs = np.nonzero(seg == oid)
        if ys.size < min_px:
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        pad = max(2.0, margin * max(x1 - x0, y1 - y0))
        out.append((name, Box(max(0.0, x0 - pad), max(0.0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad),
                              name)))
    return out


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    import cv2

    if px <= 0:
        return mask
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.view(np.uint8), k).view(bool)


def run_episode(task: str, seed: int, size: tuple[int, int], frames: int, margin: float,
                lag_dilate: int = 2) -> dict:
    from hvla_ros.sim.world import SimWorld

    world = SimWorld(task, seed=seed, image_size=size)
    seg_ious: list[float] = []
    seg_ms: list[float] = []
    props: dict[str, tuple[MaskPropagator, list[str]]] = {}
    for cam in world.camera_names:
        rgb, seg = world.render(cam), world.render_segmentation(cam)
        boxes = gt_boxes(seg, world.object_ids, min_px=80, margin=margin)
        if not boxes:
            continue
        prop = MaskPropagator(make_segmenter("classical"))
        t0 = time.perf_counter()
        prop.initialize(rgb, [b for _, b in boxes])
        seg_ms.append((time.perf_counter() - t0) * 1e3)
        for (name, _), m in zip(boxes, prop.object_masks, strict=True):
            seg_ious.append(iou(m, seg == world.object_ids[name]))
        props[cam] = (prop, [n for n, _ in boxes])
    expert = world.task.expert(world)
    update_ms: list[float] = []
    previous: dict[str, list[np.ndarray]] = {}
    for i in range(frames):
        if not expert.done:
            world.set_joint_targets(expert.act(world))
        world.step(world.control_steps)
        for cam, (prop, _) in props.items():
            rgb = world.render(cam)
            if i == frames - 1:
                previous[cam] = prop.object_masks  # what the pipelined node applies to this frame
            t0 = time.perf_counter()
            prop.update(rgb)
            update_ms.append((time.perf_counter() - t0) * 1e3)
    prop_ious: list[float] = []
    lag_ious: dict[int, list[float]] = {0: [], lag_dilate: []}
    reinit = 0
    for cam, (prop, names) in props.items():
        seg = world.render_segmentation(cam)
        for name, m, prev in zip(names, prop.object_masks, previous.get(cam, prop.object_masks), strict=True):
            gt = seg == world.object_ids[name]
            if gt.sum() < 30 and m.sum() < 30:
                prop_ious.append(1.0)  # out of view and correctly reported so
            else:
                prop_ious.append(iou(m, gt))
            for px, values in lag_ious.items():
                pm = _dilate(prev, px)
                values.append(1.0 if gt.sum() < 30 and pm.sum() < 30 else iou(pm, gt))
        reinit += prop.stats.reinitializations + prop.stats.reacquisitions
    world.close()
    return {"seg_ious": seg_ious, "prop_ious": prop_ious, "lag_ious": lag_ious, "seg_ms": seg_ms,
            "update_ms": update_ms, "reinit": reinit}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed per task, 240x320")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--margin", type=float, default=0.1, help="box margin (fraction of the object size)")
    ap.add_argument("--lag-dilate", type=int, default=2,
                    help="dilation (px) of the one-frame-old mask to compare, as perception_node's "
                    "pipeline_dilate_px")
    args = ap.parse_args()
    from hvla_ros.sim.tasks import TASKS

    size = (240, 320) if args.quick else (480, 640)
    seeds = 1 if args.quick else args.seeds
    rows, figures = [], {}
    all_seg, all_prop, all_upd = [], [], []
    all_lag: dict[int, list[float]] = {0: [], args.lag_dilate: []}
    for task in sorted(TASKS):
        seg_i, prop_i, upd, reinit = [], [], [], 0
        for seed in range(seeds):
            r = run_episode(task, seed, size, args.frames, args.margin, args.lag_dilate)
            for px in all_lag:
                all_lag[px] += r["lag_ious"][px]
            seg_i += r["seg_ious"]
            prop_i += r["prop_ious"]
            upd += r["update_ms"]
            reinit += r["reinit"]
        rows.append([task, len(seg_i), float(np.mean(seg_i)), float(np.min(seg_i)), float(np.mean(prop_i)),
                     float(np.min(prop_i)), reinit, float(np.median(upd))])
        figures[task] = {"objects": len(seg_i), "segmentation_iou_mean": float(np.mean(seg_i)),
                         "segmentation_iou_min": float(np.min(seg_i)),
                         "propagated_iou_mean": float(np.mean(prop_i)),
                         "propagated_iou_min": float(np.min(prop_i)), "resegmentations": reinit,
                         "update_ms_p50": float(np.median(upd))}
        all_seg += seg_i
        all_prop += prop_i
        all_upd += upd
    print_table(f"classical segmentation + propagation vs MuJoCo ground truth ({size[1]}x{size[0]}, "
                f"{seeds} seed(s), {args.frames} frames, both cameras)",
                ["task", "objects", "seg IoU mean", "seg IoU min", f"IoU@{args.frames} mean",
                 f"IoU@{args.frames} min", "re-seg", "update ms p50"], rows)
    figures["overall"] = {"segmentation_iou_mean": float(np.mean(all_seg)),
                          "propagated_iou_mean": float(np.mean(all_prop)),
                          "segmentation_goal": 0.8, "propagation_goal": 0.7,
                          "image_size": list(size), "frames": args.frames, "seeds": seeds,
                          "one_frame_lag_iou_mean": float(np.mean(all_lag[0])),
                          f"one_frame_lag_dilated_{args.lag_dilate}px_iou_mean":
                              float(np.mean(all_lag[args.lag_dilate]))}
    print(f"\noverall: segmentation IoU {np.mean(all_seg):.3f} (goal >= 0.8), "
          f"IoU after {args.frames} frames {np.mean(all_prop):.3f} (goal >= 0.7); pipelined (mask one frame "
          f"old): {np.mean(all_lag[0]):.3f}, dilated {args.lag_dilate} px: {np.mean(all_lag[args.lag_dilate]):.3f}")
    write_result("perception_quality", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
