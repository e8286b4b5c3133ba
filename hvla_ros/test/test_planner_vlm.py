"""VLM reasoner: JSON extraction and schema checks (fuzzed), bounded re-asks, Algorithm 1 through a
scripted chat backend, and a real tiny transformers VLM built locally (garbage replies -> clean failure)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvla_ros.planner import EpisodeRunner, ExecutionReport, Executor, PlanLimits, PlannerConfig, ReasonerError
from hvla_ros.planner.json_reply import ReplyError, extract_json, parse_reflection, parse_verdict
from hvla_ros.planner.plan import PlanValidationError, parse_plan
from hvla_ros.planner.vlm import FunctionChat, Message, VLMReasoner

SKILLS = {"pick": "pick an object", "place": "place it"}
LIMITS = PlanLimits(frozenset(SKILLS), {"front": (48, 64)})
IMG = np.full((48, 64, 3), 90, np.uint8)
GOOD_PLAN = {"subtasks": [
    {"instruction": "pick up the red cube", "skill": "pick", "horizon_s": 10,
     "post": {"text": "lifted", "predicates": [{"name": "lifted", "args": ["red_cube"]}]}},
    {"instruction": "place the red cube in the box", "skill": "place",
     "distractor_boxes": [{"camera": "front", "label": "blue cube", "box": [2, 3, 20, 30]}]},
]}


class Exec(Executor):
    def __init__(self) -> None:
        self.issued = []

    def skills(self):
        return SKILLS

    def observe(self):
        return {"front": IMG}

    def execute(self, subtask, subtask_id, attempt):
        self.issued.append(subtask)
        return ExecutionReport("skill_done", 3, images={"front": IMG})


class Script:
    """Replies by call kind (recognised from the prompt); records every prompt."""

    def __init__(self, replies: dict[str, list[str]]) -> None:
        self.replies = replies
        self.prompts: list[list[Message]] = []

    def __call__(self, messages):
        self.prompts.append(list(messages))
        text = messages[1].text
        kind = ("plan" if text.startswith("Goal:") else "verify" if "post-condition hold" in text
                else "reflect" if "Diagnose" in text else "memory")
        queue = self.replies[kind]
        return queue.pop(0) if len(queue) > 1 else queue[0]


def test_extract_json_from_prose_fences_and_trailing_commas():
    assert extract_json('Sure! ```json\n{"a": 1,}\n``` done') == {"a": 1}
    assert extract_json('blah {"status": "fail", "reason": "x"} more {"z": 2}') == {"status": "fail", "reason": "x"}
    assert extract_json('{"s": "a } brace"}') == {"s": "a } brace"}
    for bad in ("no json here", "{unclosed", "[1, 2]", ""):
        with pytest.raises(ReplyError):
            extract_json(bad)
    with pytest.raises(ReplyError, match="characters long"):
        extract_json("{" + " " * 40_000 + "}")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text_never_crashes_the_parser(text):
    try:
        parse_plan(extract_json(text), "g", LIMITS)
    except (ReplyError, PlanValidationError):
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["instruction", "skill", "arm", "pre", "post", "horizon_s",
                                        "distractor_boxes", "parameters", "x"]), json_values, max_size=8))
def test_fuzz_schema_violations_are_rejected_with_a_reason(subtask):
    doc = json.dumps({"subtasks": [subtask]}, default=str)
    try:
        plan = parse_plan(extract_json(doc), "g", LIMITS)
    except (ReplyError, PlanValidationError) as e:
        assert str(e)
        return
    s = plan.subtasks[0]
    assert s.skill in SKILLS and s.instruction and 0 < s.horizon_s <= 600
    for b in s.boxes:
        assert 0 <= b.x_min < b.x_max <= 64 and 0 <= b.y_min < b.y_max <= 48


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=4, max_size=4))
def test_fuzz_boxes_outside_the_image_are_rejected(coords):
    box = {"camera": "front", "box": coords}
    obj = {"subtasks": [{"instruction": "x", "skill": "pick", "distractor_boxes": [box]}]}
    x0, y0, x1, y1 = coords
    inside = all(np.isfinite(coords)) and 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
    try:
        parse_plan(obj, "g", LIMITS)
        assert inside
    except PlanValidationError:
        assert not inside
    with pytest.raises(ReplyError):
        if inside:
            raise ReplyError("skip")
        parse_reflection({"diagnosis": "d", "recovery": "adjust_param",
                          "distractor_boxes": [{"camera": "front", "box": coords}]}, LIMITS)


def test_reply_schemas_of_verify_and_reflect():
    assert parse_verdict({"status": "success", "reason": "ok", "facts": {"n": 3}}).facts == {"n": "3"}
    for bad in ({"status": "maybe"}, {"status": "fail", "facts": [1]}, [], {"status": "fail", "reason": 5}):
        with pytest.raises(ReplyError):
            parse_verdict(bad)
    r = parse_reflection({"diagnosis": "slot blocked", "recovery": "adjust-param", "parameters": {"slot": 2}}, LIMITS)
    assert r.recovery == "adjust_param" and r.parameters == {"slot": "2"} and r.boxes is None
    with pytest.raises(ReplyError, match="recovery"):
        parse_reflection({"diagnosis": "d", "recovery": "give up"}, LIMITS)


@pytest.mark.parametrize("reply, fragment", [
    ("I think you should pick the cube.", "no JSON object"),
    (json.dumps({"subtasks": [{"instruction": "fly away", "skill": "fly"}]}), "'fly' is not a declared skill"),
    (json.dumps({"subtasks": [{"instruction": "x", "skill": "pick",
                               "distractor_boxes": [{"camera": "front", "box": [0, 0, 500, 10]}]}]}), "outside"),
    (json.dumps({"plan": []}), "'subtasks'"),
    ("{" + "x" * 40_000 + "}", "characters long"),
])
def test_bad_replies_are_reasked_with_the_error_then_fail_cleanly(tmp_path, reply, fragment):
    script = Script({"plan": [reply]})
    reasoner = VLMReasoner(FunctionChat(script), max_reasks=2)
    res = EpisodeRunner(reasoner, Exec(), tmp_path).run("put the red cube in the box", "e")
    assert not res.success and res.error_code == "planning_failed"
    assert fragment in res.error_msg and "after 3 tries" in res.error_msg
    assert len(script.prompts) == 3  # the first ask + 2 re-asks, no more
    assert fragment in script.prompts[-1][-1].text  # the re-ask feeds the error back
    with open(res.log_path) as f:
        exchanges = [e for e in map(json.loads, f) if e["event"] == "exchange"]
    assert len(exchanges) == 3 and all(fragment in e["error"] for e in exchanges)


def test_a_reask_that_fixes_the_reply_recovers():
    script = Script({"plan": ["nonsense", json.dumps(GOOD_PLAN)]})
    r = VLMReasoner(FunctionChat(script), max_reasks=1)
    from hvla_ros.planner import Context, Memory

    plan = r.plan(Context("g", LIMITS, Memory().view(), {"front": IMG}, SKILLS))
    assert [s.skill for s in plan.subtasks] == ["pick", "place"] and plan.subtasks[1].boxes[0].label == "blue cube"


def test_algorithm_1_through_the_vlm_backend_retry_adjust_and_replan(tmp_path):
    script = Script({
        "plan": [json.dumps(GOOD_PLAN), json.dumps({"subtasks": [
            {"instruction": "place the red cube in the box from the left", "skill": "place"}]})],
        "verify": [json.dumps({"status": "success", "reason": "lifted"}),
                   json.dumps({"status": "fail", "reason": "missed the box"}),
                   json.dumps({"status": "fail", "reason": "missed again"}),
                   json.dumps({"status": "fail", "reason": "still outside"}),
                   json.dumps({"status": "success", "reason": "in the box"})],
        "reflect": [json.dumps({"diagnosis": "slipped", "recovery": "retry"}),
                    json.dumps({"diagnosis": "approach from the left", "recovery": "adjust_param",
                                "parameters": {"approach": "left"}}),
                    json.dumps({"diagnosis": "give up this way", "recovery": "retry"})],
        "memory": [json.dumps({"working_memory": "the red cube is held", "facts": {"held": "red_cube"}})],
    })
    ex = Exec()
    res = EpisodeRunner(VLMReasoner(FunctionChat(script)), ex, tmp_path, PlannerConfig(max_attempts=3)).run(
        "put the red cube in the box", "vlm")
    assert res.success and res.replans == 1, res.error_msg
    assert [s.instruction for s in ex.issued] == ["pick up the red cube"] + ["place the red cube in the box"] * 3 + [
        "place the red cube in the box from the left"]
    assert ex.issued[3].params == {"approach": "left"}
    # Images reach the model and memory/errors are in the prompts.
    assert any(m.images for msgs in script.prompts for m in msgs)
    last_plan_prompt = [p for p in script.prompts if p[1].text.startswith("Goal:")][-1][1].text
    assert "approach from the left" in last_plan_prompt and "the red cube is held" in last_plan_prompt


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    pytest.importorskip("transformers")
    import torch

    torch.set_num_threads(1)
    from hvla_ros.planner.tiny_vlm import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


def test_tiny_transformers_vlm_loads_prompts_with_images_and_fails_cleanly_on_garbage(tiny_vlm, tmp_path):
    from hvla_ros.planner.factory import ReasonerSettings, make_reasoner

    reasoner = make_reasoner(ReasonerSettings(backend="transformers", model=str(tiny_vlm), max_new_tokens=24,
                                              max_reasks=1))
    chat = reasoner.chat
    reply = chat.complete([Message("system", "reply in JSON"), Message("user", "plan", (IMG,))])
    assert isinstance(reply, str)
    res = EpisodeRunner(reasoner, Exec(), tmp_path).run("put the red cube in the box", "tiny")
    assert not res.success and res.error_code == "planning_failed" and "after 2 tries" in res.error_msg
    with open(res.log_path) as f:
        exchanges = [e for e in map(json.loads, f) if e["event"] == "exchange"]
    assert len(exchanges) == 2 and all(e["error"] for e in exchanges)
    assert "Goal: put the red cube in the box" in exchanges[0]["prompt"]


def test_transformers_backend_reports_a_missing_model_cleanly(tmp_path):
    pytest.importorskip("transformers")
    from hvla_ros.planner.factory import ReasonerSettings, make_reasoner

    with pytest.raises(ReasonerError, match="cannot load"):
        make_reasoner(ReasonerSettings(backend="transformers", model=str(tmp_path / "nope")))
