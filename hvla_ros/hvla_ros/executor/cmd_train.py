"""``hvla train-skill``: train a skill's diffusion policy from a LeRobotDataset of demonstrations.

Examples::

    hvla train-skill --dataset demos/cube_in_box --skill pick --out skills/pick --steps 3000
    hvla train-skill --dataset demos/cube_in_box --skill pick --out skills/pick --steps 6000 --resume
    # colour-keypoint image encoder (low-dimensional diffusion policy)
    hvla train-skill --dataset demos/cube_in_box --skill pick --out skills/pick \\
        --image-encoder colour_keypoints --cameras front wrist --steps 4000
    # flat baseline: one policy for the whole task, conditioned on the goal text
    hvla train-skill --dataset demos/cube_in_box --skill flat_cube_in_box --out skills/flat_cube_in_box \\
        --flat "put the red cube in the box"
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hvla_ros.cli_args import image_size

log = logging.getLogger(__name__)


def _dims(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"down dims must be comma-separated integers, got {text!r}"
        ) from None
    if not dims or any(d < 8 for d in dims):
        raise argparse.ArgumentTypeError(f"down dims must be integers >= 8, got {text!r}")
    return dims


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", type=Path, nargs="+", required=True,
        help="LeRobotDataset root(s) (hvla record-demos); several: one skill over several tasks' demonstrations",
    )
    parser.add_argument(
        "--skill", required=True, help="skill name (selects frames by its instruction pattern)"
    )
    parser.add_argument("--out", type=Path, required=True, help="policy directory to write")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps in total")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (cosine schedule)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                        help="stop at this step of the --steps schedule (resume later with --resume)")
    parser.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints")
    parser.add_argument(
        "--cameras", nargs="+", default=None, help="cameras to read (default: all in the dataset)"
    )
    parser.add_argument(
        "--image-size", type=image_size(16, "48x64"), default=(48, 64), help="policy input HxW (images are resized)"
    )
    parser.add_argument("--horizon", type=int, default=16, help="predicted chunk length")
    parser.add_argument("--n-action-steps", type=int, default=8, help="steps executed per chunk")
    parser.add_argument("--n-obs-steps", type=int, default=2, help="observation history length")
    parser.add_argument("--down-dims", type=_dims, default=(32, 64, 128), help="UNet widths, e.g. 32,64,128")
    parser.add_argument(
        "--backbone-stages",
        type=int,
        default=3,
        choices=(1, 2, 3, 4),
        help="ResNet-18 stages kept in the image encoder (4 = full)",
    )
    parser.add_argument(
        "--keypoint-target", action="store_true",
        help="colour keypoints: also feed the features of the colours the instruction names "
        "(object, destination), so one policy serves instructions naming different objects",
    )
    parser.add_argument(
        "--keypoint-orientation", action="store_true",
        help="colour keypoints: also feed each blob's four-fold orientation (a square's yaw), "
        "for grasps whose jaws must line up with the object's faces",
    )
    parser.add_argument("--instruction-dim", type=int, default=16, help="hashed instruction size (0: none)")
    parser.add_argument("--pattern", default=None, help="regex on the task text selecting the skill's frames")
    parser.add_argument(
        "--flat",
        default=None,
        metavar="GOAL",
        help="flat baseline: train on whole episodes conditioned on this goal text",
    )
    parser.add_argument("--max-episodes", type=int, default=None, help="use only the first N episodes")
    parser.add_argument(
        "--image-encoder",
        choices=("pixels", "colour_keypoints"),
        default="pixels",
        help="pixels: ResNet image encoder; colour_keypoints: fixed colour-blob features of the "
        "filtered images (a low-dimensional policy, fast on CPU)",
    )
    parser.add_argument("--denoising-steps", type=int, default=10, help="DDIM steps stored as the default")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from hvla_ros.executor.training import TrainConfig, train

    if args.steps < 1 or args.batch_size < 1:
        log.error(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
        return 2
    if args.horizon % (2 ** len(args.down_dims)) != 0:
        log.error(
            f"--horizon {args.horizon} must be a multiple of 2^len(down_dims) = {2 ** len(args.down_dims)}"
        )
        return 2
    cfg = TrainConfig(
        dataset=args.dataset[0] if len(args.dataset) == 1 else list(args.dataset),
        skill=args.skill,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        cameras=args.cameras,
        image_hw=args.image_size,
        n_obs_steps=args.n_obs_steps,
        horizon=args.horizon,
        n_action_steps=args.n_action_steps,
        down_dims=args.down_dims,
        backbone_stages=args.backbone_stages,
        instruction_dim=args.instruction_dim,
        pattern=args.pattern,
        flat_instruction=args.flat,
        max_episodes=args.max_episodes,
        checkpoint_every=args.checkpoint_every,
        stop_after=args.stop_after,
        resume=args.resume,
        num_threads=args.threads,
        denoising_steps=args.denoising_steps,
        image_encoder=args.image_encoder,
        keypoint_target=args.keypoint_target,
        keypoint_orientation=args.keypoint_orientation,
        progress=not args.no_progress,
    )
    try:
        result = train(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        log.error(str(exc))
        return 2
    size_mb = result.weights_bytes / 1e6
    print(
        f"trained {args.skill!r}: {result.steps} steps, "
        f"loss {result.mean_loss_last_100:.4f} (mean of last 100), "
        f"{result.frames} frames in {result.segments} segments, {result.seconds:.0f} s this run, "
        f"weights {size_mb:.1f} MB -> {args.out}"
    )
    return 0
