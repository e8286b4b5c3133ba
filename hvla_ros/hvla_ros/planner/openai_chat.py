"""Chat backend over an OpenAI-compatible HTTP server (vLLM, Ollama, llama.cpp, ``transformers serve``,
``hvla serve-vlm``).

POSTs ``/chat/completions`` with images as base64 PNG data URLs; each request has a timeout and
is retried with exponential backoff on connection errors, timeouts, 429 and 5xx. The API key is
read from an environment variable (never from a parameter file).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from hvla_ros.planner.reasoner import ReasonerError
from hvla_ros.planner.vlm import ChatBackend, Message

_log = logging.getLogger(__name__)
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def image_data_url(image: np.ndarray, *, max_side: int = 0) -> str:
    """An RGB uint8 image as ``data:image/png;base64,...``, optionally downscaled to ``max_side``."""
    arr: np.ndarray = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
    if max_side and max(arr.shape[:2]) > max_side:
        s = max_side / max(arr.shape[:2])
        arr = cv2.resize(
            arr,
            (max(1, round(arr.shape[1] * s)), max(1, round(arr.shape[0] * s))),
            interpolation=cv2.INTER_AREA,
        )
    ok, png = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode image of shape {image.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii")


def to_openai_messages(messages: Sequence[Message], *, max_image_side: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if not m.images:
            out.append({"role": m.role, "content": m.text})
            continue
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(im, max_side=max_image_side)}}
            for im in m.images
        ]
        parts.append({"type": "text", "text": m.text})
        out.append({"role": m.role, "content": parts})
    return out


class OpenAIChat(ChatBackend):
    """``POST {base_url}/chat/completions`` with timeouts, retries and backoff."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        max_image_side: int = 768,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"`base_url` must start with http:// or https://. Got {base_url!r}.")
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError(
                f"timeout_s > 0, retries >= 0, backoff_s >= 0 required. Got "
                f"{timeout_s}, {retries}, {backoff_s}."
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.max_image_side = max_image_side

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: Sequence[Message]) -> str:
        body = json.dumps(
            {
                "model": self.model,
                "messages": to_openai_messages(messages, max_image_side=self.max_image_side),
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "stream": False,
            }
        ).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read(MAX_RESPONSE_BYTES + 1)
            except urllib.error.HTTPError as e:
                detail = e.read(2000).decode("utf-8", "replace")
                last = f"HTTP {e.code} from {self.url}: {detail}"
                if e.code == 429 or e.code >= 500:
                    _log.warning(f"{last}; retrying")
                    continue
                raise ReasonerError(last) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"cannot reach {self.url}: {getattr(e, 'reason', e)}"
                _log.warning(f"{last}; retrying")
                continue
            if len(raw) > MAX_RESPONSE_BYTES:
                raise ReasonerError(f"response from {self.url} exceeds {MAX_RESPONSE_BYTES} bytes")
            try:
                doc = json.loads(raw)
                content = doc["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise ReasonerError(
                    f"{self.url} did not answer like an OpenAI chat completion: {e!r}: {raw[:200]!r}"
                ) from None
            if isinstance(content, list):  # some servers return content parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
        raise ReasonerError(f"{last} (gave up after {self.retries + 1} tries)")
