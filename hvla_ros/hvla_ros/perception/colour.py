"""HSV colour models of a segmented object against its surroundings.

Used by mask propagation to refine warped masks (snap to the object's colours, drop occluders),
to measure drift (likelihood drop inside the mask) and to find an object again after it left
the view (likelihood ratio against the whole image, Swain-Ballard back-projection).
"""

from __future__ import annotations

import cv2
import numpy as np

_BINS = (18, 8, 8)  # hue (0..179), saturation, value
_NBINS = _BINS[0] * _BINS[1] * _BINS[2]
# Per-channel lookup table from HSV values (OpenCV ranges) to bin numbers, applied with cv2.LUT
# in one pass over the three channels. (A 3-D histogram cannot go through OpenCV's Python
# bindings: a 3-D array becomes a multi-channel 2-D matrix, hence the explicit bin indices.)
_BIN_LUT = np.stack([np.minimum(np.arange(256) * _BINS[0] // 180, _BINS[0] - 1),
                     np.arange(256) * _BINS[1] // 256,
                     np.arange(256) * _BINS[2] // 256], axis=1).astype(np.uint8).reshape(256, 1, 3)


def bin_index(hsv: np.ndarray) -> np.ndarray:
    """Histogram bin (0.._NBINS-1) of every pixel of an ``H x W x 3`` HSV (OpenCV ranges) image."""
    b = np.asarray(cv2.LUT(np.ascontiguousarray(hsv), _BIN_LUT), dtype=np.uint8)
    idx = b[..., 0].astype(np.uint16) * np.uint16(_BINS[1] * _BINS[2])
    idx += b[..., 1].astype(np.uint16) * np.uint16(_BINS[2])
    idx += b[..., 2]
    return idx


def hsv_hist(hsv: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Normalised (sum 1), slightly smoothed 3-D HSV histogram (18x8x8) under ``mask``."""
    idx = bin_index(hsv)
    sel = idx.ravel() if mask is None else idx[mask.astype(bool)]
    hist = np.bincount(sel, minlength=_NBINS).astype(np.float32).reshape(_BINS)
    # Smooth across neighbouring bins (shading, lighting changes); hue wraps around.
    smooth = hist.copy()
    smooth += 0.5 * (np.roll(hist, 1, axis=0) + np.roll(hist, -1, axis=0))
    for axis in (1, 2):
        shifted = np.zeros_like(hist)
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[axis], sl_b[axis] = slice(1, None), slice(None, -1)
        shifted[tuple(sl_a)] += hist[tuple(sl_b)]
        shifted[tuple(sl_b)] += hist[tuple(sl_a)]
        smooth += 0.5 * shifted
    total = float(smooth.sum())
    return smooth / total if total > 0 else smooth


class ColourModel:
    """Posterior P(object | colour) from an object histogram and a background histogram."""

    def __init__(self, obj_hist: np.ndarray, bg_hist: np.ndarray, eps: float = 2e-3) -> None:
        self.obj_hist = obj_hist
        self.bg_hist = bg_hist
        post = obj_hist / (obj_hist + bg_hist + eps)
        self._lut = np.round(post * 255.0).astype(np.uint8).ravel()
        # Ratio against an arbitrary image: computed per search from the image histogram.
        self._eps = eps

    @classmethod
    def from_mask(cls, hsv: np.ndarray, mask: np.ndarray, ring_px: int = 12) -> ColourModel:
        """Object = ``mask``; background = a ring of ``ring_px`` around it."""
        m = mask.astype(np.uint8)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_px + 1, 2 * ring_px + 1))
        ring = cv2.dilate(m, k).astype(bool) & ~mask.astype(bool)
        bg = hsv_hist(hsv, ring) if ring.any() else hsv_hist(hsv, ~mask.astype(bool))
        return cls(hsv_hist(hsv, m), bg)

    def probability(self, hsv: np.ndarray) -> np.ndarray:
        """``H x W`` uint8 P(object | colour) * 255 for an HSV image (or ROI)."""
        return self._lut[bin_index(hsv)]

    def ratio_map(self, hsv: np.ndarray) -> np.ndarray:
        """``H x W`` uint8 object-vs-image likelihood ratio (clipped to 1) * 255 (for search)."""
        img_hist = hsv_hist(hsv, None)
        ratio = np.clip(self.obj_hist / (img_hist + self._eps), 0.0, 1.0) * 255.0
        return np.round(ratio).astype(np.uint8).ravel()[bin_index(hsv)]
