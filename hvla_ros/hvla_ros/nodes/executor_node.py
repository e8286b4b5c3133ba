"""executor_node: runs subtasks with the skill library and publishes anchor action chunks.

A lifecycle node over :mod:`hvla_ros.executor` (policies are loaded in ``on_configure`` and
freed in ``on_cleanup``; a missing or corrupt checkpoint or a policy that does not match its
skill entry makes configure FAIL with the path and the reason).

- action server ``executor/execute_subtask`` (hvla_interfaces/action/ExecuteSubtask): runs the
  subtask's skill with a receding horizon until the horizon (``Subtask.horizon``, or the
  skill's default when zero), cancel (no chunk is published after the cancel request) or
  preemption (a new goal aborts the running one with ``TERMINATION_PREEMPTED``). Feedback at
  every chunk boundary, and a status text while observations are stale. Never judges success.
- publishes hvla_interfaces/ActionChunk (origin ANCHOR) on ``executor/anchor_chunks``;
  ``header.stamp`` is the execution time of step 0, step k at ``stamp + k * step_period``.
- service ``executor/list_skills``.
- subscribes ``perception/<camera>/image_filtered`` for every camera the skills read, and
  ``joint_states``.

Example::

    executor_node --ros-args -p skills_file:=/path/to/skills.yaml -p max_observation_age_s:=0.3
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.task import Future
from sensor_msgs.msg import Image, JointState

from hvla_interfaces.action import ExecuteSubtask  # type: ignore[attr-defined]
from hvla_interfaces.msg import ActionChunk  # type: ignore[attr-defined]
from hvla_interfaces.srv import ListSkills  # type: ignore[attr-defined]
from hvla_ros import topics
from hvla_ros.executor.library import SkillConfigError, SkillLibrary, UnknownSkillError
from hvla_ros.executor.runner import (
    ObservationAssembler,
    ObservationBuffer,
    ObservationError,
    PlannedChunk,
    SkillRunner,
    StaleObservationError,
)
from hvla_ros.rosutil.images import ImageConversionError, to_rgb
from hvla_ros.rosutil.node_main import run_lifecycle_node
from hvla_ros.rosutil.params import ParamSpec, declare_params
from hvla_ros.rosutil.qos import COMMAND_QOS, IMAGE_QOS, STATE_QOS
from hvla_ros.rosutil.time import seconds, to_duration, to_time

Result = ExecuteSubtask.Result


def _params() -> list[ParamSpec]:
    return [
        ParamSpec("skills_file", "", "skill library YAML; empty = the package's config/skills.yaml",
                  read_only=True),
        ParamSpec("robot", "", "robot configuration; empty = the skill library's 'robot'",
                  check=lambda v: None if v in ("", "so101", "so101_bimanual")
                  else f"parameter 'robot' must be '', 'so101' or 'so101_bimanual', got {v!r}", read_only=True),
        ParamSpec("device", "cpu", "torch device for the policies (cpu, cuda, cuda:N)", read_only=True,
                  check=lambda v: None if v == "cpu" or str(v).startswith("cuda")
                  else f"parameter 'device' must be 'cpu' or 'cuda[:N]', got {v!r}"),
        ParamSpec("torch_threads", 1, "CPU threads for policy inference (more than 1 competes with the node's "
                  "own threads on small CPUs)", min=1, max=64, read_only=True),
        ParamSpec("max_observation_age_s", 0.5, "an observation older than this is stale: no new chunk",
                  min=0.01, max=60.0),
        ParamSpec("stale_abort_s", 5.0, "abort the subtask after observations stay stale this long",
                  min=0.1, max=600.0),
        ParamSpec("expected_latency_s", 0.1, "initial estimate of inference latency on the node's clock (the "
                  "simulator's with use_sim_time): the next chunk is predicted this long before the current one "
                  "runs out (then measured)", min=0.0, max=10.0),
        ParamSpec("latency_compensation", True, "chunks carry extra steps for the time from their observation "
                  "to execution (measured), so the arm executes n_action_steps fresh steps per chunk and keeps "
                  "moving while the next is computed; off: exactly n_action_steps per chunk"),
        ParamSpec("latency_margin_s", 0.06, "added to the measured observation-to-publication time: transport to "
                  "the controller and the refiner's latency budget", min=0.0, max=1.0),
        ParamSpec("autostart", True, "configure and activate at start (no lifecycle manager needed)",
                  read_only=True),
    ]


def chunk_message(chunk: PlannedChunk, gripper_joints: Sequence[str], *, episode_id: str = "",
                  subtask_id: int = 0) -> ActionChunk:
    """The ActionChunk (origin ANCHOR) for a planned chunk."""
    msg = ActionChunk()
    msg.header.stamp = to_time(chunk.start_time)
    msg.step_period = to_duration(chunk.step_period)
    msg.joint_names = list(chunk.joint_names)
    msg.num_steps = chunk.num_steps
    msg.positions = chunk.positions.astype(np.float64).ravel().tolist()
    # Diffusion skills output gripper positions, not open/close logits: the refiner derives the
    # anchor's gripper decision from the positions (logits and probabilities stay empty).
    msg.gripper_names = [j for j in chunk.joint_names if j in gripper_joints]
    msg.origin = ActionChunk.ORIGIN_ANCHOR
    msg.skill = chunk.skill
    msg.episode_id = episode_id
    msg.subtask_id = int(subtask_id)
    msg.chunk_index = chunk.index
    if chunk.context is not None:  # what the anchor conditioned on, for the refiner
        msg.context_tokens = int(chunk.context.shape[0])
        msg.context = np.asarray(chunk.context, dtype=np.float32).ravel().tolist()
    return msg


class ExecutorNode(LifecycleNode):
    """Thin ROS wrapper around :class:`SkillLibrary` and :class:`SkillRunner`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("executor", **kwargs)
        self.p = declare_params(self, _params())
        self._library: SkillLibrary | None = None
        self._active = False
        self._handles: list[Any] = []
        self._chunk_pub: Any = None
        self._buffer = ObservationBuffer(maxlen=16)
        self._observations = ObservationAssembler([], self._buffer)
        self._goal_lock = threading.Lock()
        self._current_goal: Any = None  # the goal handle allowed to run; others stop (preempted)
        self._policy_lock = threading.Lock()  # one inference at a time
        self._latency = float(self.p["expected_latency_s"])
        self._chunk_age: float | None = None  # observation stamp -> chunk published (s), smoothed
        # One thread runs every callback (main() spins single-threaded; ObservationAssembler relies
        # on it); only a subtask's loop has a thread of its own (_execute_in_thread).
        self._list_srv = self.create_service(ListSkills, topics.LIST_SKILLS_SERVICE, self._on_list_skills)
        self._action = ActionServer(
            self, ExecuteSubtask, topics.EXECUTE_SUBTASK_ACTION, execute_callback=self._execute_in_thread,
            goal_callback=self._on_goal, cancel_callback=lambda _h: CancelResponse.ACCEPT,
            handle_accepted_callback=self._on_accepted)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        import torch

        torch.set_num_threads(int(self.p["torch_threads"]))
        try:
            self._library = SkillLibrary.load(self.p["skills_file"] or None, device=self.p["device"],
                                              robot=self.p["robot"] or None)
        except SkillConfigError as exc:
            self.get_logger().error(f"cannot configure executor: {exc}")
            return TransitionCallbackReturn.FAILURE
        lib = self._library
        self._observations = ObservationAssembler(
            sorted({c for s in lib.skills.values() for c in s.spec.cameras}), self._buffer)
        self._chunk_pub = self.create_publisher(ActionChunk, topics.ANCHOR_CHUNKS, COMMAND_QOS)
        for cam in self._observations.cameras:
            self._handles.append(self.create_subscription(
                Image, topics.filtered_image(cam), functools.partial(self._on_image, cam), IMAGE_QOS))
        self._handles.append(self.create_subscription(JointState, topics.JOINT_STATES, self._on_joints, STATE_QOS))
        self.get_logger().info(f"configured: skills {lib.names()} from {lib.source}, "
                               f"cameras {self._observations.cameras}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        with self._goal_lock:
            self._current_goal = None  # a running subtask stops at its next check
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        for h in self._handles:
            self.destroy_subscription(h)
        self._handles.clear()
        if self._chunk_pub is not None:
            self.destroy_publisher(self._chunk_pub)
            self._chunk_pub = None
        self._library = None
        self._observations.clear()
        self._buffer.clear()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        with self._goal_lock:
            self._current_goal = None
        return TransitionCallbackReturn.SUCCESS

    def now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ inputs
    def _stamp_of(self, header: Any) -> float:
        t = seconds(header.stamp)
        return t if t > 0 else self.now_s()

    def _on_image(self, cam: str, msg: Image) -> None:
        try:
            rgb = to_rgb(msg)
        except ImageConversionError as exc:
            self.get_logger().error(f"dropping filtered image from {cam!r}: {exc}",
                                    throttle_duration_sec=5.0)
            return
        self._observations.add_image(cam, self._stamp_of(msg.header), rgb)

    def _on_joints(self, msg: JointState) -> None:
        if len(msg.position) != len(msg.name):
            self.get_logger().error(f"dropping joint_states: {len(msg.name)} names but {len(msg.position)} "
                                    "positions", throttle_duration_sec=5.0)
            return
        pos = {n: float(p) for n, p in zip(msg.name, msg.position, strict=True)}
        if not all(math.isfinite(v) for v in pos.values()):
            self.get_logger().error("dropping joint_states with non-finite positions", throttle_duration_sec=5.0)
            return
        self._observations.add_joints(self._stamp_of(msg.header), pos)

    def _on_list_skills(self, req: ListSkills.Request, res: ListSkills.Response) -> ListSkills.Response:
        lib = self._library
        if lib is None:
            res.error_code = ListSkills.Response.ERROR_NOT_CONFIGURED
            res.error_msg = "executor is not configured"
            return res
        for name in lib.names():
            spec = lib.get(name).spec
            res.names.append(name)
            res.descriptions.append(spec.description)
            res.cameras.append(",".join(spec.cameras))
        return res

    # ------------------------------------------------------------------ action
    def _on_goal(self, goal: ExecuteSubtask.Goal) -> GoalResponse:
        return GoalResponse.ACCEPT  # problems are reported in the result, with a reason

    def _on_accepted(self, handle: Any) -> None:
        with self._goal_lock:
            self._current_goal = handle  # a running goal sees this and stops (preempted)
        handle.execute()

    def _finish(self, handle: Any, sent: tuple[int, int] | None, t0: float, termination: int,
                error_code: int = Result.ERROR_NONE, error_msg: str = "") -> ExecuteSubtask.Result:
        """End the goal; ``sent``: (chunks, steps) published for it (None: it never started running).

        A chunk computed but not published (the goal canceled during its inference) is not counted."""
        res = Result(error_code=error_code, error_msg=error_msg, termination=termination)
        if sent is not None:
            res.chunks_executed, res.steps_executed = sent
        res.elapsed = to_duration(time.monotonic() - t0)
        with self._goal_lock:
            if self._current_goal is handle:
                self._current_goal = None
        if termination == Result.TERMINATION_CANCELED:
            handle.canceled()
        elif termination in (Result.TERMINATION_HORIZON, Result.TERMINATION_SKILL_DONE):
            handle.succeed()
        else:
            handle.abort()
        text = (f"subtask {handle.request.subtask.skill!r} ended: termination {termination}"
                + (f", error {error_code}: {error_msg}" if error_code else "")
                + (f", {sent[0]} chunks / {sent[1]} steps" if sent is not None else ""))
        # (rclpy ties a severity to each call site: separate calls for info and warning)
        if error_code:
            self.get_logger().warning(text)
        else:
            self.get_logger().info(text)
        return res

    def _stop_reason(self, handle: Any) -> int | None:
        if handle.is_cancel_requested:
            return Result.TERMINATION_CANCELED
        with self._goal_lock:
            if self._current_goal is not handle:
                return Result.TERMINATION_PREEMPTED
        return None

    async def _execute_in_thread(self, handle: Any) -> ExecuteSubtask.Result:
        """Run :meth:`_execute` (it blocks for the whole subtask) in a thread of its own.

        The node spins a single-threaded executor: observations, cancels and new goals keep
        being handled while a subtask runs, and the executor sleeps between messages (rclpy's
        multi-threaded executor polled at ~100% of a core with ``joint_states`` at 120 Hz).
        """
        done: Future = Future()

        def work() -> None:
            try:
                done.set_result(self._execute(handle))
            except BaseException as exc:  # handed to the action server's task, which logs it
                done.set_exception(exc)
            finally:
                executor = self.executor
                if executor is not None:
                    executor.wake()  # resume the awaiting task now, not at the next message

        threading.Thread(target=work, name=f"subtask-{handle.request.subtask.skill}", daemon=True).start()
        return await done

    def _execute(self, handle: Any) -> ExecuteSubtask.Result:
        t0 = time.monotonic()
        sub = handle.request.subtask
        lib = self._library
        if lib is None or not self._active:
            return self._finish(handle, None, t0, Result.TERMINATION_ERROR, Result.ERROR_NOT_CONFIGURED,
                                "executor is not active (configure and activate it first)")
        try:
            skill = lib.get(sub.skill)
        except UnknownSkillError as exc:
            return self._finish(handle, None, t0, Result.TERMINATION_ERROR, Result.ERROR_UNKNOWN_SKILL, str(exc))
        horizon = seconds(sub.horizon)
        if not math.isfinite(horizon) or horizon < 0:
            return self._finish(handle, None, t0, Result.TERMINATION_ERROR, Result.ERROR_BAD_SUBTASK,
                                f"subtask horizon must be >= 0 s, got {horizon}")
        runner = SkillRunner(skill, sub.instruction, horizon or None,
                             max_obs_age_s=float(self.p["max_observation_age_s"]))
        grippers = lib.robot.gripper_joints
        sent = (0, 0)  # chunks and steps published for this goal
        stale_since: float | None = None
        started = self.now_s()
        grace_s = max(2.0, runner.step_period * skill.spec.n_action_steps)
        while not runner.done:
            reason = self._stop_reason(handle)
            if reason is not None:
                return self._finish(handle, sent, t0, reason)
            now = self.now_s()
            if now - started >= runner.horizon_s + grace_s:
                # The horizon is a time budget as well as a step budget: a policy slower than
                # real time must not keep the subtask running far past it, or the planner counts
                # the executor as silent (after its margin, 5 s by default). The grace keeps the
                # step budget exact for policies that merely start slowly.
                break
            if not self._chunk_due(runner, now):
                time.sleep(0.005)
                continue
            history = self._buffer.history(runner.n_obs_steps, runner.step_period)
            try:
                with self._policy_lock:
                    if self._stop_reason(handle) is not None:
                        continue
                    t_inf, t_clock = time.monotonic(), self.now_s()
                    latency = 0.0
                    if self.p["latency_compensation"]:
                        age = self._chunk_age if self._chunk_age is not None else self._latency
                        latency = age + float(self.p["latency_margin_s"])
                    chunk = runner.next_chunk(history, t_clock, latency_s=latency)
                    dt = time.monotonic() - t_inf
                    # The schedule runs on the node's clock (the simulator's with use_sim_time, at
                    # half real time in the embedded demo): so does the latency it plans with.
                    dt_clock = max(0.0, self.now_s() - t_clock)
            except StaleObservationError as exc:
                stale_since = stale_since or time.monotonic()
                fb = ExecuteSubtask.Feedback(chunk_index=runner.chunks_planned, steps_executed=runner.steps_planned,
                                             progress=runner.progress, status_text=str(exc))
                handle.publish_feedback(fb)
                self.get_logger().warning(f"{sub.skill}: {exc}", throttle_duration_sec=2.0)
                if time.monotonic() - stale_since > float(self.p["stale_abort_s"]):
                    return self._finish(handle, sent, t0, Result.TERMINATION_ERROR,
                                        Result.ERROR_STALE_OBSERVATION, str(exc))
                time.sleep(0.02)
                continue
            except (ObservationError, FloatingPointError, RuntimeError, ValueError) as exc:
                return self._finish(handle, sent, t0, Result.TERMINATION_ERROR, Result.ERROR_POLICY_FAILED,
                                    f"{type(exc).__name__}: {exc}")
            stale_since = None
            self._latency = 0.8 * self._latency + 0.2 * dt_clock if runner.chunks_planned > 1 else dt_clock
            reason = self._stop_reason(handle)
            if reason is not None:  # canceled or preempted during inference: publish nothing
                return self._finish(handle, sent, t0, reason)
            self._chunk_pub.publish(chunk_message(chunk, grippers, episode_id=sub.episode_id,
                                                  subtask_id=sub.subtask_id))
            sent = (sent[0] + 1, runner.steps_planned)
            age = max(0.0, self.now_s() - chunk.start_time)
            self._chunk_age = age if self._chunk_age is None else 0.7 * self._chunk_age + 0.3 * age
            handle.publish_feedback(ExecuteSubtask.Feedback(
                chunk_index=chunk.index, steps_executed=runner.steps_planned, progress=runner.progress,
                status_text=f"chunk {chunk.index}: {chunk.num_steps} steps, inference {dt * 1e3:.0f} ms"))
        # Let the last chunk play out before reporting the horizon reached.
        end = runner.last_chunk.end_time if runner.last_chunk else self.now_s()
        while self.now_s() < end:
            reason = self._stop_reason(handle)
            if reason is not None:
                return self._finish(handle, sent, t0, reason)
            time.sleep(min(0.01, max(0.0, end - self.now_s())))
        return self._finish(handle, sent, t0, Result.TERMINATION_SKILL_DONE if runner.motion_complete
                            else Result.TERMINATION_HORIZON)

    def _chunk_due(self, runner: SkillRunner, now: float) -> bool:
        """Predict the next chunk now? With latency compensation: once the observation stamped
        n_action_steps after the last chunk's is in (observations that far apart, as in training:
        the arm executes n_action_steps of each chunk, whatever inference takes), or when the
        current chunk would run out before the next is computed (the expected inference latency,
        on this node's clock, before its end). Without: only the latter."""
        if now >= runner.next_due(self._latency):
            return True
        if not self.p["latency_compensation"]:
            return False
        newest = self._buffer.latest()
        return newest is not None and newest.stamp >= runner.next_observation_due() - 0.5 * runner.step_period

    def destroy_node(self) -> None:
        self._action.destroy()
        super().destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    return run_lifecycle_node(ExecutorNode, args, executor_kind="single_threaded")


if __name__ == "__main__":
    raise SystemExit(main())
