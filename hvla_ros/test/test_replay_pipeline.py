"""A recorded bag replayed through perception and the executor, with predicted vs recorded actions.

The bag is a real recording (scripted expert on the simulator, written by ``hvla record-demos
--bag``); perception and the executor run as their own processes with use_sim_time; ``hvla
replay --clock --subtask ...`` plays the bag, sends the subtask (with a distractor box) to
perception and the executor, and writes the comparison report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hvla_ros.robot import JOINTS

pytestmark = pytest.mark.ros

H, W = 32, 40


def _node(module: str, log: Path, *params: str) -> subprocess.Popen:
    args = [a for p in params for a in ("-p", p)]
    return subprocess.Popen([sys.executable, "-m", f"hvla_ros.nodes.{module}", "--ros-args",
                             "-p", "use_sim_time:=true", *args],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_replay_through_perception_and_executor(tmp_path: Path) -> None:
    import torch

    from hvla_ros.executor.training import save_untrained_policy
    from hvla_ros.sim.recorder import record_demos

    torch.set_num_threads(1)
    summary = record_demos("cube_in_box", 1, tmp_path / "demos", image_size=(H, W), cameras=["front"],
                           bag=True)
    bag = next((tmp_path / "demos" / "bags").iterdir())
    assert len(summary.kept) == 1

    policy = save_untrained_policy(tmp_path / "skills" / "pick", cameras=["front"], joint_names=JOINTS,
                                   image_hw=(H, W), down_dims=(16, 32, 64), backbone_stages=1)
    skills = tmp_path / "skills.yaml"
    skills.write_text(yaml.safe_dump({"robot": "so101", "skills": {"pick": {
        "description": "pick up an object", "policy": str(policy), "cameras": ["front"],
        "n_action_steps": 8, "denoising_steps": 2, "default_horizon_s": 2.0}}}))

    perception = _node("perception_node", tmp_path / "perception.log", "cameras:=['front']")
    executor = _node("executor_node", tmp_path / "executor.log", f"skills_file:={skills}",
                     "torch_threads:=1", "max_observation_age_s:=1.0", "stale_abort_s:=30.0")
    report = tmp_path / "replay_report.json"
    try:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "hvla"), "replay", str(bag), "--rate", "1", "--clock",
             "--subtask", "pick:pick up the red cube", "--box", f"front:2,2,{W // 3},{H // 3}",
             "--report", str(report), "--wait-for-subscribers", "20"],
            capture_output=True, text=True, timeout=240, check=False)
        logs = "\n".join(f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-3000:]}" for n in ("perception", "executor"))
        assert out.returncode == 0, out.stdout + out.stderr + logs
        result = json.loads(report.read_text())
        assert result["chunks"] >= 2, out.stdout + logs
        assert result["compared_steps"] >= 8
        assert set(result["per_joint_mean_abs_error_rad"]) == set(JOINTS)
        assert 0 <= result["mean_abs_error_rad"] < 10
    finally:
        _stop(perception)
        _stop(executor)
