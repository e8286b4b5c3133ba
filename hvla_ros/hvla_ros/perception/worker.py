"""Mask propagation in a child process (plain Python, no rclpy).

:class:`PropagationWorker` runs a :class:`MaskPropagator` and its segmenter in a child process
(``spawn``), one frame at a time over a pipe. What it buys is isolation: a crash in a segmenter's
native code (a SAM-family model, OpenCV) ends the child, not the node that forwards the camera
frames, and the child can run at a lower CPU priority. It does not buy latency: on a 2-core machine
the perception node's added latency was the same with propagation in a thread or in a child
(p99 4.5-4.7 ms over 900 frames each; ``benchmarks/bench_transport.py``).

    worker = PropagationWorker("classical", {}, PropagationConfig())
    result = worker.process(frame, "rgb8", boxes=[Box(...)])   # new boxes: segment this frame
    result = worker.process(next_frame, "rgb8")                  # then propagate
    worker.close()

Errors raised in the child come back as the same exception classes (:class:`BoxError`,
:class:`ImageError`, :class:`SegmenterError`); a child that dies raises :class:`WorkerDied`
(start a new worker: the tracking state is gone with it).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from hvla_ros.perception.boxes import Box, BoxError, ImageError
from hvla_ros.perception.propagation import MaskPropagator, PropagationConfig, PropagationStats
from hvla_ros.perception.segmenter import SegmenterError, make_segmenter

#: channel order to RGB for the 8-bit colour encodings (None: already RGB first)
COLOUR_ENCODINGS: dict[str, tuple[int, int, int] | None] = {"rgb8": None, "bgr8": (2, 1, 0), "rgba8": None,
                                                            "bgra8": (2, 1, 0)}
_ERRORS: dict[str, type[Exception]] = {"BoxError": BoxError, "ImageError": ImageError,
                                       "SegmenterError": SegmenterError, "ValueError": ValueError}


class WorkerDied(SegmenterError):
    """The propagation process ended (crash, killed) or stopped answering."""


def to_rgb(arr: np.ndarray, encoding: str) -> np.ndarray:
    """An H x W x 3 RGB copy of an 8-bit colour (``COLOUR_ENCODINGS``) or mono image."""
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2))
    rgb = arr[..., :3]
    order = COLOUR_ENCODINGS.get(encoding)
    if order is not None:
        rgb = rgb[..., list(order)]
    return np.ascontiguousarray(rgb)


@dataclass(frozen=True)
class WorkerResult:
    """The answer to one frame."""

    mask: np.ndarray | None  # H x W bool union of the tracked objects, None when nothing is tracked
    stats: PropagationStats
    segment_ms: float | None  # time spent segmenting new boxes on this frame (None: propagated)


class PropagationWorker:
    """A :class:`MaskPropagator` served by a child process (``spawn``), one frame at a time.

    ``segmenter_kwargs`` go to :func:`make_segmenter` in the child (a SAM-family model is loaded
    there, once per worker); ``nice`` lowers the child's CPU priority. Construction waits until
    the child has built its segmenter and raises :class:`SegmenterError` with the child's reason
    if it could not. Thread-safe.
    """

    def __init__(self, backend: str, segmenter_kwargs: dict[str, Any], config: PropagationConfig | None = None,
                 *, name: str = "hvla-propagation", nice: int = 0, start_timeout_s: float = 300.0,
                 answer_timeout_s: float = 60.0) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs DDS threads
        self._conn, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_serve, args=(child, backend, dict(segmenter_kwargs),
                                                      config or PropagationConfig(), nice),
                                 name=name, daemon=True)
        self._lock = threading.Lock()
        self._answer_timeout_s = answer_timeout_s
        self.stats = PropagationStats()
        self._proc.start()
        child.close()
        if not self._conn.poll(start_timeout_s):
            self.close()
            raise SegmenterError(f"propagation worker did not start within {start_timeout_s:.0f} s")
        try:
            hello = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.close()
            raise WorkerDied(f"propagation worker ended while starting (exit code {self._proc.exitcode})") from exc
        if hello.get("error"):
            self.close()
            raise _ERRORS.get(hello["error"][0], SegmenterError)(hello["error"][1])

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.is_alive()

    def process(self, frame: np.ndarray, encoding: str, boxes: Sequence[Box] | None = None) -> WorkerResult:
        """Segment ``boxes`` on this frame (a new list, even empty, restarts tracking) or propagate.

        ``frame`` is the camera image as received (8-bit colour or mono, any of
        :data:`COLOUR_ENCODINGS`); the child converts it to RGB.
        """
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        header = {"op": "frame", "shape": frame.shape, "encoding": encoding,
                  "boxes": None if boxes is None else [dataclasses.astuple(b) for b in boxes]}
        with self._lock:
            try:
                self._conn.send(header)
                self._conn.send_bytes(frame.data.cast("B"))
                if not self._conn.poll(self._answer_timeout_s):
                    raise WorkerDied(f"propagation worker (pid {self._proc.pid}) gave no answer within "
                                     f"{self._answer_timeout_s:.0f} s")
                answer = self._conn.recv()
                data = self._conn.recv_bytes() if answer.get("mask") else None
            except (EOFError, OSError, BrokenPipeError) as exc:
                self._proc.join(timeout=1.0)
                raise WorkerDied(f"propagation worker (pid {self._proc.pid}) ended "
                                 f"(exit code {self._proc.exitcode})") from exc
        self.stats = PropagationStats(**answer["stats"])
        if answer.get("error"):
            kind, text = answer["error"]
            raise _ERRORS.get(kind, SegmenterError)(text)
        mask = None if data is None else np.frombuffer(data, np.uint8).reshape(frame.shape[:2]).view(bool)
        return WorkerResult(mask, self.stats, answer.get("segment_ms"))

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the child (politely, then by force)."""
        try:
            with self._lock:
                self._conn.send({"op": "stop"})
        except (OSError, ValueError):
            pass
        self._proc.join(timeout=timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=timeout_s)
        self._conn.close()


def _serve(conn: Connection, backend: str, segmenter_kwargs: dict[str, Any], config: PropagationConfig,
           nice: int = 0) -> None:
    """The child: answer frames until told to stop or the parent goes away."""
    import os

    import cv2

    cv2.setNumThreads(1)  # one frame at a time; leave the other cores to the graph
    if nice > 0 and hasattr(os, "nice"):
        try:
            os.nice(nice)  # below the image path's priority
        except OSError:
            pass
    try:
        prop = MaskPropagator(make_segmenter(backend, **segmenter_kwargs), config)
    except Exception as exc:  # report why, the parent raises it
        conn.send({"error": (type(exc).__name__ if type(exc).__name__ in _ERRORS else "SegmenterError",
                             f"cannot build segmenter {backend!r}: {exc}")})
        return
    conn.send({"ok": True})
    active = False
    while True:
        try:
            header = conn.recv()
            if header["op"] == "stop":
                return
            data = conn.recv_bytes()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        answer: dict[str, Any] = {}
        mask = None
        try:
            rgb = to_rgb(np.frombuffer(data, np.uint8).reshape(header["shape"]), header["encoding"])
            if header["boxes"] is not None:
                prop.reset()
                active = False
                if header["boxes"]:
                    t0 = time.perf_counter()
                    prop.initialize(rgb, [Box(*b) for b in header["boxes"]])
                    answer["segment_ms"] = (time.perf_counter() - t0) * 1e3
                    active = True
                    mask = prop.mask
            elif active:
                mask = prop.update(rgb)
        except (BoxError, ImageError, SegmenterError, ValueError) as exc:
            answer["error"] = (type(exc).__name__, str(exc))
        except Exception as exc:  # a bug in propagation: report it with its traceback, keep serving
            answer["error"] = ("SegmenterError", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        answer["stats"] = dataclasses.asdict(prop.stats)
        answer["mask"] = mask is not None
        try:
            conn.send(answer)
            if mask is not None:
                conn.send_bytes(np.ascontiguousarray(mask).view(np.uint8).data.cast("B"))
        except (OSError, BrokenPipeError):
            return
