"""The graph of hvla_ros: which nodes run, with which parameters, in which order.

This is the one description of the graph. ``launch/bringup.launch.py`` turns it into launch_ros
actions on a ROS 2 install; ``hvla up`` / ``hvla demo`` (:mod:`hvla_ros.runner`) start the same
nodes as processes on machines without ``ros2 launch``. Both read the launch arguments below,
the parameters in ``config/hvla.yaml``, and :func:`build_graph`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hvla_ros.executor.library import TASK_SKILL_LIBRARIES, skills_file_for_task
from hvla_ros.refiner.shipped import shipped_refiner_dir
from hvla_ros.robot import ROBOTS, get_robot


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


HARDWARE = ("sim", "ros2_control", "mock")
REASONERS = ("rule", "transformers", "openai")
SEGMENTERS = ("classical", "sam", "sam2", "mobile_sam", "efficientsam")
LOG_LEVELS = ("debug", "info", "warn", "error")

LAUNCH_ARGUMENTS: tuple[LaunchArgument, ...] = (
    LaunchArgument("robot", "so101", "robot configuration: one SO-101 arm or two", tuple(ROBOTS)),
    LaunchArgument("hardware", "sim", "sim: MuJoCo simulation node; ros2_control: real arms through "
                   "feetech_ros2_driver; mock: ros2_control with mock_components (dry run)", HARDWARE),
    LaunchArgument("task", "cube_in_box", "simulated task (hardware:=sim only): sets the scene and the "
                   "default goal"),
    LaunchArgument("seed", "0", "seed of the simulated scene (hardware:=sim only)"),
    LaunchArgument("goal", "", "language goal to run at start; empty: wait for an ExecuteGoal request"),
    LaunchArgument("reasoner", "rule", "planner backend: rule (offline, no weights), transformers "
                   "(local VLM), openai (OpenAI-compatible server)", REASONERS),
    LaunchArgument("reasoner_model", "", "VLM directory or hub id (transformers), model name (openai)"),
    LaunchArgument("reasoner_url", "", "base URL of the OpenAI-compatible server (openai backend)"),
    LaunchArgument("segmenter", "classical", "perception segmenter backend", SEGMENTERS),
    LaunchArgument("segmenter_checkpoint", "", "checkpoint file for SAM-family segmenters"),
    LaunchArgument("skills_file", "", "skill library YAML; empty: the shipped skills (on the simulator, the "
                   "multi-task library for the tasks the default skills were not trained on)"),
    LaunchArgument("refine", "auto", "AnchorRefine refinement: true (needs trained refiners: refiner_dir), false "
                   "(pass-through: same timing, same safety layer), auto (on when refiners are available: "
                   "refiner_dir given, or the shipped skills with their shipped refiners)", ("auto", "true", "false")),
    LaunchArgument("refiner_dir", "", "directory of <skill>/ refiner checkpoints (hvla train-refiner); "
                   "empty: the refiners shipped for the default skills (refiners/full), if skills_file is empty"),
    LaunchArgument("namespace", "", "namespace pushed onto every node"),
    LaunchArgument("use_sim_time", "auto", "use /clock; auto: true with hardware:=sim",
                   ("auto", "true", "false")),
    LaunchArgument("log_level", "info", "log level of every node", LOG_LEVELS),
    LaunchArgument("record", "false", "record the episode's topics to an MCAP bag", ("true", "false")),
    LaunchArgument("params_file", "", "extra parameters YAML (<node>: ros__parameters: ...) applied "
                   "over config/hvla.yaml"),
)
ARGUMENT_NAMES = tuple(a.name for a in LAUNCH_ARGUMENTS)


class GraphConfigError(ValueError):
    """A launch argument or parameter file that cannot describe a valid graph."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph."""

    name: str
    executable: str
    lifecycle: bool
    parameters: dict[str, Any]
    package: str = "hvla_ros"
    description: str = ""


@dataclass
class Graph:
    nodes: list[NodeSpec]
    namespace: str
    use_sim_time: bool
    log_level: str
    record: bool
    hardware: str
    robot: str
    goal: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lifecycle_nodes(self) -> list[str]:
        """Lifecycle node names in activation order (the order of :attr:`nodes`)."""
        return [n.name for n in self.nodes if n.lifecycle]

    def with_parameters(self, name: str, **values: Any) -> Graph:
        """A copy of the graph with parameters of node ``name`` set (e.g. a run's log directory)."""
        from dataclasses import replace

        nodes = [replace(n, parameters={**n.parameters, **values}) if n.name == name else n for n in self.nodes]
        self.node(name)  # raises for an unknown node
        return replace(self, nodes=nodes)

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in the graph: {[n.name for n in self.nodes]}")


def default_params_path() -> Path:
    return Path(str(resources.files("hvla_ros") / "config" / "hvla.yaml"))


def load_params_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ``<node>: ros__parameters: {...}`` YAML into {node: {param: value}}."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise GraphConfigError(f"parameters file {str(p)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise GraphConfigError(f"parameters file {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise GraphConfigError(f"parameters file {str(p)!r} must map node names to sections")
    out: dict[str, dict[str, Any]] = {}
    for node, section in doc.items():
        params = (section or {}).get("ros__parameters") if isinstance(section, dict) else None
        if not isinstance(params, dict):
            raise GraphConfigError(f"{str(p)!r}: section {node!r} needs a 'ros__parameters' mapping")
        out[str(node)] = _flatten(params)
    return out


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML mappings -> dotted ROS parameter names."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _bool_arg(args: dict[str, str], name: str) -> bool:
    value = str(args[name]).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise GraphConfigError(f"launch argument {name}:={args[name]!r} must be true or false")


def resolve_arguments(overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Defaults of every launch argument with ``overrides`` applied and validated."""
    args = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    for key, value in (overrides or {}).items():
        if key not in args:
            raise GraphConfigError(f"unknown launch argument {key!r}; known: {list(ARGUMENT_NAMES)}")
        args[key] = str(value)
    for a in LAUNCH_ARGUMENTS:
        if a.choices is not None and args[a.name] not in a.choices:
            raise GraphConfigError(
                f"launch argument {a.name}:={args[a.name]!r} must be one of {list(a.choices)}")
    try:
        if int(args["seed"]) < 0:
            raise ValueError
    except ValueError:
        raise GraphConfigError(f"launch argument seed:={args['seed']!r} must be an integer >= 0") from None
    return args


def build_graph(overrides: dict[str, str] | None = None) -> Graph:
    """The nodes, parameters and order for the given launch arguments."""
    args = resolve_arguments(overrides)
    params = load_params_file(default_params_path())
    if args["params_file"]:
        for node, extra in load_params_file(args["params_file"]).items():
            params.setdefault(node, {}).update(extra)
    hardware = args["hardware"]
    robot_name = args["robot"]
    if hardware == "sim":
        task_robot = _task_robot(args["task"])
        if robot_name != task_robot and "robot" in (overrides or {}):
            raise GraphConfigError(
                f"task {args['task']!r} runs on robot {task_robot!r}, but robot:={robot_name!r} was given")
        robot_name = task_robot
    robot = get_robot(robot_name)
    use_sim_time = hardware == "sim" if args["use_sim_time"] == "auto" else args["use_sim_time"] == "true"
    cameras = list(robot.cameras)

    def section(name: str, **values: Any) -> dict[str, Any]:
        merged = copy.deepcopy(params.get(name, {}))
        merged.update(values)
        merged["use_sim_time"] = use_sim_time
        return merged

    skills_file = args["skills_file"]
    if not skills_file and hardware == "sim" and args["task"] in TASK_SKILL_LIBRARIES:
        # a task the default skills were not trained for: the shipped library that was
        skills_file = str(skills_file_for_task(args["task"]))
    nodes: list[NodeSpec] = []
    if hardware == "sim":
        nodes.append(NodeSpec(
            "sim", "sim_node", lifecycle=False,
            parameters=section("sim", task=args["task"], seed=int(args["seed"])),
            description="MuJoCo SO-101 work cell behind ros2_control's topics"))
    lifecycle_autostart = {"autostart": False}  # the lifecycle manager brings them up in order
    nodes.append(NodeSpec(
        "perception", "perception_node", lifecycle=True,
        parameters=section("perception", backend=args["segmenter"],
                           checkpoint=args["segmenter_checkpoint"], cameras=cameras, **lifecycle_autostart),
        description="box-prompted distractor masks, propagated every frame; filtered images"))
    nodes.append(NodeSpec(
        "executor", "executor_node", lifecycle=True,
        parameters=section("executor", skills_file=skills_file, robot=robot.name,
                           **lifecycle_autostart),
        description="diffusion-policy skills emitting anchor action chunks"))
    # The shipped refiners were trained against the shipped skills: the default only with those.
    refiner_dir = args["refiner_dir"] or ("" if skills_file else str(shipped_refiner_dir()))
    if str(args["refine"]).strip().lower() == "auto":
        refine = bool(refiner_dir) and Path(refiner_dir).is_dir()
    else:
        refine = _bool_arg(args, "refine")
    nodes.append(NodeSpec(
        "refiner", "refiner_node", lifecycle=True,
        parameters=section("refiner", robot=robot.name, refine=refine,
                           skills_file=skills_file,
                           **({"refiner_dir": refiner_dir} if refiner_dir else {}),
                           **lifecycle_autostart),
        description="AnchorRefine + last-line safety; streams JointTrajectory to the controllers"))
    nodes.append(NodeSpec(
        "planner", "planner_node", lifecycle=True,
        parameters=section("planner", backend=args["reasoner"],
                           **({"model": args["reasoner_model"]} if args["reasoner_model"] else {}),
                           **({"base_url": args["reasoner_url"]} if args["reasoner_url"] else {}),
                           cameras=[robot.scene_camera], **lifecycle_autostart),
        description="Goal2Skill planner: plan, verify, reflect, memory; ExecuteGoal action server"))
    return Graph(
        nodes=nodes,
        namespace=args["namespace"].strip("/"),
        use_sim_time=use_sim_time,
        log_level=args["log_level"],
        record=_bool_arg(args, "record"),
        hardware=hardware,
        robot=robot.name,
        goal=args["goal"] or (_task_goal(args["task"]) if hardware == "sim" else ""),
        extra={"task": args["task"], "seed": int(args["seed"])},
    )


def _task_robot(task: str) -> str:
    from hvla_ros.sim.tasks import TASKS

    if task not in TASKS:
        raise GraphConfigError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    return str(TASKS[task].robot_name)


def _task_goal(task: str) -> str:
    from hvla_ros.sim.tasks import TASKS

    return str(TASKS[task].goal)
