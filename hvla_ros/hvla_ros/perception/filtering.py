"""Filtered observation ``I_hat = I * (1 - Q)``: masked pixels replaced by a fill.

Fills: ``zero`` (black, the paper's definition), ``mean`` (the mean colour of the unmasked
pixels, less of an edge for convolutional encoders) and ``blur`` (a strongly blurred copy of the
image, computed at 1/8 resolution so it stays cheap at camera rate).
"""

from __future__ import annotations

import cv2
import numpy as np

FILL_MODES = ("zero", "mean", "blur")


def apply_mask(image: np.ndarray, mask: np.ndarray, fill: str = "zero", *,
               out: np.ndarray | None = None) -> np.ndarray:
    """Return ``image`` with the pixels where ``mask`` is nonzero replaced by ``fill``.

    ``image`` is ``H x W x C`` (or ``H x W``) uint8, ``mask`` ``H x W`` bool/uint8. The input is
    never modified; ``out`` may be given to reuse a buffer of the same shape.
    """
    if fill not in FILL_MODES:
        raise ValueError(f"fill must be one of {list(FILL_MODES)}, got {fill!r}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
    m8 = mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8, copy=False)
    keep = cv2.compare(m8, np.zeros_like(m8), cv2.CMP_EQ)  # 255 where the pixel is kept
    if out is None:
        out = np.empty_like(image)
    if fill == "zero":  # I * (1 - Q)
        out.fill(0)
    elif fill == "mean":
        colour = np.asarray(cv2.mean(image, mask=keep))[: (image.shape[2] if image.ndim == 3 else 1)]
        out[...] = np.round(np.array(colour)).astype(image.dtype)
    else:
        h, w = image.shape[:2]
        small = cv2.resize(image, (max(1, w // 8), max(1, h // 8)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigmaX=3.0)
        out[...] = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(out.shape)
    cv2.copyTo(image, keep, out)
    return out
