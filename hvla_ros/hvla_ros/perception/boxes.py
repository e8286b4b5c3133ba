"""Validation of segmentation prompts: pixel boxes and RGB images.

Boxes are ``xyxy`` in pixels, inclusive-exclusive (as hvla_interfaces/PixelBox). A box partly
outside the image is clipped to it; a box that is NaN/infinite, inverted, or has (after clipping)
less than ``min_side`` pixels on a side is rejected with a reason naming it. More boxes than the
configured maximum reject the whole request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class BoxError(ValueError):
    """A box (or a list of boxes) that cannot be used as a prompt; the message names it."""


class ImageError(ValueError):
    """An image of unexpected type, encoding or size; the message names the problem."""


@dataclass(frozen=True)
class Box:
    """A pixel box ``[x_min, x_max) x [y_min, y_max)`` with an optional label."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float
    label: str = ""

    @classmethod
    def of(cls, value: Box | Sequence[float] | object) -> Box:
        """A Box from a Box, a 4-sequence ``(x_min, y_min, x_max, y_max)`` or a PixelBox-like object."""
        if isinstance(value, Box):
            return value
        if all(hasattr(value, a) for a in ("x_min", "y_min", "x_max", "y_max")):
            return cls(float(value.x_min), float(value.y_min), float(value.x_max),  # type: ignore[attr-defined]
                       float(value.y_max), str(getattr(value, "label", "")))  # type: ignore[attr-defined]
        try:
            seq = [float(v) for v in value]  # type: ignore[attr-defined]
        except (TypeError, ValueError) as exc:
            raise BoxError(f"box {value!r} is not a sequence of 4 numbers") from exc
        if len(seq) != 4:
            raise BoxError(f"box {value!r} needs 4 numbers (x_min, y_min, x_max, y_max), got {len(seq)}")
        return cls(seq[0], seq[1], seq[2], seq[3])

    def as_int(self) -> tuple[int, int, int, int]:
        """Integer pixel bounds (floor of the minimum, ceil of the maximum)."""
        return (math.floor(self.x_min), math.floor(self.y_min),
                math.ceil(self.x_max), math.ceil(self.y_max))

    @property
    def width(self) -> float:
        return self.x_max - self.x_min

    @property
    def height(self) -> float:
        return self.y_max - self.y_min

    def __str__(self) -> str:
        name = f" {self.label!r}" if self.label else ""
        return f"box{name} ({self.x_min:g}, {self.y_min:g}, {self.x_max:g}, {self.y_max:g})"


@dataclass
class BoxCheck:
    """Outcome of :func:`check_boxes`: the clipped accepted boxes and why others were rejected."""

    accepted: list[Box] = field(default_factory=list)
    accepted_index: list[int] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (input index, reason)

    @property
    def error_text(self) -> str:
        return "; ".join(reason for _, reason in self.rejected)


def check_boxes(boxes: Sequence[object], image_shape: tuple[int, ...], *, max_boxes: int = 8,
                min_side: float = 2.0) -> BoxCheck:
    """Clip ``boxes`` to an image of ``image_shape`` (H, W, ...), sorting out the unusable ones.

    Raises :class:`BoxError` when there are more than ``max_boxes`` boxes (the request as a
    whole is refused: a planner sending 50 boxes is a bug to report, not to half-serve).
    """
    if len(boxes) > max_boxes:
        raise BoxError(f"{len(boxes)} boxes given, at most max_boxes={max_boxes} are accepted")
    h, w = int(image_shape[0]), int(image_shape[1])
    out = BoxCheck()
    for i, raw in enumerate(boxes):
        try:
            box = Box.of(raw)
        except BoxError as exc:
            out.rejected.append((i, f"box #{i}: {exc}"))
            continue
        coords = (box.x_min, box.y_min, box.x_max, box.y_max)
        if not all(math.isfinite(c) for c in coords):
            out.rejected.append((i, f"box #{i} {box} has a NaN or infinite coordinate"))
            continue
        if box.x_max <= box.x_min or box.y_max <= box.y_min:
            out.rejected.append((i, f"box #{i} {box} has zero or negative area"))
            continue
        fw, fh = float(w), float(h)
        clipped = Box(min(max(box.x_min, 0.0), fw), min(max(box.y_min, 0.0), fh),
                      min(max(box.x_max, 0.0), fw), min(max(box.y_max, 0.0), fh), box.label)
        if clipped.width < min_side or clipped.height < min_side:
            where = "outside the image" if clipped.width <= 0 or clipped.height <= 0 else "too small"
            out.rejected.append((i, f"box #{i} {box} is {where} ({w}x{h}) after clipping "
                                    f"(needs >= {min_side:g} px per side)"))
            continue
        out.accepted.append(clipped)
        out.accepted_index.append(i)
    return out


def validate_image(image: object, *, expected_hw: tuple[int, int] | None = None,
                   min_side: int = 8, max_side: int = 8192) -> np.ndarray:
    """Return ``image`` as a ``H x W x 3`` uint8 RGB array or raise :class:`ImageError`."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must have shape (H, W, 3) RGB, got {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < min_side or max(h, w) > max_side:
        raise ImageError(f"image size {w}x{h} outside the supported range [{min_side}, {max_side}] px")
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise ImageError(f"image size {w}x{h} differs from the expected {expected_hw[1]}x{expected_hw[0]}")
    return image
