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
