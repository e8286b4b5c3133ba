"""Conversion between numpy arrays and sensor_msgs/Image without cv_bridge.

Assigning ``bytes`` to ``Image.data`` is ~60x faster than assigning a numpy array (rclpy
converts arrays element by element), so :func:`to_image_msg` always hands over bytes.
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import Image

#: encoding -> (dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
    "32SC1": (np.dtype(np.int32), 1),
}


class ImageConversionError(ValueError):
    """An Image message or array that cannot be converted; the message says why."""


def to_image_msg(array: np.ndarray, encoding: str, header=None) -> Image:
    """Build an Image from an ``H x W`` or ``H x W x C`` array (copied once, as bytes)."""
    if encoding not in ENCODINGS:
        raise ImageConversionError(f"unsupported encoding {encoding!r}; supported: {sorted(ENCODINGS)}")
    dtype, channels = ENCODINGS[encoding]
    arr = np.asarray(array)
    if arr.dtype != dtype:
        raise ImageConversionError(f"encoding {encoding!r} needs dtype {dtype}, got {arr.dtype}")
    if arr.ndim == 2 and channels == 1:
        h, w = arr.shape
    elif arr.ndim == 3 and arr.shape[2] == channels:
        h, w = arr.shape[:2]
    else:
        wanted = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ImageConversionError(f"encoding {encoding!r} needs shape {wanted}, got {arr.shape}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height = int(h)
    msg.width = int(w)
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(w * channels * dtype.itemsize)
    msg.data = np.ascontiguousarray(arr).tobytes()
    return msg


def from_image_msg(msg: Image, *, copy: bool = False) -> np.ndarray:
    """View an Image as an array (``H x W`` for one channel, else ``H x W x C``).

    Raises :class:`ImageConversionError` naming the offending field for an unknown encoding,
    a step smaller than a row, or a data buffer of the wrong size.
    """
    if msg.encoding not in ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding {msg.encoding!r}; supported: {sorted(ENCODINGS)}"
        )
    dtype, channels = ENCODINGS[msg.encoding]
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"image has zero size: {h}x{w}")
    row = w * channels * dtype.itemsize
    step = int(msg.step) or row
    if step < row:
        raise ImageConversionError(f"image step {step} is smaller than a row ({row} bytes) for {w}x{msg.encoding}")
    buf = msg.data
    if not isinstance(buf, (bytes, bytearray, memoryview, array.array)):  # received: array('B'), no copy
        buf = bytes(buf)
    if len(buf) != step * h:
        raise ImageConversionError(
            f"image data has {len(buf)} bytes, expected step*height = {step}*{h} = {step * h}"
        )
    flat = np.frombuffer(buf, dtype=np.uint8).reshape(h, step)[:, :row]
    arr = flat.view(dtype)
    if msg.is_bigendian and dtype.itemsize > 1:
        arr = arr.byteswap().view(dtype.newbyteorder())
    arr = arr.reshape(h, w, channels) if channels > 1 else arr.reshape(h, w)
    return arr.copy() if copy else arr


def to_rgb(msg: Image) -> np.ndarray:
    """An ``H x W x 3`` uint8 RGB array from any 8-bit colour or mono Image."""
    arr = from_image_msg(msg)
    enc = msg.encoding
    if enc == "rgb8":
        return arr
    if enc == "bgr8":
        return arr[..., ::-1]
    if enc == "rgba8":
        return arr[..., :3]
    if enc == "bgra8":
        return arr[..., 2::-1]
    if enc in ("mono8", "8UC1"):
        return np.repeat(arr[..., None], 3, axis=2)
    raise ImageConversionError(f"cannot convert encoding {enc!r} to RGB")
