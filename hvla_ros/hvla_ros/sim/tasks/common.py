"""Helpers shared by the task modules: cubes, pose sampling, ground-truth predicates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import mujoco
import numpy as np

from hvla_ros.sim.scene import COLORS, add_box

if TYPE_CHECKING:
    from hvla_ros.sim.world import SimWorld

CUBE_HALF = 0.015
CUBE_MASS = 0.03

#: Region of the table the single arm reaches comfortably with a top-down grasp.
REACH_X = (0.17, 0.28)
REACH_Y = (-0.14, 0.14)
#: ... and within this distance of the shoulder-pan axis (x = 0.039 m) of the arm at the origin.
REACH_RADIUS = 0.265
_PAN_AXIS_X = 0.039


def cube_name(color: str) -> str:
    return f"{color}_cube"


def add_cube(spec: mujoco.MjSpec, color: str, name: str | None = None, half: float = CUBE_HALF) -> None:
    """A free cube named ``{color}_cube`` (body, joint and geom share the name)."""
    add_box(spec, name or cube_name(color), (half, half, half), COLORS[color], (0.2, 0.0, half),
            free=True, mass=CUBE_MASS, friction=1.2)


def sample_positions(
    rng: np.random.Generator,
    n: int,
    radii: Sequence[float],
    *,
    x_range: tuple[float, float] = REACH_X,
    y_range: tuple[float, float] = REACH_Y,
    fixed: Sequence[tuple[np.ndarray, float]] = (),
    max_radius: float | None = REACH_RADIUS,
    max_tries: int = 2000,
) -> list[np.ndarray]:
    """``n`` xy points in the rectangle whose discs (``radii``) do not overlap each other or ``fixed``.

    Deterministic given ``rng``; restarts the whole set when a point finds no room.
    """
    for _ in range(50):
        placed: list[tuple[np.ndarray, float]] = list(fixed)
        out: list[np.ndarray] = []
        for i in range(n):
            for _ in range(max_tries // 50):
                p = np.array([rng.uniform(*x_range), rng.uniform(*y_range)])
                if max_radius is not None and np.hypot(p[0] - _PAN_AXIS_X, p[1]) > max_radius:
                    continue
                if all(np.linalg.norm(p - q) >= radii[i] + r for q, r in placed):
                    placed.append((p, radii[i]))
                    out.append(p)
                    break
            else:
                break
        if len(out) == n:
            return out
    raise RuntimeError(f"could not place {n} objects (radii {list(radii)}) without overlap in "
                       f"x{x_range} y{y_range}")


def geoms_of_body(model: mujoco.MjModel, body: str) -> set[int]:
    bid = model.body(body).id
    return {g for g in range(model.ngeom) if model.geom_bodyid[g] == bid}


def touching(world: SimWorld, geoms_a: set[int], geoms_b: set[int]) -> bool:
    """True if any active contact joins a geom of ``geoms_a`` with one of ``geoms_b``."""
    d = world.data
    for i in range(d.ncon):
        c = d.contact[i]
        g1, g2 = int(c.geom1), int(c.geom2)
        if (g1 in geoms_a and g2 in geoms_b) or (g2 in geoms_a and g1 in geoms_b):
            return True
    return False


def arm_geoms(world: SimWorld, prefix: str = "") -> set[int]:
    """Collision geoms of the arm with ``prefix`` (every body below its base)."""
    m = world.model
    root = m.body(f"{prefix}base").id
    out = set()
    for g in range(m.ngeom):
        b = int(m.geom_bodyid[g])
        while b > 0 and b != root:
            b = int(m.body_parentid[b])
        if b == root:
            out.add(g)
    return out


def pad_geoms(world: SimWorld, prefix: str = "") -> set[int]:
    m = world.model
    return {m.geom(prefix + "fixed_jaw_pad").id, m.geom(prefix + "moving_jaw_pad").id}


def is_grasped(world: SimWorld, body: str, prefix: str = "") -> bool:
    """Both fingertip pads of the arm touch the body."""
    obj = geoms_of_body(world.model, body)
    m = world.model
    fixed = {m.geom(prefix + "fixed_jaw_pad").id}
    moving = {m.geom(prefix + "moving_jaw_pad").id}
    return touching(world, obj, fixed) and touching(world, obj, moving)


def is_lifted(world: SimWorld, body: str, rest_z: float, height: float = 0.03) -> bool:
    return bool(world.body_pos(body)[2] > rest_z + height)


def body_speed(world: SimWorld, joint: str) -> float:
    adr = world.model.joint(joint).dofadr[0]
    return float(np.linalg.norm(world.data.qvel[adr:adr + 3]))


def inside_xy(p: np.ndarray, center: np.ndarray, half: tuple[float, float], yaw: float = 0.0) -> bool:
    """Point ``p`` (xy) inside the rectangle ``center`` +- ``half`` rotated by ``yaw``."""
    c, s = np.cos(-yaw), np.sin(-yaw)
    d = np.asarray(p[:2]) - np.asarray(center[:2])
    local = np.array([c * d[0] - s * d[1], s * d[0] + c * d[1]])
    return bool(abs(local[0]) <= half[0] and abs(local[1]) <= half[1])


def released(world: SimWorld, body: str, prefixes: Sequence[str] = ("",)) -> bool:
    """No arm touches the body."""
    obj = geoms_of_body(world.model, body)
    return not any(touching(world, obj, arm_geoms(world, p)) for p in prefixes)
