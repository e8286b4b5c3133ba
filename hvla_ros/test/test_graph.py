"""The graph description, and the launch file generated from it.

``launch``/``launch_ros`` are not installable without a ROS distro, so the launch file is
executed here against small recording stand-ins for those modules: enough to check that it
declares every launch argument with a description and starts exactly the graph's nodes with the
graph's parameters (the same description ``hvla up`` runs).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from hvla_ros import graph as g
from hvla_ros.runner import node_command, params_document

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "bringup.launch.py"


def test_default_graph_is_the_embedded_default() -> None:
    graph = g.build_graph()
    assert [n.name for n in graph.nodes] == ["sim", "perception", "executor", "refiner", "planner"]
    assert graph.lifecycle_nodes == ["perception", "executor", "refiner", "planner"]
    assert graph.hardware == "sim" and graph.use_sim_time
    assert graph.goal == "put the red cube in the box"
    perception = graph.node("perception").parameters
    assert perception["backend"] == "classical" and perception["cameras"] == ["front", "wrist"]
    assert graph.node("planner").parameters["backend"] == "rule"
    assert all(n.parameters["use_sim_time"] for n in graph.nodes)


def test_bimanual_task_selects_the_bimanual_robot() -> None:
    graph = g.build_graph({"task": "bimanual_handover"}) if "bimanual_handover" in _tasks() else None
    if graph is None:
        pytest.skip("bimanual task not in the suite")
    assert graph.robot == "so101_bimanual"
    assert graph.node("perception").parameters["cameras"] == ["front", "left_wrist", "right_wrist"]


def test_a_task_the_default_skills_were_not_trained_for_gets_its_shipped_library() -> None:
    from hvla_ros.executor.library import default_skills_file, skills_file_for_task

    graph = g.build_graph({"task": "observe_then_pick"})
    assert graph.goal == "watch which cube lights up, then put that cube in the box"
    executor, refiner = graph.node("executor").parameters, graph.node("refiner").parameters
    assert Path(executor["skills_file"]).name == "skills_multitask.yaml" and Path(executor["skills_file"]).is_file()
    assert refiner["skills_file"] == executor["skills_file"]
    # the shipped refiners were trained on the default skills: not applied to these
    assert refiner["refine"] is False and "refiner_dir" not in refiner
    assert skills_file_for_task("cube_in_box") == default_skills_file()
    # an explicit library wins; the default task keeps the default skills and their refiners
    given = g.build_graph({"task": "observe_then_pick", "skills_file": "mine.yaml"})
    assert given.node("executor").parameters["skills_file"] == "mine.yaml"
    default = g.build_graph()
    assert default.node("executor").parameters["skills_file"] == "" and default.node("refiner").parameters["refine"]


def _tasks() -> set[str]:
    from hvla_ros.sim.tasks import TASKS

    return set(TASKS)


def test_real_hardware_graph_has_no_simulator() -> None:
    graph = g.build_graph({"hardware": "ros2_control", "robot": "so101_bimanual", "namespace": "/cell1/"})
    assert "sim" not in [n.name for n in graph.nodes]
    assert graph.robot == "so101_bimanual" and not graph.use_sim_time
    assert graph.namespace == "cell1"
    assert graph.goal == ""


@pytest.mark.parametrize(("overrides", "message"), [
    ({"hardware": "gazebo"}, "hardware:='gazebo'"),
    ({"robot": "so100"}, "robot:='so100'"),
    ({"refine": "maybe"}, "refine:='maybe'"),
    ({"seed": "-3"}, "seed:='-3'"),
    ({"task": "juggle"}, "'juggle'"),
    ({"colour": "red"}, "'colour'"),
    ({"task": "cube_in_box", "robot": "so101_bimanual"}, "so101_bimanual"),
])
def test_bad_launch_arguments_are_named(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(g.GraphConfigError, match=message.replace("(", r"\(")):
        g.build_graph(overrides)


def test_params_file_overrides_and_is_validated(tmp_path: Path) -> None:
    extra = tmp_path / "mine.yaml"
    extra.write_text(yaml.safe_dump({"perception": {"ros__parameters": {"fill": "blur",
                                                                         "propagation": {"scale": 0.25}}}}))
    graph = g.build_graph({"params_file": str(extra)})
    params = graph.node("perception").parameters
    assert params["fill"] == "blur" and params["propagation.scale"] == 0.25
    bad = tmp_path / "bad.yaml"
    bad.write_text("perception: [1, 2]\n")
    with pytest.raises(g.GraphConfigError, match="ros__parameters"):
        g.build_graph({"params_file": str(bad)})
    with pytest.raises(g.GraphConfigError, match="does not exist"):
        g.build_graph({"params_file": str(tmp_path / "missing.yaml")})


def test_runner_commands_carry_name_namespace_and_parameters(tmp_path: Path) -> None:
    graph = g.build_graph({"namespace": "cell1", "log_level": "debug"})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params_document(graph)))
    loaded = g.load_params_file(params_file)
    for spec in graph.nodes:
        assert loaded[f"/cell1/{spec.name}"] == spec.parameters  # rcl matches fully qualified names
        cmd = node_command(graph, spec, params_file)
        assert Path(cmd[0]).name == spec.executable
        assert cmd[1:] == ["--ros-args", "-r", "__ns:=/cell1", "-r", f"__node:={spec.name}",
                           "--params-file", str(params_file), "--log-level", "debug"]


# -- the launch file, against recording stand-ins ------------------------------------------
class _Recorder:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


def _fake_launch_modules(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    def module(name: str, **attrs: Any) -> None:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)

    class LaunchConfiguration:
        def __init__(self, name: str) -> None:
            self.name = name

        def perform(self, context: Any) -> str:
            return context[self.name]

    class LaunchDescription(_Recorder):
        pass

    module("launch", LaunchDescription=LaunchDescription)
    module("launch.actions", DeclareLaunchArgument=type("DeclareLaunchArgument", (_Recorder,), {}),
           ExecuteProcess=type("ExecuteProcess", (_Recorder,), {}), GroupAction=type("GroupAction", (_Recorder,), {}),
           OpaqueFunction=type("OpaqueFunction", (_Recorder,), {}))
    module("launch.substitutions", LaunchConfiguration=LaunchConfiguration)
    module("launch_ros")
    module("launch_ros.actions", Node=type("Node", (_Recorder,), {}),
           LifecycleNode=type("LifecycleNode", (_Recorder,), {}),
           PushRosNamespace=type("PushRosNamespace", (_Recorder,), {}))
    module("ament_index_python")
    module("ament_index_python.packages", get_package_share_directory=lambda pkg: f"/share/{pkg}")


def _run_launch_file(monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str]) -> tuple[list, list]:
    values = {a.name: a.default for a in g.LAUNCH_ARGUMENTS} | overrides
    _fake_launch_modules(monkeypatch, values)
    spec = importlib.util.spec_from_file_location("bringup_launch", LAUNCH_FILE)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    description = mod.generate_launch_description()
    entities = description.args[0]
    declared = [e for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
    opaque = next(e for e in entities if type(e).__name__ == "OpaqueFunction")
    group = opaque.kwargs["function"](values)[0]
    return declared, group.args[0]


def test_launch_file_declares_every_argument_with_a_description(monkeypatch: pytest.MonkeyPatch) -> None:
    declared, _ = _run_launch_file(monkeypatch, {})
    assert [d.args[0] for d in declared] == list(g.ARGUMENT_NAMES)
    assert all(d.kwargs["description"] for d in declared)


def test_launch_file_starts_exactly_the_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {"segmenter": "classical", "namespace": "cell1", "goal": "open the drawer", "record": "true"}
    _, actions = _run_launch_file(monkeypatch, overrides)
    graph = g.build_graph(overrides)
    nodes = [a for a in actions if type(a).__name__ in ("Node", "LifecycleNode")]
    ours = [n for n in nodes if n.kwargs["package"] == "hvla_ros"]
    assert [(n.kwargs["name"], n.kwargs["executable"], n.kwargs["parameters"][0]) for n in ours] == \
        [(s.name, s.executable, s.parameters) for s in graph.nodes]
    assert [type(n).__name__ == "LifecycleNode" for n in ours] == [s.lifecycle for s in graph.nodes]
    manager = next(n for n in nodes if n.kwargs["package"] == "nav2_lifecycle_manager")
    assert manager.kwargs["parameters"][0]["node_names"] == graph.lifecycle_nodes
    assert manager.kwargs["parameters"][0]["autostart"] is True
    assert type(actions[0]).__name__ == "PushRosNamespace" and actions[0].args[0] == "cell1"
    processes = [a.kwargs["cmd"] for a in actions if type(a).__name__ == "ExecuteProcess"]
    assert any(cmd[:4] == ["ros2", "bag", "record", "-s"] for cmd in processes)
    assert any("open the drawer" in cmd[-1] for cmd in processes)
