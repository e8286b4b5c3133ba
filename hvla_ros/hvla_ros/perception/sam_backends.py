"""Segment-anything family backends (loaded lazily; torch and the model package only here).

| backend            | package (PyPI)                   | model types                      |
|--------------------|----------------------------------|----------------------------------|
| ``sam``            | segment-anything                 | vit_b, vit_l, vit_h              |
| ``mobile_sam``     | mobilesam-mirror (+ timm)        | vit_t                            |
| ``efficientvit_sam`` | efficientsam                   | efficientvit-sam-l0 .. -xl1      |
| ``sam2``           | sam2 (SAM2_BUILD_CUDA=0)         | Hydra config, e.g. sam2.1_hiera_t |

All share the predictor API ``set_image(rgb)`` then ``predict(box=xyxy, multimask_output=False)``
-> (masks, scores, logits), so one :class:`PromptSegmenter` drives them. Checkpoints are local
files (a state dict); nothing is downloaded. An empty checkpoint builds the architecture with
random weights (tests, timing), which the factory logs loudly.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hvla_ros.perception.boxes import Box
from hvla_ros.perception.segmenter import Segmenter, SegmenterError

log = logging.getLogger(__name__)

_PACKAGES = {
    "sam": ("segment_anything", "segment-anything"),
    "mobile_sam": ("mobile_sam", "mobilesam-mirror (and timm)"),
    "efficientvit_sam": ("efficientsam", "efficientsam"),
    "sam2": ("sam2", "sam2 (install with SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2)"),
}
DEFAULT_MODEL_TYPE = {"sam": "vit_b", "mobile_sam": "vit_t", "efficientvit_sam": "efficientvit-sam-l0",
                      "sam2": "configs/sam2.1/sam2.1_hiera_t.yaml"}


def _import_torch_stack() -> Any:
    """Import torch (and make a CPU torch + PyPI torchvision pair importable)."""
    try:
        import torch
    except ImportError as exc:
        raise SegmenterError("the SAM backends need the 'torch' package") from exc
    # The PyPI torchvision wheel is a CUDA build; with CPU torch its meta registrations fail to
    # import ("operator torchvision::nms does not exist"). Models and transforms work without
    # them, and the SAM packages need nothing more from torchvision.
    if not torch.cuda.is_available() and "torchvision._meta_registrations" not in sys.modules:
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    return torch


def _import_package(backend: str) -> Any:
    module, dist = _PACKAGES[backend]
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise SegmenterError(f"segmenter backend {backend!r} needs the Python package {dist}: "
                             f"pip install it, or use backend 'classical' ({exc})") from exc


def build_model(backend: str, model_type: str = "", checkpoint: str | Path = "") -> Any:
    """Build the backend's torch model; load ``checkpoint`` (state dict) when given."""
    torch = _import_torch_stack()
    pkg = _import_package(backend)
    model_type = model_type or DEFAULT_MODEL_TYPE[backend]
    ckpt = str(checkpoint) if checkpoint else ""
    if ckpt and not Path(ckpt).is_file():
        raise SegmenterError(f"checkpoint {ckpt!r} for backend {backend!r} does not exist")
    if backend in ("sam", "mobile_sam"):
        registry = pkg.sam_model_registry
        if model_type not in registry or model_type == "default":
            raise SegmenterError(f"unknown {backend} model_type {model_type!r}; "
                                 f"choose one of {sorted(k for k in registry if k != 'default')}")
        model = registry[model_type](checkpoint=None)
    elif backend == "efficientvit_sam":
        from efficientsam.sam_model_zoo import (
            REGISTERED_EFFICIENTVIT_SAM_MODEL,
            create_efficientvit_sam_model,
        )

        if model_type not in REGISTERED_EFFICIENTVIT_SAM_MODEL:
            raise SegmenterError(f"unknown efficientvit_sam model_type {model_type!r}; "
                                 f"choose one of {sorted(REGISTERED_EFFICIENTVIT_SAM_MODEL)}")
        model = create_efficientvit_sam_model(model_type, pretrained=False)
    else:  # sam2: Hydra config name; checkpoints hold {"model": state_dict} (loaded below)
        from sam2.build_sam import build_sam2

        try:
            model = build_sam2(model_type, None, device="cpu", mode="eval")
        except Exception as exc:  # Hydra's MissingConfigException and friends
            raise SegmenterError(f"unknown sam2 model_type {model_type!r} (a config of the sam2 package, "
                                 f"e.g. {DEFAULT_MODEL_TYPE['sam2']!r}): {str(exc).splitlines()[0]}") from exc
    if ckpt:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise SegmenterError(f"checkpoint {ckpt!r} does not fit {backend} {model_type}: "
                                 f"{str(exc).splitlines()[0]}") from exc
    else:
        log.warning("segmenter %s %s built WITHOUT weights (random init): masks are meaningless",
                    backend, model_type)
    return model.eval()


def _make_predictor(backend: str, model: Any) -> Any:
    if backend == "sam":
        from segment_anything import SamPredictor

        return SamPredictor(model)
    if backend == "mobile_sam":
        from mobile_sam import SamPredictor as MobileSamPredictor

        return MobileSamPredictor(model)
    if backend == "efficientvit_sam":
        from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor

        return EfficientViTSamPredictor(model)
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(model)


class PromptSegmenter(Segmenter):
    """A segment-anything-style predictor behind the :class:`Segmenter` interface."""

    def __init__(self, backend: str, model: Any, *, device: str = "cpu", max_boxes: int = 8,
                 threads: int = 0) -> None:
        super().__init__(max_boxes=max_boxes)
        torch = _import_torch_stack()
        if threads > 0:
            torch.set_num_threads(threads)
        self.name = backend
        self.device = device
        self.model = model.to(device) if hasattr(model, "to") else model
        self.predictor = _make_predictor(backend, self.model)
        self._no_grad: Callable[[], Any] = torch.inference_mode

    def _segment(self, image: np.ndarray, boxes: list[Box]) -> tuple[list[np.ndarray], Sequence[float]]:
        masks: list[np.ndarray] = []
        scores: list[float] = []
        try:
            with self._no_grad():
                self.predictor.set_image(image)
                for box in boxes:
                    xyxy = np.array([box.x_min, box.y_min, box.x_max, box.y_max], dtype=np.float32)
                    m, s, _ = self.predictor.predict(box=xyxy, multimask_output=False)
                    masks.append(np.asarray(m[0]).astype(bool))
                    scores.append(float(np.asarray(s).ravel()[0]))
        except (RuntimeError, ValueError) as exc:
            size = f"{image.shape[1]}x{image.shape[0]}"
            raise SegmenterError(f"{self.name} failed on a {size} image: {exc}") from exc
        return masks, scores


def build_prompt_segmenter(backend: str, *, checkpoint: str = "", model_type: str = "", device: str = "cpu",
                           max_boxes: int = 8, threads: int = 0) -> PromptSegmenter:
    """Build a SAM-family :class:`PromptSegmenter` (see the module table for backends)."""
    if backend not in _PACKAGES:
        raise SegmenterError(f"unknown SAM-family backend {backend!r}; choose one of {sorted(_PACKAGES)}")
    model = build_model(backend, model_type, checkpoint)
    return PromptSegmenter(backend, model, device=device, max_boxes=max_boxes, threads=threads)
