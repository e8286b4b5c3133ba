"""Box-prompted segmenter interface and the backend factory.

Every backend turns an RGB image and pixel boxes into one mask per box; :meth:`Segmenter.segment`
returns their union (``H x W`` bool) and one confidence per box. Inputs are validated here once
for all backends (see :mod:`hvla_ros.perception.boxes`).

Backends: ``classical`` (OpenCV, no weights, the default), ``sam`` (segment-anything vit_b/l/h),
``mobile_sam`` (MobileSAM vit_t, CPU friendly), ``efficientvit_sam`` (EfficientViT-SAM),
``sam2`` (SAM 2). Model packages are imported only when their backend is built.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from hvla_ros.perception.boxes import Box, BoxError, check_boxes, validate_image

BACKENDS = ("classical", "sam", "mobile_sam", "efficientvit_sam", "sam2")


class SegmenterError(RuntimeError):
    """A backend that cannot be built or failed on an image (missing package, bad checkpoint)."""


class Segmenter(ABC):
    """Box-prompted zero-shot segmentation: ``segment(image_rgb, boxes) -> (mask, scores)``."""

    name = "segmenter"

    def __init__(self, *, max_boxes: int = 8, min_box_side: float = 2.0) -> None:
        self.max_boxes = int(max_boxes)
        self.min_box_side = float(min_box_side)

    def segment(self, image_rgb: np.ndarray, boxes: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
        """Union mask (``H x W`` bool) of the objects in ``boxes`` and one score per box.

        Boxes partly outside the image are clipped. Raises :class:`BoxError` naming the box for
        a NaN, zero-area or off-image box, or too many boxes; :class:`ImageError` for an image
        that is not ``H x W x 3`` uint8.
        """
        masks, scores = self.segment_objects(image_rgb, boxes)
        union = np.zeros(image_rgb.shape[:2], dtype=bool)
        for m in masks:
            union |= m
        return union, scores

    def segment_objects(self, image_rgb: np.ndarray, boxes: Sequence[object]
                        ) -> tuple[list[np.ndarray], np.ndarray]:
        """One ``H x W`` bool mask per box (same order) and their scores; strict validation."""
        image = validate_image(image_rgb)
        check = check_boxes(boxes, image.shape, max_boxes=self.max_boxes, min_side=self.min_box_side)
        if check.rejected:
            raise BoxError(check.error_text)
        if not check.accepted:
            return [], np.zeros(0, dtype=np.float32)
        masks, scores = self._segment(image, check.accepted)
        return masks, np.asarray(scores, dtype=np.float32)

    @abstractmethod
    def _segment(self, image: np.ndarray, boxes: list[Box]) -> tuple[list[np.ndarray], Sequence[float]]:
        """Backend work on validated input: clipped boxes, ``H x W x 3`` uint8 RGB image."""


def make_segmenter(backend: str = "classical", *, checkpoint: str = "", model_type: str = "",
                   device: str = "cpu", max_boxes: int = 8, **kwargs: Any) -> Segmenter:
    """Build a segmenter by backend name (see :data:`BACKENDS`)."""
    if backend == "classical":
        from hvla_ros.perception.classical import ClassicalSegmenter

        return ClassicalSegmenter(max_boxes=max_boxes, **kwargs)
    if backend in ("sam", "mobile_sam", "efficientvit_sam", "sam2"):
        from hvla_ros.perception.sam_backends import build_prompt_segmenter

        return build_prompt_segmenter(backend, checkpoint=checkpoint, model_type=model_type,
                                      device=device, max_boxes=max_boxes, **kwargs)
    raise SegmenterError(f"unknown segmenter backend {backend!r}; choose one of {list(BACKENDS)}")
