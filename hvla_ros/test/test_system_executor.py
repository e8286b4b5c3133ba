"""The in-process executor (perception + skills + safety on the sim) used by the end-to-end
benchmarks: its settle lets simulated time pass with the arm held."""

from __future__ import annotations

import numpy as np
import pytest

from hvla_ros.system import SimSystemExecutor, SystemConfig


@pytest.fixture
def world():
    from hvla_ros.sim.world import SimWorld

    w = SimWorld("cube_in_box", seed=0, image_size=(48, 64))
    yield w
    w.close()


def test_settle_runs_the_physics_with_the_arm_held(world):
    """A cube let go 5 cm above the table has landed after the settle; the arm stays at its
    targets and the images returned are of the settled scene."""
    executor = SimSystemExecutor(world, library=None, config=SystemConfig(image_size=(48, 64)))  # type: ignore[arg-type]
    world.step(30)
    held = world.joint_positions().copy()
    x, y, z = world.body_pos("red_cube")
    world.set_free_pose("red_cube", [x, y, z + 0.05])
    before = executor.observe()
    t0 = float(world.time)
    after = executor.settle(1.0)
    assert float(world.time) - t0 == pytest.approx(1.0, abs=world.control_period / 2)
    assert world.body_pos("red_cube")[2] == pytest.approx(z, abs=0.005)
    np.testing.assert_allclose(world.joint_positions(), held, atol=0.02)
    assert set(after) == set(world.camera_names)
    assert not np.array_equal(after["front"], before["front"])  # the cube moved in the image
    t1 = float(world.time)
    executor.settle(0.0)
    assert float(world.time) == t1
