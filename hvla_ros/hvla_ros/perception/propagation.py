"""Temporal mask propagation ``Q_t = K(I_t, Q_{t-1})`` with drift detection.

Each object from the segmenter is tracked on its own:

1. sparse optical flow (pyramidal Lucas-Kanade, at ``scale`` resolution) of corners in and
   around the mask, checked forward-backward; a RANSAC similarity transform of the surviving
   points warps the mask (only its bounding-box region is touched);
2. the warped mask is snapped to the object's colours (HSV posterior against its surroundings),
   which removes occluders such as the arm and lets the mask grow back afterwards;
3. drift = max(fraction of points failing the forward-backward check, relative drop of the
   colour likelihood inside the mask, area change beyond a factor 2). Above
   ``drift_threshold`` the object is re-segmented from the box around its current mask;
4. an object whose warped mask is mostly outside the image (or vanished) is *lost*; every
   ``reacquire_interval`` frames the image is searched with its colour model and a candidate of
   plausible size is re-segmented and accepted if its colours match.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from hvla_ros.perception.boxes import Box
from hvla_ros.perception.colour import ColourModel
from hvla_ros.perception.segmenter import Segmenter

log = logging.getLogger(__name__)


@dataclass
class PropagationConfig:
    """Tuning of :class:`MaskPropagator` (defaults fit 480x640 at 30-60 Hz on one core)."""

    scale: float = 0.5  # optical flow resolution relative to the image
    max_points: int = 24  # corners tracked per object
    fb_threshold_px: float = 1.0  # forward-backward error (at flow resolution) to keep a point
    drift_threshold: float = 0.5  # re-segment above this drift
    colour_refine: bool = True
    grow_px: int = 6  # how far (full-res px) the mask may grow per frame when snapping to colour
    lost_visible_fraction: float = 0.2  # lost when less than this fraction of it stays in view
    min_area_px: int = 25
    reacquire_interval: int = 5  # frames between searches for lost objects
    resegment_interval: int = 0  # also re-segment every N frames (0: only on drift)
    min_resegment_gap: int = 5  # frames between drift-triggered re-segmentations of one object

    def __post_init__(self) -> None:
        if not 0.1 <= self.scale <= 1.0:
            raise ValueError(f"`scale` must be in [0.1, 1]. Got {self.scale}.")
        if not 0.0 < self.drift_threshold <= 1.0:
            raise ValueError(f"`drift_threshold` must be in (0, 1]. Got {self.drift_threshold}.")
        if self.max_points < 4:
            raise ValueError(f"`max_points` must be >= 4. Got {self.max_points}.")


@dataclass
class PropagationStats:
    frames: int = 0
    reinitializations: int = 0  # re-segmentations triggered by drift or the interval
    reacquisitions: int = 0  # lost objects found again
    drift: float = 0.0  # max drift over objects in the last frame
    lost: int = 0  # objects currently out of view


class _Region:
    """A bool mask stored only over its bounding box ``(x0, y0, x1, y1)`` (exclusive)."""

    __slots__ = ("local", "x0", "y0")

    def __init__(self, local: np.ndarray, x0: int, y0: int) -> None:
        self.local, self.x0, self.y0 = local, x0, y0

    @classmethod
    def of(cls, mask: np.ndarray) -> _Region:
        """Crop a full-size mask to its bounding box."""
        x0, y0, x1, y1 = _bbox(mask)
        return cls(mask[y0:y1, x0:x1].copy(), x0, y0)

    @classmethod
    def crop(cls, local: np.ndarray, x0: int, y0: int) -> _Region:
        """Shrink ``local`` (placed at x0, y0) to the bounding box of its pixels."""
        if not local.any():
            return cls(np.zeros((0, 0), bool), x0, y0)
        bx0, by0, bx1, by1 = _bbox(local)
        return cls(local[by0:by1, bx0:bx1], x0 + bx0, y0 + by0)

    @property
    def box(self) -> tuple[int, int, int, int]:
        h, w = self.local.shape
        return self.x0, self.y0, self.x0 + w, self.y0 + h

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.local))

    def paste(self, out: np.ndarray) -> None:
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] |= self.local

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, bool)
        self.paste(out)
        return out

    def touches_border(self, shape: tuple[int, int]) -> bool:
        x0, y0, x1, y1 = self.box
        return x0 <= 0 or y0 <= 0 or x1 >= shape[1] or y1 >= shape[0]


@dataclass
class _Track:
    label: str
    region: _Region  # current mask
    colour: ColourModel
    ref_area: float  # area at the last segmentation
    ref_likelihood: float
    full_area: float  # area at the last segmentation that did not touch the image border
    points: np.ndarray | None = None  # N x 1 x 2 float32 at flow resolution
    lost: bool = False
    drift: float = 0.0
    age: int = 0
    last_segmented: int = 0  # age at the last (re-)segmentation


class MaskPropagator:
    """Keeps the distractor mask of one camera up to date, frame by frame."""

    def __init__(self, segmenter: Segmenter, config: PropagationConfig | None = None) -> None:
        self.segmenter = segmenter
        self.config = config or PropagationConfig()
        self.stats = PropagationStats()
        self._tracks: list[_Track] = []
        self._prev_gray: np.ndarray | None = None
        self._shape: tuple[int, int] = (0, 0)
        self._mask: np.ndarray | None = None

    # -- public API ---------------------------------------------------------------------------
    @property
    def mask(self) -> np.ndarray | None:
        """Current union mask (``H x W`` bool), or None before :meth:`initialize`."""
        return self._mask

    @property
    def object_masks(self) -> list[np.ndarray]:
        """One full-size mask per initial box (empty while the object is out of view)."""
        return [t.region.full(self._shape) for t in self._tracks]

    @property
    def lost(self) -> list[bool]:
        """Per initial box: whether the object is currently out of view."""
        return [t.lost for t in self._tracks]

    def reset(self) -> None:
        """Forget every object (the mask becomes None until the next :meth:`initialize`)."""
        self._tracks.clear()
        self._prev_gray = None
        self._mask = None
        self._shape = (0, 0)
        self.stats = PropagationStats()

    def initialize(self, image: np.ndarray, boxes: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
        """Segment ``boxes`` on ``image`` and start tracking; returns (mask, scores).

        Raises the segmenter's BoxError/ImageError for bad input (the previous state is kept).
        """
        masks, scores = self.segmenter.segment_objects(image, boxes)
        self.reset()
        self._shape = (int(image.shape[0]), int(image.shape[1]))
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        for raw, seg in zip(boxes, masks, strict=True):
            label = Box.of(raw).label
            m = seg
            if np.count_nonzero(seg) < self.config.min_area_px:  # nothing found: track the box itself
                x0, y0, x1, y1 = Box.of(raw).as_int()
                m = np.zeros_like(seg)
                m[max(0, y0):y1, max(0, x0):x1] = True
            self._tracks.append(self._new_track(hsv, m, label))
        self._prev_gray = self._gray(image)
        self._mask = self._union()
        return self._mask, scores

    def update(self, image: np.ndarray) -> np.ndarray:
        """Propagate the masks to ``image`` (same size as at initialisation); returns the union."""
        if self._mask is None or self._prev_gray is None:
            raise RuntimeError("MaskPropagator.update() called before initialize()")
        if image.shape[:2] != self._shape:
            from hvla_ros.perception.boxes import ImageError

            raise ImageError(f"image size {image.shape[1]}x{image.shape[0]} differs from the "
                             f"initialised {self._shape[1]}x{self._shape[0]}")
        gray = self._gray(image)
        self.stats.frames += 1
        hsv_full: np.ndarray | None = None
        max_drift = 0.0
        for track in self._tracks:
            track.age += 1
            if track.lost:
                continue
            self._propagate(track, self._prev_gray, gray, image)
            periodic = self.config.resegment_interval > 0 and track.age % self.config.resegment_interval == 0
            drifted = (track.drift > self.config.drift_threshold
                       and track.age - track.last_segmented >= self.config.min_resegment_gap)
            if not track.lost and (drifted or periodic):
                if hsv_full is None:
                    hsv_full = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
                self._resegment(track, image, hsv_full)
            max_drift = max(max_drift, track.drift)
        if any(t.lost for t in self._tracks) and self.stats.frames % self.config.reacquire_interval == 0:
            if hsv_full is None:
                hsv_full = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            self._search_lost(image, hsv_full)
        self._prev_gray = gray
        self.stats.drift = max_drift
        self.stats.lost = sum(t.lost for t in self._tracks)
        self._mask = self._union()
        return self._mask

    # -- internals ----------------------------------------------------------------------------
    def _gray(self, image: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        s = self.config.scale
        if s == 1.0:
            return gray
        if s == 0.5:
            return cv2.pyrDown(gray)
        h, w = gray.shape
        return cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)

    def _union(self) -> np.ndarray:
        out = np.zeros(self._shape, dtype=bool)
        for t in self._tracks:
            if not t.lost:
                t.region.paste(out)
        return out

    def _new_track(self, hsv: np.ndarray, mask: np.ndarray, label: str) -> _Track:
        colour = ColourModel.from_mask(hsv, mask)
        region = _Region.of(mask)
        lik = _likelihood(colour, hsv, region)
        area = float(region.area)
        return _Track(label=label, region=region, colour=colour, ref_area=area,
                      ref_likelihood=max(lik, 1e-3), full_area=area)

    def _detect_points(self, gray: np.ndarray, region: _Region) -> np.ndarray | None:
        """Corners on the object (its mask at flow resolution, dilated to include its outline).

        Only the object's own points: background corners would vote for the background's
        motion (static while the object moves, or the reverse)."""
        s = self.config.scale
        h, w = gray.shape
        x0, y0, x1, y1 = region.box
        pad = 4
        sx0, sy0 = max(0, int(x0 * s) - pad), max(0, int(y0 * s) - pad)
        sx1, sy1 = min(w, int(x1 * s) + pad + 1), min(h, int(y1 * s) + pad + 1)
        if sx1 - sx0 < 3 or sy1 - sy0 < 3 or region.local.size == 0:
            return None
        small = np.zeros((sy1 - sy0, sx1 - sx0), np.uint8)
        lx0, ly0 = int(x0 * s) - sx0, int(y0 * s) - sy0
        lw = max(1, min(round(region.local.shape[1] * s), small.shape[1] - lx0))
        lh = max(1, min(round(region.local.shape[0] * s), small.shape[0] - ly0))
        small[ly0:ly0 + lh, lx0:lx0 + lw] = cv2.resize(region.local.view(np.uint8), (lw, lh),
                                                       interpolation=cv2.INTER_NEAREST)
        small = cv2.dilate(small, np.ones((5, 5), np.uint8))
        pts = cv2.goodFeaturesToTrack(gray[sy0:sy1, sx0:sx1], self.config.max_points, 0.01, 2,
                                      mask=small, blockSize=3)
        if pts is None:
            return None
        out = np.asarray(pts, dtype=np.float32)
        out[:, 0, 0] += sx0
        out[:, 0, 1] += sy0
        return out

    def _propagate(self, track: _Track, prev: np.ndarray, cur: np.ndarray, image: np.ndarray) -> None:
        cfg = self.config
        s = cfg.scale
        if track.points is None or len(track.points) < 6 or track.age % 10 == 0:
            track.points = self._detect_points(prev, track.region)
        fb_fail = 1.0
        matrix = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        if track.points is not None and len(track.points) > 0:
            p0 = track.points
            lk = {"winSize": (11, 11), "maxLevel": 2,
                  "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03)}
            p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **lk)  # type: ignore[call-overload]
            p0b, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **lk)  # type: ignore[call-overload]
            err = np.linalg.norm((p0 - p0b).reshape(-1, 2), axis=1)
            good = (st1.ravel() == 1) & (st2.ravel() == 1) & (err < cfg.fb_threshold_px)
            fb_fail = 1.0 - good.sum() / len(p0)
            if good.sum() >= 3:
                m, _ = cv2.estimateAffinePartial2D(p0[good], p1[good], method=cv2.RANSAC,
                                                   ransacReprojThreshold=1.0)
                if m is not None:
                    matrix = m
            elif good.sum() >= 1:
                matrix[:, 2] = np.median((p1[good] - p0[good]).reshape(-1, 2), axis=0)
            track.points = p1[good].reshape(-1, 1, 2) if good.sum() >= 6 else None
        full = matrix.copy()
        full[:, 2] /= s
        prev_area = float(track.region.area)
        warped = _warp_region(track.region, full, self._shape, cfg.grow_px)
        expected = prev_area * abs(float(np.linalg.det(full[:, :2])))
        if warped.area < max(cfg.min_area_px, cfg.lost_visible_fraction * expected):
            self._mark_lost(track, "its mask left the view")
            return
        colour_drift = 0.0
        if cfg.colour_refine:
            warped, colour_drift = self._colour_correct(track, image, warped, track.region)
        area = float(warped.area)
        if area < max(cfg.min_area_px, cfg.lost_visible_fraction * track.full_area):
            self._mark_lost(track, f"only {area:.0f} of {track.full_area:.0f} px left in view")
            return
        if colour_drift > 0.8:
            self._mark_lost(track, f"its colours vanished (drift {colour_drift:.2f})")
            return
        ratio = area / max(track.ref_area, 1.0)
        area_drift = 1.0 if (ratio < 0.5 or ratio > 2.0) else 0.0
        track.drift = float(max(fb_fail, colour_drift, area_drift))
        track.region = warped

    @staticmethod
    def _mark_lost(track: _Track, why: str) -> None:
        track.lost = True
        track.region = _Region(np.zeros((0, 0), bool), 0, 0)
        track.points = None
        track.drift = 1.0
        log.debug("object %r lost: %s", track.label, why)

    def _colour_correct(self, track: _Track, image: np.ndarray, warped: _Region, previous: _Region
                        ) -> tuple[_Region, float]:
        """Check the warped mask against the object's colours and snap it to them.

        The flow can be fooled (flat-coloured objects have no texture inside, their corners carry
        the background's texture; an occluder drags points along): the previous mask competes
        with the warped one, a mean shift on the colour posterior recovers lost motion, and the
        outline snaps to the object's colours. Returns the mask and the colour drift."""
        cfg = self.config
        h, w = self._shape
        x0, y0, x1, y1 = warped.box
        px0, py0, px1, py1 = previous.box
        m = max(2 * cfg.grow_px, (x1 - x0 + y1 - y0) // 4)
        rx0, ry0 = max(0, min(x0, px0) - m), max(0, min(y0, py0) - m)
        rx1, ry1 = min(w, max(x1, px1) + m), min(h, max(y1, py1) + m)
        hsv = cv2.cvtColor(np.ascontiguousarray(image[ry0:ry1, rx0:rx1]), cv2.COLOR_RGB2HSV)
        prob = track.colour.probability(hsv)
        local = np.zeros(prob.shape, bool)
        local[y0 - ry0:y1 - ry0, x0 - rx0:x1 - rx0] = warped.local
        n = int(np.count_nonzero(local))
        lik = float(prob[local].mean()) / 255.0 if n else 0.0
        if lik < 0.9 * track.ref_likelihood and previous.local.size and (px0, py0) != (x0, y0):
            stay = np.zeros(prob.shape, bool)
            stay[py0 - ry0:py1 - ry0, px0 - rx0:px1 - rx0] = previous.local
            lik_stay = float(prob[stay].mean()) / 255.0 if stay.any() else 0.0
            if lik_stay > lik:
                local, lik, n = stay, lik_stay, int(np.count_nonzero(stay))
                x0, y0, x1, y1 = px0, py0, px1, py1
        if lik < 0.9 * track.ref_likelihood:
            # The flow lost part of the object: shift the mask onto the object's colour mass.
            win = (x0 - rx0, y0 - ry0, x1 - x0, y1 - y0)
            crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 1.0)
            _, (nx, ny, _, _) = cv2.meanShift(prob, win, crit)
            dx, dy = nx - win[0], ny - win[1]
            if dx or dy:
                shifted = np.zeros_like(local)
                sh, sw = local.shape
                shifted[max(0, dy):sh + min(0, dy), max(0, dx):sw + min(0, dx)] = \
                    local[max(0, -dy):sh - max(0, dy), max(0, -dx):sw - max(0, dx)]
                lik_shifted = float(prob[shifted].mean()) / 255.0 if shifted.any() else 0.0
                if lik_shifted > lik:
                    local, lik = shifted, lik_shifted
                    n = int(np.count_nonzero(local))
        colour_drift = max(0.0, 1.0 - lik / track.ref_likelihood)
        k = _ellipse(cfg.grow_px)
        search = cv2.dilate(local.view(np.uint8), k).view(bool)
        snapped = _fill((prob >= 128) & search)
        ns = int(np.count_nonzero(snapped))
        # Growing back to the size seen at the last full view is plausible (end of an occlusion).
        upper = max(1.6 * n, 1.5 * track.full_area) + 4 * cfg.grow_px
        chosen = snapped if 0.3 * n <= ns <= upper else local
        return _Region.crop(chosen, rx0, ry0), colour_drift

    def _resegment(self, track: _Track, image: np.ndarray, hsv: np.ndarray) -> None:
        x0, y0, x1, y1 = track.region.box
        pad = max(3, int(0.15 * max(x1 - x0, y1 - y0)))
        h, w = self._shape
        box = Box(max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad), track.label)
        if self._accept_segment(track, image, hsv, box):
            self.stats.reinitializations += 1

    def _accept_segment(self, track: _Track, image: np.ndarray, hsv: np.ndarray, box: Box) -> bool:
        """Re-segment ``box``; keep the result when its colours match the object's."""
        try:
            masks, _ = self.segmenter.segment_objects(image, [box])
        except ValueError as exc:
            log.debug("re-segmentation of %r failed: %s", track.label, exc)
            return False
        region = _Region.of(masks[0])
        if region.area < self.config.min_area_px:
            return False
        lik = _likelihood(track.colour, hsv, region)
        if lik < 0.5 * track.ref_likelihood:
            return False
        track.region = region
        track.lost = False
        track.last_segmented = track.age
        track.points = None
        track.drift = 0.0
        track.ref_area = float(region.area)
        if not region.touches_border(self._shape):
            # A smaller re-segmentation may be a partial (occluded) view: forget slowly.
            track.full_area = max(track.ref_area, 0.7 * track.full_area)
        return True

    def _search_lost(self, image: np.ndarray, hsv: np.ndarray) -> None:
        s = self.config.scale
        h, w = self._shape
        small = cv2.resize(hsv, (round(w * s), round(h * s)), interpolation=cv2.INTER_NEAREST)
        taken = cv2.resize(self._union().view(np.uint8), (small.shape[1], small.shape[0]),
                           interpolation=cv2.INTER_NEAREST).view(bool)
        for track in self._tracks:
            if not track.lost:
                continue
            ratio = track.colour.ratio_map(small)
            cand = ((ratio >= 128) & ~taken).view(np.uint8)
            cand = cv2.morphologyEx(cand, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            n, labels, st, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
            ref_small = track.ref_area * s * s
            best, best_score = -1, 0.0
            for i in range(1, n):
                area = st[i, cv2.CC_STAT_AREA]
                if not 0.2 * ref_small <= area <= 4.0 * ref_small:
                    continue
                score = float(ratio[labels == i].mean())
                if score > best_score:
                    best, best_score = i, score
            if best < 0:
                continue
            bx, by, bw, bh = (st[best, k] for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP,
                                                     cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
            pad = 2
            box = Box(max(0.0, (bx - pad) / s), max(0.0, (by - pad) / s),
                      min(float(w), (bx + bw + pad) / s), min(float(h), (by + bh + pad) / s), track.label)
            if self._accept_segment(track, image, hsv, box):
                self.stats.reacquisitions += 1
                log.debug("object %r re-acquired at %s", track.label, box)


@functools.lru_cache(maxsize=8)
def _ellipse(radius: int) -> np.ndarray:
    """Elliptic structuring element of ``radius`` (built once: ~0.5 ms each time otherwise)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _likelihood(colour: ColourModel, hsv: np.ndarray, region: _Region) -> float:
    if region.local.size == 0 or not region.local.any():
        return 0.0
    x0, y0, x1, y1 = region.box
    prob = colour.probability(np.ascontiguousarray(hsv[y0:y1, x0:x1]))
    return float(prob[region.local].mean()) / 255.0


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """xyxy (exclusive) bounding box of the nonzero pixels; the whole array if none."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0, 0, mask.shape[1], mask.shape[0]
    cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _warp_region(region: _Region, matrix: np.ndarray, shape: tuple[int, int], grow: int) -> _Region:
    """Warp a region by the 2x3 ``matrix`` (full-resolution pixels), clipped to the image."""
    h, w = shape
    x0, y0, x1, y1 = region.box
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64)
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    g = grow + 1
    dx0 = int(np.clip(np.floor(moved[:, 0].min()) - g, 0, w))
    dy0 = int(np.clip(np.floor(moved[:, 1].min()) - g, 0, h))
    dx1 = int(np.clip(np.ceil(moved[:, 0].max()) + g, 0, w))
    dy1 = int(np.clip(np.ceil(moved[:, 1].max()) + g, 0, h))
    if dx1 - dx0 < 1 or dy1 - dy0 < 1 or region.local.size == 0:
        return _Region(np.zeros((0, 0), bool), 0, 0)
    local = matrix.copy()
    local[:, 2] = matrix[:, :2] @ np.array([x0, y0], dtype=np.float64) + matrix[:, 2] - [dx0, dy0]
    dst = cv2.warpAffine(region.local.view(np.uint8), local, (dx1 - dx0, dy1 - dy0), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _Region.crop(dst.view(bool), dx0, dy0)


def _fill(mask: np.ndarray) -> np.ndarray:
    """Close small gaps and fill holes so a snapped mask stays one solid region."""
    m = cv2.morphologyEx(mask.view(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(m, contours, -1, 1, thickness=cv2.FILLED)
    return m.view(bool)
