"""Bring up hvla_ros: ros2 launch hvla_ros bringup.launch.py [arg:=value ...].

The nodes, their parameters and their order come from hvla_ros.graph (the same description
`hvla up` uses on machines without ros2 launch). Lifecycle nodes are brought up by nav2's
lifecycle_manager (autostart). With hardware:=ros2_control or hardware:=mock the arms run under
ros2_control (controller_manager + robot_state_publisher + spawners for the joint state
broadcaster and one joint_trajectory_controller per arm); with hardware:=sim the MuJoCo node
stands in for them on the same topics.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, GroupAction, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node, PushRosNamespace

from hvla_ros.graph import LAUNCH_ARGUMENTS, build_graph


def _ros2_control_actions(graph, share: str) -> list:
    """controller_manager, robot_state_publisher and spawners for real (or mock) arms."""
    import xacro  # only needed on a ROS 2 install with hardware

    robot = graph.robot
    description = xacro.process_file(
        os.path.join(share, "description", f"{robot}.urdf.xacro"),
        mappings={"use_mock_hardware": "true" if graph.hardware == "mock" else "false"},
    ).toxml()
    controllers = os.path.join(share, "description", f"{robot}_controllers.yaml")
    from hvla_ros.robot import get_robot

    spec = get_robot(robot)
    actions = [
        Node(package="robot_state_publisher", executable="robot_state_publisher",
             parameters=[{"robot_description": description}], output="screen"),
        Node(package="controller_manager", executable="ros2_control_node",
             parameters=[controllers], output="screen",
             remappings=[("~/robot_description", "robot_description")]),
        Node(package="controller_manager", executable="spawner",
             arguments=["joint_state_broadcaster"], output="screen"),
    ]
    actions += [Node(package="controller_manager", executable="spawner", arguments=[c], output="screen")
                for c in spec.controllers]
    return actions


def _launch_setup(context, *args, **kwargs):
    overrides = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    graph = build_graph(overrides)
    share = get_package_share_directory("hvla_ros")
    actions = []
    if graph.namespace:
        actions.append(PushRosNamespace(graph.namespace))
    if graph.hardware in ("ros2_control", "mock"):
        actions += _ros2_control_actions(graph, share)
    ros_args = ["--log-level", graph.log_level]
    for spec in graph.nodes:
        cls = LifecycleNode if spec.lifecycle else Node
        kwargs = {"namespace": ""} if spec.lifecycle else {}
        actions.append(cls(package=spec.package, executable=spec.executable, name=spec.name,
                           parameters=[spec.parameters], ros_arguments=ros_args, output="screen",
                           emulate_tty=True, **kwargs))
    actions.append(Node(
        package="nav2_lifecycle_manager", executable="lifecycle_manager", name="hvla_lifecycle_manager",
        parameters=[{"node_names": graph.lifecycle_nodes, "autostart": True, "bond_timeout": 0.0,
                     "use_sim_time": graph.use_sim_time}],
        output="screen"))
    if graph.record:
        actions.append(ExecuteProcess(cmd=["ros2", "bag", "record", "-s", "mcap", "-a",
                                           "-x", "/rosout|/parameter_events"], output="screen"))
    if overrides["goal"]:  # only an explicit goal is sent; otherwise the planner waits for one
        goal = overrides["goal"].replace("\\", "\\\\").replace("'", "\\'")
        actions.append(ExecuteProcess(
            cmd=["ros2", "action", "send_goal", "--feedback",
                 f"/{graph.namespace}/planner/execute_goal".replace("//", "/"),
                 "hvla_interfaces/action/ExecuteGoal", f"{{goal: '{goal}'}}"],
            output="screen"))
    return [GroupAction(actions)]


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(a.name, default_value=a.default, description=a.description,
                              **({"choices": list(a.choices)} if a.choices else {}))
        for a in LAUNCH_ARGUMENTS
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_launch_setup)])
