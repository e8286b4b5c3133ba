"""refiner_node: anchor chunks -> (refinement) -> last-line safety -> JointTrajectory per arm.

Subscribes ``executor/anchor_chunks`` (ActionChunk), ``joint_states``, the e-stop topic and
the status of the executor's ``executor/execute_subtask`` action (a subtask goal being canceled
holds the arm at once: the steps of the chunk already sent are not played out); serves the
e-stop service; publishes refined chunks (origin REFINED), one
``trajectory_msgs/JointTrajectory`` per arm controller (``<controller>/joint_trajectory``) and
``safety/status``. The plain-Python cores are :class:`~hvla_ros.refiner.safety.SafetyFilter`
and :class:`~hvla_ros.refiner.runtime.ChunkRefiner`; this node only wires them to topics.

Pass-through (``refine`` false, the default) runs the same path with the refinement skipped,
so timing and safety are identical. With ``refine`` true each chunk is refined with the anchor's
observation context that executor_node sends in the chunk (``ActionChunk.context``): exactly
what the policy conditioned on, at no encoder cost here. Chunks from other sources carry none;
``recompute_context`` makes the node rebuild it from the filtered images instead.

Every JointTrajectory is stamped with the publish time and
each point's ``time_from_start`` is its step's execution time minus that stamp; steps already
stale against ``latency_budget_s`` are dropped (see SafetyFilter).
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from action_msgs.msg import GoalStatus, GoalStatusArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import qos_profile_action_status_default
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from hvla_interfaces.msg import ActionChunk, SafetyStatus
from hvla_interfaces.srv import SetEStop
from hvla_ros import topics
from hvla_ros.refiner.safety import Chunk, ChunkRejected, Command, SafetyConfig, SafetyError, SafetyFilter
from hvla_ros.robot import ROBOTS, get_robot
from hvla_ros.rosutil.node_main import run_lifecycle_node
from hvla_ros.rosutil.params import ParamSpec, declare_params
from hvla_ros.rosutil.qos import COMMAND_QOS, STATE_QOS
from hvla_ros.rosutil.time import seconds, to_duration, to_time


def _params() -> list[ParamSpec]:
    return [
        ParamSpec("robot", "so101", "robot configuration", choices=sorted(ROBOTS), read_only=True),
        ParamSpec("refine", False, "apply the trained refiners (false = pass-through, same timing)"),
        ParamSpec("refiner_dir", "", "directory of <skill>/ refiner checkpoints (needed when refine)"),
        ParamSpec("skills_file", "", "skill library YAML for the anchors' encoders; empty = package default"),
        ParamSpec("recompute_context", False,
                  "refine chunks that carry no observation context (not from executor_node) by recomputing it "
                  "from the filtered images (subscribes to every camera); false = they pass through unrefined"),
        ParamSpec("control_period_s", 1.0 / 30.0, "control period: holds are reached within it",
                  min=0.001, max=1.0),
        ParamSpec("latency_budget_s", 0.02, "steps due before now + budget are dropped", min=0.0, max=1.0),
        ParamSpec("max_chunk_age_s", 0.5, "refuse a chunk whose last step ended longer ago", min=0.001, max=10.0),
        ParamSpec("max_future_s", 2.0, "refuse a chunk starting further ahead (clock mismatch)",
                  min=0.001, max=60.0),
        ParamSpec("max_step_change_rad", 0.5, "refuse a chunk with a larger jump between targets",
                  min=0.001, max=6.3),
        ParamSpec("watchdog_timeout_s", 0.5, "hold when no chunk arrives this long while moving",
                  min=0.01, max=60.0),
        ParamSpec("velocity_scale", 1.0, "fraction of the robot's velocity limits allowed", min=0.01, max=1.0),
        ParamSpec("autostart", True, "configure and activate at start (no lifecycle manager needed)",
                  read_only=True),
    ]


class RefinerNode(LifecycleNode):
    """Thin ROS wrapper around :class:`SafetyFilter` and (optionally) :class:`ChunkRefiner`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("refiner", **kwargs)
        self.p = declare_params(self, _params())
        self._lock = threading.Lock()
        self._filter: SafetyFilter | None = None
        self._refiner: Any = None
        self._active = False
        self._handles: list[Any] = []
        self._traj_pubs: dict[str, Any] = {}
        self._arm_of: dict[str, str] = {}
        self._instruction = ""
        # subtask goals (uuid bytes) seen running, and those already held for: bounded histories
        self._goals_running: deque[bytes] = deque(maxlen=64)
        self._goals_held: deque[bytes] = deque(maxlen=64)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.p
        try:
            robot = get_robot(p["robot"])
            cfg = SafetyConfig(
                control_period=p["control_period_s"], latency_budget=p["latency_budget_s"],
                max_chunk_age=p["max_chunk_age_s"], max_future=p["max_future_s"],
                max_step_change=p["max_step_change_rad"], watchdog_timeout=p["watchdog_timeout_s"],
                velocity_scale=p["velocity_scale"])
        except ValueError as e:
            self.get_logger().error(f"bad configuration: {e}")
            return TransitionCallbackReturn.FAILURE
        self._robot = robot
        self._filter = SafetyFilter(robot, cfg)
        if p["refine"]:
            try:
                self._refiner = self._load_refiner()
            except (OSError, ValueError, RuntimeError, KeyError) as e:
                self.get_logger().error(f"cannot load refiners: {e}")
                return TransitionCallbackReturn.FAILURE
        group = MutuallyExclusiveCallbackGroup()
        self._traj_pubs = {arm.name: self.create_publisher(JointTrajectory, arm.trajectory_topic, COMMAND_QOS)
                           for arm in robot.arms}
        self._refined_pub = self.create_publisher(ActionChunk, topics.REFINED_CHUNKS, COMMAND_QOS)
        self._status_pub = self.create_publisher(SafetyStatus, topics.SAFETY_STATUS, STATE_QOS)
        self._handles = [
            self.create_subscription(ActionChunk, topics.ANCHOR_CHUNKS, self._on_chunk, COMMAND_QOS,
                                     callback_group=group),
            self.create_subscription(JointState, topics.JOINT_STATES, self._on_joint_state, STATE_QOS,
                                     callback_group=group),
            self.create_subscription(Bool, topics.ESTOP_TOPIC, self._on_estop_topic, COMMAND_QOS,
                                     callback_group=group),
            self.create_service(SetEStop, topics.SET_ESTOP_SERVICE, self._on_estop_service,
                                callback_group=group),
            self.create_subscription(GoalStatusArray, topics.EXECUTE_SUBTASK_ACTION + "/_action/status",
                                     self._on_subtask_status, qos_profile_action_status_default,
                                     callback_group=group),
            self.create_timer(cfg.control_period, self._on_tick, callback_group=group),
        ]
        if self._refiner is not None and p["recompute_context"]:
            self._handles += self._observation_subscriptions(group)
        self.get_logger().info(
            f"configured for {robot.name} ({', '.join(robot.controllers)}), "
            f"{'refinement on' if self._refiner else 'pass-through'}")
        return TransitionCallbackReturn.SUCCESS

    def _load_refiner(self) -> Any:
        from hvla_ros.executor.library import SkillLibrary
        from hvla_ros.executor.runner import ObservationBuffer
        from hvla_ros.refiner.runtime import load_chunk_refiner, observation_context_provider

        if not self.p["refiner_dir"]:
            raise ValueError("parameter 'refiner_dir' is empty but 'refine' is true")
        library = SkillLibrary.load(self.p["skills_file"] or None, robot=self.p["robot"])
        self._buffer = ObservationBuffer(maxlen=16)
        skills = [name for name in library.names() if not library.get(name).spec.is_scripted]
        if not self.p["recompute_context"]:  # the context comes with each chunk
            return load_chunk_refiner(self.p["refiner_dir"], dict.fromkeys(skills, _no_context))
        providers = {name: observation_context_provider(library.get(name), self._buffer, lambda: self._instruction)
                     for name in skills}
        return load_chunk_refiner(self.p["refiner_dir"], providers)

    def _observation_subscriptions(self, group: Any) -> list[Any]:
        """Refinement needs the anchors' observations: filtered images, joints, the instruction."""
        from sensor_msgs.msg import Image

        from hvla_interfaces.msg import Subtask
        from hvla_ros.rosutil.images import to_rgb
        from hvla_ros.rosutil.qos import IMAGE_QOS, LATCHED_QOS

        images: dict[str, np.ndarray] = {}

        def on_image(cam: str, msg: Image) -> None:
            from hvla_ros.executor.runner import Observation

            images[cam] = to_rgb(msg).copy()
            joints = self._filter.measured if self._filter is not None else None
            if joints is None or len(images) < len(self._robot.cameras):
                return
            self._buffer.add(Observation(stamp=seconds(msg.header.stamp), images=dict(images),
                                         joints=dict(zip(self._robot.joint_names, joints.tolist(), strict=True))))

        def on_subtask(msg: Subtask) -> None:
            self._instruction = msg.instruction

        subs = [self.create_subscription(Image, topics.filtered_image(cam), functools.partial(on_image, cam),
                                         IMAGE_QOS, callback_group=group)
                for cam in self._robot.cameras]
        subs.append(self.create_subscription(Subtask, topics.CURRENT_SUBTASK, on_subtask, LATCHED_QOS,
                                             callback_group=group))
        return subs

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        now = self.now_s()
        with self._lock:
            if self._filter is not None:
                self._publish(self._filter.hold(now), now)  # stop the arm where it is
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        for h in self._handles:
            if hasattr(h, "cancel"):
                h.cancel()
                self.destroy_timer(h)
            elif hasattr(h, "srv_type"):
                self.destroy_service(h)
            else:
                self.destroy_subscription(h)
        for pub in (*self._traj_pubs.values(), self._refined_pub, self._status_pub):
            self.destroy_publisher(pub)
        self._handles, self._traj_pubs = [], {}
        self._filter, self._refiner = None, None
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ callbacks
    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_joint_state(self, msg: JointState) -> None:
        if self._filter is not None:
            with self._lock:
                self._filter.update_joint_state(list(msg.name), list(msg.position))

    def _on_chunk(self, msg: ActionChunk) -> None:
        f = self._filter
        if f is None or not self._active:
            return
        now = self.now_s()
        with self._lock:
            try:
                chunk = Chunk.from_flat(list(msg.joint_names), int(msg.num_steps), msg.positions,
                                        seconds(msg.header.stamp), seconds(msg.step_period))
            except ChunkRejected as e:
                cmd = f.refuse(e, now)
            else:
                if self._refiner is not None:
                    chunk = self._refine(msg, chunk)
                cmd = f.filter_chunk(chunk, now)
            if cmd.hold:
                self.get_logger().error(f"chunk {msg.chunk_index} of {msg.skill!r} refused: "
                                        f"{f.counters.error_code.name}: {f.counters.error_msg}")
            self._publish(cmd, now)
            self._publish_status(now)

    def _refine(self, msg: ActionChunk, chunk: Chunk) -> Chunk:
        """Refine the chunk and publish the refined ActionChunk (before the safety filter)."""
        import torch

        logits = np.asarray(msg.gripper_logits, dtype=np.float32) if len(msg.gripper_logits) else None
        context = None
        if msg.context_tokens and len(msg.context) % msg.context_tokens == 0:
            context = torch.as_tensor(np.asarray(msg.context, dtype=np.float32)).reshape(msg.context_tokens, -1)
        res = self._refiner.refine(msg.skill, chunk.joint_names, chunk.positions, list(msg.gripper_names),
                                   float(chunk.stamps[0]), logits, context=context)
        if not res.refined and msg.skill in self._refiner.models:  # a skill without a refiner is expected
            self.get_logger().warning(f"chunk {msg.chunk_index} of {msg.skill!r} not refined: {res.reason}",
                                      throttle_duration_sec=5.0)
        out = ActionChunk()
        out.header = msg.header
        out.step_period = msg.step_period
        out.joint_names = list(msg.joint_names)
        out.num_steps = msg.num_steps
        out.positions = np.asarray(res.positions, dtype=np.float64).ravel().tolist()
        out.gripper_names = list(msg.gripper_names)
        out.gripper_probabilities = np.asarray(res.gripper_probabilities, dtype=np.float32).ravel().tolist()
        out.origin = ActionChunk.ORIGIN_REFINED if res.refined else ActionChunk.ORIGIN_ANCHOR
        out.skill, out.episode_id = msg.skill, msg.episode_id
        out.subtask_id, out.chunk_index = msg.subtask_id, msg.chunk_index
        self._send(self._refined_pub, out)
        return Chunk(chunk.joint_names, np.asarray(res.positions, dtype=float), chunk.stamps)

    def _on_estop(self, engage: bool, reason: str) -> None:
        f = self._filter
        if f is None:
            return
        now = self.now_s()
        with self._lock:
            cmd = f.set_estop(engage, now, reason)
            if cmd is not None:
                self._publish(cmd, now)
            self._publish_status(now)

    def _on_estop_topic(self, msg: Bool) -> None:
        self._on_estop(bool(msg.data), "e-stop topic")

    def _on_estop_service(self, request: SetEStop.Request, response: SetEStop.Response) -> SetEStop.Response:
        if self._filter is None:
            response.error_code = SetEStop.Response.ERROR_REFUSED
            response.error_msg = "refiner is not configured"
            return response
        self._on_estop(bool(request.engage), request.reason or "e-stop service")
        response.error_code = SetEStop.Response.ERROR_NONE
        response.engaged = self._filter.estop_engaged
        return response

    def _on_subtask_status(self, msg: GoalStatusArray) -> None:
        """Hold the arm when a subtask goal is being canceled (the planner's or an operator's cancel).

        The executor publishes no chunk after a cancel request; this stops the one it already
        sent. A goal counts when this node saw it running or saw it while canceling: a canceled
        goal latched from before this node started is left alone.
        """
        f = self._filter
        if f is None or not self._active:
            return
        for st in msg.status_list:
            uid = bytes(st.goal_info.goal_id.uuid)
            if st.status == GoalStatus.STATUS_EXECUTING:
                if uid not in self._goals_running:
                    self._goals_running.append(uid)
                continue
            canceling = st.status == GoalStatus.STATUS_CANCELING or (
                st.status == GoalStatus.STATUS_CANCELED and uid in self._goals_running)
            if not canceling or uid in self._goals_held:
                continue
            self._goals_held.append(uid)
            now = self.now_s()
            with self._lock:
                self._publish(f.hold(now), now)
                self._publish_status(now)
            self.get_logger().info("subtask goal canceled: holding the arm where it is")

    def _on_tick(self) -> None:
        f = self._filter
        if f is None:
            return
        now = self.now_s()
        with self._lock:
            cmd = f.tick(now)
            if cmd is not None:
                self._publish(cmd, now)
            self._publish_status(now)

    # ------------------------------------------------------------------ output
    def _send(self, pub: Any, msg: Any) -> None:
        try:
            pub.publish(msg)
        except Exception:  # a timer firing while SIGTERM shuts the context down; rclpy raises several types
            if self.context.ok():
                raise

    def _publish(self, cmd: Command, now: float) -> None:
        """One JointTrajectory per arm the command covers (header stamp = now; zero: on receipt)."""
        if cmd.positions.shape[0] == 0:
            return  # nothing measured yet: nothing safe to send
        names = list(cmd.joint_names)
        for arm in self._robot.arms:
            cols = [names.index(n) for n in arm.joint_names if n in names]
            if len(cols) != len(arm.joint_names):
                continue
            traj = JointTrajectory()
            # A hold (or an all-stale chunk's last target) starts on receipt (stamp zero = "now"
            # on the controller's clock): stamped with our clock, a controller whose clock runs
            # ahead by more than one control period would refuse it as ending in the past and keep
            # following the old trajectory.
            traj.header.stamp = to_time(0.0 if cmd.on_receipt else now)
            traj.joint_names = list(arm.joint_names)
            for k in range(cmd.positions.shape[0]):
                pt = JointTrajectoryPoint()
                pt.positions = [float(v) for v in cmd.positions[k, cols]]
                if cmd.hold:
                    pt.velocities = [0.0] * len(cols)
                pt.time_from_start = to_duration(max(float(cmd.stamps[k]) - now, 0.0))
                traj.points.append(pt)
            self._send(self._traj_pubs[arm.name], traj)

    def _publish_status(self, now: float) -> None:
        f = self._filter
        if f is None:
            return
        c = f.counters
        msg = SafetyStatus()
        msg.header.stamp = to_time(now)
        msg.estop_engaged = f.estop_engaged
        msg.holding = f.holding
        msg.joint_state_known = f.measured is not None
        msg.chunks_accepted = c.chunks_accepted
        msg.chunks_rejected = c.chunks_rejected
        msg.steps_clamped = c.steps_clamped
        msg.steps_dropped_stale = c.steps_dropped_stale
        msg.error_code = int(c.error_code)
        msg.error_msg = c.error_msg
        self._send(self._status_pub, msg)


def _no_context(start: float) -> None:
    """Context provider when contexts come with the chunks: a chunk without one is not refined."""
    return None


def main(args: Sequence[str] | None = None) -> int:
    # single-threaded: its callbacks share one group anyway, and rclpy's multi-threaded executor
    # polled at ~100% of a core with joint_states and /clock at 120 Hz (late watchdog ticks)
    return run_lifecycle_node(RefinerNode, args, executor_kind="single_threaded")


if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["RefinerNode", "SafetyError", "main"]
