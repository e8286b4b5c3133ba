"""Episode log and resume: a process running an episode is killed with SIGKILL mid-episode; running
the same episode id again resumes from the log (plan, memory, progress) without redoing finished
subtasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

EPISODE_SCRIPT = textwrap.dedent('''
    import sys, time
    import numpy as np
    from hvla_ros.planner import (EpisodeRunner, ExecutionReport, Executor, MemoryUpdate, Plan, Reasoner,
                                  Reflection, Subtask, Verdict)

    log_dir, done_file = sys.argv[1], sys.argv[2]
    IMG = np.zeros((8, 8, 3), np.uint8)

    class Slow(Executor):
        def skills(self):
            return {"pick": "", "place": ""}
        def observe(self):
            return {"front": IMG}
        def execute(self, subtask, k, attempt):
            time.sleep(0.25)
            with open(done_file, "a") as f:
                f.write(f"{k} {attempt} {subtask.instruction}\\n")
            return ExecutionReport("skill_done", 1, images={"front": IMG})

    class Steps(Reasoner):
        name = "steps"
        def plan(self, ctx, completed=(), failed=None):
            return Plan(ctx.goal, tuple(Subtask(f"step {i}", "pick") for i in range(8)))
        def verify(self, ctx, subtask, report):
            # step 2 fails on its first attempt so the error register has content to restore
            first = not any(e.subtask_id == 2 for e in ctx.memory.errors)
            ok = not (subtask.instruction == "step 2" and first)
            return Verdict("success" if ok else "fail", "checked", {"last": subtask.instruction})
        def update_memory(self, ctx, subtask, verdict, report):
            return MemoryUpdate(f"did {subtask.instruction}")
        def reflect(self, ctx, subtask, verdict, attempt):
            return Reflection("slipped", "retry")

    res = EpisodeRunner(Steps(), Slow(), log_dir).run("count to eight", "resumable")
    print("RESULT", res.success, res.subtasks_succeeded, res.error_code, flush=True)
''')


def read_log(path):
    out = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # being written right now
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                assert line.startswith('{"seq": 999'), line  # only the torn line the test wrote
    return out


def test_kill_9_mid_episode_then_resume_from_the_log(tmp_path):
    script = tmp_path / "episode.py"
    script.write_text(EPISODE_SCRIPT)
    done = tmp_path / "done.txt"
    log_path = tmp_path / "logs" / "resumable.jsonl"
    cmd = [sys.executable, str(script), str(tmp_path / "logs"), str(done)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if log_path.exists() and sum(e["event"] == "checkpoint" and e["k"] >= 4 for e in read_log(log_path)):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the episode did not get to subtask 4")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    before = read_log(log_path)
    assert before[-1]["event"] != "episode_end"
    last_cp = [e for e in before if e["event"] == "checkpoint"][-1]
    done_before = done.read_text().splitlines()
    # A torn last line (killed mid-write) must not stop the resume.
    with open(log_path, "a") as f:
        f.write('{"seq": 999, "event": "issue", "k"')

    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert "RESULT True 8 none" in out.stdout, out.stdout + out.stderr
    after = read_log(log_path)
    resumed = [e for e in after if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["k"] == last_cp["k"]
    assert sum(e["event"] == "plan" for e in after) == 1  # the plan came from the log, not a new one
    executed = [line.split(" ", 2) for line in done.read_text().splitlines()]
    redone = executed[len(done_before):]
    # Nothing before the last checkpoint ran again; the rest ran exactly once more.
    assert [int(k) for k, _, _ in redone] == list(range(last_cp["k"], 8))
    assert sorted({int(k) for k, _, _ in executed}) == list(range(8))
    # Memory came back too: the error register entry of step 2 and the working memory.
    final_cp = [e for e in after if e["event"] == "checkpoint"][-1]
    assert [e["subtask_id"] for e in final_cp["memory"]["errors"]] == [2]
    assert final_cp["memory"]["world"] == "did step 7"
    assert after[-1]["event"] == "episode_end" and after[-1]["result"]["success"]

    # Running the finished episode again returns the recorded result without executing anything.
    n = len(done.read_text().splitlines())
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert "RESULT True 8 none" in again.stdout and len(done.read_text().splitlines()) == n
