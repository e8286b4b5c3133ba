"""SimWorld: the compiled model matches robot.py, targets are validated, rendering and ground truth."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from hvla_ros.robot import POSITION_LIMITS, SO101, SO101_BIMANUAL, base_joint_name
from hvla_ros.sim.world import SimWorld

SMALL = (96, 128)


@pytest.fixture(scope="module")
def world():
    w = SimWorld("cube_in_box", seed=3, image_size=SMALL)
    yield w
    w.close()


@pytest.mark.parametrize(("task", "robot"), [("cube_in_box", SO101), ("bimanual_handover", SO101_BIMANUAL)])
def test_joint_names_and_limits_match_robot_definition(task, robot):
    w = SimWorld(task, render=False)
    assert w.robot == robot
    assert w.joint_names == robot.joint_names
    for name in robot.joint_names:
        j = w.model.joint(name)
        lo, hi = POSITION_LIMITS[base_joint_name(name, robot)]
        assert j.range[0] == pytest.approx(lo, abs=1e-12) and j.range[1] == pytest.approx(hi, abs=1e-12)
        act = w.model.actuator(name)
        assert act.ctrlrange[0] == pytest.approx(lo, abs=1e-12) and act.ctrlrange[1] == pytest.approx(hi, abs=1e-12)
    assert set(robot.cameras) <= {w.model.camera(i).name for i in range(w.model.ncam)}
    assert w.camera_names == robot.cameras


def test_control_period_is_30hz_in_whole_steps(world):
    assert world.control_steps * world.timestep == pytest.approx(1 / 30)
    assert world.control_period == pytest.approx(1 / 30)


def test_targets_are_clipped_and_bad_targets_rejected(world):
    world.reset(3)
    q = np.full(6, 10.0)
    world.set_joint_targets(q)
    assert np.allclose(world.joint_targets(), world.upper_limits)
    with pytest.raises(ValueError, match="expected 6"):
        world.set_joint_targets(np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        world.set_joint_targets(np.array([0, 0, np.nan, 0, 0, 0]))


def test_servos_track_a_target(world):
    world.reset(3)
    target = world.home + np.array([0.3, 0.2, -0.2, 0.1, 0.4, 0.5])
    world.set_joint_targets(target)
    t0 = world.time
    world.step(int(1.5 / world.timestep))
    assert world.time == pytest.approx(t0 + 1.5, abs=1e-6)
    assert np.max(np.abs(world.joint_positions() - target)) < 0.03
    assert np.max(np.abs(world.joint_velocities())) < 0.05


def test_same_seed_same_rollout_different_seed_different_scene():
    a = SimWorld("cube_in_box", seed=5, render=False)
    b = SimWorld("cube_in_box", seed=5, render=False)
    assert np.array_equal(a.data.qpos, b.data.qpos)
    for w in (a, b):
        w.set_joint_targets(w.home + 0.2)
        w.step(200)
    assert np.array_equal(a.data.qpos, b.data.qpos)
    b.reset(6)
    assert not np.allclose(a.body_pos("red_cube"), b.body_pos("red_cube"))
    a.reset(6)
    assert np.array_equal(a.data.qpos, b.data.qpos)


def test_render_shapes_and_unknown_camera(world):
    for cam in world.camera_names:
        img = world.render(cam)
        assert img.shape == (*SMALL, 3) and img.dtype == np.uint8
        assert img.std() > 5  # not a blank frame
    with pytest.raises(ValueError, match="unknown camera"):
        world.render("nope")


def test_render_disabled_world_raises():
    w = SimWorld("cube_in_box", render=False)
    with pytest.raises(RuntimeError, match="render=False"):
        w.render("front")


def test_segmentation_ids_match_objects_and_pixels(world):
    world.reset(3)
    seg = world.render_segmentation("front")
    assert seg.shape == SMALL and seg.dtype == np.int32
    assert set(np.unique(seg)) <= {0, *world.object_ids.values()}
    for name in ("table", "arm", "red_cube", "box"):
        assert (seg == world.object_ids[name]).any(), name
    # the pixels labelled red_cube are red in the colour image
    rgb = world.render("front").astype(int)
    cube = rgb[seg == world.object_ids["red_cube"]]
    assert (cube[:, 0] > cube[:, 1] + 40).mean() > 0.8


def test_projection_lands_on_the_object(world):
    world.reset(3)
    seg = world.render_segmentation("front")
    vs, us = np.nonzero(seg == world.object_ids["red_cube"])
    u, v = world.project("front", world.body_pos("red_cube"))
    assert abs(u - us.mean()) < 3 and abs(v - vs.mean()) < 3
    fx, fy, cx, cy = world.camera_intrinsics("front")
    assert fx == fy > 0 and (cx, cy) == (SMALL[1] / 2, SMALL[0] / 2)


def test_model_is_compiled_with_the_real_so101_meshes(world):
    meshes = {world.model.mesh(i).name for i in range(world.model.nmesh)}
    assert "sts3215_03a_v1" in meshes and "moving_jaw_so101_v1" in meshes
    assert world.model.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST


def test_visual_meshes_are_light_copies_and_collision_keeps_the_originals(world):
    from hvla_ros.robot import so101_assets_dir
    from hvla_ros.sim.meshes import VISUAL_CELL, decimated_mesh, read_binary_stl

    path = so101_assets_dir() / "assets" / "upper_arm_so101_v1.stl"
    verts, faces = read_binary_stl(path)
    light_v, light_f = decimated_mesh(str(path))
    assert len(light_f) * 10 < len(faces)
    assert np.allclose(light_v.min(0), verts.min(0), atol=VISUAL_CELL)
    assert np.allclose(light_v.max(0), verts.max(0), atol=VISUAL_CELL)
    m = world.model
    for g in range(m.ngeom):
        if m.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH:
            name = m.mesh(m.geom_dataid[g]).name
            assert name.endswith("_visual") == (m.geom_group[g] == 2), name
