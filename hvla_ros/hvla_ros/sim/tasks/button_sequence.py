"""button_sequence: "press the buttons in the order they flashed" (memory).

Three buttons (red, green, blue) stand in a row. At the start they flash one after another
(cap turns bright for ``FLASH_ON`` s, ``FLASH_GAP`` s apart) in a random order, then all stay dim.
Behind each button lies an indicator lamp (``{color}_lamp``) that lights when its button is let
go after a press and stays lit until another button is released: the visible post-condition of
a press (what the verifier and the planner's early stop look for). The lamps are dark-housing
coloured when off and pale yellow when lit, outside the skills' keypoint palette.
Success: the first three presses follow the flashed order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.sim.expert import Commander
from hvla_ros.sim.scene import DARK
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.buttons import (
    PressDetector,
    add_button,
    add_lamp,
    button_geoms,
    cap_top,
    set_button_lit,
    set_lamp,
)

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

COLORS3 = ("red", "green", "blue")
FLASH_START = 0.2
FLASH_ON = 0.5
FLASH_GAP = 0.25
PRESS_DEPTH = 0.015
#: where a button's indicator lamp lies relative to the button (m; +x is away from the arm)
LAMP_OFFSET = (0.065, 0.0, 0.0)
#: an unlit indicator: the housing's colour (the shared grey-ish LAMP_OFF counts as grey in the
#: skills' keypoint palette)
LAMP_OFF_RGBA = DARK


def lamp_name(color: str) -> str:
    return f"{color}_lamp"


def place_buttons_in_row(world: SimWorld, rng: np.random.Generator, colors: tuple[str, ...]) -> None:
    """Buttons in a row across the table (shuffled colours, jittered positions)."""
    order = list(rng.permutation(len(colors)))
    x0 = rng.uniform(0.20, 0.24)
    ys = np.array([-0.08, 0.0, 0.08]) + rng.uniform(-0.015, 0.015)
    for slot, i in enumerate(order):
        x = x0 + rng.uniform(-0.012, 0.012)
        world.set_static_pose(f"{colors[i]}_button", [x, ys[slot] + rng.uniform(-0.006, 0.006), 0.0])


class ButtonSequence(Task):
    name = "button_sequence"
    goal = "press the buttons in the order they flashed"
    kind = "memory"

    def __init__(self) -> None:
        self.detector = PressDetector(COLORS3)
        self.order: list[str] = list(COLORS3)

    def build(self, spec: mujoco.MjSpec) -> None:
        for c in COLORS3:
            add_button(spec, c)
            add_lamp(spec, lamp_name(c), off=LAMP_OFF_RGBA)

    def bind(self, world: SimWorld) -> None:
        self.detector.bind(world)

    def segmentation_objects(self) -> dict[str, list[str]]:
        objs = {f"{c}_button": button_geoms(c) for c in COLORS3}
        objs.update({lamp_name(c): [lamp_name(c)] for c in COLORS3})
        return objs

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        place_buttons_in_row(world, rng, COLORS3)
        self.order = [COLORS3[i] for i in rng.permutation(3)]
        self.detector.reset()
        self._lit: str | None = None
        self.indicated: str | None = None  # the button whose lamp is lit
        for c in COLORS3:
            set_button_lit(world, c, False)
            pos = world.model.body(f"{c}_button").pos + np.array(LAMP_OFFSET)  # set above, before mj_forward
            world.set_static_pose(lamp_name(c), pos.tolist())
            set_lamp(world, lamp_name(c), False, off=LAMP_OFF_RGBA)

    @property
    def flash_end(self) -> float:
        return FLASH_START + 3 * (FLASH_ON + FLASH_GAP)

    def flashing(self, t: float) -> str | None:
        """The colour lit at time ``t`` (None between and after flashes)."""
        k, r = divmod(t - FLASH_START, FLASH_ON + FLASH_GAP)
        if t < FLASH_START or k >= 3 or r >= FLASH_ON:
            return None
        return self.order[int(k)]

    def update(self, world: SimWorld) -> None:
        lit = self.flashing(world.time)
        if lit != self._lit:
            if self._lit is not None:
                set_button_lit(world, self._lit, False)
            if lit is not None:
                set_button_lit(world, lit, True)
            self._lit = lit
        self.detector.update(world)
        last = self.detector.released[-1] if self.detector.released else None
        if last != self.indicated:
            for c in COLORS3:
                set_lamp(world, lamp_name(c), c == last, off=LAMP_OFF_RGBA)
            self.indicated = last

    def subtasks(self) -> list[ExpertSubtask]:
        return [
            ExpertSubtask("observe", "watch the buttons flash", {"horizon_s": f"{self.flash_end:.1f}"}),
            *(ExpertSubtask("press", f"press the {c} button", {"color": c}) for c in self.order),
        ]

    def success(self, world: SimWorld) -> bool:
        return self.detector.pressed[:3] == self.order

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        if index == 0:
            return world.time >= self.flash_end
        return self.detector.pressed[:index] == self.order[:index]

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()

        def observe():  # type: ignore[no-untyped-def]
            while world.time < self.flash_end:
                yield

        def press(color: str):  # type: ignore[no-untyped-def]
            return lambda: arm.press(cap_top(world, color), PRESS_DEPTH)

        return Expert(cmd, self.subtasks(), [observe, *(press(c) for c in self.order)])
