"""sim_node: a simulated SO-101 work cell that speaks ros2_control's topics.

The rest of the stack cannot tell it from real arms behind ros2_control:

- publishes ``joint_states`` (sensor_msgs/JointState: every joint, position + velocity + effort)
  as joint_state_broadcaster does, and ``/clock`` (rosgraph_msgs/Clock; run clients with
  ``use_sim_time:=true``);
- accepts trajectory_msgs/JointTrajectory on ``<controller>/joint_trajectory`` for each arm's
  joint_trajectory_controller (``arm_controller``, or ``left_arm_controller`` and
  ``right_arm_controller``) with JTC semantics (:mod:`hvla_ros.sim.trajectory`); a bad trajectory
  is rejected with a logged error naming the problem and the arm holds;
- publishes every camera as sensor_msgs/Image (rgb8) + CameraInfo on ``cameras/<name>/...``.

Evaluation only (never read by the planner or executor): ``sim/success`` (std_msgs/Bool,
latched ground-truth success), ``sim/reset`` (std_srvs/Trigger: reset to the current ``task``
and ``seed`` parameters) and, with ``publish_ground_truth``, segmentation images (32SC1 object ids).

Example::

    sim_node --ros-args -p task:=stack_blue_on_yellow -p seed:=3 -p real_time_factor:=0.0
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import Any

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, Header
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from hvla_ros import topics
from hvla_ros.robot import get_robot
from hvla_ros.rosutil.images import to_image_msg
from hvla_ros.rosutil.node_main import run_node
from hvla_ros.rosutil.params import ParamSpec, declare_params
from hvla_ros.rosutil.qos import COMMAND_QOS, IMAGE_QOS, LATCHED_QOS, STATE_QOS
from hvla_ros.rosutil.time import seconds, to_time

CLOCK_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


def _task_ids() -> list[str]:
    from hvla_ros.sim.tasks import TASKS

    return sorted(TASKS)


def _params() -> list[ParamSpec]:
    return [
        ParamSpec("task", "cube_in_box", "task of the simulated suite (sets the robot)", choices=_task_ids()),
        ParamSpec("seed", 0, "seed of the initial state (object poses, cues)", min=0),
        ParamSpec("robot", "", "robot configuration; empty = the task's robot (so101 or so101_bimanual)",
                  check=lambda v: None if v in ("", "so101", "so101_bimanual")
                  else f"parameter 'robot' must be '', 'so101' or 'so101_bimanual', got {v!r}"),
        ParamSpec("image_height", 480, "camera image height (px)", min=16, max=2160, read_only=True),
        ParamSpec("image_width", 640, "camera image width (px)", min=16, max=3840, read_only=True),
        ParamSpec("camera_rate_hz", 30.0, "camera frame rate in sim time (0 disables cameras)",
                  min=0.0, max=120.0, read_only=True),
        ParamSpec("real_time_factor", 1.0, "sim time per wall time: 1 real time, 0.5 slower, "
                  "0 as fast as possible (cameras then render in lockstep, none dropped)",
                  min=0.0, max=100.0, read_only=True),
        ParamSpec("control_rate", 120.0, "controller update rate (Hz), whole physics steps",
                  min=1.0, max=480.0, read_only=True),
        ParamSpec("publish_ground_truth", False, "publish ground-truth segmentation (evaluation only)",
                  read_only=True),
        ParamSpec("stats_period", 5.0, "seconds (wall) between logs of achieved rates; 0 = never",
                  min=0.0, max=3600.0, read_only=True),
    ]


class SimNode(Node):
    """Thin ROS wrapper around :class:`hvla_ros.sim.runner.SimRunner`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim", **kwargs)
        self.p = declare_params(self, _params())
        from hvla_ros.sim.runner import RunnerConfig, SimRunner
        from hvla_ros.sim.world import SimWorld

        world = SimWorld(self.p["task"], seed=self.p["seed"],
                         image_size=(self.p["image_height"], self.p["image_width"]),
                         render=self.p["camera_rate_hz"] > 0)
        if self.p["robot"] and get_robot(self.p["robot"]).name != world.robot.name:
            world.close()
            raise ValueError(f"task {self.p['task']!r} runs on robot {world.robot.name!r}, "
                             f"but parameter 'robot' is {self.p['robot']!r}")
        self.robot = world.robot
        config = RunnerConfig(control_rate=self.p["control_rate"], camera_rate_hz=self.p["camera_rate_hz"],
                              real_time_factor=self.p["real_time_factor"],
                              ground_truth=self.p["publish_ground_truth"])
        self.runner = SimRunner(world, config, on_state=self._publish_state, on_frame=self._publish_frame,
                                on_success=self._publish_success)

        self._joint_pub = self.create_publisher(JointState, topics.JOINT_STATES, STATE_QOS)
        self._clock_pub = self.create_publisher(Clock, topics.CLOCK, CLOCK_QOS)
        self._success_pub = self.create_publisher(Bool, topics.SIM_SUCCESS, LATCHED_QOS)
        self._image_pubs = {c: self.create_publisher(Image,
                                                     topics.camera_image(c), IMAGE_QOS)
                            for c in self.runner.cameras}
        self._info_pubs = {c: self.create_publisher(CameraInfo, topics.camera_info(c), IMAGE_QOS)
                           for c in self.runner.cameras}
        self._seg_pubs: dict[str, Any] = {}
        if self.p["publish_ground_truth"]:
            self._seg_pubs = {c: self.create_publisher(
                Image, topics.SIM_GROUND_TRUTH_SEGMENTATION.format(camera=c), IMAGE_QOS)
                for c in self.runner.cameras}
        for arm in self.robot.arms:
            self.create_subscription(
                JointTrajectory, topics.trajectory_topic(arm.controller),
                functools.partial(self._on_trajectory, arm.controller), COMMAND_QOS)
        self.create_service(Trigger, topics.SIM_RESET_SERVICE, self._on_reset)
        if self.p["stats_period"] > 0:
            self.runner.stats()
            self.create_timer(self.p["stats_period"], self._log_stats, clock=_wall_clock())
        self.runner.start()
        self.get_logger().info(
            f"simulating task {world.task.name!r} (seed {world.seed}) on {self.robot.name}: controllers "
            f"{list(self.robot.controllers)}, cameras {list(self.runner.cameras)} at "
            f"{self.p['camera_rate_hz']} Hz {self.p['image_width']}x{self.p['image_height']}, "
            f"real-time factor {self.p['real_time_factor']}")

    # ------------------------------------------------------------------ commands
    def _on_trajectory(self, controller: str, msg: JointTrajectory) -> None:
        from hvla_ros.sim.trajectory import TrajectoryPoint, TrajectoryRejected

        points = [TrajectoryPoint(time_from_start=seconds(p.time_from_start),
                                  positions=list(p.positions), velocities=list(p.velocities),
                                  accelerations=list(p.accelerations))
                  for p in msg.points]
        stamp = seconds(msg.header.stamp)
        try:
            self.runner.submit_trajectory(controller, list(msg.joint_names), points, stamp)
        except TrajectoryRejected as exc:
            self.get_logger().error(f"rejected trajectory, still following the previous one: {exc}")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        task = str(self.get_parameter("task").value)
        seed = int(self.get_parameter("seed").value)
        try:
            self.runner.reset(seed=seed, task=task)
        except ValueError as exc:
            response.success = False
            response.message = str(exc)
            self.get_logger().error(f"reset refused: {exc}")
            return response
        response.success = True
        response.message = f"reset task {task!r} with seed {seed} at t={self.runner.clock:.3f}"
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ outputs (sim threads)
    def _publish(self, pub: Any, msg: Any) -> None:
        """Publish from a sim thread; quietly skip once the context is shutting down (Ctrl-C)."""
        if not self.context.ok():
            return
        try:
            pub.publish(msg)
        except Exception:
            if self.context.ok():
                raise

    def _publish_state(self, state: Any) -> None:
        stamp = to_time(state.time)
        self._publish(self._clock_pub, Clock(clock=stamp))
        msg = JointState()
        msg.header.stamp = stamp
        msg.name = list(state.names)
        msg.position = state.positions.tolist()
        msg.velocity = state.velocities.tolist()
        msg.effort = state.efforts.tolist()
        self._publish(self._joint_pub, msg)

    def _publish_frame(self, frame: Any) -> None:
        header = Header(stamp=to_time(frame.time), frame_id=f"{frame.camera}_optical_frame")
        img = to_image_msg(frame.rgb, "rgb8", header)
        fx, fy, cx, cy = frame.intrinsics
        info = CameraInfo(header=header, height=img.height, width=img.width, distortion_model="plumb_bob")
        info.d = [0.0] * 5
        info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        self._publish(self._image_pubs[frame.camera], img)
        self._publish(self._info_pubs[frame.camera], info)
        if frame.segmentation is not None and frame.camera in self._seg_pubs:
            self._publish(self._seg_pubs[frame.camera], to_image_msg(frame.segmentation, "32SC1", header))

    def _publish_success(self, ok: bool) -> None:
        self._publish(self._success_pub, Bool(data=bool(ok)))

    def _log_stats(self) -> None:
        s = self.runner.stats()
        cams = ", ".join(f"{c} {s[f'{c}_fps']:.1f} fps ({int(s[f'{c}_dropped'])} dropped so far)"
                         for c in self.runner.cameras)
        self.get_logger().info(f"real-time factor {s['real_time_factor']:.2f}; cameras: {cams or 'none'}")

    def destroy_node(self) -> None:
        self.runner.stop()
        self.runner.world.close()
        super().destroy_node()


def _wall_clock() -> Any:
    from rclpy.clock import Clock as RclClock
    from rclpy.clock import ClockType

    return RclClock(clock_type=ClockType.STEADY_TIME)


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``sim_node``."""
    from hvla_ros.sim.runner import default_gl_backend

    default_gl_backend()
    return run_node(SimNode, args)


if __name__ == "__main__":
    sys.exit(main())
