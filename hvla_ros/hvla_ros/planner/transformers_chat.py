"""Chat backend over a local transformers image-text-to-text model (a directory or a hub id).

The model and its processor load once, at construction (the node constructs it in
``on_configure``). On a GPU it runs in bf16 (fp16 where bf16 is unsupported); on CPU in fp32.
Decoding is greedy and bounded by ``max_new_tokens``.
"""

from __future__ import annotations

import logging
import sys
import threading
import types
from collections.abc import Sequence
from typing import Any

import numpy as np

from hvla_ros.planner.reasoner import ReasonerError
from hvla_ros.planner.vlm import ChatBackend, Message

_log = logging.getLogger(__name__)


def _import_transformers() -> Any:
    # The PyPI torchvision wheel registers CUDA-only meta kernels on import, which fails with a
    # CPU build of torch; an empty module in its place avoids that (see lerobot_compat).
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    import transformers

    return transformers


def pick_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, Any]:
    """(device, torch dtype): a GPU with bf16/fp16 when present, else CPU fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        if device.startswith("cuda"):
            return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return device, torch.float32
    try:
        return device, {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    except KeyError:
        raise ValueError(f"`dtype` must be auto, bfloat16, float16 or float32. Got {dtype!r}.") from None


class TransformersChat(ChatBackend):
    """A local VLM loaded with ``AutoProcessor`` + ``AutoModelForImageTextToText``."""

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 512,
        max_image_side: int = 448,
        local_files_only: bool = True,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1. Got {max_new_tokens}.")
        tf = _import_transformers()
        import torch

        self.model_id = model
        self.device, self.dtype = pick_device_dtype(device, dtype)
        self.max_new_tokens = max_new_tokens
        self.max_image_side = max_image_side
        self._lock = threading.Lock()  # generate() is not re-entrant on one model
        try:
            self.processor = tf.AutoProcessor.from_pretrained(model, local_files_only=local_files_only)
            self.model = tf.AutoModelForImageTextToText.from_pretrained(
                model, torch_dtype=self.dtype, local_files_only=local_files_only
            ).to(self.device)
        except (OSError, ValueError, KeyError) as e:
            raise ReasonerError(f"cannot load image-text-to-text model {model!r}: {e}") from e
        self.model.eval()
        self._torch = torch
        _log.info(f"loaded {model!r} on {self.device} ({self.dtype})")

    def _pil(self, image: np.ndarray) -> Any:
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
        scale = self.max_image_side / max(img.size)
        if scale < 1.0:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        return img

    def complete(self, messages: Sequence[Message]) -> str:
        chat: list[dict[str, Any]] = []
        images = []
        for m in messages:
            content: list[dict[str, Any]] = [{"type": "image"} for _ in m.images]
            content.append({"type": "text", "text": m.text})
            chat.append({"role": m.role, "content": content})
            images += [self._pil(im) for im in m.images]
        try:
            text = self.processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        except (ValueError, TypeError, KeyError) as e:
            raise ReasonerError(f"model {self.model_id!r} cannot encode the prompt: {e}") from e
        inputs.pop("token_type_ids", None)
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
        }
        with self._lock, self._torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1] :]
        return str(self.processor.decode(new, skip_special_tokens=True))

    def close(self) -> None:
        del self.model
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
