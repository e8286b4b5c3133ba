"""Masked perception (plain Python, no rclpy): box-prompted segmentation, mask propagation
and filtered observations ``I_hat = I * (1 - Q)``.

Public API:
- :func:`make_segmenter` / :class:`Segmenter` (``segment(image_rgb, boxes) -> (mask, scores)``)
- :class:`MaskPropagator` (``Q_t = K(I_t, Q_{t-1})`` with drift detection and re-segmentation)
- :func:`apply_mask` (fill ``zero`` / ``mean`` / ``blur``)
- :class:`Box`, :func:`check_boxes`, :func:`validate_image`, :class:`BoxError`, :class:`ImageError`
"""

from hvla_ros.perception.boxes import Box, BoxCheck, BoxError, ImageError, check_boxes, validate_image
from hvla_ros.perception.filtering import FILL_MODES, apply_mask
from hvla_ros.perception.propagation import MaskPropagator, PropagationConfig, PropagationStats
from hvla_ros.perception.segmenter import BACKENDS, Segmenter, SegmenterError, make_segmenter

__all__ = [
    "BACKENDS",
    "FILL_MODES",
    "Box",
    "BoxCheck",
    "BoxError",
    "ImageError",
    "MaskPropagator",
    "PropagationConfig",
    "PropagationStats",
    "Segmenter",
    "SegmenterError",
    "apply_mask",
    "check_boxes",
    "make_segmenter",
    "validate_image",
]
