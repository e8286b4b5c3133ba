"""The episode report is a page a browser renders: checked in headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from hvla_ros.operator import KeyFrame
from hvla_ros.planner.episode_log import EpisodeLog
from hvla_ros.report import read_events, summarize, write_report


def _episode_log(tmp_path: Path) -> Path:
    log = EpisodeLog(tmp_path, "ep_test_1")
    log.write("episode_start", goal="put the red cube in the box", episode_id="ep_test_1")
    log.write("plan", version=1, reason="initial", plan={"subtasks": [
        {"skill": "pick", "instruction": "pick up the red cube", "post": {"text": "red cube lifted"},
         "horizon_s": 8.0},
        {"skill": "place", "instruction": "place the red cube in the box", "post": {"text": "cube in box"},
         "horizon_s": 8.0}]})
    log.write("issue", k=0, attempt=1, subtask={"skill": "pick", "instruction": "pick up the red cube"})
    log.write("report", k=0, attempt=1, termination="horizon", steps=240)
    log.write("verdict", k=0, attempt=1, status="fail", reason="no red blob above the table")
    log.write("reflection", k=0, attempt=1, diagnosis="grasp missed <the cube>", recovery="retry")
    log.write("issue", k=0, attempt=2, subtask={"skill": "pick", "instruction": "pick up the red cube"})
    log.write("report", k=0, attempt=2, termination="horizon", steps=240)
    log.write("verdict", k=0, attempt=2, status="success", reason="red blob lifted")
    log.write("memory", k=0, working_memory="red cube is in the gripper")
    log.write("episode_end", state="failed", error_msg="subtask 2 failed 3 times")
    log.close()
    return log.path


def test_summary_folds_the_log(tmp_path: Path) -> None:
    s = summarize(read_events(_episode_log(tmp_path)))
    assert s.goal == "put the red cube in the box" and s.state == "failed"
    assert [(a.k, a.attempt, a.verdict) for a in s.attempts] == [(0, 1, "fail"), (0, 2, "success")]
    assert s.attempts[0].recovery == "retry" and s.attempts[0].steps == 240
    assert s.working_memory == "red cube is in the gripper"


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make test installs it)")
    out = tmp_path / "report"
    out.mkdir()
    image = np.zeros((48, 64, 3), np.uint8)
    image[10:30, 20:40] = (255, 0, 0)
    cv2.imwrite(str(out / "000_raw.jpg"), image)
    frames = [KeyFrame(tag="subtask 1 attempt 1", t=0.0, files={"raw": "000_raw.jpg"})]
    page = write_report(out, _episode_log(tmp_path), frames, {"task": "cube_in_box"})
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert "put the red cube in the box" in dom
    assert "grasp missed &lt;the cube&gt;" in dom  # text is escaped, not injected
    assert "000_raw.jpg" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    png = cv2.imread(str(shot))
    assert png is not None and png.shape[0] > 100
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 10, "the page rendered blank"
