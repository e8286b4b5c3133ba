"""The task suite: ids, goals and subtasks follow the contract; seeded resets; visible cues."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hvla_ros.sim.tasks import TASKS, make_task
from hvla_ros.sim.tasks.buttons import cap_depth
from hvla_ros.sim.world import SimWorld

GOALS = {
    "cube_in_box": "put the red cube in the box",
    "pen_in_holder": "push the pen into the holder",
    "stack_blue_on_yellow": "stack the blue cube on the yellow cube",
    "open_drawer": "open the drawer",
    "observe_then_pick": "watch which cube lights up, then put that cube in the box",
    "rearrange_and_restore": "move the cubes off the mat, then put them back where they were",
    "try_until_fits": "insert the peg into the slot that accepts it",
    "rank_by_trial": "press each button once, then press again the one that lit the most lamps",
    "button_sequence": "press the buttons in the order they flashed",
    "bimanual_handover": "hand the cube from the left arm to the right arm and put it in the box",
}
SKILLS = {"pick", "place", "push", "press", "open_drawer", "observe", "handover"}
C = "(red|green|blue|yellow)"
INSTRUCTION_PATTERNS = [
    rf"pick up the {C} cube", rf"place the {C} cube in the box", "push the pen into the holder",
    "place the blue cube on the yellow cube", "pull the drawer open", "watch the cue",
    rf"place the {C} cube beside the mat", rf"place the {C} cube back on the mat", "pick up the peg",
    "insert the peg into slot [123]", rf"press the {C} button", "watch the buttons flash",
    "pick up the cube with the left arm", "hand the cube to the right arm", "place the cube in the box",
]


def _movable_state(w: SimWorld) -> np.ndarray:
    return np.concatenate([w.data.qpos, w.model.body_pos.ravel(), w.model.geom_rgba.ravel()])


def test_registry_has_the_ten_contract_tasks():
    assert set(TASKS) == set(GOALS)
    for name, goal in GOALS.items():
        assert TASKS[name].goal == goal
    assert TASKS["bimanual_handover"].robot_name == "so101_bimanual"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope")


@pytest.mark.parametrize("task", sorted(GOALS))
def test_seeded_reset_and_contract_subtasks(task):
    w = SimWorld(task, seed=1, render=False)
    first = _movable_state(w)
    subtasks = w.task.subtasks()
    w.set_joint_targets(w.home + 0.1)
    w.step(100)
    w.reset(1)
    assert np.array_equal(_movable_state(w), first), "same seed must give the same initial state"
    w.reset(2)
    assert not np.allclose(_movable_state(w), first), "poses not randomised across seeds"
    assert subtasks
    for st in subtasks:
        assert st.skill in SKILLS
        assert any(re.fullmatch(p, st.instruction) for p in INSTRUCTION_PATTERNS), st.instruction
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in st.parameters.items())
    assert not w.success()
    with pytest.raises(IndexError):
        w.subtask_success(len(w.task.subtasks()))
    assert set(w.task.segmentation_objects()) <= set(w.object_ids)


def test_rearrange_target_px_is_the_original_cube_position_in_the_front_image():
    w = SimWorld("rearrange_and_restore", seed=4, image_size=(96, 128))
    try:
        seg = w.render_segmentation("front")
        backs = [s for s in w.task.subtasks() if "target_px" in s.parameters]
        assert [s.parameters["color"] for s in backs] == ["red", "green"]
        for s in backs:
            u, v = (int(x) for x in s.parameters["target_px"].split(","))
            vs, us = np.nonzero(seg == w.object_ids[f"{s.parameters['color']}_cube"])
            assert abs(u - us.mean()) < 3 and abs(v - vs.mean()) < 3
    finally:
        w.close()


def _changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a.astype(int) - b.astype(int)).sum(axis=2) > 60).mean())


def test_observe_then_pick_cue_is_visible_then_goes_dark():
    w = SimWorld("observe_then_pick", seed=2, image_size=(96, 128), cameras=["front"])
    try:
        lit = w.render("front")
        target_pad = w.object_ids[f"{w.task.target}_pad"]
        mask = w.render_segmentation("front") == target_pad
        assert mask.sum() > 3
        w.step(int(1.2 / w.timestep))
        dark = w.render("front")
        assert np.abs(lit[mask].astype(int) - dark[mask].astype(int)).sum(axis=1).mean() > 100
        assert w.task.subtask_success(w, 0)
    finally:
        w.close()


def test_button_sequence_flashes_each_button_in_order():
    w = SimWorld("button_sequence", seed=3, image_size=(96, 128), cameras=["front"])
    try:
        order = w.task.order
        assert sorted(order) == ["blue", "green", "red"]
        before = w.render("front")
        dim_rgba = w.model.geom_rgba.copy()
        seen = []
        while w.time < w.task.flash_end:
            w.step(w.control_steps)
            lit = w.task.flashing(w.time)
            if lit and (not seen or seen[-1] != lit):
                seen.append(lit)
                assert _changed_fraction(before, w.render("front")) > 0.002
        assert seen == order
        assert np.array_equal(w.model.geom_rgba, dim_rgba)  # all dim again
    finally:
        w.close()


def test_button_sequence_lamp_shows_the_last_button_let_go():
    """The visible post-condition of a press: the button's lamp lights when the cap comes back up
    and stays lit until another button is let go; flashing lights no lamp."""
    w = SimWorld("button_sequence", seed=3, image_size=(96, 128), cameras=["front"])
    try:
        while w.time < w.task.flash_end:
            w.step(w.control_steps)
        assert w.task.indicated is None
        dark = w.render("front")
        lamps = {c: w.model.geom(f"{c}_lamp").id for c in ("red", "green", "blue")}

        def lit() -> list[str]:
            return [c for c, g in lamps.items() if w.model.geom_rgba[g][0] > 0.9]

        assert lit() == []
        for color in ("green", "red"):
            adr = w.model.joint(f"{color}_button_press").qposadr[0]
            w.data.qpos[adr] = -0.009  # push the cap in: nothing lights while it is held down
            w.step(1)
            assert cap_depth(w, color) > 0.006 and lit() == ([] if color == "green" else ["green"])
            w.data.qpos[adr] = 0.0
            w.step(40)
            assert lit() == [color] and w.task.indicated == color
        assert _changed_fraction(dark, w.render("front")) > 0.0004  # the lit lamp: about 10 px at 96x128
        assert w.task.detector.pressed == ["green", "red"]
    finally:
        w.close()


def test_rank_by_trial_press_lights_that_buttons_lamps():
    w = SimWorld("rank_by_trial", seed=5, image_size=(96, 128), cameras=["front"])
    try:
        dark = w.render("front")
        assert w.task.lamps_lit(w) == 0
        for color in ("red", "green", "blue"):
            adr = w.model.joint(f"{color}_button_press").qposadr[0]
            w.data.qpos[adr] = -0.009  # push the cap in
            w.step(1)
            assert cap_depth(w, color) > 0.006
            w.data.qpos[adr] = 0.0
            w.step(40)
            assert w.task.lamps_lit(w) == w.task.counts[color]
        assert sorted(w.task.counts.values()) == [1, 2, 3]
        assert _changed_fraction(dark, w.render("front")) > 0.002
        assert w.task.detector.pressed == ["red", "green", "blue"]
        assert not w.success()  # the best button still has to be pressed again
    finally:
        w.close()
