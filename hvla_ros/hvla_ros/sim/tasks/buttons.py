"""Spring-loaded push buttons and indicator lamps, shared by the button tasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.sim.scene import COLORS, DARK, LAMP_OFF, LAMP_ON

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

HOUSING_HALF = (0.024, 0.024, 0.010)
CAP_RADIUS = 0.016
CAP_HALF_HEIGHT = 0.006
CAP_Z = 2 * HOUSING_HALF[2] + CAP_HALF_HEIGHT + 0.002  # cap centre above the housing origin
TRAVEL = 0.010
#: cap displacement (m) that counts as a press
PRESS_THRESHOLD = 0.006
LAMP_RADIUS = 0.012


def dim(rgba: Sequence[float], k: float = 0.55) -> list[float]:
    return [rgba[0] * k, rgba[1] * k, rgba[2] * k, 1.0]


def bright(rgba: Sequence[float]) -> list[float]:
    return [min(1.0, 0.45 + 0.8 * c) for c in rgba[:3]] + [1.0]


def add_button(spec: mujoco.MjSpec, color: str) -> None:
    """Housing body ``{color}_button`` with a sprung cap ``{color}_button_cap`` (slide joint)."""
    name = f"{color}_button"
    housing = spec.worldbody.add_body(name=name)
    housing.add_geom(name=f"{name}_housing", type=mujoco.mjtGeom.mjGEOM_BOX, size=list(HOUSING_HALF),
                     pos=[0, 0, HOUSING_HALF[2]], rgba=list(DARK))
    cap = housing.add_body(name=f"{name}_cap", pos=[0, 0, CAP_Z])
    cap.add_joint(name=f"{name}_press", type=mujoco.mjtJoint.mjJNT_SLIDE, axis=[0, 0, 1],
                  range=[-TRAVEL, 0.0], stiffness=250.0, damping=2.0, springref=0.0)
    cap.add_geom(name=f"{name}_cap", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                 size=[CAP_RADIUS, CAP_HALF_HEIGHT, 0], rgba=dim(COLORS[color]), mass=0.01)


def add_lamp(spec: mujoco.MjSpec, name: str, off: Sequence[float] = LAMP_OFF) -> None:
    """A static round lamp (geom and body ``name``) lying on the table, ``off`` coloured when dark."""
    body = spec.worldbody.add_body(name=name)
    body.add_geom(name=name, type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[LAMP_RADIUS, 0.004, 0],
                  pos=[0, 0, 0.004], rgba=list(off))


def button_geoms(color: str) -> list[str]:
    return [f"{color}_button_housing", f"{color}_button_cap"]


def cap_top(world: SimWorld, color: str) -> np.ndarray:
    """World position of the centre of the cap's top face (at rest position of the joint)."""
    return world.body_pos(f"{color}_button") + np.array([0.0, 0.0, CAP_Z + CAP_HALF_HEIGHT])


def cap_depth(world: SimWorld, color: str) -> float:
    """How far the cap is pushed in (m, positive)."""
    return -float(world.data.qpos[world.model.joint(f"{color}_button_press").qposadr[0]])


class PressDetector:
    """Turns cap displacements into a list of press events (rising edges)."""

    def __init__(self, colors: Sequence[str]) -> None:
        self.colors = list(colors)
        self.pressed: list[str] = []
        self.released: list[str] = []  # colours whose cap came back up after a press, in order
        self._down = dict.fromkeys(self.colors, False)
        self._adr: dict[str, int] = {}

    def bind(self, world: SimWorld) -> None:
        self._adr = {c: int(world.model.joint(f"{c}_button_press").qposadr[0]) for c in self.colors}

    def reset(self) -> None:
        self.pressed = []
        self.released = []
        self._down = dict.fromkeys(self.colors, False)

    def update(self, world: SimWorld) -> str | None:
        """Record new presses and releases; returns the colour pressed at this step, if any."""
        new = None
        q = world.data.qpos
        for c, adr in self._adr.items():
            depth = -q[adr]
            if not self._down[c] and depth > PRESS_THRESHOLD:
                self._down[c] = True
                self.pressed.append(c)
                new = c
            elif self._down[c] and depth < PRESS_THRESHOLD / 2:
                self._down[c] = False
                self.released.append(c)
        return new


def set_button_lit(world: SimWorld, color: str, lit: bool) -> None:
    rgba = COLORS[color]
    world.set_rgba(f"{color}_button_cap", bright(rgba) if lit else dim(rgba))


def set_lamp(world: SimWorld, name: str, on: bool, off: Sequence[float] = LAMP_OFF) -> None:
    world.set_rgba(name, LAMP_ON if on else off)
