"""The simulated task suite (ids, goal texts and subtasks follow the task-suite contract).

``TASKS`` maps a task id to its class; ``make_task(id)`` builds a fresh instance.
"""

from __future__ import annotations

from hvla_ros.sim.tasks.base import Expert, ExpertSubtask, Task
from hvla_ros.sim.tasks.bimanual_handover import BimanualHandover
from hvla_ros.sim.tasks.button_sequence import ButtonSequence
from hvla_ros.sim.tasks.cube_in_box import CubeInBox
from hvla_ros.sim.tasks.observe_then_pick import ObserveThenPick
from hvla_ros.sim.tasks.open_drawer import OpenDrawer
from hvla_ros.sim.tasks.pen_in_holder import PenInHolder
from hvla_ros.sim.tasks.rank_by_trial import RankByTrial
from hvla_ros.sim.tasks.rearrange_and_restore import RearrangeAndRestore
from hvla_ros.sim.tasks.stack_blue_on_yellow import StackBlueOnYellow
from hvla_ros.sim.tasks.try_until_fits import TryUntilFits

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        CubeInBox,
        StackBlueOnYellow,
        PenInHolder,
        OpenDrawer,
        ObserveThenPick,
        ButtonSequence,
        RankByTrial,
        TryUntilFits,
        RearrangeAndRestore,
        BimanualHandover,
    )
}


def make_task(name: str) -> Task:
    """A new task instance by id. Raises ValueError naming the known ids."""
    try:
        return TASKS[name]()
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None


__all__ = ["TASKS", "Expert", "ExpertSubtask", "Task", "make_task"]
