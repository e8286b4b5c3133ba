"""The skill library: skill name -> diffusion policy + how to feed and run it.

Loaded from YAML (default: the package's ``config/skills.yaml``)::

    robot: so101                  # robot configuration (hvla_ros.robot), gives default joints
    skills:
      pick:
        description: pick an object up
        policy: skills/pick       # policy directory, relative to the hvla_ros package or absolute
        cameras: [front, wrist]   # filtered camera images it reads (must match the policy)
        state_joints: [...]       # optional, default: the robot's joints (policy state order)
        action_joints: [...]      # optional, default: state_joints (policy action order)
        instruction: hashed_bow   # instruction conditioning: hashed_bow | none (must match policy)
        image_encoder: pixels     # pixels | colour_keypoints (executor.keypoints; must match policy)
        chunk_length: 16          # optional; the policy's prediction horizon (checked)
        n_action_steps: 8         # steps executed per chunk before predicting again
        default_horizon_s: 12.0   # used when Subtask.horizon is zero
        denoising_steps: 10       # DDIM steps per chunk
        step_period_s: 0.0333     # optional; default 1/fps of the training data
        state_clamp: 0.25         # optional; clamp each state joint to its demonstrations' range
                                  # widened by this fraction of it on each side (default: none)
      observe:
        description: hold still while watching
        policy: hold              # no learned policy: hold the current joint positions
        default_horizon_s: 2.0
      home:
        description: open the jaws and return to the home pose
        policy: home              # no learned policy: open the grippers, move every joint to the
        max_speed_rad_s: 1.5      # robot's home pose (at most this fast), then close the grippers
        default_horizon_s: 6.0    # to their home value; ends once there

:meth:`SkillLibrary.load` validates everything up front and raises :class:`SkillConfigError`
naming the skill, the path and the reason (missing or corrupt checkpoint, cameras/joints/
instruction conditioning that do not match the policy config).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hvla_ros.robot import HOME_POSITION, RobotSpec, base_joint_name, get_robot

log = logging.getLogger(__name__)

HOLD = "hold"
HOME = "home"
#: ``policy`` values of the skills without a learned policy (scripted motions).
SCRIPTED = (HOLD, HOME)
INSTRUCTION_MODES = ("hashed_bow", "none")
IMAGE_ENCODERS = ("pixels", "colour_keypoints")
_KEYS = frozenset(
    {
        "description",
        "policy",
        "cameras",
        "state_joints",
        "action_joints",
        "instruction",
        "image_encoder",
        "chunk_length",
        "n_action_steps",
        "default_horizon_s",
        "denoising_steps",
        "state_clamp",
        "step_period_s",
        "max_speed_rad_s",
    }
)


class SkillConfigError(ValueError):
    """A skill library file or entry that cannot be used; the message says which and why."""


class UnknownSkillError(KeyError):
    """A subtask named a skill the library does not declare."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the sentence readable
        return str(self.args[0]) if self.args else "unknown skill"


def package_dir() -> Path:
    """Directory of the installed ``hvla_ros`` Python package (relative policy paths start here)."""
    return Path(str(resources.files("hvla_ros")))


def default_skills_file() -> Path:
    return package_dir() / "config" / "skills.yaml"


#: Simulated tasks whose objects (or robot: the two-arm handover) the default (single-task, red
#: cube) pick and place were not trained on, and the shipped library that was (package-relative).
#: The graph on the simulator, ``hvla eval-refiner`` and the benchmarks use it when no skills
#: file is given.
TASK_SKILL_LIBRARIES: dict[str, str] = {
    "observe_then_pick": "config/skills_multitask.yaml",
    "stack_blue_on_yellow": "config/skills_multitask.yaml",
    "bimanual_handover": "config/skills_bimanual.yaml",
}


def skills_file_for_task(task: str) -> Path:
    """The shipped skill library for a simulated task (the default one unless listed above)."""
    rel = TASK_SKILL_LIBRARIES.get(task)
    return package_dir() / rel if rel else default_skills_file()


#: The flat baselines (one policy per long-horizon task, ``flat_<task>``), one library per robot.
FLAT_SKILL_LIBRARIES: dict[str, str] = {
    "so101": "config/skills_flat.yaml",
    "so101_bimanual": "config/skills_flat_bimanual.yaml",
}


def flat_skills_file_for_robot(robot: str) -> Path:
    """The shipped library of flat baselines for ``robot`` (raises SkillConfigError when none)."""
    rel = FLAT_SKILL_LIBRARIES.get(robot)
    if rel is None:
        raise SkillConfigError(f"no flat baseline library for robot {robot!r}; known: {sorted(FLAT_SKILL_LIBRARIES)}")
    return package_dir() / rel


@dataclass(frozen=True)
class SkillSpec:
    """One validated skill entry."""

    name: str
    description: str
    policy_dir: Path | None  # None: a scripted skill (``motion``)
    cameras: tuple[str, ...] = ()
    state_joints: tuple[str, ...] = ()
    action_joints: tuple[str, ...] = ()
    instruction: str = "none"
    image_encoder: str = "pixels"
    chunk_length: int = 0
    n_action_steps: int = 1
    default_horizon_s: float = 5.0
    denoising_steps: int = 10
    step_period_s: float = 1.0 / 30.0
    #: Clamp each state joint to [min - c * range, max + c * range] of the demonstrations before
    #: the policy's min-max normalization (None: no clamp). A joint the demonstrations held still
    #: (the idle arm of a two-arm skill) has a range near zero: a few degrees off it would reach the
    #: policy as a value in the thousands and its actions would be garbage.
    state_clamp: float | None = None
    #: The scripted motion of a skill without a learned policy: ``hold`` or ``home`` ("" otherwise).
    motion: str = ""
    #: Fastest joint speed of the ``home`` motion (rad/s; the gripper moves at this speed too).
    max_speed_rad_s: float = 1.5
    #: Scripted skills: the robot's home position of each action joint, and which are grippers.
    home_pose: tuple[float, ...] = ()
    gripper_mask: tuple[bool, ...] = ()

    @property
    def is_scripted(self) -> bool:
        """No learned policy: the executor computes the chunks itself (``motion``)."""
        return self.policy_dir is None

    @property
    def is_hold(self) -> bool:
        return self.motion == HOLD


@dataclass
class Skill:
    """A skill ready to run: its spec and (unless it is scripted) the loaded policy bundle."""

    spec: SkillSpec
    bundle: Any = None  # lerobot_compat.PolicyBundle
    #: (low, high) per state joint when the spec asks for ``state_clamp``
    state_bounds: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class SkillLibrary:
    robot: RobotSpec
    skills: dict[str, Skill] = field(default_factory=dict)
    source: Path | None = None

    def names(self) -> list[str]:
        return sorted(self.skills)

    def get(self, name: str) -> Skill:
        try:
            return self.skills[name]
        except KeyError:
            raise UnknownSkillError(f"unknown skill {name!r}; the library declares {self.names()}") from None

    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        *,
        device: str = "cpu",
        load_policies: bool = True,
        robot: str | None = None,
        only: Collection[str] | None = None,
    ) -> SkillLibrary:
        """Read and validate a skill library file, loading every policy (configure-time work).

        ``only``: keep just the skills of these names (every entry is still validated; a name the
        file does not declare is simply absent): a benchmark that runs one flat baseline does not
        load the others."""
        src = Path(path) if path else default_skills_file()
        try:
            doc = yaml.safe_load(src.read_text())
        except OSError as e:
            raise SkillConfigError(f"cannot read skill library {src}: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise SkillConfigError(f"skill library {src} is not valid YAML: {e}") from e
        return cls.from_dict(doc, source=src, device=device, load_policies=load_policies, robot=robot, only=only)

    @classmethod
    def from_dict(
        cls,
        doc: Any,
        *,
        source: Path | None = None,
        device: str = "cpu",
        load_policies: bool = True,
        robot: str | None = None,
        only: Collection[str] | None = None,
    ) -> SkillLibrary:
        where = str(source) if source else "<skill library>"
        if not isinstance(doc, Mapping) or not isinstance(doc.get("skills"), Mapping) or not doc["skills"]:
            raise SkillConfigError(f"{where}: expected a mapping with a non-empty 'skills' mapping")
        try:
            spec_robot = get_robot(str(robot or doc.get("robot", "so101")))
        except ValueError as e:
            raise SkillConfigError(f"{where}: {e}") from e
        lib = cls(robot=spec_robot, source=source)
        for name, entry in doc["skills"].items():
            spec = parse_skill(str(name), entry, spec_robot, where)
            if only is not None and spec.name not in only:
                continue
            skill = Skill(spec=spec)
            if load_policies and not spec.is_scripted:
                skill = load_skill(spec, device=device)
            lib.skills[spec.name] = skill
        return lib


def _resolve_policy(value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else package_dir() / p


def parse_skill(name: str, entry: Any, robot: RobotSpec, where: str) -> SkillSpec:
    """Validate one YAML entry (no policy loading)."""
    ctx = f"{where}: skill {name!r}"
    if not isinstance(entry, Mapping):
        raise SkillConfigError(f"{ctx}: expected a mapping, got {type(entry).__name__}")
    unknown = set(entry) - _KEYS
    if unknown:
        raise SkillConfigError(f"{ctx}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    policy = entry.get("policy")
    if not isinstance(policy, str) or not policy:
        raise SkillConfigError(f"{ctx}: 'policy' must be a policy directory, '{HOLD}' or '{HOME}', got {policy!r}")

    def num(key: str, default: float, typ: type, lo: float) -> Any:
        v = entry.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and not isinstance(v, int)):
            raise SkillConfigError(f"{ctx}: '{key}' must be a {typ.__name__}, got {v!r}")
        if v < lo:
            raise SkillConfigError(f"{ctx}: '{key}' must be >= {lo}, got {v!r}")
        return typ(v)

    horizon_s = num("default_horizon_s", 5.0, float, 0.0)
    if horizon_s <= 0:
        raise SkillConfigError(f"{ctx}: 'default_horizon_s' must be > 0, got {horizon_s}")
    period = num("step_period_s", 0.0, float, 0.0)
    description = str(entry.get("description", ""))
    if policy in SCRIPTED:
        if "state_clamp" in entry:
            raise SkillConfigError(f"{ctx}: 'state_clamp' has no effect on a {policy} skill (it reads no policy "
                                   f"state), got {entry['state_clamp']!r}; remove it")
        if "max_speed_rad_s" in entry and policy != HOME:
            raise SkillConfigError(f"{ctx}: 'max_speed_rad_s' applies to the '{HOME}' motion only, "
                                   f"got {entry['max_speed_rad_s']!r} on a {policy} skill; remove it")
        speed = num("max_speed_rad_s", 1.5, float, 0.0)
        if speed <= 0:
            raise SkillConfigError(f"{ctx}: 'max_speed_rad_s' must be > 0, got {speed}")
        return SkillSpec(
            name=name,
            description=description,
            policy_dir=None,
            default_horizon_s=horizon_s,
            step_period_s=period or 1.0 / 30.0,
            n_action_steps=num("n_action_steps", 8, int, 1),
            state_joints=robot.joint_names,
            action_joints=robot.joint_names,
            motion=policy,
            max_speed_rad_s=speed,
            home_pose=tuple(HOME_POSITION[base_joint_name(j, robot)] for j in robot.joint_names),
            gripper_mask=tuple(base_joint_name(j, robot) == "gripper" for j in robot.joint_names),
        )

    if "max_speed_rad_s" in entry:
        raise SkillConfigError(f"{ctx}: 'max_speed_rad_s' applies to the '{HOME}' motion only, got "
                               f"{entry['max_speed_rad_s']!r} on a learned skill; remove it")
    cameras = entry.get("cameras")
    if not isinstance(cameras, Sequence) or isinstance(cameras, str) or not cameras:
        raise SkillConfigError(f"{ctx}: 'cameras' must be a non-empty list of camera names, got {cameras!r}")
    bad = [c for c in cameras if c not in robot.cameras]
    if bad:
        raise SkillConfigError(
            f"{ctx}: cameras {bad} are not cameras of robot {robot.name!r}: {list(robot.cameras)}"
        )

    def joints(key: str, default: Sequence[str]) -> tuple[str, ...]:
        v = entry.get(key, list(default))
        if not isinstance(v, Sequence) or isinstance(v, str) or not v:
            raise SkillConfigError(f"{ctx}: '{key}' must be a non-empty list of joint names, got {v!r}")
        foreign = [j for j in v if j not in robot.joint_names]
        if foreign:
            raise SkillConfigError(f"{ctx}: '{key}' has joints {foreign} that robot {robot.name!r} lacks")
        return tuple(str(j) for j in v)

    state = joints("state_joints", robot.joint_names)
    action = joints("action_joints", state)
    instruction = entry.get("instruction", "hashed_bow")
    if instruction not in INSTRUCTION_MODES:
        raise SkillConfigError(
            f"{ctx}: 'instruction' must be one of {list(INSTRUCTION_MODES)}, got {instruction!r}"
        )
    encoder = entry.get("image_encoder", "pixels")
    if encoder not in IMAGE_ENCODERS:
        raise SkillConfigError(
            f"{ctx}: 'image_encoder' must be one of {list(IMAGE_ENCODERS)}, got {encoder!r}"
        )
    return SkillSpec(
        name=name,
        description=description,
        policy_dir=_resolve_policy(policy),
        cameras=tuple(cameras),
        state_joints=state,
        action_joints=action,
        instruction=instruction,
        image_encoder=encoder,
        chunk_length=num("chunk_length", 0, int, 0),
        n_action_steps=num("n_action_steps", 8, int, 1),
        default_horizon_s=horizon_s,
        denoising_steps=num("denoising_steps", 10, int, 1),
        step_period_s=period,
        state_clamp=num("state_clamp", 0.0, float, 0.0) if "state_clamp" in entry else None,
    )


def load_skill(spec: SkillSpec, *, device: str = "cpu") -> Skill:
    """Load the policy of ``spec`` and check that it matches the entry; returns the ready skill."""
    from hvla_ros import lerobot_compat as lc

    assert spec.policy_dir is not None
    ctx = f"skill {spec.name!r} ({spec.policy_dir})"
    try:
        bundle = lc.load_policy_dir(spec.policy_dir, device=device)
    except lc.PolicyLoadError as e:
        raise SkillConfigError(f"skill {spec.name!r}: {e}") from e
    cfg = bundle.config
    if bundle.image_encoder != spec.image_encoder:
        raise SkillConfigError(
            f"{ctx}: the policy was trained with image encoder {bundle.image_encoder!r}, the entry "
            f"declares image_encoder {spec.image_encoder!r}"
        )
    if sorted(bundle.cameras) != sorted(spec.cameras):
        raise SkillConfigError(
            f"{ctx}: the policy reads cameras {bundle.cameras}, the entry declares {list(spec.cameras)}"
        )
    if bundle.state_dim != len(spec.state_joints):
        raise SkillConfigError(
            f"{ctx}: the policy's observation.state has {bundle.state_dim} values, the entry declares "
            f"{len(spec.state_joints)} state joints {list(spec.state_joints)}"
        )
    if bundle.action_dim != len(spec.action_joints):
        raise SkillConfigError(
            f"{ctx}: the policy's action has {bundle.action_dim} values, the entry declares "
            f"{len(spec.action_joints)} action joints {list(spec.action_joints)}"
        )
    names = bundle.meta.get("state_names")
    if names and list(names) != list(spec.state_joints):
        raise SkillConfigError(
            f"{ctx}: the policy was trained on state joints {names}, the entry declares "
            f"{list(spec.state_joints)}"
        )
    wants_instruction = spec.instruction != "none"
    if wants_instruction != (bundle.instruction_dim > 0):
        raise SkillConfigError(
            f"{ctx}: entry says instruction={spec.instruction!r} but the policy has "
            f"{'an' if bundle.instruction_dim else 'no'} instruction input (observation.environment_state)"
        )
    if wants_instruction and bundle.meta.get("instruction_encoding", "hashed_bow") != spec.instruction:
        raise SkillConfigError(
            f"{ctx}: policy was trained with instruction encoding "
            f"{bundle.meta.get('instruction_encoding')!r}, entry says {spec.instruction!r}"
        )
    if spec.chunk_length and spec.chunk_length != cfg.horizon:
        raise SkillConfigError(
            f"{ctx}: chunk_length {spec.chunk_length} != the policy's horizon {cfg.horizon}"
        )
    max_steps = lc.predicted_steps(cfg)
    if spec.n_action_steps > max_steps:
        raise SkillConfigError(
            f"{ctx}: n_action_steps {spec.n_action_steps} > horizon - n_obs_steps + 1 = {max_steps}"
        )
    cfg.n_action_steps = spec.n_action_steps
    bundle.set_inference_steps(spec.denoising_steps)
    period = spec.step_period_s or 1.0 / float(bundle.meta.get("fps", 30))
    final = SkillSpec(**{**spec.__dict__, "step_period_s": period, "chunk_length": cfg.horizon})
    bounds = None
    if spec.state_clamp is not None:
        rng = bundle.state_range()
        if rng is None:
            raise SkillConfigError(f"{ctx}: state_clamp is set but the policy has no state statistics")
        lo, hi = rng
        bounds = (lo - spec.state_clamp * (hi - lo), hi + spec.state_clamp * (hi - lo))
    log.info(
        "loaded skill %s from %s (%d parameters)",
        spec.name,
        spec.policy_dir,
        sum(p.numel() for p in bundle.policy.parameters()),
    )
    return Skill(spec=final, bundle=bundle, state_bounds=bounds)
