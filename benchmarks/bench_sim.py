"""Simulator speed: physics, rendering per camera, and the real-time factor with cameras.

Measures, on one task scene (default cube_in_box, SO-101 single arm):

- physics only (baseline): physics steps per second and sim seconds per wall second, with the
  30 Hz control loop (set targets + 16 steps) and no rendering;
- render fps per camera at 480x640 and 240x320 (``SimWorld.render``), and the sim step +
  render rate (one control step then every camera rendered);
- the real-time factor with 2 cameras at 30 Hz: lockstep (every frame rendered, physics waits;
  ``real_time_factor=0``), and paced at real time (``real_time_factor=1``; the physics follows wall
  time and cameras drop what they cannot render), with the achieved camera rates.

Usage: ``python benchmarks/bench_sim.py [--quick] [--task T]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table, write_result

from hvla_ros.sim.runner import RunnerConfig, SimRunner
from hvla_ros.sim.world import SimWorld

SIZES = ((480, 640), (240, 320))


def physics_only(task: str, seconds: float) -> dict[str, float]:
    world = SimWorld(task, render=False)
    try:
        target = world.joint_targets()
        steps = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            world.set_joint_targets(target)
            world.step(world.control_steps)
            steps += world.control_steps
        wall = time.perf_counter() - t0
        return {"steps_per_s": steps / wall, "real_time_factor": steps * world.timestep / wall}
    finally:
        world.close()


def render_rates(task: str, size: tuple[int, int], frames: int) -> dict[str, float]:
    world = SimWorld(task, image_size=size)
    try:
        out: dict[str, float] = {}
        for cam in world.camera_names:
            world.render(cam)  # warm-up: GL context and textures
            t0 = time.perf_counter()
            for _ in range(frames):
                world.render(cam)
            out[f"{cam}_fps"] = frames / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(frames):
            world.step(world.control_steps)
            for cam in world.camera_names:
                world.render(cam)
        out["step_and_render_all_hz"] = frames / (time.perf_counter() - t0)
        return out
    finally:
        world.close()


def runner_rates(task: str, size: tuple[int, int], rtf: float, seconds: float) -> dict[str, float]:
    world = SimWorld(task, image_size=size)
    runner = SimRunner(world, RunnerConfig(camera_rate_hz=30.0, real_time_factor=rtf))
    try:
        if rtf > 0:
            runner.start()
            time.sleep(min(1.0, seconds / 4))  # warm-up (GL context)
            runner.stats()
            time.sleep(seconds)
            stats = runner.stats()
            runner.stop()
        else:
            runner.run_steps(10)
            runner.stats()
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                runner.run_steps(4)
            stats = runner.stats()
        return stats
    finally:
        runner.stop()
        world.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--task", default="cube_in_box")
    args = parser.parse_args()
    phys_s = 1.0 if args.quick else 5.0
    frames = 5 if args.quick else 30
    run_s = 3.0 if args.quick else 10.0

    # The machine may be shared: record its load next to the figures.
    figures: dict[str, object] = {"task": args.task, "load_average_at_start": os.getloadavg()[0]}
    phys = physics_only(args.task, phys_s)
    figures["physics_only"] = phys
    print_table("physics only (baseline, 30 Hz control loop, no rendering)",
                ["steps/s", "real-time factor"], [[phys["steps_per_s"], phys["real_time_factor"]]])

    rows = []
    for size in SIZES:
        key = f"{size[0]}x{size[1]}"
        r = render_rates(args.task, size, frames)
        figures[f"render_{key}"] = r
        cams = [k for k in r if k.endswith("_fps")]
        rows += [[key, k.removesuffix("_fps"), r[k]] for k in cams]
        rows.append([key, "step + all cameras (Hz)", r["step_and_render_all_hz"]])
    print_table("render rate per camera", ["size", "camera", "fps"], rows)

    rows = []
    for size in SIZES:
        key = f"{size[0]}x{size[1]}"
        for rtf in (0.0, 1.0):
            s = runner_rates(args.task, size, rtf, run_s)
            mode = "lockstep (rtf=0)" if rtf == 0 else "real time (rtf=1)"
            figures[f"runner_{key}_rtf{rtf:g}"] = s
            cams = [k.removesuffix("_fps") for k in s if k.endswith("_fps")]
            fps = ", ".join(f"{c} {s[c + '_fps']:.1f}" for c in cams)
            dropped = sum(int(s[c + "_dropped"]) for c in cams)
            ratio = s["real_time_factor"] / phys["real_time_factor"]
            figures[f"runner_{key}_rtf{rtf:g}"]["ratio_to_physics_only"] = ratio
            rows.append([key, mode, s["real_time_factor"], ratio, fps, dropped])
    print_table("2 cameras at 30 Hz (camera fps in wall time)",
                ["size", "mode", "achieved rtf", "ratio to physics-only", "camera fps", "frames dropped"],
                rows)
    figures["load_average_at_end"] = os.getloadavg()[0]
    print(f"\nload average (1 min) at start {figures['load_average_at_start']:.1f}, "
          f"at end {figures['load_average_at_end']:.1f} on {os.cpu_count()} cores")
    write_result("sim", figures, notes="MuJoCo offscreen rendering on CPU (MUJOCO_GL="
                 f"{os.environ.get('MUJOCO_GL')}); quick={args.quick}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
