"""Where the package's trained refiners live (no torch import: the graph reads it at launch)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: The variant whose refiners ship with the package (``hvla_ros/refiners/<variant>/<skill>/``).
SHIPPED_VARIANT = "full"


def shipped_refiner_dir() -> Path:
    """Directory of the refiners shipped for the default skills (``<skill>/`` checkpoints)."""
    return Path(str(resources.files("hvla_ros"))) / "refiners" / SHIPPED_VARIANT
