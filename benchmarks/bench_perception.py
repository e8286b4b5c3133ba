"""Perception speed: mask propagation rate for two 480x640 cameras, classical segmentation time.

1. Frames of the simulated work cell (cube_in_box, the scripted expert moving the arm) are
   rendered for the front and wrist cameras; then both cameras are propagated concurrently (one
   thread each, as in perception_node) -> frames per second per camera (goal >= 30, ideally 60).
   Baseline in the same run: segmenting every frame from scratch with the classical segmenter.
   With ``--with-sim`` (default in full runs) a simulator process steps physics and renders
   both cameras at 30 Hz meanwhile, as it would on a robot computer running the sim.
2. Classical segmentation of 1..8 boxes on a 480x640 image (goal <= 150 ms for 8).

    .venv/bin/python benchmarks/bench_perception.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import percentiles, print_table, write_result
from bench_perception_quality import gt_boxes

from hvla_ros.perception import MaskPropagator, apply_mask, make_segmenter

SIM_LOAD = """
import time, os
from hvla_ros.sim.world import SimWorld
w = SimWorld("cube_in_box", seed=1, image_size=(480, 640))
e = w.task.expert(w)
t_next = time.monotonic()
while True:
    if not e.done:
        w.set_joint_targets(e.act(w))
    w.step(w.control_steps)
    for cam in w.camera_names:
        w.render(cam)
    t_next += 1 / 30
    time.sleep(max(0.0, t_next - time.monotonic()))
"""


def render_sequences(n: int) -> dict[str, tuple[list[np.ndarray], list]]:
    from hvla_ros.sim.world import SimWorld

    world = SimWorld("cube_in_box", seed=0, image_size=(480, 640))
    out: dict[str, tuple[list[np.ndarray], list]] = {}
    for cam in world.camera_names:
        seg = world.render_segmentation(cam)
        out[cam] = ([world.render(cam)], [b for _, b in gt_boxes(seg, world.object_ids, 80, 0.1)])
    expert = world.task.expert(world)
    for _ in range(n - 1):
        if not expert.done:
            world.set_joint_targets(expert.act(world))
        world.step(world.control_steps)
        for cam in world.camera_names:
            out[cam][0].append(world.render(cam))
    world.close()
    return out


def run_cameras(seqs: dict[str, tuple[list[np.ndarray], list]], mode: str, repeats: int) -> dict[str, dict]:
    """Process every camera's frames in its own thread; per-frame times and achieved rate."""
    results: dict[str, dict] = {}

    def work(cam: str) -> None:
        frames, boxes = seqs[cam]
        seg = make_segmenter("classical")
        prop = MaskPropagator(seg)
        prop.initialize(frames[0], boxes)
        times = []
        t_start = time.perf_counter()
        for _ in range(repeats):
            for f in frames[1:]:
                t0 = time.perf_counter()
                if mode == "propagate":
                    mask = prop.update(f)
                else:  # baseline: segment every frame from the boxes
                    mask, _ = seg.segment(f, boxes)
                apply_mask(f, mask, "zero")
                times.append((time.perf_counter() - t0) * 1e3)
        wall = time.perf_counter() - t_start
        results[cam] = {"hz": len(times) / wall, "ms": percentiles(times), "boxes": len(boxes),
                        "reinitializations": prop.stats.reinitializations}

    threads = [threading.Thread(target=work, args=(c,)) for c in seqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def segmentation_times(runs: int) -> dict[int, dict]:
    import cv2

    rng = np.random.default_rng(1)
    img = cv2.resize(rng.integers(80, 170, (60, 80, 3)).astype(np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    boxes = []
    colours = [(220, 30, 30), (30, 200, 40), (30, 60, 220), (230, 210, 30), (200, 40, 200), (30, 200, 200),
               (240, 140, 20), (20, 20, 20)]
    for i, c in enumerate(colours):
        x, y = 40 + (i % 4) * 150, 80 + (i // 4) * 200
        cv2.rectangle(img, (x, y), (x + 60 + 5 * i, y + 50 + 4 * i), c, -1)
        boxes.append((x - 8.0, y - 8.0, x + 68.0 + 5 * i, y + 58.0 + 4 * i))
    seg = make_segmenter("classical")
    out = {}
    for k in (1, 2, 4, 8):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            seg.segment(img, boxes[:k])
            times.append((time.perf_counter() - t0) * 1e3)
        out[k] = percentiles(times)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 frames, no simulator load, fewer runs")
    ap.add_argument("--frames", type=int, default=90)
    ap.add_argument("--with-sim", action=argparse.BooleanOptionalAction, default=None,
                    help="run a 30 Hz simulator process meanwhile (default: on, off with --quick)")
    args = ap.parse_args()
    n = 30 if args.quick else args.frames
    with_sim = (not args.quick) if args.with_sim is None else args.with_sim
    seqs = render_sequences(n)
    sim_proc = None
    if with_sim:
        sim_proc = subprocess.Popen([sys.executable, "-c", SIM_LOAD], env=dict(os.environ))
        time.sleep(5.0)  # let it build the scene and reach its loop
    try:
        repeats = 1 if args.quick else 2
        prop = run_cameras(seqs, "propagate", repeats)
        base = run_cameras(seqs, "segment", 1)
    finally:
        if sim_proc is not None:
            sim_proc.terminate()
            sim_proc.wait(timeout=10)
    seg = segmentation_times(5 if args.quick else 20)

    rows, figures = [], {"with_sim": with_sim, "frames": n, "image": "480x640"}
    for cam in seqs:
        p, b = prop[cam], base[cam]
        ratio = p["hz"] / b["hz"]
        rows.append([cam, p["boxes"], p["hz"], p["ms"]["p50"], p["ms"]["p99"], b["hz"], ratio])
        figures[f"propagation_{cam}"] = {**p, "baseline_segment_every_frame_hz": b["hz"],
                                         "baseline_ms": b["ms"], "ratio_hz": ratio}
    print_table(f"per-camera rate, 2 cameras in parallel, 480x640 {'with' if with_sim else 'without'} "
                f"a 30 Hz simulator process (goal >= 30 Hz, ideally 60)",
                ["camera", "objects", "propagate Hz", "p50 ms", "p99 ms", "segment-every-frame Hz", "ratio"], rows)
    print_table("classical segmentation, 480x640 (goal: 8 boxes <= 150 ms)",
                ["boxes", "p50 ms", "p99 ms", "p90 ms"],
                [[k, v["p50"], v["p99"], v["p90"]] for k, v in seg.items()])
    figures["classical_segmentation_ms"] = {str(k): v for k, v in seg.items()}
    write_result("perception", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
