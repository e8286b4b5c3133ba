"""``hvla serve-vlm``: a small OpenAI-compatible chat server for a local transformers VLM.

For machines where vLLM or ``transformers serve`` are not available (the latter needs extra
packages and a torchvision matching torch). Serves ``GET /v1/models`` and
``POST /v1/chat/completions`` (text and ``image_url`` data-URL parts, no streaming). Binds to
127.0.0.1 unless told otherwise; requests are size-limited and generation is serialized.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np

from hvla_ros.planner.reasoner import ReasonerError
from hvla_ros.planner.vlm import ChatBackend, Message

_log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 32 * 1024 * 1024


class BadRequest(ValueError):
    """A request the server refuses (HTTP 400), with the reason."""


def decode_data_url(url: str) -> np.ndarray:
    """``data:image/...;base64,...`` -> RGB uint8 array."""
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise BadRequest("only data:image/...;base64 URLs are supported for images")
    try:
        raw = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except ValueError as e:
        raise BadRequest(f"bad base64 image: {e}") from None
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadRequest("the image data cannot be decoded")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def parse_messages(doc: Any) -> list[Message]:
    """OpenAI chat ``messages`` -> :class:`Message` list."""
    if not isinstance(doc, dict) or not isinstance(doc.get("messages"), list) or not doc["messages"]:
        raise BadRequest("the body must be a JSON object with a non-empty 'messages' list")
    out = []
    for i, m in enumerate(doc["messages"][:64]):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}] needs a role of system, user or assistant")
        content = m.get("content", "")
        if isinstance(content, str):
            out.append(Message(m["role"], content))
            continue
        if not isinstance(content, list):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        texts, images = [], []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                url = part.get("image_url")
                images.append(decode_data_url(url.get("url", "") if isinstance(url, dict) else url))
            else:
                raise BadRequest(f"messages[{i}] has an unsupported content part {kind!r}")
        out.append(Message(m["role"], "\n".join(texts), tuple(images)))
    return out


class ChatServer:
    """An OpenAI-compatible HTTP front of one :class:`ChatBackend`, in a background thread."""

    def __init__(self, chat: ChatBackend, model_name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.chat = chat
        self.model_name = model_name
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                _log.debug("%s " + format, self.address_string(), *args)

            def _send(self, code: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") in ("/v1/models", "/models"):
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [{"id": server.model_name, "object": "model", "owned_by": "local"}],
                        },
                    )
                elif self.path.rstrip("/") in ("/health", "/v1/health"):
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    if not 0 < length <= MAX_REQUEST_BYTES:
                        raise BadRequest(f"Content-Length must be 1..{MAX_REQUEST_BYTES}, got {length}")
                    doc = json.loads(self.rfile.read(length))
                    messages = parse_messages(doc)
                except (BadRequest, ValueError) as e:
                    self._send(400, {"error": {"message": str(e), "type": "invalid_request_error"}})
                    return
                try:
                    with server._lock:
                        text = server.chat.complete(messages)
                except ReasonerError as e:
                    self._send(500, {"error": {"message": str(e), "type": "server_error"}})
                    return
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": server.model_name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                )

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vlm-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="local model directory (or cached hub id)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    parser.add_argument("--served-name", default="", help="model name reported to clients (default: --model)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument(
        "--build-tiny",
        action="store_true",
        help="first build a tiny random VLM into --model (offline smoke tests)",
    )


def run(args: argparse.Namespace) -> int:
    from hvla_ros.planner.transformers_chat import TransformersChat

    if args.build_tiny:
        from hvla_ros.planner.tiny_vlm import build_tiny_vlm

        build_tiny_vlm(args.model)
    try:
        chat = TransformersChat(
            args.model, device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens
        )
    except ReasonerError as e:
        _log.error(str(e))
        return 1
    server = ChatServer(chat, args.served_name or args.model, args.host, args.port)
    # The line below is what scripts wait for to learn the port.
    print(f"serving {server.model_name!r} at {server.base_url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0
