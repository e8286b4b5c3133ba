"""``hvla``: the user-facing command line of hvla_ros.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
they are imported only when invoked, so ``hvla --help`` stays fast and light.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

#: subcommand -> (module, one-line help). Modules provide add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "eval-skills": ("hvla_ros.executor.evaluate", "closed-loop success of the skills in the simulated tasks"),
    "eval-refiner": ("hvla_ros.refiner.cmd_eval", "sim success: anchor-only vs refined vs ablations"),
    "train-refiner": ("hvla_ros.refiner.cmd_train", "train a skill's AnchorRefine refiner (phase 2, anchor frozen)"),
    "up": ("hvla_ros.cmd_up", "start the graph of bringup.launch.py (each node its own process)"),
    "demo": ("hvla_ros.cmd_up", "run the embedded default end to end: simulated SO-101, goal, report"),
    "record": ("hvla_ros.cmd_bag", "record topics of a running graph to a rosbag2 MCAP bag"),
    "replay": ("hvla_ros.cmd_bag", "play a bag into the graph; optionally compare predicted vs recorded actions"),
    "status": ("hvla_ros.cmd_ops", "print the running plan and its progress"),
    "pause": ("hvla_ros.cmd_ops", "pause the running episode (the arm holds between chunks)"),
    "resume": ("hvla_ros.cmd_ops", "resume a paused episode"),
    "estop": ("hvla_ros.cmd_ops", "engage or release the emergency stop"),
    "cancel": ("hvla_ros.cmd_ops", "cancel the running goal"),
    "train-skill": ("hvla_ros.executor.cmd_train", "train a skill's diffusion policy from demonstrations"),
    "sim-eval-experts": ("hvla_ros.sim.cmd_eval_experts", "success rate of each sim task's scripted expert"),
    "gen-description": ("hvla_ros.description_gen", "write the ros2_control URDF/xacro and controllers YAML"),
    "serve-vlm": ("hvla_ros.planner.serve_vlm", "serve a local transformers VLM over an OpenAI-compatible API"),
    "record-demos": ("hvla_ros.sim.recorder", "record scripted-expert demonstrations to a LeRobotDataset"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not os.environ.get("DISPLAY"):
        # headless (servers, CI, containers): MuJoCo renders the cameras through EGL, not GLX
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    parser = argparse.ArgumentParser(prog="hvla")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
