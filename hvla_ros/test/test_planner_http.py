"""OpenAI-compatible HTTP backend against real servers on 127.0.0.1: `hvla serve-vlm` serving a tiny
transformers VLM in a subprocess, the same server class with scripted replies, and small handlers
that misbehave (errors, slowness) to exercise retries, backoff, timeouts and the API key."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest

from hvla_ros.planner import EpisodeRunner, ExecutionReport, Executor, ReasonerError
from hvla_ros.planner.openai_chat import OpenAIChat
from hvla_ros.planner.serve_vlm import ChatServer
from hvla_ros.planner.vlm import FunctionChat, Message, VLMReasoner
from hvla_ros.testing import procs

IMG = np.zeros((48, 64, 3), np.uint8)
IMG[10:20, 10:30] = (200, 30, 30)
SKILLS = {"pick": "", "place": ""}


class Exec(Executor):
    def __init__(self) -> None:
        self.issued = []

    def skills(self):
        return SKILLS

    def observe(self):
        return {"front": IMG}

    def execute(self, subtask, subtask_id, attempt):
        self.issued.append(subtask.instruction)
        return ExecutionReport("skill_done", 1, images={"front": IMG})


@pytest.fixture(scope="module")
def served_tiny_vlm(tmp_path_factory):
    """`hvla serve-vlm --build-tiny` in a subprocess on a free loopback port."""
    pytest.importorskip("transformers")
    model = tmp_path_factory.mktemp("served") / "tiny"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = procs.spawn(
        [sys.executable, "-m", "hvla_ros.cli", "serve-vlm", "--build-tiny", "--model", str(model), "--port", "0",
         "--max-new-tokens", "24", "--served-name", "tiny"], env=env)
    try:
        line = procs.wait_for_line(proc, "serving", timeout=120)
        yield line.rsplit(" at ", 1)[1].strip()
    finally:
        procs.stop(proc)


def test_served_tiny_vlm_answers_chat_completions_with_images(served_tiny_vlm):
    import urllib.request

    with urllib.request.urlopen(served_tiny_vlm + "/models", timeout=10) as r:
        assert json.load(r)["data"][0]["id"] == "tiny"
    chat = OpenAIChat(served_tiny_vlm, "tiny", timeout_s=60, retries=0)
    reply = chat.complete([Message("system", "json only"), Message("user", "plan this", (IMG,))])
    assert isinstance(reply, str)


def test_garbage_from_the_served_model_leads_to_bounded_reasks_and_a_clean_failure(served_tiny_vlm, tmp_path):
    reasoner = VLMReasoner(OpenAIChat(served_tiny_vlm, "tiny", timeout_s=60, retries=0), max_reasks=1)
    res = EpisodeRunner(reasoner, Exec(), tmp_path).run("put the red cube in the box", "http_tiny")
    assert not res.success and res.error_code == "planning_failed" and "after 2 tries" in res.error_msg


def test_bad_requests_are_refused_with_400(served_tiny_vlm):
    import urllib.error
    import urllib.request

    for body in (b"not json", json.dumps({"messages": []}).encode(),
                 json.dumps({"messages": [{"role": "user", "content": [
                     {"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]}).encode()):
        req = urllib.request.Request(served_tiny_vlm + "/chat/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400


def test_full_episode_over_http_with_scripted_replies(tmp_path):
    seen_images = []

    def reply(messages):
        seen_images.extend(im.shape for m in messages for im in m.images)
        text = messages[1].text
        if text.startswith("Goal:"):
            return "Here is the plan:\n```json\n" + json.dumps({"subtasks": [
                {"instruction": "pick up the red cube", "skill": "pick"},
                {"instruction": "place the red cube in the box", "skill": "place"}]}) + "\n```"
        if "post-condition hold" in text:
            return json.dumps({"status": "success", "reason": "looks right"})
        return json.dumps({"working_memory": "progress noted"})

    server = ChatServer(FunctionChat(reply), "scripted").start()
    try:
        ex = Exec()
        reasoner = VLMReasoner(OpenAIChat(server.base_url, "scripted", timeout_s=10, retries=1))
        res = EpisodeRunner(reasoner, ex, tmp_path).run("put the red cube in the box", "http")
    finally:
        server.stop()
    assert res.success, res.error_msg
    assert ex.issued == ["pick up the red cube", "place the red cube in the box"]
    assert seen_images and seen_images[0] == (48, 64, 3)  # base64 PNG round trip keeps the image


class _Recorder(BaseHTTPRequestHandler):
    """Answers after ``delay`` s with ``codes`` in turn (then 200); records headers."""

    codes: ClassVar[list[int]] = []
    delay = 0.0
    headers_seen: ClassVar[list[dict[str, str]]] = []
    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        type(self).calls += 1
        type(self).headers_seen.append(dict(self.headers))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(self.delay)
        code = self.codes.pop(0) if self.codes else 200
        body = json.dumps({"choices": [{"message": {"content": '{"ok": 1}'}}]} if code == 200
                          else {"error": {"message": "busy"}}).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except BrokenPipeError:  # the client timed out first, as the test intends
            pass


@pytest.fixture
def recorder():
    handler = type("H", (_Recorder,), {"codes": [], "delay": 0.0, "headers_seen": [], "calls": 0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        th.join(5)


def test_retries_with_backoff_on_5xx_and_429_then_succeeds(recorder, monkeypatch):
    handler, url = recorder
    handler.codes = [503, 429]
    monkeypatch.setenv("HVLA_TEST_KEY", "sk-test-123")
    chat = OpenAIChat(url, "m", api_key_env="HVLA_TEST_KEY", retries=2, backoff_s=0.05)
    t0 = time.monotonic()
    assert chat.complete([Message("user", "hi")]) == '{"ok": 1}'
    assert handler.calls == 3 and time.monotonic() - t0 >= 0.05 + 0.1
    assert all(h.get("Authorization") == "Bearer sk-test-123" for h in handler.headers_seen)


def test_client_errors_are_not_retried_and_retries_are_bounded(recorder):
    handler, url = recorder
    handler.codes = [400]
    with pytest.raises(ReasonerError, match="HTTP 400"):
        OpenAIChat(url, "m", retries=3, backoff_s=0.01).complete([Message("user", "hi")])
    assert handler.calls == 1
    handler.codes = [500] * 10
    with pytest.raises(ReasonerError, match="gave up after 3 tries"):
        OpenAIChat(url, "m", retries=2, backoff_s=0.01).complete([Message("user", "hi")])
    assert handler.calls == 1 + 3
    assert "Authorization" not in handler.headers_seen[0]  # no key in the environment: no header


def test_timeouts_and_unreachable_servers_fail_after_bounded_retries(recorder):
    handler, url = recorder
    handler.delay = 1.0
    t0 = time.monotonic()
    with pytest.raises(ReasonerError, match="gave up after 2 tries"):
        OpenAIChat(url, "m", timeout_s=0.2, retries=1, backoff_s=0.01).complete([Message("user", "hi")])
    assert time.monotonic() - t0 < 3.0
    with pytest.raises(ReasonerError, match="cannot reach"):
        OpenAIChat("http://127.0.0.1:9/v1", "m", timeout_s=1, retries=1, backoff_s=0.01).complete(
            [Message("user", "hi")])
