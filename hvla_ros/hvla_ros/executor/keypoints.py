"""Colour keypoints: a compact, fixed (not learned) image encoder for skill policies.

For each colour of a small palette and each camera a skill reads, the *filtered* camera image
(perception's masking: masked pixels are filled and so vanish from the features) is reduced to
five numbers::

    sqrt(area fraction)      0 when the colour is absent, 1 when it fills the image
    u, v                     centroid, normalized to [-1, 1] (0 when absent)
    spread_u, spread_v       standard deviation of the pixel coordinates, normalized like u, v

``len(KEYPOINT_COLOURS) * 5`` values per camera, cameras in the skill's order. With
``orientation`` each camera's values are followed by two more per colour: the blob's four-fold
orientation (see :func:`encode_image`), which the five above cannot express (a square's spread is
the same at every yaw). The colours are the task objects' (red, green, blue, yellow; in the SO-101
work cell yellow is also the arm) and grey (the box). HSV ranges come from the verifier's palette
(hvla_ros.planner.image_checks) plus a low-saturation grey range; every image is resized to
:data:`ENCODER_HW` first so features do not depend on the camera resolution.

What it costs: the policy sees coloured blobs only (no shape, no texture, no edges), two objects
of one colour merge into one blob, and the palette must be re-tuned for a real camera's colours.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from hvla_ros.planner.image_checks import DEFAULT_PALETTE, ImageCheckError, Palette, check_image

ENCODER_NAME = "colour_keypoints"
PIXELS = "pixels"
IMAGE_ENCODERS = (PIXELS, ENCODER_NAME)
KEYPOINT_COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "grey")
FEATURES_PER_COLOUR = 5
#: Orientation values per colour (``orientation=True``): real and imaginary part of the blob's
#: normalized fourth-order complex moment.
ORIENTATION_PER_COLOUR = 2
ENCODER_HW = (96, 128)
#: Verifier palette plus grey (low saturation, mid brightness: the box; black and white excluded).
KEYPOINT_PALETTE = Palette.from_dict(
    {
        **{
            name: [[list(r.lo), list(r.hi)] for r in ranges]
            for name, ranges in DEFAULT_PALETTE.colors.items()
        },
        "grey": [[[0, 0, 90], [180, 45, 225]]],
    }
)


#: Nouns of the task suite's instructions whose objects have a palette colour of their own.
NOUN_COLOURS: dict[str, str] = {"box": "grey", "holder": "grey"}
#: Target blocks (see :func:`target_block`): the object the instruction names, then its destination.
TARGET_ROLES: tuple[str, ...] = ("object", "destination")


@functools.lru_cache(maxsize=256)  # called on every observation with the subtask's instruction
def instruction_targets(text: str, colours: tuple[str, ...] = KEYPOINT_COLOURS) -> tuple[str | None, str | None]:
    """(object colour, destination colour) named by an instruction, ``None`` where none is named.

    The object is the first palette colour word ("pick up the *red* cube"); the destination the
    last colour word or colour-bearing noun after it ("... on the *yellow* cube", "... in the
    *box*" -> grey)."""
    from hvla_ros.executor.instruction import tokens

    found = [t if t in colours else NOUN_COLOURS[t] for t in tokens(text) if t in colours or t in NOUN_COLOURS]
    obj = found[0] if found else None
    dest = found[-1] if len(found) > 1 else None
    return obj, dest


def target_dim(num_cameras: int) -> int:
    """Size of the target block for ``num_cameras`` cameras."""
    return num_cameras * len(TARGET_ROLES) * FEATURES_PER_COLOUR


def target_block(
    keypoints: np.ndarray, num_cameras: int, targets: tuple[str | None, str | None],
    colours: Sequence[str] = KEYPOINT_COLOURS, *, orientation: bool = False,
) -> np.ndarray:
    """The features of the colours an instruction names, copied out of ``keypoints`` (the
    concatenated per-camera features, last axis): per camera, the object's 5 values then the
    destination's (zeros for a role the instruction does not name). A policy then reads "where is
    the thing I was told to act on" directly instead of learning to select it from the text, which
    the diffusion UNet's conditioning (FiLM, linear in its input) does poorly.
    Works on one vector or a batch (``... x F``); ``orientation``: the keypoints carry orientation
    values (the block copies the five position values only)."""
    fpc = features_per_camera(colours, orientation=orientation)
    lead = keypoints.shape[:-1]
    out = np.zeros((*lead, target_dim(num_cameras)), np.float32)
    for ci in range(num_cameras):
        for ri, col in enumerate(targets):
            if col is None:
                continue
            k = list(colours).index(col)
            src = keypoints[..., ci * fpc + k * FEATURES_PER_COLOUR : ci * fpc + (k + 1) * FEATURES_PER_COLOUR]
            o = (ci * len(TARGET_ROLES) + ri) * FEATURES_PER_COLOUR
            out[..., o : o + FEATURES_PER_COLOUR] = src
    return out


class KeypointError(ValueError):
    """An image or camera set the keypoint encoder cannot use; the message names the problem."""


def features_per_camera(colours: Sequence[str] = KEYPOINT_COLOURS, *, orientation: bool = False) -> int:
    return len(colours) * (FEATURES_PER_COLOUR + (ORIENTATION_PER_COLOUR if orientation else 0))


def feature_dim(num_cameras: int, colours: Sequence[str] = KEYPOINT_COLOURS, *, orientation: bool = False) -> int:
    """Number of keypoint values for ``num_cameras`` cameras."""
    return num_cameras * features_per_camera(colours, orientation=orientation)


def feature_names(cameras: Sequence[str], colours: Sequence[str] = KEYPOINT_COLOURS, *,
                  orientation: bool = False) -> list[str]:
    """Human-readable name of every value, in order (``front.red.u`` ...)."""
    parts = ("area", "u", "v", "spread_u", "spread_v")
    names = []
    for c in cameras:
        names += [f"{c}.{col}.{p}" for col in colours for p in parts]
        if orientation:
            names += [f"{c}.{col}.{p}" for col in colours for p in ("orient_re", "orient_im")]
    return names


def _masks(image: np.ndarray, colours: Sequence[str], palette: Palette) -> list[np.ndarray]:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    out = []
    for col in colours:
        m = np.zeros(hsv.shape[:2], np.uint8)
        for r in palette.ranges(col):
            m |= cv2.inRange(hsv, np.array(r.lo, np.uint8), np.array(r.hi, np.uint8))
        out.append(m)
    return out


def encode_image(
    image: np.ndarray, colours: Sequence[str] = KEYPOINT_COLOURS, palette: Palette = KEYPOINT_PALETTE, *,
    orientation: bool = False,
) -> np.ndarray:
    """Keypoint features (``len(colours) * 5`` float32) of one ``H x W x 3`` uint8 RGB image.

    ``orientation``: followed by two values per colour, ``m = E[z^4] / E[|z|^4]`` with ``z`` the
    pixel offsets from the blob's centroid as complex numbers (real and imaginary part). Its
    angle is four times the blob's orientation modulo 90 degrees (what a square's yaw is to a
    parallel gripper), its modulus how four-fold anisotropic the blob is (0.43 for a square seen
    straight on, 0 for a disc); both are continuous where the angle wraps.
    """
    try:
        img = check_image(image)
    except ImageCheckError as e:
        raise KeypointError(str(e)) from None
    h, w = ENCODER_HW
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    us = (np.arange(w, dtype=np.float64) + 0.5) / w * 2.0 - 1.0
    vs = (np.arange(h, dtype=np.float64) + 0.5) / h * 2.0 - 1.0
    out = np.zeros((len(colours), FEATURES_PER_COLOUR), np.float32)
    orient = np.zeros((len(colours), ORIENTATION_PER_COLOUR), np.float32)
    try:
        masks = _masks(img, colours, palette)
    except ImageCheckError as e:
        raise KeypointError(str(e)) from None
    for i, m in enumerate(masks):
        sel = m > 0
        n = int(sel.sum())
        if n < 2:  # absent (a single pixel is noise)
            continue
        col_w = sel.sum(axis=0).astype(np.float64)  # per column
        row_w = sel.sum(axis=1).astype(np.float64)
        u = float(col_w @ us) / n
        v = float(row_w @ vs) / n
        su = float(np.sqrt(max(0.0, float(col_w @ (us * us)) / n - u * u)))
        sv = float(np.sqrt(max(0.0, float(row_w @ (vs * vs)) / n - v * v)))
        out[i] = (np.sqrt(n / (h * w)), u, v, su, sv)
        if orientation:
            ys, xs = np.nonzero(sel)
            z = (xs - xs.mean()) + 1j * (ys - ys.mean())
            z2 = z * z
            norm = float(np.mean(np.abs(z2) ** 2))
            if norm > 0.0:
                moment = complex(np.mean(z2 * z2)) / norm
                orient[i] = (moment.real, moment.imag)
    return np.concatenate([out.ravel(), orient.ravel()]) if orientation else out.ravel()


def encode_cameras(
    images: Mapping[str, np.ndarray], cameras: Sequence[str], colours: Sequence[str] = KEYPOINT_COLOURS, *,
    orientation: bool = False,
) -> np.ndarray:
    """Concatenated features of ``cameras`` (in that order) from ``images`` (camera -> RGB)."""
    parts = []
    for cam in cameras:
        img = images.get(cam)
        if img is None:
            raise KeypointError(f"keypoint encoder needs camera {cam!r}; images have {sorted(images)}")
        try:
            parts.append(encode_image(img, colours, orientation=orientation))
        except KeypointError as e:
            raise KeypointError(f"camera {cam!r}: {e}") from None
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def encode_batch(images_nchw: np.ndarray, colours: Sequence[str] = KEYPOINT_COLOURS) -> np.ndarray:
    """Features of N images stored ``N x 3 x H x W`` uint8 (the demonstration layout): N x F."""
    if images_nchw.ndim != 4 or images_nchw.shape[1] != 3:
        raise KeypointError(f"expected N x 3 x H x W images, got shape {images_nchw.shape}")
    out = np.empty((images_nchw.shape[0], features_per_camera(colours)), np.float32)
    for i in range(images_nchw.shape[0]):
        out[i] = encode_image(np.ascontiguousarray(images_nchw[i].transpose(1, 2, 0)), colours)
    return out
