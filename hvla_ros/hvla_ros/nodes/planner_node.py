"""planner_node: the Goal2Skill planner (plan, verify, reflect, recover) as a lifecycle node.

A thin ROS layer over :mod:`hvla_ros.planner` (the reasoner is built in ``on_configure``; a bad
backend setting or a model that cannot load makes configure FAIL with the reason).

- action server ``planner/execute_goal`` (hvla_interfaces/action/ExecuteGoal): one episode at a
  time; feedback carries the plan, the current subtask and the attempt; cancel stops the
  executor (its ExecuteSubtask goal is canceled, so no further chunk is sent and the safety layer
  holds the arm) and ends the goal with ERROR_CANCELED. ``episode_id`` of an earlier, unfinished
  episode resumes it from its log in ``log_dir``.
- action client ``executor/execute_subtask``, service client ``executor/list_skills`` (plans may
  only use the skills the executor declares). An executor silent past the subtask's horizon +
  ``executor_margin_s`` is canceled and the attempt takes the timeout path.
- publishes the current hvla_interfaces/Subtask on ``planner/subtask`` (for perception) and
  PlanState / MemoryState on ``planner/plan`` / ``planner/memory``, all latched.
- service ``planner/set_paused``: pauses before the next subtask is issued.
- subscribes ``cameras/<camera>/image_raw`` for ``cameras`` (verification images).

Example::

    planner_node --ros-args -p backend:=openai -p base_url:=http://127.0.0.1:8000/v1 -p model:=qwen2-vl
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from diagnostic_msgs.msg import KeyValue
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image

from hvla_interfaces.action import ExecuteGoal, ExecuteSubtask  # type: ignore[attr-defined]
from hvla_interfaces.msg import (  # type: ignore[attr-defined]
    Condition,
    ErrorEntry,
    MemoryEntry,
    MemoryState,
    PixelBox,
    PlanState,
    Predicate,
    SubtaskOutcome,
)
from hvla_interfaces.msg import Subtask as SubtaskMsg  # type: ignore[attr-defined]
from hvla_interfaces.srv import ListSkills, SetPaused  # type: ignore[attr-defined]
from hvla_ros import topics
from hvla_ros.planner import plan as P
from hvla_ros.planner.episode import EpisodeRunner, EpisodeStatus, Executor, ExecutorUnavailable, PlannerConfig
from hvla_ros.planner.factory import BACKENDS, ReasonerSettings, make_reasoner
from hvla_ros.planner.memory import MemoryConfig, MemoryView
from hvla_ros.planner.reasoner import ExecutionReport, Images, Reasoner, ReasonerError, StopCheck
from hvla_ros.rosutil.action import RaceFreeActionClient
from hvla_ros.rosutil.images import ImageConversionError, to_rgb
from hvla_ros.rosutil.node_main import run_lifecycle_node
from hvla_ros.rosutil.params import ParamSpec, declare_params
from hvla_ros.rosutil.qos import IMAGE_QOS, LATCHED_QOS
from hvla_ros.rosutil.time import to_duration

GoalResult = ExecuteGoal.Result
SubResult = ExecuteSubtask.Result
ARM_CODES = {"single": SubtaskMsg.ARM_SINGLE, "left": SubtaskMsg.ARM_LEFT, "right": SubtaskMsg.ARM_RIGHT,
             "both": SubtaskMsg.ARM_BOTH}
TERMINATIONS = {SubResult.TERMINATION_HORIZON: "horizon", SubResult.TERMINATION_SKILL_DONE: "skill_done",
                SubResult.TERMINATION_CANCELED: "canceled", SubResult.TERMINATION_PREEMPTED: "preempted",
                SubResult.TERMINATION_ERROR: "error"}
STATES = {"idle": PlanState.STATE_IDLE, "planning": PlanState.STATE_PLANNING,
          "executing": PlanState.STATE_EXECUTING, "verifying": PlanState.STATE_VERIFYING,
          "reflecting": PlanState.STATE_REFLECTING, "paused": PlanState.STATE_PAUSED,
          "succeeded": PlanState.STATE_SUCCEEDED, "failed": PlanState.STATE_FAILED,
          "canceled": PlanState.STATE_CANCELED}
STATUS = {"success": SubtaskOutcome.STATUS_SUCCESS, "fail": SubtaskOutcome.STATUS_FAIL,
          "timeout": SubtaskOutcome.STATUS_TIMEOUT}
RECOVERY = {"none": SubtaskOutcome.RECOVERY_NONE, "retry": SubtaskOutcome.RECOVERY_RETRY,
            "adjust_param": SubtaskOutcome.RECOVERY_ADJUST_PARAM, "replan": SubtaskOutcome.RECOVERY_REPLAN}
OUTCOME_ERRORS = {"none": 0, "postcondition_unmet": 1, "horizon_reached": 2, "executor_failed": 3,
                  "executor_silent": 4, "reasoner_failed": 5, "canceled": 6}
GOAL_ERRORS = {"none": 0, "invalid_goal": 1, "planning_failed": 2, "subtask_failed": 3, "canceled": 4,
               "executor_unavailable": 5, "reasoner_failed": 6, "internal": 7}
MAX_GOAL_CHARS = 1000


def _params() -> list[ParamSpec]:
    return [
        ParamSpec("backend", "rule", "reasoner backend", choices=BACKENDS, read_only=True),
        ParamSpec("templates", "", "rule backend: goal templates YAML; empty = the package's", read_only=True),
        ParamSpec("model", "", "transformers: model directory or hub id; openai: served model name", read_only=True),
        ParamSpec("base_url", "http://127.0.0.1:8000/v1", "openai backend: server URL", read_only=True),
        ParamSpec("api_key_env", "OPENAI_API_KEY", "openai backend: environment variable holding the API key",
                  read_only=True),
        ParamSpec("request_timeout_s", 60.0, "openai backend: timeout of one request", min=0.1, max=3600.0,
                  read_only=True),
        ParamSpec("retries", 3, "openai backend: retries with backoff", min=0, max=20, read_only=True),
        ParamSpec("max_reasks", 2, "VLM backends: re-asks after an invalid reply", min=0, max=10, read_only=True),
        ParamSpec("max_new_tokens", 512, "VLM backends: reply length limit", min=16, max=8192, read_only=True),
        ParamSpec("device", "auto", "transformers backend: auto, cpu, cuda[:N]", read_only=True),
        ParamSpec("dtype", "auto", "transformers backend dtype", choices=("auto", "bfloat16", "float16", "float32"),
                  read_only=True),
        ParamSpec("log_dir", "episodes", "directory of the episode logs (JSON lines)", read_only=True),
        ParamSpec("cameras", ["front"], "cameras whose raw images the verifier reads", read_only=True,
                  check=lambda v: None if v and all(isinstance(c, str) and c for c in v)
                  else f"parameter 'cameras' must be a non-empty list of names, got {v!r}"),
        ParamSpec("max_attempts", 3, "N_max: attempts of a subtask before replanning", min=1, max=20),
        ParamSpec("max_replans", 3, "replans before the goal fails", min=0, max=50),
        ParamSpec("n_history", 50, "N_h: history entries kept verbatim", min=1, max=10000),
        ParamSpec("use_history", True, "ablation switch: episodic history H"),
        ParamSpec("use_working_memory", True, "ablation switch: working memory W"),
        ParamSpec("use_error_register", True, "ablation switch: error register E"),
        ParamSpec("use_verifier", True, "ablation switch: verifier (off: termination counts as success)"),
        ParamSpec("use_reflection", True, "ablation switch: reflection (off: plain retry)"),
        ParamSpec("home_before_retry", list(PlannerConfig.home_before_retry),
                  "skills re-tried from the home pose: after a failed attempt the executor's home skill runs first "
                  "(empty list: never)",
                  check=lambda v: None if all(isinstance(c, str) and c for c in v)
                  else f"parameter 'home_before_retry' must be a list of skill names, got {v!r}"),
        ParamSpec("home_skill", PlannerConfig.home_skill, "the executor's skill that returns the arm home"),
        ParamSpec("settle_s", 1.0, "seconds (ROS time) after an attempt that a success must still hold: the "
                  "verifier looks again then (0: only at the attempt's end)", min=0.0, max=60.0),
        ParamSpec("executor_margin_s", 5.0, "grace after a subtask's horizon before the executor counts as silent",
                  min=0.0, max=600.0),
        ParamSpec("executor_wait_s", 10.0, "how long to wait for the executor's servers", min=0.1, max=600.0),
        ParamSpec("image_wait_s", 10.0, "how long to wait for the first camera images", min=0.1, max=600.0),
        ParamSpec("frame_hz", 10.0, "rate at which frames are kept during a subtask (cue observation)",
                  min=0.1, max=100.0),
        ParamSpec("autostart", True, "configure and activate at start (no lifecycle manager needed)",
                  read_only=True),
    ]


def _condition(c: P.Condition) -> Condition:
    return Condition(text=c.text, predicates=[Predicate(name=p.name, args=list(p.args), negated=p.negated)
                                              for p in c.predicates])


def subtask_msg(s: P.Subtask, episode_id: str, k: int, attempt: int) -> SubtaskMsg:
    """The hvla_interfaces Subtask of a planned subtask."""
    return SubtaskMsg(
        episode_id=episode_id, subtask_id=k, attempt=attempt, instruction=s.instruction,
        precondition=_condition(s.pre), postcondition=_condition(s.post), horizon=to_duration(s.horizon_s),
        distractor_boxes=[PixelBox(camera=b.camera, label=b.label, x_min=b.x_min, y_min=b.y_min, x_max=b.x_max,
                                   y_max=b.y_max) for b in s.boxes],
        skill=s.skill, arm=ARM_CODES[s.arm], parameters=[KeyValue(key=k_, value=v) for k_, v in s.parameters])


def plan_state_msg(st: EpisodeStatus, stamp: Any) -> PlanState:
    msg = PlanState(episode_id=st.episode_id, goal=st.goal, state=STATES.get(st.state, 0),
                    current_index=st.current_index, attempt=st.attempt, replans=st.replans)
    msg.header.stamp = stamp
    if st.plan is not None:
        msg.subtasks = [subtask_msg(s, st.episode_id, i, 0) for i, s in enumerate(st.plan.subtasks)]
    msg.outcomes = [SubtaskOutcome(subtask_id=o.subtask_id, attempt=o.attempt, status=STATUS[o.status],
                                   error_code=OUTCOME_ERRORS.get(o.error, 0), error_msg=o.reason,
                                   diagnosis=o.diagnosis, recovery=RECOVERY[o.recovery])
                    for _, o in sorted(st.outcomes.items())]
    return msg


def memory_state_msg(episode_id: str, m: MemoryView, stamp: Any) -> MemoryState:
    msg = MemoryState(episode_id=episode_id, working_memory=m.working_memory)
    msg.header.stamp = stamp
    msg.history = [MemoryEntry(subtask_id=h.subtask_id, attempt=h.attempt, instruction=h.instruction,
                               status=STATUS[h.status], summary=h.summary) for h in m.history]
    msg.errors = [ErrorEntry(subtask_id=e.subtask_id, attempt=e.attempt, diagnosis=e.diagnosis,
                             recovery=RECOVERY[e.recovery],
                             adjusted_parameters=[KeyValue(key=k, value=v) for k, v in e.adjusted.items()])
                  for e in m.errors]
    return msg


class RosExecutor(Executor):
    """The planner core's executor interface over ExecuteSubtask / ListSkills and camera topics."""

    def __init__(self, node: PlannerNode, episode_id: str) -> None:
        self.node = node
        self.episode_id = episode_id
        self.canceled = threading.Event()
        # Frames are kept from the goal's arrival: a cue that shows while the planner is still
        # planning (button_sequence's first flash) belongs to the first subtask's frames.
        self._first = True
        node.start_frames()

    def skills(self) -> Mapping[str, str]:
        node, wait = self.node, float(self.node.p["executor_wait_s"])
        if not node.skills_client.wait_for_service(timeout_sec=wait):
            raise ExecutorUnavailable(f"no executor answers on {topics.LIST_SKILLS_SERVICE} within {wait:g} s")
        resp = node.wait_future(node.skills_client.call_async(ListSkills.Request()), wait)
        if resp is None:
            raise ExecutorUnavailable(f"{topics.LIST_SKILLS_SERVICE} did not answer within {wait:g} s")
        if resp.error_code != ListSkills.Response.ERROR_NONE:
            raise ExecutorUnavailable(f"the executor cannot list skills: {resp.error_msg}")
        return dict(zip(resp.names, resp.descriptions or [""] * len(resp.names), strict=False))

    def observe(self) -> Images:
        wait = float(self.node.p["image_wait_s"])
        deadline = time.monotonic() + wait
        while True:
            images = self.node.latest_images()
            missing = [c for c in self.node.cameras if c not in images]
            if not missing:
                return images
            if time.monotonic() > deadline or self.canceled.is_set():
                raise ExecutorUnavailable(f"no image on {[topics.camera_image(c) for c in missing]} within {wait:g} s")
            time.sleep(0.02)  # a worker thread of the episode, not a callback

    def settle(self, seconds: float) -> Images:
        """Wait ``seconds`` of ROS time (simulated time under use_sim_time; the refiner holds the
        arm meanwhile), with a wall-clock backstop if time stalls, then the latest images."""
        node = self.node
        t0, wall0 = node.get_clock().now().nanoseconds, time.monotonic()
        while (node.get_clock().now().nanoseconds - t0) * 1e-9 < seconds:
            if self.canceled.is_set() or time.monotonic() - wall0 > 3 * seconds + 10.0:
                break
            time.sleep(0.01)  # a worker thread of the episode, not a callback
        return self.observe()

    def execute(self, subtask: P.Subtask, subtask_id: int, attempt: int, until: StopCheck | None = None
                ) -> ExecutionReport:
        node = self.node
        msg = subtask_msg(subtask, self.episode_id, subtask_id, attempt)
        msg.header.stamp = node.get_clock().now().to_msg()
        node.publish_subtask(msg)
        wait = float(node.p["executor_wait_s"])
        if not node.subtask_client.wait_for_server(timeout_sec=wait):
            raise ExecutorUnavailable(f"no executor action server on {topics.EXECUTE_SUBTASK_ACTION}")
        if not self._first:
            node.start_frames()
        self._first = False
        t0 = time.monotonic()
        try:
            handle = node.wait_future(node.subtask_client.send_goal_async(ExecuteSubtask.Goal(subtask=msg)), wait)
            if handle is None or not handle.accepted:
                return ExecutionReport("error", error="the executor rejected the subtask", images=node.latest_images())
            node.set_subtask_handle(handle)
            result_future = handle.get_result_async()
            # Horizon + margin in ROS time (sim time when use_sim_time is set: a sim slower than real
            # time is not mistaken for a silent executor), with a wall-clock backstop if time stalls.
            limit = subtask.horizon_s + float(node.p["executor_margin_s"])
            ros_t0 = node.get_clock().now().nanoseconds
            check_every, last_check = 1.0 / float(node.p["frame_hz"]), 0.0
            while not result_future.done():
                if self.canceled.is_set():
                    node.wait_future(handle.cancel_goal_async(), 2.0)
                    return ExecutionReport("canceled", error="goal canceled", images=node.latest_images())
                if until is not None and time.monotonic() - last_check >= check_every:
                    last_check = time.monotonic()
                    if until(node.latest_images()):
                        # The post-condition holds: stop the skill (no further chunks) and report it.
                        node.wait_future(handle.cancel_goal_async(), 2.0)
                        done = node.wait_future(result_future, 2.0)
                        steps = int(done.result.steps_executed) if done is not None else 0
                        return ExecutionReport("post_condition", steps, time.monotonic() - t0,
                                               images=node.latest_images(), frames=node.stop_frames())
                ros_elapsed = (node.get_clock().now().nanoseconds - ros_t0) * 1e-9
                if ros_elapsed > limit or time.monotonic() - t0 > 3 * limit + 30.0:
                    node.wait_future(handle.cancel_goal_async(), 2.0)
                    return ExecutionReport("silent", steps=0, elapsed_s=time.monotonic() - t0,
                                           error=f"no result within horizon + margin ({limit:g} s)",
                                           images=node.latest_images(), frames=node.stop_frames())
                time.sleep(0.01)
            res = result_future.result().result
        finally:
            node.set_subtask_handle(None)
        return ExecutionReport(TERMINATIONS.get(res.termination, "error"), int(res.steps_executed),
                               time.monotonic() - t0, res.error_msg, images=node.latest_images(),
                               frames=node.stop_frames())


class PlannerNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__("planner")
        self.p = declare_params(self, _params())
        self.cameras: list[str] = list(self.p["cameras"])
        self.reasoner: Reasoner | None = None
        self._images: dict[str, np.ndarray] = {}
        self._images_lock = threading.Lock()
        self._frames: deque[dict[str, np.ndarray]] | None = None
        self._last_frame = 0.0
        self._runner: EpisodeRunner | None = None
        self._ros_executor: RosExecutor | None = None
        self._subtask_handle: Any = None
        self._busy = threading.Lock()
        self._active = False
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        self._cb = ReentrantCallbackGroup()
        self.subtask_client = RaceFreeActionClient(self, ExecuteSubtask, topics.EXECUTE_SUBTASK_ACTION,
                                                   callback_group=self._cb)
        self.skills_client = self.create_client(ListSkills, topics.LIST_SKILLS_SERVICE, callback_group=self._cb)
        self._pause_srv = self.create_service(SetPaused, topics.SET_PAUSED_SERVICE, self._on_set_paused,
                                              callback_group=self._cb)
        self._goal_server = ActionServer(
            self, ExecuteGoal, topics.EXECUTE_GOAL_ACTION, execute_callback=self._execute,
            goal_callback=self._on_goal, cancel_callback=self._on_cancel, callback_group=self._cb)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.p
        try:
            settings = ReasonerSettings(
                backend=p["backend"], templates=p["templates"], model=p["model"], base_url=p["base_url"],
                api_key_env=p["api_key_env"], timeout_s=p["request_timeout_s"], retries=p["retries"],
                max_reasks=p["max_reasks"], max_new_tokens=p["max_new_tokens"], device=p["device"], dtype=p["dtype"])
            self.reasoner = make_reasoner(settings)
        except (ValueError, ReasonerError, OSError) as e:
            self.get_logger().error(f"cannot configure the planner: {e}")
            return TransitionCallbackReturn.FAILURE
        self._pubs = {
            "subtask": self.create_publisher(SubtaskMsg, topics.CURRENT_SUBTASK, LATCHED_QOS),
            "plan": self.create_publisher(PlanState, topics.PLAN_STATE, LATCHED_QOS),
            "memory": self.create_publisher(MemoryState, topics.MEMORY_STATE, LATCHED_QOS),
        }
        for cam in self.cameras:
            self._subs.append(self.create_subscription(Image, topics.camera_image(cam),
                                                       functools.partial(self._on_image, cam), IMAGE_QOS,
                                                       callback_group=self._cb))
        self._pubs["plan"].publish(PlanState(state=PlanState.STATE_IDLE, current_index=-1))
        self.get_logger().info(f"configured: {self.reasoner.name} reasoner, cameras {self.cameras}, "
                               f"logs in {p['log_dir']!r}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._cancel_episode()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cancel_episode()
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs.clear()
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs.clear()
        if self.reasoner is not None:
            self.reasoner.close()
            self.reasoner = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._cancel_episode()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ helpers for RosExecutor
    def wait_future(self, future: Any, timeout: float) -> Any:
        """The future's result, waiting in this (worker) thread; None on timeout."""
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            return None
        return future.result()

    def latest_images(self) -> dict[str, np.ndarray]:
        with self._images_lock:
            return dict(self._images)

    def start_frames(self) -> None:
        with self._images_lock:
            self._frames = deque(maxlen=128)  # 12.8 s at 10 Hz

    def stop_frames(self) -> list[dict[str, np.ndarray]]:
        with self._images_lock:
            frames, self._frames = list(self._frames or ()), None
        return frames

    def set_subtask_handle(self, handle: Any) -> None:
        self._subtask_handle = handle

    def publish_subtask(self, msg: SubtaskMsg) -> None:
        if "subtask" in self._pubs:
            self._pubs["subtask"].publish(msg)

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            rgb = np.array(to_rgb(msg), copy=True)
        except ImageConversionError as e:
            self.get_logger().error(f"bad image on {topics.camera_image(camera)}: {e}", throttle_duration_sec=5.0)
            return
        now = time.monotonic()
        with self._images_lock:
            self._images[camera] = rgb
            if self._frames is not None and now - self._last_frame >= 1.0 / float(self.p["frame_hz"]):
                self._frames.append(dict(self._images))
                self._last_frame = now

    def _on_set_paused(self, request: SetPaused.Request, response: SetPaused.Response) -> SetPaused.Response:
        runner = self._runner
        if runner is None:
            response.error_code = SetPaused.Response.ERROR_NO_EPISODE
            response.error_msg = "no episode is running"
            response.paused = False
            return response
        runner.pause() if request.paused else runner.resume()
        response.paused = runner.paused
        self.get_logger().info("episode paused" if runner.paused else "episode resumed")
        return response

    def _on_goal(self, request: ExecuteGoal.Goal) -> GoalResponse:
        if not self._active or self.reasoner is None:
            self.get_logger().warning("goal rejected: the planner is not active")
            return GoalResponse.REJECT
        if self._busy.locked():
            self.get_logger().warning("goal rejected: an episode is already running")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_cancel(self, _handle: Any) -> CancelResponse:
        self._cancel_episode()
        return CancelResponse.ACCEPT

    def _cancel_episode(self) -> None:
        if self._ros_executor is not None:
            self._ros_executor.canceled.set()
        if self._runner is not None:
            self._runner.cancel()
        handle = self._subtask_handle
        if handle is not None:
            handle.cancel_goal_async()

    def _execute(self, handle: Any) -> ExecuteGoal.Result:
        goal = handle.request.goal.strip()
        result = GoalResult()
        if not goal or len(goal) > MAX_GOAL_CHARS or not goal.isprintable():
            result.error_code = GoalResult.ERROR_INVALID_GOAL
            result.error_msg = f"the goal must be 1..{MAX_GOAL_CHARS} printable characters, got {goal[:80]!r}"
            handle.abort()
            return result
        assert self.reasoner is not None
        with self._busy:
            p = self.p
            config = PlannerConfig(
                max_attempts=p["max_attempts"], max_replans=p["max_replans"], use_verifier=p["use_verifier"],
                use_reflection=p["use_reflection"],
                home_before_retry=tuple(p["home_before_retry"]), home_skill=p["home_skill"], settle_s=p["settle_s"],
                memory=MemoryConfig(n_history=p["n_history"], use_history=p["use_history"],
                                    use_working_memory=p["use_working_memory"],
                                    use_error_register=p["use_error_register"]))
            ros_exec = RosExecutor(self, handle.request.episode_id)
            runner = EpisodeRunner(self.reasoner, ros_exec, p["log_dir"], config,
                                   on_update=functools.partial(self._on_update, handle, ros_exec))
            self._runner, self._ros_executor = runner, ros_exec
            try:
                episode_id = handle.request.episode_id
                try:
                    from hvla_ros.planner.episode_log import check_episode_id, new_episode_id

                    episode_id = check_episode_id(episode_id) if episode_id else new_episode_id()
                except ValueError as e:
                    result.error_code, result.error_msg = GoalResult.ERROR_INVALID_GOAL, str(e)
                    handle.abort()
                    return result
                ros_exec.episode_id = episode_id
                res = runner.run(goal, episode_id)
            except Exception as e:  # the goal must always get a result
                self.get_logger().error(f"episode failed with an internal error: {e!r}")
                result.error_code, result.error_msg = GoalResult.ERROR_INTERNAL, repr(e)
                handle.abort()
                return result
            finally:
                self._runner, self._ros_executor = None, None
        result.success = res.success
        result.error_code = GOAL_ERRORS.get(res.error_code, GoalResult.ERROR_INTERNAL)
        result.error_msg = res.error_msg
        result.episode_id = res.episode_id
        result.subtasks_succeeded = res.subtasks_succeeded
        result.subtasks_total = res.subtasks_total
        result.replans = res.replans
        result.log_path = res.log_path
        if res.error_code == "canceled" and handle.is_cancel_requested:
            handle.canceled()
        elif res.success:
            handle.succeed()
        else:
            handle.abort()
        self.get_logger().info(f"episode {res.episode_id}: {res.error_code} {res.error_msg}".strip())
        return result

    def _on_update(self, handle: Any, ros_exec: RosExecutor, st: EpisodeStatus) -> None:
        ros_exec.episode_id = st.episode_id
        stamp = self.get_clock().now().to_msg()
        plan = plan_state_msg(st, stamp)
        if "plan" in self._pubs:
            self._pubs["plan"].publish(plan)
        if st.memory is not None and "memory" in self._pubs:
            self._pubs["memory"].publish(memory_state_msg(st.episode_id, st.memory, stamp))
        current = st.current.instruction if st.current is not None else ""
        handle.publish_feedback(ExecuteGoal.Feedback(
            plan=plan, status_text=f"{st.state}: subtask {st.current_index} attempt {st.attempt} {current}".strip()))

    def destroy_node(self) -> None:
        self._cancel_episode()
        self._goal_server.destroy()
        self.subtask_client.destroy()
        super().destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    return run_lifecycle_node(PlannerNode, args, threads=6)


if __name__ == "__main__":
    raise SystemExit(main())
