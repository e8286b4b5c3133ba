"""Segmenter interface, input validation (fuzzed), filtering, and the SAM-family loaders."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvla_ros.perception import (
    Box,
    BoxError,
    ImageError,
    SegmenterError,
    apply_mask,
    check_boxes,
    make_segmenter,
    validate_image,
)

H, W = 96, 128


def _scene() -> tuple[np.ndarray, list[tuple[float, float, float, float]], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    img = np.full((H, W, 3), (110, 130, 100), np.uint8) + rng.integers(0, 10, (H, W, 3)).astype(np.uint8)
    gts, boxes = [], []
    for (x0, y0, x1, y1), c in (((10, 10, 40, 35), (220, 30, 30)), ((70, 40, 110, 85), (30, 50, 210)),
                                ((45, 60, 62, 90), (230, 210, 40))):
        img[y0:y1, x0:x1] = c
        gt = np.zeros((H, W), bool)
        gt[y0:y1, x0:x1] = True
        gts.append(gt)
        boxes.append((x0 - 4.0, y0 - 4.0, x1 + 4.0, y1 + 4.0))
    return img, boxes, gts


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_classical_segments_each_box_and_returns_union():
    img, boxes, gts = _scene()
    seg = make_segmenter("classical")
    mask, scores = seg.segment(img, boxes)
    assert mask.shape == (H, W) and mask.dtype == bool
    assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all() and scores.min() > 0.5
    assert _iou(mask, gts[0] | gts[1] | gts[2]) > 0.9
    masks, _ = seg.segment_objects(img, boxes)
    for m, gt in zip(masks, gts, strict=True):
        assert _iou(m, gt) > 0.9


def test_box_partly_outside_is_clipped_and_others_rejected_by_name():
    img, _, gts = _scene()
    seg = make_segmenter("classical")
    mask, _ = seg.segment(img, [(-20.0, -30.0, 44.0, 39.0)])
    assert _iou(mask, gts[0]) > 0.9
    with pytest.raises(BoxError, match=r"box #1 .*NaN"):
        seg.segment(img, [(6, 6, 44, 39), (math.nan, 0, 5, 5)])
    with pytest.raises(BoxError, match=r"box #0 .*zero or negative area"):
        seg.segment(img, [(30, 30, 30, 50)])
    with pytest.raises(BoxError, match=r"box #0 .*outside the image"):
        seg.segment(img, [(200, 10, 260, 50)])
    with pytest.raises(BoxError, match="max_boxes=2"):
        make_segmenter("classical", max_boxes=2).segment(img, [(0, 0, 10, 10)] * 3)
    with pytest.raises(BoxError, match="4 numbers"):
        seg.segment(img, [(1, 2, 3)])


def test_bad_images_are_rejected_with_the_reason():
    seg = make_segmenter("classical")
    box = [(1, 1, 8, 8)]
    with pytest.raises(ImageError, match="dtype float32"):
        seg.segment(np.zeros((H, W, 3), np.float32), box)
    with pytest.raises(ImageError, match=r"shape \(H, W, 3\)"):
        seg.segment(np.zeros((H, W), np.uint8), box)
    with pytest.raises(ImageError, match=r"shape \(H, W, 3\)"):
        seg.segment(np.zeros((H, W, 4), np.uint8), box)
    with pytest.raises(ImageError, match="outside the supported range"):
        seg.segment(np.zeros((2, 2, 3), np.uint8), box)
    with pytest.raises(ImageError, match="numpy array"):
        seg.segment([[0, 0, 0]], box)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="differs from the expected"):
        validate_image(np.zeros((H, W, 3), np.uint8), expected_hw=(H + 1, W))


coord = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                  st.floats(min_value=-50, max_value=200), st.integers(-50, 200))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(coord, coord, coord, coord), min_size=0, max_size=10))
def test_fuzzed_boxes_never_crash_and_masks_stay_inside_clipped_boxes(raw_boxes):
    img, _, _ = _scene()
    seg = make_segmenter("classical", max_boxes=8, work_size=32)
    check = check_boxes(raw_boxes, img.shape, max_boxes=8) if len(raw_boxes) <= 8 else None
    try:
        mask, scores = seg.segment(img, raw_boxes)
    except BoxError as exc:
        assert len(raw_boxes) > 8 or (check is not None and check.rejected)
        assert "box" in str(exc)
        return
    assert check is not None and not check.rejected
    assert mask.shape == (H, W) and len(scores) == len(raw_boxes)
    allowed = np.zeros((H, W), bool)
    for b in check.accepted:
        x0, y0, x1, y1 = b.as_int()
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        allowed[y0:y1, x0:x1] = True
    assert not (mask & ~allowed).any()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 2, 3, 4]),
       st.sampled_from([np.uint8, np.uint16, np.float32, np.int64]))
def test_fuzzed_image_shapes_and_dtypes_give_image_errors(h, w, c, dtype):
    img = np.zeros((h, w, c), dtype)
    try:
        validate_image(img)
    except ImageError:
        return
    assert dtype is np.uint8 and c == 3 and min(h, w) >= 8


def test_box_accepts_pixelbox_like_objects():
    class PB:
        camera, label, x_min, y_min, x_max, y_max = "front", "cup", 1.0, 2.0, 30.0, 40.0

    b = Box.of(PB())
    assert (b.x_min, b.y_max, b.label) == (1.0, 40.0, "cup")


@pytest.mark.parametrize("fill", ["zero", "mean", "blur"])
def test_apply_mask_changes_only_masked_pixels(fill):
    img, _, gts = _scene()
    out = apply_mask(img, gts[1], fill)
    assert out.shape == img.shape and out.dtype == img.dtype
    assert np.array_equal(out[~gts[1]], img[~gts[1]])
    assert not np.array_equal(out[gts[1]], img[gts[1]])
    if fill == "zero":
        assert (out[gts[1]] == 0).all()
    mono = apply_mask(img[..., 0].copy(), gts[1].view(np.uint8) * 255, fill)
    assert mono.shape == (H, W) and np.array_equal(mono[~gts[1]], img[..., 0][~gts[1]])
    with pytest.raises(ValueError, match="fill must be one of"):
        apply_mask(img, gts[1], "paint")
    with pytest.raises(ValueError, match="does not match"):
        apply_mask(img, gts[1][:10], fill)


def test_unknown_backend_and_missing_packages_are_named():
    with pytest.raises(SegmenterError, match="unknown segmenter backend 'yolo'"):
        make_segmenter("yolo")
    pytest.importorskip("torch")
    try:
        import sam2  # noqa: F401
    except ImportError:
        with pytest.raises(SegmenterError, match="needs the Python package sam2"):
            make_segmenter("sam2")
    else:
        with pytest.raises(SegmenterError, match=r"unknown sam2 model_type 'no_such\.yaml'"):
            make_segmenter("sam2", model_type="no_such.yaml")
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        return
    with pytest.raises(SegmenterError, match="unknown sam model_type 'vit_x'"):
        make_segmenter("sam", model_type="vit_x")
    with pytest.raises(SegmenterError, match="does not exist"):
        make_segmenter("sam", checkpoint="no/such/file.pth")


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "module"), [("sam", "segment_anything"), ("mobile_sam", "mobile_sam"),
                                                 ("efficientvit_sam", "efficientsam"), ("sam2", "sam2")])
def test_sam_family_backend_roundtrips_a_checkpoint_and_segments(tmp_path, backend, module):
    pytest.importorskip("torch")
    from hvla_ros.perception.sam_backends import _import_torch_stack, build_model

    torch = _import_torch_stack()  # before the package: CPU torch + PyPI torchvision (see there)
    pytest.importorskip(module)

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = build_model(backend)  # random weights: no downloads
    ckpt = tmp_path / "weights.pt"
    # SAM 2's released checkpoints wrap the state dict as {"model": ...}; the others are bare
    torch.save({"model": model.state_dict()} if backend == "sam2" else model.state_dict(), ckpt)
    seg = make_segmenter(backend, checkpoint=str(ckpt))
    loaded = seg.model.state_dict()  # type: ignore[attr-defined]
    key = next(iter(model.state_dict()))
    assert torch.equal(loaded[key], model.state_dict()[key])
    img, boxes, _ = _scene()
    mask, scores = seg.segment(img, boxes[:2])
    assert mask.shape == (H, W) and mask.dtype == bool and scores.shape == (2,)
    with pytest.raises(BoxError):
        seg.segment(img, [(math.inf, 0, 5, 5)])
    bad = tmp_path / "bad.pt"
    torch.save({"not_a_weight": torch.zeros(1)}, bad)
    with pytest.raises(SegmenterError, match="does not fit"):
        make_segmenter(backend, checkpoint=str(bad))
