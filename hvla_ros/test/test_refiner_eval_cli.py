"""hvla eval-refiner in the sim: anchor vs the shipped refiner, place after a scripted-expert pick."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

from hvla_ros.cli import main as hvla


@pytest.mark.slow
def test_eval_refiner_runs_place_after_an_expert_pick_with_the_shipped_refiner(tmp_path, capsys, monkeypatch):
    from hvla_ros.refiner.runtime import shipped_refiner_dir

    monkeypatch.setenv("MUJOCO_GL", "egl")
    out = tmp_path / "eval.json"
    rc = hvla(["eval-refiner", "--task", "cube_in_box", "--seeds", "0", "--variants", "anchor,full",
               "--expert-subtasks", "1", "--refiners", str(shipped_refiner_dir().parent), "--threads", "1",
               "--out", str(out)])
    assert rc == 0
    table = capsys.readouterr().out
    assert "anchor" in table and "+7.8" in table and "compactness place [full]" in table
    rows = json.loads(out.read_text())["tasks"]["cube_in_box"]
    assert set(rows) == {"anchor", "full"}
    for v in ("anchor", "full"):
        (ep,) = rows[v]["episodes"]
        assert rows[v]["n"] == 1 and len(ep["subtasks"]) == 2
        assert ep["subtasks"][0] is True  # the scripted expert's pick
    # The refiner ran in the loop on every place chunk; the anchor variant refines nothing.
    assert rows["full"]["episodes"][0]["refined_chunks"] > 0 and rows["anchor"]["episodes"][0]["refined_chunks"] == 0

    # Variants run in separate processes combine into one table.
    part = tmp_path / "anchor_only.json"
    doc = json.loads(out.read_text())
    doc["tasks"]["cube_in_box"].pop("full")
    part.write_text(json.dumps(doc))
    full_only = tmp_path / "full_only.json"
    doc = json.loads(out.read_text())
    doc["tasks"]["cube_in_box"].pop("anchor")
    full_only.write_text(json.dumps(doc))
    assert hvla(["eval-refiner", "--combine", str(full_only), str(part)]) == 0
    lines = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith(("anchor", "full"))]
    assert lines == ["anchor", "full"]


def test_eval_refiner_needs_refiners_for_refined_variants(capsys):
    assert hvla(["eval-refiner", "--task", "cube_in_box", "--variants", "full"]) == 2


def test_combine_pools_a_variants_seed_ranges(tmp_path, capsys):
    def doc(variant: str, seeds: range, wins: set[int]) -> dict:
        eps = [{"seed": s, "subtasks": [True, s in wins], "success": s in wins, "safety_holds": 0} for s in seeds]
        k = sum(e["success"] for e in eps)
        return {"tasks": {"cube_in_box": {variant: {"success": k / len(eps), "successes": k, "n": len(eps),
                                                   "episodes": eps, "compactness": {}}}}}

    files = []
    for name, d in {"a0": doc("anchor", range(0, 4), {0, 1, 2}), "a1": doc("anchor", range(4, 8), {4}),
                    "f0": doc("full", range(0, 8), set(range(8))), "dup": doc("anchor", range(0, 2), set())}.items():
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(json.dumps(d))
    pooled = tmp_path / "pooled.json"
    assert hvla(["eval-refiner", "--combine", *map(str, files), "--out", str(pooled)]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")}
    assert rows["anchor"][1:4] == ["8", "4", "50.0%"]  # seeds 0-7 pooled; the repeated seeds 0-1 count once
    assert rows["full"][1:5] == ["8", "8", "100.0%", "+50.0"]
    # Paired over the same seeds: full won the 4 seeds the anchor lost and lost none.
    assert rows["full"][-2:] == ["4/0", "0.12"]
    # The pooled table as a result file: the same figures, with its date and machine.
    record = json.loads(pooled.read_text())
    assert record["date"] and record["machine"]["cores"] and record["sources"] == [f.name for f in files]
    table = record["tasks"]["cube_in_box"]
    assert list(table) == ["anchor", "full"]
    assert (table["anchor"]["n"], table["anchor"]["successes"]) == (8, 4)
    assert table["full"]["vs_anchor"] == {"won": 4, "lost": 0, "mcnemar_p": 0.125}
    assert table["full"]["ci95"][0] > 0.6 and len(table["full"]["episodes"]) == 8


def test_paired_comparison_and_interval():
    from hvla_ros.refiner.cmd_eval import paired_comparison, wilson_interval

    def eps(wins: set[int], seeds: range = range(10)) -> list[dict]:
        return [{"seed": s, "success": s in wins} for s in seeds]

    # won 3 (seeds 5-7), lost 1 (seed 0), seeds 8-9 only in one run: not compared
    assert paired_comparison(eps({0, 1, 2}, range(8)), eps({1, 2, 5, 6, 7, 8, 9})) == (3, 1, 0.625)
    assert paired_comparison(eps({1}), eps({1})) == (0, 0, 1.0)
    won, lost, p = paired_comparison(eps(set(), range(12)), eps(set(range(12)), range(12)))
    assert (won, lost) == (12, 0) and p < 0.001
    lo, hi = wilson_interval(36, 50)
    assert 0.58 < lo < 0.59 and 0.82 < hi < 0.84  # 72% of 50
    assert wilson_interval(0, 0) == (0.0, 1.0)


class _CountingRunner:
    """Stands in for SkillRunner: 3 chunks of 8 fresh steps whose shoulder_pan targets encode
    (chunk, step) as ``q0 + 0.002 * (20 * chunk + step)``; records when each was requested."""

    n_obs_steps = 1
    step_period = 1 / 30
    fresh = 8
    base = 0.0
    instances: ClassVar[list[_CountingRunner]] = []

    def __init__(self, skill, instruction, horizon_s, max_obs_age_s):
        from hvla_ros.robot import SO101

        self.joint_names = SO101.joint_names
        self.steps_planned = 0
        self.requests: list[tuple[float, float]] = []  # (now, latency_s)
        _CountingRunner.instances.append(self)

    @property
    def done(self) -> bool:
        return self.steps_planned >= 3 * self.fresh

    def next_chunk(self, history, now, latency_s=0.0):
        from hvla_ros.executor.runner import PlannedChunk

        c = self.steps_planned // self.fresh
        n = self.fresh + round(latency_s / self.step_period)
        q0 = np.array([history[-1].joints[j] for j in self.joint_names])
        positions = np.repeat(q0[None, :], n, axis=0)
        positions[:, 0] = self.base + 0.002 * (20 * c + np.arange(n))
        self.requests.append((now, latency_s))
        self.steps_planned += self.fresh
        self.last_fresh_steps = self.fresh
        return PlannedChunk("pick", c, history[-1].stamp, self.step_period, self.joint_names, positions)


@pytest.mark.parametrize("latency", [0, 7])
def test_latency_steps_execute_each_chunk_after_its_stale_head(monkeypatch, latency):
    """--latency-steps N: the arm runs the previous chunk for N steps after each observation, then
    steps N..N+7 of the new one; the next observation is taken when step 8 of the chunk is due."""
    import hvla_ros.executor.runner as runner_mod
    from hvla_ros.refiner.cmd_eval import run_episode
    from hvla_ros.sim.world import SimWorld

    monkeypatch.setenv("MUJOCO_GL", "egl")
    _CountingRunner.instances = []
    monkeypatch.setattr(runner_mod, "SkillRunner", _CountingRunner)
    world = SimWorld("cube_in_box", image_size=(48, 64))
    try:
        world.reset(0)
        _CountingRunner.base = float(world.joint_positions()[0])
        executed: list[float] = []
        set_targets = world.set_joint_targets

        def record(q):
            executed.append(float(q[0]))
            set_targets(q)

        monkeypatch.setattr(world, "set_joint_targets", record)
        lib = type("Lib", (), {"get": staticmethod(lambda name: name)})()
        run_episode(world, lib, 0, None, horizon_s=None, cameras=[], latency_steps=latency)
    finally:
        world.close()
    first = _CountingRunner.instances[0]
    # Every chunk carries the N stale steps on top of its 8 fresh ones ...
    assert [lat for _, lat in first.requests] == pytest.approx([latency / 30] * 3)
    # ... and is asked for 8 steps after the previous one (the arm finishes it meanwhile).
    t = [now for now, _ in first.requests]
    assert np.diff(t) == pytest.approx([8 / 30, 8 / 30], abs=1e-6)
    codes = np.rint((np.array(executed[:24]) - first.base) / 0.002).astype(int).tolist()
    expected = [20 * c + k for c in range(3) for k in range(latency, latency + 8)]
    assert codes == expected
