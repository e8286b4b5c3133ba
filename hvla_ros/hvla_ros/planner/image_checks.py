"""Image-based predicate checks for the rule-based verifier (OpenCV colour and region tests).

Everything works on ``H x W x 3`` uint8 RGB camera images, never on simulator state. Colours are
HSV ranges (OpenCV convention: H in [0, 180), S and V in [0, 255]) from a :class:`Palette`,
configurable in ``goal_templates.yaml``. Regions are pixel boxes ``(x0, y0, x1, y1)``
(inclusive-exclusive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Region = tuple[int, int, int, int]


class ImageCheckError(ValueError):
    """A bad image or colour name; the message names the problem."""


@dataclass(frozen=True)
class HsvRange:
    lo: tuple[int, int, int]
    hi: tuple[int, int, int]


@dataclass(frozen=True)
class Palette:
    """Colour name -> HSV ranges (a colour may need two ranges, e.g. red wraps around H=0)."""

    colors: Mapping[str, tuple[HsvRange, ...]]

    @classmethod
    def from_dict(cls, obj: Mapping[str, Sequence[Sequence[Sequence[int]]]]) -> Palette:
        """From ``{name: [[[h,s,v],[h,s,v]], ...]}`` (a list of [lo, hi] pairs per colour)."""
        colors: dict[str, tuple[HsvRange, ...]] = {}
        for name, ranges in obj.items():
            rs = []
            for r in ranges:
                if len(r) != 2 or any(len(x) != 3 for x in r):
                    raise ImageCheckError(f"colour {name!r}: each range must be [[h,s,v],[h,s,v]], got {r!r}")
                rs.append(HsvRange(tuple(int(x) for x in r[0]), tuple(int(x) for x in r[1])))  # type: ignore[arg-type]
            colors[str(name)] = tuple(rs)
        return cls(colors)

    def ranges(self, color: str) -> tuple[HsvRange, ...]:
        try:
            return self.colors[color]
        except KeyError:
            raise ImageCheckError(f"unknown colour {color!r}; known: {sorted(self.colors)}") from None


DEFAULT_PALETTE = Palette.from_dict(
    {
        "red": [[[0, 120, 60], [8, 255, 255]], [[172, 120, 60], [180, 255, 255]]],
        "yellow": [[[20, 120, 80], [34, 255, 255]]],
        "green": [[[40, 100, 50], [85, 255, 255]]],
        "blue": [[[100, 120, 50], [130, 255, 255]]],
    }
)


@dataclass(frozen=True)
class Blob:
    """A connected colour region: centroid ``(u, v)``, bounding box and pixel area."""

    u: float
    v: float
    x0: int
    y0: int
    x1: int
    y1: int
    area: int

    @property
    def centroid(self) -> tuple[float, float]:
        return (self.u, self.v)

    @property
    def box(self) -> Region:
        return (self.x0, self.y0, self.x1, self.y1)

    def encode(self) -> str:
        """``"u,v,x0,y0,x1,y1,area"``: how blobs are kept as facts in memory."""
        return f"{self.u:.1f},{self.v:.1f},{self.x0},{self.y0},{self.x1},{self.y1},{self.area}"

    @classmethod
    def decode(cls, text: str) -> Blob:
        try:
            u, v, x0, y0, x1, y1, area = (float(x) for x in text.split(","))
        except ValueError:
            raise ImageCheckError(f"not an encoded blob: {text!r}") from None
        return cls(u, v, int(x0), int(y0), int(x1), int(y1), int(area))


def check_image(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ImageCheckError(f"expected an H x W x 3 uint8 RGB image, got shape {arr.shape} {arr.dtype}")
    return arr


def _clip(region: Region, shape: tuple[int, ...]) -> Region:
    h, w = shape[:2]
    x0, y0, x1, y1 = (round(c) for c in region)
    return (max(0, min(w, x0)), max(0, min(h, y0)), max(0, min(w, x1)), max(0, min(h, y1)))


def color_mask(image: np.ndarray, color: str, palette: Palette = DEFAULT_PALETTE) -> np.ndarray:
    """Boolean ``H x W`` mask of the pixels of ``color``."""
    hsv = cv2.cvtColor(check_image(image), cv2.COLOR_RGB2HSV)
    mask = np.zeros(hsv.shape[:2], np.uint8)
    for r in palette.ranges(color):
        mask |= cv2.inRange(hsv, np.array(r.lo, np.uint8), np.array(r.hi, np.uint8))
    return mask > 0


def find_blobs(
    image: np.ndarray,
    color: str,
    *,
    palette: Palette = DEFAULT_PALETTE,
    min_area: int = 12,
    max_area: int | None = None,
    min_fill: float = 0.0,
    region: Region | None = None,
) -> list[Blob]:
    """Connected regions of ``color`` with ``min_area <= area <= max_area`` pixels that fill at least
    ``min_fill`` of their bounding box (compact objects such as cubes), largest first, optionally
    only inside ``region``."""
    mask = color_mask(image, color, palette).astype(np.uint8)
    if region is not None:
        x0, y0, x1, y1 = _clip(region, mask.shape)
        keep = np.zeros_like(mask)
        keep[y0:y1, x0:x1] = 1
        mask &= keep
    n, _, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    blobs = [
        Blob(
            float(cents[i][0]),
            float(cents[i][1]),
            int(stats[i, 0]),
            int(stats[i, 1]),
            int(stats[i, 0] + stats[i, 2]),
            int(stats[i, 1] + stats[i, 3]),
            int(stats[i, 4]),
        )
        for i in range(1, n)
        if stats[i, 4] >= min_area
        and (max_area is None or stats[i, 4] <= max_area)
        and stats[i, 4] >= min_fill * stats[i, 2] * stats[i, 3]
    ]
    return sorted(blobs, key=lambda b: -b.area)


def find_blob(image: np.ndarray, color: str, **kw) -> Blob | None:
    """The largest blob of ``color`` or None."""
    blobs = find_blobs(image, color, **kw)
    return blobs[0] if blobs else None


def inside(blob: Blob, region: Region, *, margin: float = 0.0) -> bool:
    """Whether the blob's centroid lies inside ``region`` grown by ``margin`` pixels."""
    x0, y0, x1, y1 = region
    return x0 - margin <= blob.u < x1 + margin and y0 - margin <= blob.v < y1 + margin


def overlap_fraction(blob: Blob, region: Region) -> float:
    """Fraction of the blob's bounding box inside ``region``."""
    x0, y0 = max(blob.x0, region[0]), max(blob.y0, region[1])
    x1, y1 = min(blob.x1, region[2]), min(blob.y1, region[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    own = max(1, (blob.x1 - blob.x0) * (blob.y1 - blob.y0))
    return inter / own


def stacked_on(top: Blob, base: Blob, *, tolerance_px: float = 6.0, min_overlap: float = 0.4) -> bool:
    """``top`` sits on ``base``: above it, touching (within tolerance) and horizontally overlapping."""
    width = max(1, min(top.x1 - top.x0, base.x1 - base.x0))
    h_overlap = max(0, min(top.x1, base.x1) - max(top.x0, base.x0)) / width
    return (
        top.v < base.v
        and abs(top.y1 - base.y0) <= tolerance_px + 0.5 * (base.y1 - base.y0)
        and h_overlap >= min_overlap
    )


def brightness(image: np.ndarray, region: Region) -> float:
    """Mean HSV value (0..255) inside ``region``: how lit a lamp or button is."""
    arr = check_image(image)
    x0, y0, x1, y1 = _clip(region, arr.shape)
    if x1 <= x0 or y1 <= y0:
        raise ImageCheckError(f"region {region} is empty inside the {arr.shape[1]}x{arr.shape[0]} image")
    patch = arr[y0:y1, x0:x1].astype(np.float32)
    return float(patch.max(axis=2).mean())


def lit_fraction(
    image: np.ndarray, region: Region, *, min_value: int = 200, max_saturation: int = 255
) -> float:
    """Fraction of pixels in ``region`` brighter than ``min_value`` (HSV V)."""
    arr = check_image(image)
    x0, y0, x1, y1 = _clip(region, arr.shape)
    if x1 <= x0 or y1 <= y0:
        raise ImageCheckError(f"region {region} is empty inside the {arr.shape[1]}x{arr.shape[0]} image")
    hsv = cv2.cvtColor(np.ascontiguousarray(arr[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV)
    lit = (hsv[..., 2] >= min_value) & (hsv[..., 1] <= max_saturation)
    return float(lit.mean())


def brightest(
    images: Sequence[np.ndarray], regions: Mapping[str, Region], *, min_gain: float = 20.0
) -> str | None:
    """Name of the region that is lit in ``images`` compared with its own dimmest appearance.

    For each region the gain is (max - min) brightness over ``images``; the region with the
    largest gain wins if it exceeds ``min_gain``. Works for a lamp that glows only briefly.
    """
    if not images or not regions:
        return None
    gains = {}
    for name, region in regions.items():
        values = [brightness(im, region) for im in images]
        gains[name] = max(values) - min(values)
    best = max(gains, key=lambda n: gains[n])
    return best if gains[best] >= min_gain else None


def flash_order(
    frames: Sequence[np.ndarray], regions: Mapping[str, Region], *, min_gain: float = 20.0
) -> list[str]:
    """Regions in the order they first lit up over ``frames`` (a region lit in no frame is left out).

    A region counts as lit in a frame when its brightness exceeds its dimmest value over all
    frames by at least half its own range (and the range is at least ``min_gain``).
    """
    if not frames:
        return []
    first: dict[str, int] = {}
    for name, region in regions.items():
        values = np.array([brightness(im, region) for im in frames])
        span = float(values.max() - values.min())
        if span < min_gain:
            continue
        lit = np.nonzero(values >= values.min() + 0.5 * span)[0]
        first[name] = int(lit[0])
    return sorted(first, key=lambda n: (first[n], n))


def count_lit(
    image: np.ndarray, regions: Sequence[Region], *, min_value: int = 200, min_fraction: float = 0.3
) -> int:
    """How many of ``regions`` (lamps) are lit."""
    return sum(1 for r in regions if lit_fraction(image, r, min_value=min_value) >= min_fraction)


def parse_px(text: str) -> tuple[float, float]:
    """``"u,v"`` -> (u, v)."""
    try:
        u, v = (float(x) for x in str(text).split(",")[:2])
    except ValueError:
        raise ImageCheckError(f"not a pixel position 'u,v': {text!r}") from None
    return u, v
