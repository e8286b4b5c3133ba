"""``hvla record-demos``: scripted-expert demonstrations to a LeRobotDataset (and rosbag2 MCAP).

Each episode resets the task from a seed, lets the task's scripted expert act at the 30 Hz
control rate, and records per control step (before the action is applied):

- ``observation.state``: joint positions (rad, order ``robot.joint_names``);
- ``observation.images.<camera>``: RGB frames (stored as image frames, not video);
- ``action``: the joint targets the expert commands for this step;
- ``task``: the instruction of the subtask being executed, so the dataset is segmented by subtask
  (``"pick up the red cube"``, ``"place the red cube in the box"``, ...).

With ``--dart-noise SIGMA`` the arm executes the expert's targets plus a slowly varying
perturbation (an Ornstein-Uhlenbeck process per arm joint, standard deviation SIGMA rad, time
constant ``--dart-tau``; the grippers are not perturbed) while ``action`` keeps the expert's own
target: the demonstrations then show the way back from states off the expert's path, which a
learned policy reaches and a clean expert never does (DART, Laskey et al. 2017). The expert reads
the perturbed world when it starts a motion (object poses, where the grasp point really is), so
it corrects for what the perturbation did.

Only successful episodes are kept (ground-truth success after the task's settle time); a failed
episode is discarded and another seed is tried, up to ``--max-attempts``. With ``--bag`` each kept
episode is also written as a rosbag2 MCAP (``<root>/bags/episode_NNNNNN``) with joint_states,
camera images, the commanded trajectories (one single-point JointTrajectory per controller per
step) and the subtask instruction (std_msgs/String on ``expert/instruction``), readable with
``rosbags`` or ``mcap``.

Dataset calls go through :mod:`hvla_ros.lerobot_compat` (create_dataset, standard_features).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hvla_ros import topics
from hvla_ros.cli_args import image_size

if TYPE_CHECKING:  # mujoco is imported late so default_gl_backend() can still pick the backend
    from hvla_ros.sim.world import SimWorld

_log = logging.getLogger(__name__)

#: Topic of the recorded subtask instruction in bags.
INSTRUCTION_TOPIC = "expert/instruction"


@dataclass
class EpisodeRecording:
    """Frames of one expert rollout, kept in memory until its success is known."""

    task: str
    seed: int
    fps: float
    times: list[float] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)
    velocities: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    instructions: list[str] = field(default_factory=list)
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)
    success: bool = False

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class DartNoise:
    """Perturbation of the executed arm targets (see the module docstring).

    ``sigma``: stationary standard deviation (rad) of each arm joint's offset; ``tau``: its time
    constant (s); ``skills``: perturb only while the expert runs these subtasks' skills (empty:
    all). Grippers are never perturbed (a jaw that opens by chance drops the object, which teaches
    nothing about recovery)."""

    sigma: float
    tau: float = 0.5
    skills: tuple[str, ...] = ()

    def applies_to(self, skill: str) -> bool:
        return not self.skills or skill in self.skills

    def __post_init__(self) -> None:
        if not (np.isfinite(self.sigma) and 0.0 <= self.sigma <= 0.5):
            raise ValueError(f"DART noise sigma must be within [0, 0.5] rad, got {self.sigma}")
        if not (np.isfinite(self.tau) and self.tau > 0.0):
            raise ValueError(f"DART noise time constant must be > 0 s, got {self.tau}")

    def process(self, world: SimWorld, seed: int) -> Any:
        """A generator of per-step offsets (order ``robot.joint_names``), seeded by ``seed``."""
        rng = np.random.default_rng([seed, 0xDA27])
        mask = np.array([n not in world.robot.gripper_joints for n in world.robot.joint_names], float)
        a = float(np.exp(-world.control_period / self.tau))
        x = rng.normal(0.0, self.sigma, mask.shape)
        while True:
            yield x * mask
            x = a * x + np.sqrt(1.0 - a * a) * rng.normal(0.0, self.sigma, mask.shape)


def rollout(world: SimWorld, seed: int, cameras: Sequence[str], noise: DartNoise | None = None) -> EpisodeRecording:
    """Reset ``world`` to ``seed``, run the expert to the end and record every control step
    (``noise``: perturb what the arm executes, not what is recorded)."""
    world.reset(seed)
    offsets = noise.process(world, seed) if noise is not None and noise.sigma > 0 else None
    expert = world.task.expert(world)
    rec = EpisodeRecording(task=world.task.name, seed=seed, fps=1.0 / world.control_period,
                           images={c: [] for c in cameras})
    while not expert.done and world.time < world.task.time_limit:
        t = world.time
        q = world.joint_positions()
        dq = world.joint_velocities()
        frames = {c: world.render(c) for c in cameras}
        action = np.asarray(expert.act(world), dtype=np.float32)
        # act() moves `current` past a finished subtask before producing this step's action.
        index = min(expert.current, len(expert.subtasks) - 1)
        rec.times.append(t)
        rec.states.append(q.astype(np.float32))
        rec.velocities.append(dq)
        rec.actions.append(action)
        rec.instructions.append(expert.subtasks[index].instruction)
        for c in cameras:
            rec.images[c].append(frames[c])
        if offsets is not None:
            offset = next(offsets)  # one process per episode, running through unperturbed subtasks too
            if noise is not None and noise.applies_to(expert.subtasks[index].skill):
                action = action + offset
        world.set_joint_targets(action)
        world.step(world.control_steps)
    world.step(round(world.task.settle_time / world.timestep))
    rec.success = bool(expert.done and world.success())
    return rec


def write_episode(ds: Any, rec: EpisodeRecording, joint_dim: int) -> None:
    """Add a recorded episode to a LeRobotDataset and save it."""
    from hvla_ros.lerobot_compat import ACTION_KEY, STATE_KEY, image_key

    for i in range(len(rec)):
        frame: dict[str, Any] = {STATE_KEY: rec.states[i], ACTION_KEY: rec.actions[i],
                                 "task": rec.instructions[i]}
        for cam, imgs in rec.images.items():
            frame[image_key(cam)] = imgs[i]
        ds.add_frame(frame)
    ds.save_episode()


def write_bag(path: Path, rec: EpisodeRecording, world: SimWorld) -> Path:
    """Write one episode as a rosbag2 MCAP directory at ``path`` (must not exist)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    Time = ts.types["builtin_interfaces/msg/Time"]
    Duration = ts.types["builtin_interfaces/msg/Duration"]
    Header = ts.types["std_msgs/msg/Header"]
    JointState = ts.types["sensor_msgs/msg/JointState"]
    Image = ts.types["sensor_msgs/msg/Image"]
    String = ts.types["std_msgs/msg/String"]
    JointTrajectory = ts.types["trajectory_msgs/msg/JointTrajectory"]
    JointTrajectoryPoint = ts.types["trajectory_msgs/msg/JointTrajectoryPoint"]

    def stamp(t: float) -> Any:
        ns = round(t * 1e9)
        return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    names = list(world.robot.joint_names)
    period = world.control_period
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as bag:
        js_conn = bag.add_connection(topics.JOINT_STATES, JointState.__msgtype__, typestore=ts)
        ins_conn = bag.add_connection(INSTRUCTION_TOPIC, String.__msgtype__, typestore=ts)
        img_conn = {c: bag.add_connection(topics.camera_image(c), Image.__msgtype__, typestore=ts)
                    for c in rec.images}
        traj_conn = {a.controller: bag.add_connection(topics.trajectory_topic(a.controller),
                                                      JointTrajectory.__msgtype__, typestore=ts)
                     for a in world.robot.arms}
        last_instruction = None
        for i in range(len(rec)):
            t = rec.times[i]
            ns = round(t * 1e9)
            header = Header(stamp=stamp(t), frame_id="")
            js = JointState(header=header, name=names, position=rec.states[i].astype(np.float64),
                            velocity=np.asarray(rec.velocities[i], dtype=np.float64),
                            effort=np.zeros(0, dtype=np.float64))
            bag.write(js_conn, ns, ts.serialize_cdr(js, JointState.__msgtype__))
            for cam, imgs in rec.images.items():
                img = imgs[i]
                h, w = img.shape[:2]
                msg = Image(header=Header(stamp=stamp(t), frame_id=f"{cam}_optical_frame"), height=h, width=w,
                            encoding="rgb8", is_bigendian=0, step=w * 3,
                            data=np.ascontiguousarray(img).reshape(-1))
                bag.write(img_conn[cam], ns, ts.serialize_cdr(msg, Image.__msgtype__))
            start = 0
            for arm in world.robot.arms:
                n = len(arm.joint_names)
                point = JointTrajectoryPoint(
                    positions=rec.actions[i][start:start + n].astype(np.float64),
                    velocities=np.zeros(0), accelerations=np.zeros(0), effort=np.zeros(0),
                    time_from_start=Duration(sec=0, nanosec=round(period * 1e9)))
                traj = JointTrajectory(header=Header(stamp=stamp(t), frame_id=""),
                                       joint_names=list(arm.joint_names), points=[point])
                bag.write(traj_conn[arm.controller], ns, ts.serialize_cdr(traj, JointTrajectory.__msgtype__))
                start += n
            if rec.instructions[i] != last_instruction:
                last_instruction = rec.instructions[i]
                bag.write(ins_conn, ns, ts.serialize_cdr(String(data=last_instruction), String.__msgtype__))
    return path


@dataclass(frozen=True)
class RecordSummary:
    """What a recording run produced."""

    root: Path
    kept: list[int]  # seeds of the kept (successful) episodes
    discarded: list[int]  # seeds whose expert rollout failed
    frames: int
    bags: list[Path]


def record_demos(
    task: str,
    episodes: int,
    root: Path,
    *,
    first_seed: int = 0,
    image_size: tuple[int, int] = (96, 128),
    cameras: Sequence[str] | None = None,
    bag: bool = False,
    repo_id: str | None = None,
    max_attempts: int | None = None,
    noise: DartNoise | None = None,
    grasp_jitter: float = 0.0,
) -> RecordSummary:
    """Record ``episodes`` successful expert episodes of ``task`` into a new dataset at ``root``
    (``noise``: DART perturbation of what the arm executes; ``grasp_jitter``: see
    :meth:`Task.set_grasp_jitter`)."""
    from hvla_ros.lerobot_compat import create_dataset, standard_features
    from hvla_ros.sim.world import SimWorld

    if episodes < 1:
        raise ValueError(f"`episodes` must be >= 1. Got {episodes}.")
    if root.exists():
        raise FileExistsError(f"dataset root {root} already exists; choose a new directory")
    world = SimWorld(task, seed=first_seed, image_size=image_size, cameras=cameras)
    try:
        world.task.set_grasp_jitter(grasp_jitter)
        if noise is not None:
            known = {sub.skill for sub in world.task.subtasks()}
            unknown = sorted(set(noise.skills) - known)
            if unknown:
                raise ValueError(f"--dart-skills {unknown}: task {task!r} has no such subtask skill "
                                 f"(has {sorted(known)})")
        cams = tuple(world.camera_names)
        fps = round(1.0 / world.control_period)
        features = standard_features({c: world.image_size for c in cams}, world.robot.joint_names)
        ds = create_dataset(root, repo_id or f"local/{task}", fps, features, robot_type=world.robot.name)
        kept: list[int] = []
        discarded: list[int] = []
        bags: list[Path] = []
        frames = 0
        limit = max_attempts if max_attempts is not None else 2 * episodes + 5
        seed = first_seed
        while len(kept) < episodes and len(kept) + len(discarded) < limit:
            rec = rollout(world, seed, cams, noise)
            if rec.success:
                write_episode(ds, rec, len(world.robot.joint_names))
                if bag:
                    bags.append(write_bag(root / "bags" / f"episode_{len(kept):06d}", rec, world))
                kept.append(seed)
                frames += len(rec)
                _log.info(f"{task} seed {seed}: kept ({len(rec)} frames)")
            else:
                discarded.append(seed)
                _log.warning(f"{task} seed {seed}: expert failed; episode discarded")
            seed += 1
        ds.finalize()
    finally:
        world.close()
    return RecordSummary(root=root, kept=kept, discarded=discarded, frames=frames, bags=bags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task id of the simulated suite")
    parser.add_argument("--episodes", type=int, default=10, help="successful episodes to record")
    parser.add_argument("--root", type=Path, required=True, help="new dataset directory")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--image-size", type=image_size(8, "96x128"), default=(96, 128), help="HxW of recorded images")
    parser.add_argument("--cameras", nargs="*", default=None, help="cameras to record (default: all)")
    parser.add_argument("--bag", action="store_true", help="also write a rosbag2 MCAP per episode")
    parser.add_argument("--repo-id", default=None, help="dataset repo id (default local/<task>)")
    parser.add_argument("--max-attempts", type=int, default=None,
                        help="give up after this many rollouts (default 2 x episodes + 5)")
    parser.add_argument("--dart-noise", type=float, default=0.0, metavar="SIGMA",
                        help="perturb the executed arm targets by this much (rad, standard deviation; "
                             "actions stay the expert's): demonstrations of recovery. 0 = off")
    parser.add_argument("--dart-tau", type=float, default=0.5, help="time constant of the perturbation (s)")
    parser.add_argument("--dart-skills", nargs="*", default=[],
                        help="perturb only the subtasks of these skills (default: all)")
    parser.add_argument("--grasp-jitter", type=float, default=0.0, metavar="M",
                        help="vary the expert's grasp point by up to M metres per episode (tasks whose expert "
                             "supports it: bimanual_handover's right grasp)")


def run(args: argparse.Namespace) -> int:
    from hvla_ros.sim.runner import default_gl_backend

    default_gl_backend()  # before anything imports mujoco
    from hvla_ros.sim.tasks import TASKS

    if args.task not in TASKS:
        _log.error(f"unknown task {args.task!r}; known: {sorted(TASKS)}")
        return 2
    if args.episodes < 1:
        _log.error(f"--episodes must be >= 1, got {args.episodes}")
        return 2
    try:
        noise = DartNoise(args.dart_noise, args.dart_tau, tuple(args.dart_skills)) if args.dart_noise else None
        summary = record_demos(args.task, args.episodes, args.root, first_seed=args.first_seed,
                               image_size=args.image_size, cameras=args.cameras, bag=args.bag,
                               repo_id=args.repo_id, max_attempts=args.max_attempts, noise=noise,
                               grasp_jitter=args.grasp_jitter)
    except (FileExistsError, ValueError) as exc:
        _log.error(str(exc))
        return 2
    print(f"recorded {len(summary.kept)} successful episode(s), {summary.frames} frames, to {summary.root}"
          f" (seeds {summary.kept}; discarded failed seeds {summary.discarded})")
    for b in summary.bags:
        print(f"  bag: {b}")
    return 0 if len(summary.kept) == args.episodes else 1
