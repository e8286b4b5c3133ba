"""rank_by_trial: "press each button once, then press again the one that lit the most lamps" (memory).

Three buttons (red, green, blue) and a panel of three lamps behind them. Each button, when pressed,
lights a different number of lamps (a random permutation of 1, 2, 3); the lamps stay lit until
the next press. Success: the first three presses cover all three buttons and the fourth press is
the button that lit three lamps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.sim.expert import Commander
from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.button_sequence import COLORS3, PRESS_DEPTH, place_buttons_in_row
from hvla_ros.sim.tasks.buttons import PressDetector, add_button, add_lamp, button_geoms, cap_top, set_lamp

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

LAMPS = ("lamp_1", "lamp_2", "lamp_3")


class RankByTrial(Task):
    name = "rank_by_trial"
    goal = "press each button once, then press again the one that lit the most lamps"
    kind = "memory"

    def __init__(self) -> None:
        self.detector = PressDetector(COLORS3)
        self.counts: dict[str, int] = dict(zip(COLORS3, (1, 2, 3), strict=True))

    def build(self, spec: mujoco.MjSpec) -> None:
        for c in COLORS3:
            add_button(spec, c)
        for lamp in LAMPS:
            add_lamp(spec, lamp)

    def bind(self, world: SimWorld) -> None:
        self.detector.bind(world)

    def segmentation_objects(self) -> dict[str, list[str]]:
        objs = {f"{c}_button": button_geoms(c) for c in COLORS3}
        objs.update({lamp: [lamp] for lamp in LAMPS})
        return objs

    def reset(self, world: SimWorld, rng: np.random.Generator) -> None:
        place_buttons_in_row(world, rng, COLORS3)
        x = rng.uniform(0.33, 0.35)
        y0 = rng.uniform(-0.02, 0.02)
        for i, lamp in enumerate(LAMPS):
            world.set_static_pose(lamp, [x, y0 + (i - 1) * 0.035, 0.0])
            set_lamp(world, lamp, False)
        self.counts = dict(zip(COLORS3, (int(k) + 1 for k in rng.permutation(3)), strict=True))
        self.detector.reset()

    @property
    def best(self) -> str:
        return max(self.counts, key=lambda c: self.counts[c])

    def lamps_lit(self, world: SimWorld) -> int:
        """Number of lamps currently on."""
        on = np.array([world.model.geom_rgba[world.model.geom(lamp).id][0] for lamp in LAMPS])
        return int(np.sum(on > 0.9))

    def update(self, world: SimWorld) -> None:
        new = self.detector.update(world)
        if new is not None:
            for i, lamp in enumerate(LAMPS):
                set_lamp(world, lamp, i < self.counts[new])

    def subtasks(self) -> list[ExpertSubtask]:
        return [
            *(ExpertSubtask("press", f"press the {c} button", {"color": c}) for c in COLORS3),
            ExpertSubtask("press", f"press the {self.best} button", {"color": self.best}),
        ]

    def success(self, world: SimWorld) -> bool:
        p = self.detector.pressed
        return len(p) >= 4 and set(p[:3]) == set(COLORS3) and p[3] == self.best

    def subtask_success(self, world: SimWorld, index: int) -> bool:
        self._check_index(index)
        p = self.detector.pressed
        if index < 3:
            return COLORS3[index] in p[:3]
        return self.success(world)

    def expert(self, world: SimWorld) -> Expert:
        cmd = Commander(world)
        arm = cmd.arm()

        def press(color: str):  # type: ignore[no-untyped-def]
            return lambda: arm.press(cap_top(world, color), PRESS_DEPTH)

        return Expert(cmd, self.subtasks(), [press(s.parameters["color"]) for s in self.subtasks()])
