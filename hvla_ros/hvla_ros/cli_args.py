"""Argument parsing shared by the ``hvla`` subcommands (one definition of each format)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def parse_assignments(items: Sequence[str], error: Callable[[str], Exception]) -> dict[str, str]:
    """``["a:=1", "b:=x"]`` -> ``{"a": "1", "b": "x"}``; an item without ``:=`` raises ``error(item)``."""
    out: dict[str, str] = {}
    for item in items:
        if ":=" not in item:
            raise error(item)
        key, value = item.split(":=", 1)
        out[key] = value
    return out


def image_size(minimum: int, example: str) -> Callable[[str], tuple[int, int]]:
    """An argparse ``type`` for ``HxW`` image sizes with both sides at least ``minimum``."""

    def parse(text: str) -> tuple[int, int]:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"image size must be HxW (e.g. {example}), got {text!r}") from None
        if h < minimum or w < minimum:
            raise argparse.ArgumentTypeError(f"image size must be at least {minimum}x{minimum}, got {text!r}")
        return h, w

    return parse


def seed_list(text: str) -> list[int]:
    """An argparse ``type`` for seeds: ``0-9``, ``1,5,9`` or a mix (``0-4,10``), in that order."""
    out: list[int] = []
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise argparse.ArgumentTypeError(f"seeds must look like 0-9 or 1,5,9; got {text!r}") from None
        if a < 0 or b < a:
            raise argparse.ArgumentTypeError(f"seed range {part!r} in {text!r} must be non-negative and ascending")
        out.extend(range(a, b + 1))
    return out
