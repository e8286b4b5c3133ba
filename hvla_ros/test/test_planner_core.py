"""Algorithm 1 of Goal2Skill: every branch of the episode loop, ablation switches, plan schema, memory bounds."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from hvla_ros.planner import (
    Context,
    EpisodeRunner,
    ExecutionReport,
    Executor,
    MemoryConfig,
    MemoryUpdate,
    Plan,
    PlanLimits,
    PlannerConfig,
    PlanValidationError,
    Reasoner,
    ReasonerError,
    Reflection,
    Subtask,
    Verdict,
)
from hvla_ros.planner.episode_log import EpisodeLog, EpisodeLogError
from hvla_ros.planner.memory import ErrorEntry, HistoryEntry, Memory
from hvla_ros.planner.plan import parse_plan, plan_from_dict

SKILLS = {"pick": "pick an object", "place": "place it", "observe": "hold still"}
IMG = np.zeros((48, 64, 3), np.uint8)


class FakeExecutor(Executor):
    """Records every issued subtask; terminations come from a script (default skill_done)."""

    def __init__(self, terminations: Sequence[str] = ()) -> None:
        self.issued: list[tuple[int, int, Subtask]] = []
        self.untils: list = []
        self.terminations = list(terminations)

    def skills(self):
        return SKILLS

    def observe(self):
        return {"front": IMG}

    def execute(self, subtask, subtask_id, attempt, until=None):
        self.issued.append((subtask_id, attempt, subtask))
        self.untils.append(until)
        if until is not None:  # the images the skill would produce, until the check says stop
            for step in range(1, 20):
                if until({"front": np.full_like(IMG, step)}):
                    return ExecutionReport("post_condition", steps=step, images={"front": IMG})
        term = self.terminations.pop(0) if self.terminations else "skill_done"
        return ExecutionReport(term, steps=5, images={"front": IMG})


def st(instruction: str, skill: str = "pick", **params: str) -> Subtask:
    return Subtask(instruction, skill, parameters=tuple(sorted(params.items())))


class ScriptedReasoner(Reasoner):
    """Verdicts and reflections from queues; counts calls per kind."""

    name = "scripted"

    def __init__(self, plans, verdicts=(), reflections=()) -> None:
        super().__init__()
        self.plans = list(plans)
        self.verdicts = list(verdicts)
        self.reflections = list(reflections)
        self.calls: dict[str, int] = {}
        self.contexts: list[Context] = []

    def _count(self, k: str, ctx: Context) -> None:
        self.calls[k] = self.calls.get(k, 0) + 1
        self.contexts.append(ctx)

    def plan(self, ctx, completed=(), failed=None):
        self._count("plan", ctx)
        if not self.plans:
            raise ReasonerError("no plan left")
        return Plan(ctx.goal, tuple(self.plans.pop(0)))

    def verify(self, ctx, subtask, report):
        self._count("verify", ctx)
        return self.verdicts.pop(0) if self.verdicts else Verdict("success", "ok")

    def update_memory(self, ctx, subtask, verdict, report):
        self._count("update_memory", ctx)
        return MemoryUpdate(f"after {subtask.instruction}: {verdict.status}", dict(verdict.facts))

    def reflect(self, ctx, subtask, verdict, attempt):
        self._count("reflect", ctx)
        return self.reflections.pop(0) if self.reflections else Reflection("again", "retry")


def run(reasoner, executor, tmp_path, **cfg):
    memory = cfg.pop("memory", MemoryConfig())
    runner = EpisodeRunner(reasoner, executor, tmp_path, PlannerConfig(memory=memory, **cfg))
    return runner.run("do the thing", "ep1"), runner


def events(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_success_path_logs_every_decision(tmp_path):
    r = ScriptedReasoner([[st("a"), st("b", "place")]])
    ex = FakeExecutor()
    res, _ = run(r, ex, tmp_path)
    assert res.success and res.error_code == "none"
    assert [(k, a) for k, a, _ in ex.issued] == [(0, 1), (1, 1)]
    assert res.subtasks_succeeded == 2 and res.subtasks_total == 2
    kinds = [e["event"] for e in events(res.log_path)]
    assert kinds[0] == "episode_start" and kinds[-1] == "episode_end"
    assert kinds.count("verdict") == 2 and kinds.count("checkpoint") == 3 and "reflection" not in kinds
    assert r.calls == {"plan": 1, "verify": 2, "update_memory": 2}


def test_fail_then_retry_then_success(tmp_path):
    r = ScriptedReasoner(
        [[st("a")]],
        verdicts=[Verdict("fail", "dropped"), Verdict("success", "ok")],
        reflections=[Reflection("slipped", "retry")],
    )
    ex = FakeExecutor()
    res, runner = run(r, ex, tmp_path)
    assert res.success
    assert [(k, a) for k, a, _ in ex.issued] == [(0, 1), (0, 2)]
    errs = runner.status.memory.errors
    assert len(errs) == 1 and errs[0].diagnosis == "slipped" and errs[0].recovery == "retry"
    assert runner.status.outcomes[0].status == "success"


def test_fail_then_adjust_param_changes_parameters_and_boxes(tmp_path):
    from hvla_ros.planner.plan import Box

    box = Box("front", 1, 2, 10, 20, "distractor")
    r = ScriptedReasoner(
        [[st("insert into slot {slot}", slot="1")]],
        verdicts=[Verdict("fail", "blocked"), Verdict("success", "ok")],
        reflections=[Reflection("slot 1 blocked", "adjust_param", {"slot": "2"}, (box,))],
    )
    ex = FakeExecutor()
    res, runner = run(r, ex, tmp_path)
    assert res.success
    first, second = ex.issued[0][2], ex.issued[1][2]
    assert first.instruction == "insert into slot 1" and first.params == {"slot": "1"}
    assert (
        second.instruction == "insert into slot 2"
        and second.params == {"slot": "2"}
        and second.boxes == (box,)
    )
    assert ex.issued[1][1] == 2  # still the same subtask, attempt 2
    err = runner.status.memory.errors[0]
    assert dict(err.parameters) == {"slot": "1"} and dict(err.adjusted) == {"slot": "2"}


def test_attempts_reaching_n_max_force_a_replan_that_can_insert_subtasks(tmp_path):
    r = ScriptedReasoner(
        [[st("a"), st("b", "place")], [st("fix", "observe"), st("b2", "place")]],
        verdicts=[Verdict("success", "ok"), Verdict("fail", "x"), Verdict("fail", "x")],
        reflections=[Reflection("d1", "retry"), Reflection("d2", "retry")],
    )
    ex = FakeExecutor()
    res, runner = run(r, ex, tmp_path, max_attempts=2)
    assert res.success and res.replans == 1
    assert [s.instruction for _, _, s in ex.issued] == ["a", "b", "b", "fix", "b2"]
    assert [s.instruction for s in runner.status.plan.subtasks] == ["a", "fix", "b2"]
    errs = runner.status.memory.errors
    assert [e.recovery for e in errs] == ["retry", "replan"]
    assert "N_max=2" in errs[-1].diagnosis


def test_reflection_may_replan_directly(tmp_path):
    r = ScriptedReasoner(
        [[st("a")], [st("a2")]],
        verdicts=[Verdict("fail", "gone")],
        reflections=[Reflection("object gone", "replan")],
    )
    res, _ = run(r, FakeExecutor(), tmp_path)
    assert res.success and res.replans == 1


def test_replan_budget_exhausted_fails_the_goal_with_the_reason(tmp_path):
    r = ScriptedReasoner(
        [[st("a")]] * 3,
        verdicts=[Verdict("fail", "never works")] * 10,
        reflections=[Reflection("hopeless", "replan")] * 10,
    )
    res, _ = run(r, FakeExecutor(), tmp_path, max_replans=2)
    assert not res.success and res.error_code == "subtask_failed"
    assert "never works" in res.error_msg and "replan budget (2)" in res.error_msg and res.replans == 2


def test_horizon_reached_without_postcondition_is_a_timeout(tmp_path):
    r = ScriptedReasoner([[st("a")]], verdicts=[Verdict("fail", "not yet"), Verdict("success", "ok")])
    res, _ = run(r, FakeExecutor(["horizon", "skill_done"]), tmp_path)
    assert res.success
    verdicts = [e for e in events(res.log_path) if e["event"] == "verdict"]
    assert verdicts[0]["status"] == "timeout" and verdicts[0]["error"] == "horizon_reached"
    # A skill that reaches the horizon with the post-condition met is a success.
    r2 = ScriptedReasoner([[st("a")]])
    res2, _ = run(r2, FakeExecutor(["horizon"]), tmp_path / "b")
    assert res2.success


def test_silent_executor_takes_the_timeout_path_without_asking_the_verifier(tmp_path):
    r = ScriptedReasoner([[st("a")]])
    res, _ = run(r, FakeExecutor(["silent", "skill_done"]), tmp_path)
    assert res.success
    v = [e for e in events(res.log_path) if e["event"] == "verdict"]
    assert v[0]["status"] == "timeout" and v[0]["error"] == "executor_silent"
    assert r.calls["verify"] == 1 and r.calls["reflect"] == 1


def test_verifier_switched_off_trusts_termination(tmp_path):
    r = ScriptedReasoner([[st("a"), st("b")]], verdicts=[Verdict("fail", "would fail")])
    res, _ = run(r, FakeExecutor(), tmp_path, use_verifier=False)
    assert res.success and "verify" not in r.calls


def test_reflection_switched_off_retries_blindly_then_replans(tmp_path):
    r = ScriptedReasoner(
        [[st("a")], [st("a")]], verdicts=[Verdict("fail", "x")] * 2 + [Verdict("success", "")]
    )
    ex = FakeExecutor()
    res, runner = run(r, ex, tmp_path, use_reflection=False, max_attempts=2)
    assert res.success and "reflect" not in r.calls and res.replans == 1
    assert [e.recovery for e in runner.status.memory.errors] == ["retry", "replan"]


@pytest.mark.parametrize("part", ["history", "working_memory", "error_register"])
def test_memory_parts_switch_off_independently(tmp_path, part):
    cfg = MemoryConfig(**{f"use_{part}": False})
    r = ScriptedReasoner(
        [[st("a"), st("b")]], verdicts=[Verdict("fail", "x"), Verdict("success", "", {"k": "v"})] * 2
    )
    res, runner = run(r, FakeExecutor(), tmp_path, memory=cfg)
    assert res.success
    m = runner.status.memory
    assert (len(m.history) == 0) == (part == "history")
    assert (m.working_memory == "") == (part == "working_memory")
    assert (dict(m.facts) == {}) == (part == "working_memory")
    assert (len(m.errors) == 0) == (part == "error_register")
    assert ("update_memory" in r.calls) == (part != "working_memory")


def test_placeholders_are_filled_from_working_memory_facts(tmp_path):
    r = ScriptedReasoner(
        [[st("watch", "observe"), st("pick up the {color} cube")]],
        verdicts=[Verdict("success", "cue seen", {"color": "green"}), Verdict("success", "")],
    )
    ex = FakeExecutor()
    res, _ = run(r, ex, tmp_path)
    assert res.success and ex.issued[1][2].instruction == "pick up the green cube"
    # Without W the fact is lost: the subtask cannot be issued and never reaches the executor.
    r2 = ScriptedReasoner(
        [[st("watch", "observe"), st("pick up the {color} cube")]],
        verdicts=[Verdict("success", "cue seen", {"color": "green"})],
        reflections=[Reflection("unknown colour", "retry")] * 9,
    )
    ex2 = FakeExecutor()
    res2, _ = run(r2, ex2, tmp_path / "b", memory=MemoryConfig(use_working_memory=False), max_replans=0)
    assert not res2.success and res2.error_code == "subtask_failed" and "color" in res2.error_msg
    assert len(ex2.issued) == 1


def test_reasoner_failure_ends_the_goal_cleanly(tmp_path):
    res, _ = run(ScriptedReasoner([]), FakeExecutor(), tmp_path)
    assert not res.success and res.error_code == "planning_failed" and "no plan left" in res.error_msg

    class Broken(ScriptedReasoner):
        def verify(self, ctx, subtask, report):
            raise ReasonerError("model unreachable")

    res2, _ = run(Broken([[st("a")]]), FakeExecutor(), tmp_path / "b")
    assert res2.error_code == "reasoner_failed" and "model unreachable" in res2.error_msg


def test_bad_goal_and_missing_executor(tmp_path):
    runner = EpisodeRunner(ScriptedReasoner([[st("a")]]), FakeExecutor(), tmp_path)
    assert runner.run("   ", "e1").error_code == "invalid_goal"

    class NoSkills(FakeExecutor):
        def skills(self):
            return {}

    assert (
        EpisodeRunner(ScriptedReasoner([]), NoSkills(), tmp_path).run("g", "e2").error_code
        == "executor_unavailable"
    )


def test_cancel_and_pause_between_subtasks(tmp_path):
    gate, started = threading.Event(), threading.Event()

    class Slow(FakeExecutor):
        def execute(self, subtask, subtask_id, attempt):
            started.set()
            gate.wait(5)
            return super().execute(subtask, subtask_id, attempt)

    runner = EpisodeRunner(ScriptedReasoner([[st("a"), st("b"), st("c")]]), Slow(), tmp_path)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", runner.run("g", "c1")))
    th.start()
    assert started.wait(5)
    runner.pause()
    gate.set()
    for _ in range(100):
        if runner.status is not None and runner.status.state == "paused":
            break
        threading.Event().wait(0.02)
    assert runner.status.state == "paused"
    runner.cancel()
    th.join(5)
    assert out["r"].error_code == "canceled" and out["r"].subtasks_succeeded == 1


def test_memory_is_bounded_and_old_history_folds_into_working_memory():
    m = Memory(MemoryConfig(n_history=5, max_errors=3))
    for i in range(40):
        m.add_history(HistoryEntry(i, 1, f"step {i}", "pick", "fail" if i % 4 == 0 else "success", ""))
        m.add_error(ErrorEntry(i, 1, f"step {i}", "pick", "d", "retry"))
    v = m.view()
    assert len(v.history) == 5 and v.history[0].subtask_id == 35 and len(v.errors) == 3
    assert "Earlier: 35 attempts" in v.working_memory and "step 32" in v.working_memory
    m2 = Memory.from_dict(json.loads(json.dumps(m.to_dict())), m.config)
    assert m2.view() == v


def test_plan_schema_rejects_bad_subtasks_with_the_field_named():
    lim = PlanLimits(frozenset(SKILLS), {"front": (48, 64)})
    ok = parse_plan(
        {
            "subtasks": [
                {
                    "instruction": "pick up the red cube",
                    "skill": "pick",
                    "distractor_boxes": [{"camera": "front", "box": [0, 0, 64, 48]}],
                    "post": {"text": "lifted", "predicates": [["lifted", "red_cube"]]},
                }
            ]
        },
        "g",
        lim,
    )
    assert ok.subtasks[0].post.predicates[0].args == ("red_cube",)
    bad = [
        ({"subtasks": []}, "1..64"),
        ({"subtasks": [{"instruction": "x", "skill": "fly"}]}, "'fly' is not a declared skill"),
        ({"subtasks": [{"instruction": "", "skill": "pick"}]}, "instruction must not be empty"),
        ({"subtasks": [{"instruction": "x", "skill": "pick", "horizon_s": -1}]}, "horizon_s"),
        ({"subtasks": [{"instruction": "x", "skill": "pick", "arm": "third"}]}, "arm"),
        (
            {
                "subtasks": [
                    {
                        "instruction": "x",
                        "skill": "pick",
                        "distractor_boxes": [{"camera": "front", "box": [0, 0, 65, 10]}],
                    }
                ]
            },
            "outside",
        ),
        (
            {
                "subtasks": [
                    {
                        "instruction": "x",
                        "skill": "pick",
                        "distractor_boxes": [{"camera": "top", "box": [0, 0, 5, 5]}],
                    }
                ]
            },
            "unknown",
        ),
        (
            {
                "subtasks": [
                    {
                        "instruction": "x",
                        "skill": "pick",
                        "distractor_boxes": [{"camera": "front", "box": [5, 5, 5, 9]}],
                    }
                ]
            },
            "empty",
        ),
        ({"subtasks": [{"instruction": "x" * 500, "skill": "pick"}]}, "at most 400"),
        ({"steps": []}, "'subtasks'"),
        ({"subtasks": [{"instruction": "x", "skill": "pick", "stop_on_post": "yes"}]},
         "subtasks[0].stop_on_post must be true or false, got 'yes'"),
    ]
    for obj, fragment in bad:
        with pytest.raises(PlanValidationError, match=None) as e:
            parse_plan(obj, "g", lim)
        assert fragment in str(e.value), (obj, str(e.value))


def test_episode_log_survives_a_torn_line_and_rejects_unsafe_ids(tmp_path):
    log = EpisodeLog(tmp_path, "ep-1")
    log.write("a", x=1)
    log.close()
    with open(log.path, "a") as f:
        f.write('{"seq": 2, "event": "b", "x"')  # killed mid-write
    log2 = EpisodeLog(tmp_path, "ep-1")
    assert [e["event"] for e in log2.events()] == ["a"]
    log2.write("c", y=np.zeros((2, 3), np.uint8))
    log2.close()
    assert [e["event"] for e in EpisodeLog(tmp_path, "ep-1").events()] == ["a", "c"]
    for bad in ("../x", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(EpisodeLogError):
            EpisodeLog(tmp_path, bad)


def test_running_an_ended_episode_again_returns_its_result(tmp_path):
    res, _ = run(ScriptedReasoner([[st("a")]]), FakeExecutor(), tmp_path)
    ex = FakeExecutor()
    again = EpisodeRunner(ScriptedReasoner([]), ex, tmp_path).run("do the thing", "ep1")
    assert again.success and again.subtasks_succeeded == res.subtasks_succeeded and ex.issued == []


class MonitoringReasoner(ScriptedReasoner):
    """Says the post-condition holds once the image's pixel value reaches 3."""

    def monitor(self, ctx, subtask, before):
        return lambda images: int(images["front"][0, 0, 0]) >= 3


def test_stop_on_post_subtasks_end_when_the_monitor_sees_the_post_condition(tmp_path):
    plan = [replace(st("press a", "pick"), stop_on_post=True), st("b", "place")]
    ex = FakeExecutor()
    res, _ = run(MonitoringReasoner([plan]), ex, tmp_path / "on")
    assert res.success
    assert ex.untils[0] is not None and ex.untils[1] is None  # only the stop_on_post subtask is watched
    reports = [e for e in events(res.log_path) if e["event"] == "report"]
    assert [(r["termination"], r["steps"]) for r in reports] == [("post_condition", 3), ("skill_done", 5)]
    # Switched off, or without the verifier (the monitor is the verifier's check): never watched.
    for cfg in ({"stop_on_post": False}, {"use_verifier": False}):
        ex = FakeExecutor()
        res, _ = run(MonitoringReasoner([plan]), ex, tmp_path / str(cfg), **cfg)
        assert res.success and ex.untils == [None, None]
    # A backend that cannot check fast (the base class: None) lets the skill run to its end.
    ex = FakeExecutor()
    run(ScriptedReasoner([plan]), ex, tmp_path / "vlm")
    assert ex.untils == [None, None]
    # The flag survives the episode log's plan round trip.
    assert plan_from_dict(Plan("g", tuple(plan)).to_dict()).subtasks[0].stop_on_post is True


class HomingExecutor(FakeExecutor):
    """Declares a ``home`` skill, as the shipped single-arm libraries do."""

    def skills(self):
        return {**SKILLS, "home": "return to the home pose"}


def test_a_skill_that_starts_at_home_is_retried_from_home(tmp_path):
    """After a failed pick the arm goes home before the next pick; a place is retried where it is
    (it starts holding the object); home itself is neither verified nor counted as an attempt."""
    r = ScriptedReasoner(
        [[st("pick it"), st("place it", "place")]],
        verdicts=[Verdict("fail", "not lifted"), Verdict("success", "ok"),
                  Verdict("fail", "missed"), Verdict("success", "ok")],
    )
    ex = HomingExecutor()
    res, _ = run(r, ex, tmp_path)
    assert res.success
    assert [(k, a, s.skill) for k, a, s in ex.issued] == [
        (0, 1, "pick"), (0, 2, "home"), (0, 2, "pick"), (1, 1, "place"), (1, 2, "place")]
    home = ex.issued[1][2]
    assert home.horizon_s == PlannerConfig().home_horizon_s and not home.post.predicates
    assert r.calls["verify"] == 4
    kinds = [e["event"] for e in events(res.log_path)]
    assert kinds.count("home") == 1 and kinds.count("home_report") == 1 and kinds.count("issue") == 4


def test_homing_before_a_retry_follows_a_replan_and_can_be_switched_off(tmp_path):
    # Reflection asks for a replan: the new plan's pick (attempt 1) still starts from home.
    r = ScriptedReasoner([[st("pick it")], [st("pick it again")]],
                         verdicts=[Verdict("fail", "not lifted"), Verdict("success", "ok")],
                         reflections=[Reflection("wrong approach", "replan")])
    ex = HomingExecutor()
    assert run(r, ex, tmp_path / "a")[0].success
    assert [(k, a, s.skill) for k, a, s in ex.issued] == [(0, 1, "pick"), (0, 1, "home"), (0, 1, "pick")]

    r = ScriptedReasoner([[st("pick it")]], verdicts=[Verdict("fail", "not lifted"), Verdict("success", "ok")])
    ex = HomingExecutor()
    assert run(r, ex, tmp_path / "b", home_before_retry=())[0].success
    assert [s.skill for _, _, s in ex.issued] == ["pick", "pick"]


class SettlingExecutor(FakeExecutor):
    """Records each settle; the images after it differ from the attempt's last ones."""

    AFTER = np.full_like(IMG, 7)

    def __init__(self, terminations: Sequence[str] = ()) -> None:
        super().__init__(terminations)
        self.settled: list[float] = []

    def settle(self, seconds):
        self.settled.append(seconds)
        return {"front": self.AFTER}


def test_a_success_must_still_hold_after_the_scene_settles(tmp_path):
    """A place judged a success on the release frame whose cube has rolled off a second later is
    a failed attempt (retried), not a success; the second look sees the settled images."""
    r = ScriptedReasoner([[st("place it", "place")]],
                         verdicts=[Verdict("success", "the cube is inside the box"),
                                   Verdict("fail", "the cube is outside the box"),
                                   Verdict("success", "the cube is inside the box"),
                                   Verdict("success", "the cube is inside the box")])
    ex = SettlingExecutor(["horizon", "skill_done"])
    res, runner = run(r, ex, tmp_path, settle_s=1.5)
    assert res.success and res.subtasks_succeeded == 1
    assert ex.settled == [1.5, 1.5] and r.calls["verify"] == 4 and r.calls["reflect"] == 1
    second_looks = [c for c in r.contexts if c.images and c.images["front"] is SettlingExecutor.AFTER]
    assert len(second_looks) == 2
    v = [e for e in events(res.log_path) if e["event"] == "verdict"]
    # Not a horizon timeout: the post-condition held at the end of the attempt and was then lost.
    assert (v[0]["status"], v[0]["error"]) == ("fail", "postcondition_unmet")
    assert "not 1.5 s later: the cube is outside the box" in v[0]["reason"]
    assert "inside the box" in v[0]["reason"]
    assert (v[1]["status"], v[1]["error"]) == ("success", "none")
    assert [e.recovery for e in runner.status.memory.errors] == ["retry"]


def test_no_second_look_when_settling_is_off_or_the_attempt_failed(tmp_path):
    r = ScriptedReasoner([[st("a")]], verdicts=[Verdict("success", "ok")])
    ex = SettlingExecutor()
    assert run(r, ex, tmp_path / "a")[0].success  # settle_s defaults to 0 in the core
    assert ex.settled == [] and r.calls["verify"] == 1
    r = ScriptedReasoner([[st("a")]], verdicts=[Verdict("fail", "missed"), Verdict("success", "ok"),
                                                 Verdict("success", "ok")])
    ex = SettlingExecutor()
    assert run(r, ex, tmp_path / "b", settle_s=0.5)[0].success
    assert ex.settled == [0.5] and r.calls["verify"] == 3  # no second look at the failed attempt
    with pytest.raises(ValueError, match=r"settle_s.*-1"):
        PlannerConfig(settle_s=-1.0)
