"""The operator commands against a running graph: ``hvla up`` in one process, ``hvla estop``,
``hvla status``, ``hvla pause`` and ``hvla cancel`` in others, over DDS only.

The e-stop must reach the refiner (the last node before the arm) and show in the status the
operator reads; pause (refused: no episode) and cancel must be answered by the planner; Ctrl-C/SIGTERM on
``hvla up`` must bring the graph down cleanly. The skill library holds only the ``observe``
hold skill: no goal is sent, and this test is about the operator's path, not the skills.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hvla_ros.testing import procs

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(400)]


def _hvla(*args: str, env: dict[str, str]) -> tuple[int, str]:
    out = subprocess.run([str(Path(sys.executable).parent / "hvla"), *args, "--timeout", "20"],
                         capture_output=True, text=True, timeout=120, check=False, env=env,
                         stdin=subprocess.DEVNULL)
    return out.returncode, out.stdout + out.stderr


def test_operator_commands_reach_a_running_graph(tmp_path: Path) -> None:
    skills_file = tmp_path / "skills.yaml"
    skills_file.write_text(yaml.safe_dump({"robot": "so101", "skills": {
        "observe": {"description": "hold", "policy": "hold", "n_action_steps": 8, "default_horizon_s": 1.0}}}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"sim": {"ros__parameters": {
        "image_height": 48, "image_width": 64, "camera_rate_hz": 10.0}}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    up = procs.spawn([str(Path(sys.executable).parent / "hvla"), "up", "task:=cube_in_box",
                      f"skills_file:={skills_file}", f"params_file:={params}", "refine:=false", "record:=false",
                      "--run-dir", str(tmp_path / "run")], env=env)
    try:
        procs.wait_for_line(up, "[hvla] graph up", timeout=240)

        code, text = _hvla("estop", "engage", "--reason", "operator test", env=env)
        assert code == 0 and "e-stop engaged" in text, text
        code, text = _hvla("status", env=env)
        # no goal was sent: no plan yet (exit 1), but the refiner's safety line is there
        assert "safety: E-STOP ENGAGED" in text, text
        assert "operator test" in text, text

        code, text = _hvla("estop", "release", env=env)
        assert code == 0 and "e-stop released" in text, text
        code, text = _hvla("status", env=env)
        assert "safety: E-STOP ENGAGED" not in text and "safety: " in text, text

        # the planner answers, and says why it refuses: there is no episode to pause
        code, text = _hvla("pause", env=env)
        assert code == 1 and "refused: no episode is running" in text, text
        code, text = _hvla("cancel", env=env)
        assert code == 0 and "cancelling 0 goal(s)" in text, text
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        out = procs.stop(up)
    assert up.returncode == 0, out[-4000:]
