"""End to end: the real graph, each node in its own process over DDS, runs a sim goal to its end.

``hvla demo`` starts the simulator, perception, executor, refiner and planner from the graph
description, brings the lifecycle nodes up, sends the task's goal and follows it. The skills here
are small untrained policies the test builds (trained weights are not what this test is about):
what must hold is that every layer does its job over DDS until the planner ends the episode,
and that the operator gets the plan, the report and the bag.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hvla_ros.robot import JOINTS

pytestmark = [pytest.mark.ros, pytest.mark.slow, pytest.mark.timeout(900)]

H, W = 48, 64


def test_demo_runs_a_goal_to_its_end_over_dds(tmp_path: Path) -> None:
    import torch

    from hvla_ros.bag import read_bag
    from hvla_ros.executor.training import save_untrained_policy

    torch.set_num_threads(1)
    skills: dict[str, dict[str, object]] = {}
    for name in ("pick", "place"):
        policy = save_untrained_policy(tmp_path / "skills" / name, cameras=["front"], joint_names=JOINTS,
                                       image_hw=(H, W), down_dims=(16, 32, 64), backbone_stages=1)
        # 100 DDIM steps: 0.25-0.4 s of inference on one thread, about as slow as the shipped
        # skills in the graph on 2 cores (what the receding-horizon schedule must absorb)
        skills[name] = {"description": f"{name} an object", "policy": str(policy), "cameras": ["front"],
                        "n_action_steps": 8, "denoising_steps": 100, "default_horizon_s": 2.0}
    skills["observe"] = {"description": "hold", "policy": "hold", "n_action_steps": 8, "default_horizon_s": 1.0}
    skills_file = tmp_path / "skills.yaml"
    skills_file.write_text(yaml.safe_dump({"robot": "so101", "skills": skills}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "sim": {"ros__parameters": {"image_height": H, "image_width": W, "camera_rate_hz": 15.0}},
        "executor": {"ros__parameters": {"max_observation_age_s": 1.0, "stale_abort_s": 20.0}},
        "planner": {"ros__parameters": {"max_attempts": 1, "max_replans": 0}},
    }))
    run_dir = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "hvla"), "demo", "task:=cube_in_box", "seed:=1",
           f"skills_file:={skills_file}", f"params_file:={params}", "refine:=false",
           "--run-dir", str(run_dir), "--timeout", "600"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=840, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = out.stdout + out.stderr
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted((run_dir / "logs").glob("*.log")))
    # 0: goal succeeded, 1: goal failed cleanly; anything else is a graph or operator error.
    assert out.returncode in (0, 1), text + logs
    assert "[hvla] all lifecycle nodes active" in text
    # the episode starts from the task's initial state (timed cues start with the goal)
    assert "[hvla] simulator reset task 'cube_in_box' with seed 1" in text
    assert "1. [pick] pick up the red cube" in text and "2. [place] place the red cube in the box" in text
    verdict = re.search(r"goal (SUCCEEDED|FAILED) in", text)
    assert verdict, text
    # beside the planner's verdict, the simulator's own judgement (untrained skills: not done)
    truth = re.search(r"simulator ground truth: (task done|task not done)", text)
    assert truth, text
    if verdict.group(1) == "SUCCEEDED":
        assert truth.group(1) == "task done", text

    report = run_dir / "report" / "report.html"
    assert f"episode report: {report}" in text and report.is_file()
    page = report.read_text()
    assert "put the red cube in the box" in page and "<img src=" in page

    # The planner logged every stage of Algorithm 1 for each subtask it issued.
    log_file = next((run_dir / "episodes").glob("*.jsonl"))
    events = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "episode_start" and kinds[-1] == "episode_end"
    assert kinds.count("issue") >= 1 and kinds.count("issue") == kinds.count("verdict")

    # The bag holds the episode: camera frames, joint states and the commands the arm received.
    messages = read_bag(run_dir / "bag")
    topics = {m.topic for m in messages}
    assert {"/joint_states", "/cameras/front/image_raw", "/arm_controller/joint_trajectory",
            "/executor/anchor_chunks", "/planner/plan"} <= topics, sorted(topics)
    _assert_receding_horizon(messages, step_s=1.0 / 30.0, n_action_steps=8)


def _assert_receding_horizon(messages, step_s: float, n_action_steps: int) -> None:
    """Chunks are predicted from observations n_action_steps apart on the graph's clock (the
    simulator's), or, when inference takes longer than that, as soon as the previous chunk is out:
    never more often (the executor once replanned every 5-6 steps, with wall-clock latency on the
    simulator's clock) and never later than the previous chunk's age plus two steps."""
    import numpy as np

    from hvla_ros.bag import deserialize

    def stamp(msg) -> float:
        return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9

    # Graph time when a chunk was published: the newest joint state's stamp recorded before it.
    js = [(m.timestamp_ns, stamp(deserialize(m))) for m in messages if m.topic == "/joint_states"]
    js_wall = np.array([w for w, _ in js])
    js_sim = np.array([s for _, s in js])
    per_subtask: dict[int, list[tuple[float, float]]] = {}
    for m in messages:
        if m.topic != "/executor/anchor_chunks":
            continue
        c = deserialize(m)
        i = int(np.searchsorted(js_wall, m.timestamp_ns, side="right")) - 1
        if i >= 0:
            per_subtask.setdefault(c.subtask_id, []).append((stamp(c), js_sim[i] - stamp(c)))
    checked = 0
    for sid, rows in per_subtask.items():
        if len(rows) < 4:
            continue
        stamps = np.array([r[0] for r in rows])
        ages = np.array([r[1] for r in rows]) / step_s  # observation -> chunk out, in steps
        spacing = np.diff(stamps) / step_s
        med, age = float(np.median(spacing)), float(np.median(ages[:-1]))
        assert med >= n_action_steps - 1.5, (sid, spacing.round(1).tolist())
        assert med <= max(n_action_steps + 2.0, age + 2.0), (sid, spacing.round(1).tolist(), ages.round(1).tolist())
        checked += 1
    assert checked, {k: len(v) for k, v in per_subtask.items()}


def test_shipped_pick_lifts_the_cube_through_the_graph(tmp_path: Path) -> None:
    """What ``make demo`` runs: the shipped skills and refiner, the embedded simulator at its
    configured speed, the rule-based reasoner. The pick skill must lift the cube through the real
    graph (by the planner's verifier, which counts a rise of 14 px of 240, within its attempts: 16/20
    seeds on the first attempt in benchmarks/bench_graph.py, 2026-12-06). The whole goal is not
    required: place after a learned pick misses on some seeds (see hvla_ros/skills/README.md); when
    the planner says it succeeded, the simulator's ground truth must agree."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"planner": {"ros__parameters": {"max_replans": 0}}}))
    run_dir = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "hvla"), "demo", "task:=cube_in_box", "seed:=1", "record:=false",
           f"params_file:={params}", "--run-dir", str(run_dir), "--timeout", "300"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=480, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = out.stdout + out.stderr
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted((run_dir / "logs").glob("*.log")))
    assert out.returncode in (0, 1), text + logs
    log_file = next((run_dir / "episodes").glob("*.jsonl"))
    verdicts = [e for e in (json.loads(line) for line in log_file.read_text().splitlines() if line.strip())
                if e["event"] == "verdict"]
    pick = [v for v in verdicts if v["k"] == 0]
    assert any(v["status"] == "success" for v in pick), [v["reason"] for v in pick]
    if "goal SUCCEEDED" in text:
        assert "simulator ground truth: task done" in text, text
