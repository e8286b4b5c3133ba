"""The operator's side of the graph: send a goal, follow it, capture key frames, stop it.

:class:`OperatorClient` is a plain rclpy node used by ``hvla demo``, ``hvla up``, ``hvla status``
and the operator commands (cancel, pause/resume, e-stop). Progress is rendered from the
planner's latched PlanState, so ``hvla status`` started at any time sees the current plan.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from hvla_interfaces.action import ExecuteGoal
from hvla_interfaces.msg import PlanState, SafetyStatus, SubtaskOutcome
from hvla_interfaces.srv import SetEStop, SetPaused
from hvla_ros import topics
from hvla_ros.rosutil.action import RaceFreeActionClient
from hvla_ros.rosutil.images import ImageConversionError, to_rgb
from hvla_ros.rosutil.qos import IMAGE_QOS, LATCHED_QOS, STATE_QOS

log = logging.getLogger(__name__)

STATE_NAMES = {v: k[len("STATE_"):].lower() for k, v in vars(PlanState).items()
               if k.startswith("STATE_") and isinstance(v, int)}
OUTCOME_NAMES = {SubtaskOutcome.STATUS_SUCCESS: "success", SubtaskOutcome.STATUS_FAIL: "fail",
                 SubtaskOutcome.STATUS_TIMEOUT: "timeout"}


def describe_plan(plan: PlanState) -> str:
    """A few readable lines: the plan with the current subtask marked and outcomes so far."""
    lines = [f"episode {plan.episode_id or '?'} [{STATE_NAMES.get(plan.state, plan.state)}] "
             f"goal: {plan.goal!r} (replans: {plan.replans})"]
    outcomes = {o.subtask_id: o for o in plan.outcomes}
    for i, sub in enumerate(plan.subtasks):
        mark = ">" if i == plan.current_index else " "
        outcome = outcomes.get(sub.subtask_id)
        status = f" -> {OUTCOME_NAMES.get(outcome.status, outcome.status)}" if outcome else ""
        attempt = f" (attempt {plan.attempt})" if i == plan.current_index and plan.attempt else ""
        lines.append(f" {mark} {i + 1}. [{sub.skill}] {sub.instruction}{attempt}{status}")
    return "\n".join(lines)


SAFETY_ERRORS = {v: k[len("ERROR_"):].lower() for k, v in vars(SafetyStatus).items()
                 if k.startswith("ERROR_") and isinstance(v, int)}


def describe_safety(status: SafetyStatus) -> str:
    """One line on the last node before the arm: e-stop, hold, measurement, counters, last intervention."""
    state = "E-STOP ENGAGED" if status.estop_engaged else ("holding" if status.holding else "following chunks")
    measured = "every joint measured" if status.joint_state_known else "NO joint state yet (chunks are refused)"
    line = (f"safety: {state}; {measured}; chunks accepted {status.chunks_accepted}, refused "
            f"{status.chunks_rejected}; steps clamped {status.steps_clamped}, dropped as stale "
            f"{status.steps_dropped_stale}")
    if status.error_code:
        line += f"; last intervention: {SAFETY_ERRORS.get(status.error_code, status.error_code)}: {status.error_msg}"
    return line


@dataclass
class KeyFrame:
    tag: str
    t: float
    files: dict[str, str] = field(default_factory=dict)  # kind ("raw"/"filtered") -> file name


class KeyFrameRecorder:
    """Keeps the latest raw and filtered image of one camera and saves them on demand."""

    def __init__(self, node: Node, camera: str, out_dir: Path, group: Any = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._latest: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.frames: list[KeyFrame] = []
        for kind, topic in (("raw", topics.camera_image(camera)), ("filtered", topics.filtered_image(camera))):
            node.create_subscription(
                _image_type(), topic, functools.partial(self._on_image, kind), IMAGE_QOS,
                callback_group=group)

    def _on_image(self, kind: str, msg: Any) -> None:
        try:
            rgb = to_rgb(msg)
        except ImageConversionError as exc:
            log.warning(f"key frames: ignoring a {kind} image: {exc}")
            return
        with self._lock:
            self._latest[kind] = rgb

    def snapshot(self, tag: str) -> KeyFrame:
        import cv2

        frame = KeyFrame(tag=tag, t=time.time())
        with self._lock:
            latest = dict(self._latest)
        for kind, rgb in latest.items():
            name = f"{len(self.frames):03d}_{kind}.jpg"
            cv2.imwrite(str(self.out_dir / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            frame.files[kind] = name
        self.frames.append(frame)
        return frame


def _image_type() -> type:
    from sensor_msgs.msg import Image

    return Image


class OperatorClient(Node):
    """Goal client and operator controls over the graph's interfaces."""

    def __init__(self, name: str = "hvla_operator", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self._group = ReentrantCallbackGroup()
        self._goal_client = RaceFreeActionClient(self, ExecuteGoal, topics.EXECUTE_GOAL_ACTION,
                                         callback_group=self._group)
        self._paused = self.create_client(SetPaused, topics.SET_PAUSED_SERVICE, callback_group=self._group)
        self._estop = self.create_client(SetEStop, topics.SET_ESTOP_SERVICE, callback_group=self._group)
        self._sim_reset = self.create_client(Trigger, topics.SIM_RESET_SERVICE, callback_group=self._group)
        self.plan: PlanState | None = None
        self._plan_listeners: list[Callable[[PlanState], None]] = []
        self.create_subscription(PlanState, topics.PLAN_STATE, self._on_plan, LATCHED_QOS,
                                 callback_group=self._group)
        self.safety: SafetyStatus | None = None  # published by the refiner every control period
        self.create_subscription(SafetyStatus, topics.SAFETY_STATUS, self._on_safety, STATE_QOS,
                                 callback_group=self._group)
        #: the simulator's ground-truth task success (latched; None without a simulator)
        self.sim_success: bool | None = None
        self.create_subscription(Bool, topics.SIM_SUCCESS, self._on_sim_success, LATCHED_QOS,
                                 callback_group=self._group)

    def _on_sim_success(self, msg: Bool) -> None:
        self.sim_success = bool(msg.data)

    def _on_safety(self, msg: SafetyStatus) -> None:
        self.safety = msg

    def _on_plan(self, msg: PlanState) -> None:
        self.plan = msg
        for listener in self._plan_listeners:
            listener(msg)

    def on_plan(self, listener: Callable[[PlanState], None]) -> None:
        self._plan_listeners.append(listener)

    def wait_for_planner(self, timeout: float) -> bool:
        return bool(self._goal_client.wait_for_server(timeout_sec=timeout))

    def send_goal(self, goal: str, episode_id: str = "",
                  feedback: Callable[[Any], None] | None = None) -> Any:
        """Send ExecuteGoal; returns the goal handle future."""
        request = ExecuteGoal.Goal(goal=goal, episode_id=episode_id)
        return self._goal_client.send_goal_async(
            request, feedback_callback=(lambda fb: feedback(fb.feedback)) if feedback else None)

    def set_paused(self, paused: bool) -> Any:
        return self._paused.call_async(SetPaused.Request(paused=paused))

    def set_estop(self, engage: bool, reason: str) -> Any:
        return self._estop.call_async(SetEStop.Request(engage=engage, reason=reason))

    def reset_sim(self) -> Any:
        """Reset the simulator to its task and seed (its clock runs on): returns the call's future."""
        return self._sim_reset.call_async(Trigger.Request())

    def service_ready(self, which: str) -> bool:
        clients = {"paused": self._paused, "estop": self._estop, "sim_reset": self._sim_reset}
        return bool(clients[which].service_is_ready())

    def wait_for_service(self, which: str, timeout: float) -> bool:
        """Poll until the ``which`` service (see :meth:`service_ready`) is up; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self.service_ready(which) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.service_ready(which)
