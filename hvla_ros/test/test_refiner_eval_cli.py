"""hvla eval-refiner in the sim: anchor vs the shipped refiner, place after a scripted-expert pick."""

from __future__ import annotations

import json

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
    assert hvla(["eval-refiner", "--combine", *map(str, files)]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")}
    assert rows["anchor"][1:4] == ["8", "4", "50.0%"]  # seeds 0-7 pooled; the repeated seeds 0-1 count once
    assert rows["full"][1:5] == ["8", "8", "100.0%", "+50.0"]
    # Paired over the same seeds: full won the 4 seeds the anchor lost and lost none.
    assert rows["full"][-2:] == ["4/0", "0.12"]


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
