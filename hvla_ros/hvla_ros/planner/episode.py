"""The episode loop of Goal2Skill's Algorithm 1, independent of ROS.

    P <- plan(g, o_0, M)
    for each τ_k in P:
        n_k <- 0
        repeat:
            execute τ_k until termination (horizon δ_k or the skill's stop)
            c_k <- verify(o, post_k, W)                       success | fail | timeout
            H += (τ_k, c_k);  W <- Φ_mem(W, o, τ_k, c_k)
            if c_k = success: next k
            (d_k, ρ_k) <- reflect(...);  E += (τ_k, d_k, ρ_k);  n_k += 1
            if ρ_k ∈ {retry, adjust-param} and n_k < N_max: (adjust τ_k) and repeat
            else: P <- P[:k] + replan(g, o, M) (may insert, skip, replace); repeat at k

The executor sits behind :class:`Executor` (the ROS node adapts the ExecuteSubtask action to
it); every reasoner call and decision goes to the :class:`EpisodeLog`, with a checkpoint after
each transition so that running the same episode id again after a crash resumes where it was.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from hvla_ros.planner.episode_log import EpisodeLog, new_episode_id
from hvla_ros.planner.memory import ErrorEntry, HistoryEntry, Memory, MemoryConfig, MemoryView
from hvla_ros.planner.plan import Plan, PlanLimits, Subtask, plan_from_dict
from hvla_ros.planner.reasoner import (
    Context,
    ExecutionReport,
    Images,
    Reasoner,
    ReasonerError,
    Reflection,
    StopCheck,
    Verdict,
)

_log = logging.getLogger(__name__)
T = TypeVar("T")

# Result error codes, the same names as ExecuteGoal.Result.ERROR_*.
ERROR_CODES = (
    "none",
    "invalid_goal",
    "planning_failed",
    "subtask_failed",
    "canceled",
    "executor_unavailable",
    "reasoner_failed",
    "internal",
)


class ExecutorUnavailable(RuntimeError):
    """The executor cannot take subtasks (not running, not configured)."""


class Executor(abc.ABC):
    """What the planner needs from the skill executor (and the cameras)."""

    @abc.abstractmethod
    def skills(self) -> Mapping[str, str]:
        """Declared skill names -> descriptions."""

    @abc.abstractmethod
    def observe(self) -> Images:
        """The latest camera images (for planning)."""

    @abc.abstractmethod
    def execute(self, subtask: Subtask, subtask_id: int, attempt: int, until: StopCheck | None = None
                ) -> ExecutionReport:
        """Run one attempt until termination; never judges success. ``until`` (given only for
        ``stop_on_post`` subtasks) is called on the latest images while the skill runs; once it
        returns True the attempt ends with termination ``post_condition``."""

    def settle(self, seconds: float) -> Images:
        """Let ``seconds`` of the robot's time pass with the arm held where the last attempt left
        it, then return the latest images (see ``PlannerConfig.settle_s``). This default waits in
        wall time; executors with a clock of their own (simulated time) override it."""
        if seconds > 0:
            time.sleep(seconds)
        return self.observe()


@dataclass(frozen=True)
class PlannerConfig:
    """N_max, replan budget and the ablation switches of the verifier and reflection."""

    max_attempts: int = 3  # N_max
    max_replans: int = 3
    use_verifier: bool = True
    use_reflection: bool = True
    #: watch ``stop_on_post`` subtasks and end them once their post-condition holds (needs the verifier)
    stop_on_post: bool = True
    #: Skills whose demonstrations start at the home pose: after a failed attempt, the next attempt
    #: of one of these is preceded by the executor's ``home_skill`` (when it declares one). A policy
    #: re-run from wherever the failure left the arm (a cube half-grasped, the jaws closed beside
    #: it) is outside what it was trained on: through the graph no such re-pick ever lifted the cube.
    home_before_retry: tuple[str, ...] = ("pick", "push", "press", "open_drawer")
    home_skill: str = "home"
    home_horizon_s: float = 6.0
    #: Seconds after an attempt that the verifier's success must still hold: a success judged on
    #: the attempt's last frame is checked again on the images ``settle_s`` later (the arm held
    #: still). A cube let go on the box's rim looks "in the box" in the frame of the release and
    #: lies beside it a second later. 0 switches the second look off.
    settle_s: float = 0.0
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    fsync_log: bool = False

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"`max_attempts` must be >= 1. Got {self.max_attempts}.")
        if self.max_replans < 0:
            raise ValueError(f"`max_replans` must be >= 0. Got {self.max_replans}.")
        if not self.home_horizon_s > 0:
            raise ValueError(f"`home_horizon_s` must be > 0. Got {self.home_horizon_s}.")
        if not 0.0 <= self.settle_s <= 60.0:
            raise ValueError(f"`settle_s` must be within [0, 60] s. Got {self.settle_s}.")


@dataclass(frozen=True)
class Outcome:
    subtask_id: int
    attempt: int
    status: str
    error: str  # none | postcondition_unmet | horizon_reached | executor_failed | executor_silent | ...
    reason: str
    diagnosis: str = ""
    recovery: str = "none"


@dataclass
class EpisodeStatus:
    """Where the episode stands (what the node publishes as PlanState / MemoryState)."""

    episode_id: str
    goal: str
    state: str = "idle"  # idle planning executing verifying reflecting paused succeeded failed canceled
    plan: Plan | None = None
    current_index: int = -1
    attempt: int = 0
    replans: int = 0
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    memory: MemoryView | None = None
    current: Subtask | None = None  # the resolved subtask being executed


@dataclass(frozen=True)
class EpisodeResult:
    success: bool
    error_code: str
    error_msg: str
    episode_id: str
    subtasks_succeeded: int
    subtasks_total: int
    replans: int
    log_path: str
    decision_overheads_s: tuple[float, ...] = ()  # wall time per attempt outside reasoner and executor
    decision_cpu_s: tuple[float, ...] = ()  # the same in CPU time of the episode thread


class _Canceled(Exception):
    pass


class _EpisodeEnd(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


@dataclass
class _State:
    """The loop state of one episode (what a checkpoint saves)."""

    goal: str
    log: EpisodeLog
    memory: Memory
    skills: dict[str, str] = field(default_factory=dict)
    limits: PlanLimits = field(default_factory=lambda: PlanLimits(frozenset()))
    plan: Plan | None = None
    plan_version: int = 0
    k: int = 0
    attempt: int = 0
    succeeded: int = 0
    after_failure: bool = False  # the last attempt failed: the next may start from home


class EpisodeRunner:
    """Runs Algorithm 1 for one goal. Thread-safe ``cancel()``, ``pause()``, ``resume()``."""

    def __init__(
        self,
        reasoner: Reasoner,
        executor: Executor,
        log_dir: str | Path,
        config: PlannerConfig | None = None,
        on_update: Callable[[EpisodeStatus], None] | None = None,
    ) -> None:
        self.reasoner = reasoner
        self.executor = executor
        self.log_dir = Path(log_dir)
        self.config = config or PlannerConfig()
        self.on_update = on_update
        self._cancel = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._reasoner_s = 0.0
        self._reasoner_cpu_s = 0.0
        self._cpu: list[float] = []
        self.status: EpisodeStatus | None = None

    # --- control from other threads ------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    # --- the loop --------------------------------------------------------------------------
    def run(self, goal: str, episode_id: str = "") -> EpisodeResult:
        """Run (or resume, when ``episode_id`` has a log without an end) one episode."""
        episode_id = episode_id or new_episode_id()
        log = EpisodeLog(self.log_dir, episode_id, fsync=self.config.fsync_log)
        self.reasoner.set_recorder(
            lambda call, prompt, reply, error, s: log.write(
                "exchange", call=call, prompt=prompt, reply=reply, error=error, seconds=s
            )
        )
        self.status = EpisodeStatus(episode_id, goal)
        self._cpu = []
        s = _State(goal, log, Memory(self.config.memory))
        overheads: list[float] = []
        try:
            previous = log.events()
            ended = next((e for e in reversed(previous) if e["event"] == "episode_end"), None)
            if ended is not None:
                return EpisodeResult(**{**ended["result"], "decision_overheads_s": (), "decision_cpu_s": ()})
            self._start(s, previous)
            while s.plan is not None and s.k < len(s.plan.subtasks):
                self._attempt(s, overheads)
            return self._finish(s, "none", "", overheads)
        except _EpisodeEnd as e:
            return self._finish(s, e.code, e.msg, overheads)
        except _Canceled:
            return self._finish(s, "canceled", "the goal was canceled", overheads)
        except ReasonerError as e:
            code = "planning_failed" if s.plan is None else "reasoner_failed"
            return self._finish(s, code, f"{self.reasoner.name} reasoner: {e}", overheads)
        except ExecutorUnavailable as e:
            return self._finish(s, "executor_unavailable", str(e), overheads)
        finally:
            self.reasoner.set_recorder(None)
            log.close()

    def _start(self, s: _State, previous: list[dict[str, Any]]) -> None:
        """Check the goal and executor, then restore from the last checkpoint or plan afresh."""
        cfg, st = self.config, self.status
        assert st is not None
        first_goal = previous[0].get("goal") if previous else None
        if first_goal not in (None, s.goal):
            raise _EpisodeEnd("invalid_goal", f"episode {st.episode_id!r} was started for goal "
                                              f"{first_goal!r}, not {s.goal!r}")
        if not s.goal.strip():
            raise _EpisodeEnd("invalid_goal", "the goal is empty")
        s.skills = dict(self.executor.skills())
        if not s.skills:
            raise _EpisodeEnd("executor_unavailable", "the executor declares no skills")
        images = self.executor.observe()
        sizes = {c: (int(i.shape[0]), int(i.shape[1])) for c, i in images.items()}
        s.limits = PlanLimits(frozenset(s.skills), sizes)
        checkpoint = next((e for e in reversed(previous) if e["event"] == "checkpoint"), None)
        if checkpoint is not None:
            v = checkpoint["plan_version"]
            plan_event = next(e for e in reversed(previous) if e["event"] == "plan" and e["version"] == v)
            s.plan, s.plan_version = plan_from_dict(plan_event["plan"]), v
            s.k, s.attempt, s.succeeded = checkpoint["k"], checkpoint["attempt"], checkpoint["succeeded"]
            st.replans = checkpoint["replans"]
            st.plan = s.plan
            s.memory = Memory.from_dict(checkpoint["memory"], cfg.memory)
            s.log.write("resumed", goal=s.goal, k=s.k, attempt=s.attempt, replans=st.replans)
            _log.info(f"episode {st.episode_id}: resuming at subtask {s.k} attempt {s.attempt + 1}")
            return
        config = {"max_attempts": cfg.max_attempts, "max_replans": cfg.max_replans,
                  "use_verifier": cfg.use_verifier, "use_reflection": cfg.use_reflection,
                  "stop_on_post": cfg.stop_on_post,
                  "memory": vars(cfg.memory), "reasoner": self.reasoner.name}
        s.log.write("episode_start", goal=s.goal, episode_id=st.episode_id, skills=s.skills, config=config)
        self._update(s, "planning")
        self._set_plan(s, self._call(lambda: self.reasoner.plan(self._ctx(s, images))), "initial")
        self._checkpoint(s)

    def _attempt(self, s: _State, overheads: list[float]) -> None:
        """Issue τ_k once, verify, update memory, and on failure reflect and recover."""
        cfg, st = self.config, self.status
        assert st is not None and s.plan is not None
        t0, c0 = time.perf_counter(), time.thread_time()
        self._wait_if_paused(s)
        subtask = s.plan.subtasks[s.k]
        issued = subtask.resolve(subtask.params).resolve(s.memory.facts)
        s.attempt += 1
        k, attempt = s.k, s.attempt
        st.current_index, st.attempt, st.current = k, attempt, issued
        s.log.write("issue", k=k, attempt=attempt, subtask=issued.to_dict())
        self._update(s, "executing")
        overhead, cpu = time.perf_counter() - t0, time.thread_time() - c0
        if s.after_failure:
            s.after_failure = False
            self._home_before(s, issued)
        before = self.executor.observe()
        missing = issued.placeholders()
        if missing:
            why = f"cannot issue: unknown {sorted(missing)} (not in parameters or working memory)"
            report = ExecutionReport("error", error=why)
        elif issued.stop_on_post and cfg.stop_on_post and cfg.use_verifier and (
                until := self.reasoner.monitor(self._ctx(s, before), issued, before)) is not None:
            report = self.executor.execute(issued, k, attempt, until=until)
        else:
            report = self.executor.execute(issued, k, attempt)
        t1, c1 = time.perf_counter(), time.thread_time()
        if not report.before:
            report = replace(report, before=before)
        self._reasoner_s = self._reasoner_cpu_s = 0.0
        s.log.write("report", k=k, attempt=attempt, termination=report.termination, steps=report.steps,
                    elapsed_s=report.elapsed_s, error=report.error, cameras=sorted(report.images),
                    frames=len(report.frames))
        if self._cancel.is_set():
            raise _Canceled
        images = report.images or self.executor.observe()
        self._update(s, "verifying")
        verdict, error = self._verify(self._ctx(s, images), issued, report)
        s.log.write("verdict", k=k, attempt=attempt, status=verdict.status, reason=verdict.reason,
                    error=error, facts=dict(verdict.facts))
        s.memory.add_history(HistoryEntry(k, attempt, issued.instruction, issued.skill, verdict.status,
                                          verdict.reason, time.time()))
        if cfg.memory.use_working_memory:
            ctx = self._ctx(s, images)
            upd = self._call(lambda: self.reasoner.update_memory(ctx, issued, verdict, report))
            s.memory.set_world(upd.working_memory, {**verdict.facts, **upd.facts})
        s.log.write("memory", k=k, working_memory=s.memory.working_memory, facts=s.memory.facts)
        if verdict.status == "success":
            st.outcomes[k] = Outcome(k, attempt, "success", "none", verdict.reason)
            s.k, s.attempt, s.succeeded = k + 1, 0, s.succeeded + 1
        else:
            s.after_failure = True
            self._recover(s, issued, verdict, error, images)
        self._checkpoint(s)
        overheads.append(overhead + time.perf_counter() - t1 - self._take_reasoner_time())
        self._cpu.append(cpu + time.thread_time() - c1 - self._reasoner_cpu_s)
        self._reasoner_cpu_s = 0.0

    def _recover(self, s: _State, issued: Subtask, verdict: Verdict, error: str, images: Images) -> None:
        """Reflection and recovery: retry / adjust-param while n_k < N_max, else replan."""
        cfg, st = self.config, self.status
        assert st is not None and s.plan is not None
        k, attempt, plan = s.k, s.attempt, s.plan
        self._update(s, "reflecting")
        if cfg.use_reflection:
            refl = self._call(lambda: self.reasoner.reflect(self._ctx(s, images), issued, verdict, attempt))
        else:
            refl = Reflection("reflection switched off: retry as is", "retry")
        if refl.recovery != "replan" and attempt >= cfg.max_attempts:
            refl = replace(refl, recovery="replan", diagnosis=f"{refl.diagnosis} (attempt {attempt} reached "
                                                              f"N_max={cfg.max_attempts}: replanning)")
        s.memory.add_error(ErrorEntry(k, attempt, issued.instruction, issued.skill, refl.diagnosis,
                                      refl.recovery, issued.params, dict(refl.parameters), time.time()))
        st.outcomes[k] = Outcome(k, attempt, verdict.status, error, verdict.reason, refl.diagnosis,
                                 refl.recovery)
        s.log.write("reflection", k=k, attempt=attempt, diagnosis=refl.diagnosis, recovery=refl.recovery,
                    parameters=dict(refl.parameters),
                    boxes=None if refl.boxes is None else [b.to_dict() for b in refl.boxes])
        if refl.recovery == "adjust_param":
            changed = plan.subtasks[k].with_parameters(refl.parameters)
            if refl.boxes is not None:
                changed = replace(changed, boxes=refl.boxes)
            self._set_plan(s, Plan(s.goal, (*plan.subtasks[:k], changed, *plan.subtasks[k + 1:]), plan.notes),
                           f"adjust subtask {k}")
        elif refl.recovery == "replan":
            if st.replans >= cfg.max_replans:
                raise _EpisodeEnd("subtask_failed", f"subtask {k} {issued.instruction!r} failed "
                                                    f"({verdict.reason}) and the replan budget "
                                                    f"({cfg.max_replans}) is spent")
            st.replans += 1
            self._update(s, "planning")
            new = self._call(lambda: self.reasoner.plan(self._ctx(s, images), plan.subtasks[:k], issued))
            self._set_plan(s, Plan(s.goal, (*plan.subtasks[:k], *new.subtasks), {**plan.notes, **new.notes}),
                           f"replan {st.replans}")
            s.attempt = 0

    def _home_before(self, s: _State, issued: Subtask) -> None:
        """Return the arm home before re-trying ``issued`` (see ``PlannerConfig.home_before_retry``).
        Not verified and not counted as an attempt; its report goes to the episode log."""
        cfg = self.config
        if issued.skill not in cfg.home_before_retry or cfg.home_skill not in s.skills:
            return
        home = Subtask("return to the home pose", cfg.home_skill, arm=issued.arm, horizon_s=cfg.home_horizon_s)
        s.log.write("home", k=s.k, attempt=s.attempt, before=issued.skill)
        report = self.executor.execute(home, s.k, s.attempt)
        s.log.write("home_report", k=s.k, attempt=s.attempt, termination=report.termination,
                    elapsed_s=report.elapsed_s, error=report.error)
        if self._cancel.is_set():
            raise _Canceled

    # --- helpers ---------------------------------------------------------------------------
    def _ctx(self, s: _State, images: Images) -> Context:
        notes = s.plan.notes if s.plan is not None else {}
        return Context(s.goal, s.limits, s.memory.view(), images, s.skills, notes)

    def _set_plan(self, s: _State, plan: Plan, reason: str) -> None:
        assert self.status is not None
        s.plan, s.plan_version = plan, s.plan_version + 1
        self.status.plan = plan
        s.log.write("plan", version=s.plan_version, reason=reason, plan=plan.to_dict())

    def _checkpoint(self, s: _State) -> None:
        assert self.status is not None
        s.log.write("checkpoint", plan_version=s.plan_version, k=s.k, attempt=s.attempt,
                    succeeded=s.succeeded, replans=self.status.replans, memory=s.memory.to_dict())

    def _verify(self, ctx: Context, subtask: Subtask, report: ExecutionReport) -> tuple[Verdict, str]:
        """The verdict and its error name (SubtaskOutcome.ERROR_* in lower case)."""
        if report.termination == "silent":
            reason = report.error or "the executor went silent past horizon + margin"
            return Verdict("timeout", reason), "executor_silent"
        if report.termination in ("error", "preempted", "canceled"):
            return Verdict("fail", f"executor {report.termination}: {report.error}"), "executor_failed"
        if not self.config.use_verifier:
            return Verdict("success", "verifier switched off: assumed done"), "none"
        verdict = self._call(lambda: self.reasoner.verify(ctx, subtask, report))
        if verdict.status == "success":
            if self.config.settle_s > 0 and (undone := self._verify_settled(ctx, subtask, report, verdict)):
                return undone, "postcondition_unmet"
            return verdict, "none"
        if report.termination == "horizon":
            reason = f"horizon {subtask.horizon_s:g} s reached: {verdict.reason}"
            return replace(verdict, status="timeout", reason=reason), "horizon_reached"
        return replace(verdict, status="fail"), "postcondition_unmet"

    def _verify_settled(self, ctx: Context, subtask: Subtask, report: ExecutionReport, verdict: Verdict
                        ) -> Verdict | None:
        """The success ``verdict`` judged again on the images ``settle_s`` later: ``None`` while it
        still holds, else the failure, saying that it held at the attempt's end only."""
        settle = self.config.settle_s
        images = self.executor.settle(settle)
        later = replace(report, images=images)
        again = self._call(lambda: self.reasoner.verify(replace(ctx, images=images), subtask, later))
        if again.status == "success":
            return None
        return Verdict("fail", f"held when the attempt ended ({verdict.reason}), not {settle:g} s later: "
                               f"{again.reason}", dict(again.facts))

    def _call(self, fn: Callable[[], T]) -> T:
        """Call the reasoner, timing it (decision overhead excludes model time)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn()
        finally:
            self._reasoner_s += time.perf_counter() - t0
            self._reasoner_cpu_s += time.thread_time() - c0

    def _take_reasoner_time(self) -> float:
        spent, self._reasoner_s = self._reasoner_s, 0.0
        return spent

    def _wait_if_paused(self, s: _State) -> None:
        if self._cancel.is_set():
            raise _Canceled
        if not self._running.is_set():
            self._update(s, "paused")
            while not self._running.wait(timeout=0.1):
                pass
        if self._cancel.is_set():
            raise _Canceled

    def _update(self, s: _State, state: str) -> None:
        st = self.status
        assert st is not None
        st.state = state
        if self.on_update is not None or state in ("succeeded", "failed", "canceled"):
            st.memory = s.memory.view()
        if self.on_update is not None:
            try:
                self.on_update(st)
            except Exception as e:  # an observer must never break the episode
                _log.error(f"episode status observer failed: {e!r}")

    def _finish(self, s: _State, code: str, msg: str, overheads: list[float]) -> EpisodeResult:
        st = self.status
        assert st is not None
        total = len(s.plan.subtasks) if s.plan is not None else 0
        result = EpisodeResult(code == "none", code, msg, st.episode_id, s.succeeded, total, st.replans,
                               str(s.log.path), tuple(overheads), tuple(self._cpu))
        state = {"none": "succeeded", "canceled": "canceled"}.get(code, "failed")
        if code != "none":
            _log.warning(f"episode {st.episode_id} ended: {code}: {msg}")
        s.log.write("episode_end", state=state,
                    result={k: v for k, v in vars(result).items() if not k.startswith("decision_")})
        self._update(s, state)
        return result
