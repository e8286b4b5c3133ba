"""Classical box-prompted segmentation with OpenCV (no weights): the embedded default.

Per box, GrabCut runs on a crop around the box shrunk to at most ``work_size`` pixels a side
(speed): the ring between the box and the crop border is definite background, the box is
probable foreground. The result is cleaned (morphology, the component at the box centre plus any
large ones), brought back to full resolution and restricted to the box. When GrabCut finds
nothing plausible (e.g. a box that touches the image border on all sides, or an object of the
same colour as its surroundings) a colour-distance cue against the ring decides instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from hvla_ros.perception.boxes import Box
from hvla_ros.perception.segmenter import Segmenter

log = logging.getLogger(__name__)


class ClassicalSegmenter(Segmenter):
    """GrabCut seeded from the box, with a colour-contrast fallback.

    Args:
        work_size: longest side (px) of the crop GrabCut runs on; smaller is faster.
        margin: background ring around the box, as a fraction of the box's longest side.
        iterations: GrabCut iterations.
    """

    name = "classical"

    def __init__(self, *, max_boxes: int = 8, work_size: int = 72, margin: float = 0.3,
                 iterations: int = 3, min_box_side: float = 2.0) -> None:
        super().__init__(max_boxes=max_boxes, min_box_side=min_box_side)
        if work_size < 16:
            raise ValueError(f"work_size must be >= 16 px, got {work_size}")
        if not 0.0 < margin <= 2.0:
            raise ValueError(f"margin must be in (0, 2], got {margin}")
        self.work_size = int(work_size)
        self.margin = float(margin)
        self.iterations = int(iterations)

    def _segment(self, image: np.ndarray, boxes: list[Box]) -> tuple[list[np.ndarray], Sequence[float]]:
        h, w = image.shape[:2]
        masks: list[np.ndarray] = []
        scores: list[float] = []
        for box in boxes:
            full = np.zeros((h, w), dtype=bool)
            x0, y0, x1, y1 = box.as_int()
            pad = max(4, round(self.margin * max(x1 - x0, y1 - y0)))
            cx0, cy0, cx1, cy1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
            crop = image[cy0:cy1, cx0:cx1]
            scale = min(1.0, self.work_size / max(crop.shape[:2]))
            size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
            small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else crop
            bx0 = int(np.floor((x0 - cx0) * scale))
            by0 = int(np.floor((y0 - cy0) * scale))
            bx1 = int(np.ceil((x1 - cx0) * scale))
            by1 = int(np.ceil((y1 - cy0) * scale))
            fg_small, score = self._segment_crop(small, (bx0, by0, bx1, by1))
            fg = (cv2.resize(fg_small.astype(np.float32), (crop.shape[1], crop.shape[0]),
                             interpolation=cv2.INTER_LINEAR) >= 0.5) if scale < 1.0 else fg_small
            inner = np.zeros(crop.shape[:2], dtype=bool)
            inner[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = True
            full[cy0:cy1, cx0:cx1] = fg & inner
            masks.append(full)
            scores.append(score)
        return masks, scores

    def _segment_crop(self, crop: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float]:
        ch, cw = crop.shape[:2]
        bx0, by0, bx1, by1 = max(0, box[0]), max(0, box[1]), min(cw, box[2]), min(ch, box[3])
        inside = np.zeros((ch, cw), dtype=bool)
        inside[by0:by1, bx0:bx1] = True
        box_area = max(1, int(inside.sum()))
        has_ring = bool((~inside).any())
        bgr = np.ascontiguousarray(crop[..., ::-1])
        fg: np.ndarray | None = None
        if has_ring and min(bx1 - bx0, by1 - by0) >= 3:
            gc = np.where(inside, cv2.GC_PR_FGD, cv2.GC_BGD).astype(np.uint8)
            bgd = np.zeros((1, 65), np.float64)
            fgd = np.zeros((1, 65), np.float64)
            try:
                cv2.grabCut(bgr, gc, None, bgd, fgd,  # type: ignore[call-overload]
                            self.iterations, cv2.GC_INIT_WITH_MASK)
                fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)) & inside
            except cv2.error as exc:  # degenerate colour statistics (e.g. a flat crop)
                log.debug("grabCut failed on a %dx%d crop: %s", cw, ch, exc)
                fg = None
        if fg is not None:
            fg = _clean(fg, (bx0, by0, bx1, by1))
            frac = fg.sum() / box_area
            if not 0.04 <= frac <= 0.995:
                fg = None
        lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB).astype(np.float32)
        if fg is None:
            fg = self._colour_fallback(lab, inside, has_ring)
            fg = _clean(fg, (bx0, by0, bx1, by1))
            if fg.sum() / box_area < 0.04:
                return inside.copy(), 0.05  # nothing separable: the box itself, low confidence
        return fg, _separation_score(lab, fg, inside)

    @staticmethod
    def _colour_fallback(lab: np.ndarray, inside: np.ndarray, has_ring: bool) -> np.ndarray:
        if has_ring:
            ref = np.median(lab[~inside], axis=0)
        else:  # no ring: compare with the box border pixels
            border = np.zeros(inside.shape, dtype=bool)
            border[[0, -1], :] = True
            border[:, [0, -1]] = True
            ref = np.median(lab[border], axis=0)
        dist = np.linalg.norm(lab - ref, axis=2)
        vals = dist[inside]
        thr = max(12.0, float(cv2.threshold(np.clip(vals, 0, 255).astype(np.uint8).reshape(-1, 1), 0, 255,
                                            cv2.THRESH_BINARY + cv2.THRESH_OTSU)[0]))
        return (dist > thr) & inside


def _clean(fg: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Open/close, fill holes, keep the components at the box centre or of substantial size."""
    m = fg.astype(np.uint8)
    k = np.ones((3, 3), np.uint8)
    m = np.asarray(cv2.morphologyEx(m, cv2.MORPH_OPEN, k), dtype=np.uint8)
    m = np.asarray(cv2.morphologyEx(m, cv2.MORPH_CLOSE, k), dtype=np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return m.astype(bool)
    bx0, by0, bx1, by1 = box
    cy, cx = (by0 + by1) // 2, (bx0 + bx1) // 2
    areas = stats[1:, cv2.CC_STAT_AREA]
    biggest = int(areas.max())
    keep = np.zeros(n, dtype=bool)
    keep[1:] = areas >= 0.3 * biggest
    centre_label = labels[min(cy, m.shape[0] - 1), min(cx, m.shape[1] - 1)]
    if centre_label > 0:
        keep[centre_label] = True
    out = keep[labels]
    # Fill interior holes (specular highlights, printed details) of the kept components.
    filled = out.astype(np.uint8)
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def _separation_score(lab: np.ndarray, fg: np.ndarray, inside: np.ndarray) -> float:
    """Confidence in [0, 1]: Lab distance between the object and its surroundings, saturating."""
    bg = ~fg & ~inside if (~inside).any() else ~fg & inside
    if not fg.any() or not bg.any():
        return 0.1
    d = float(np.linalg.norm(lab[fg].mean(axis=0) - lab[bg].mean(axis=0)))
    return float(np.clip(d / 60.0, 0.0, 1.0))
