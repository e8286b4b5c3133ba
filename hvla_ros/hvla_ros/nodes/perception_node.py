"""perception_node: distractor masks and filtered observations ``I_hat = I * (1 - Q)`` per camera.

A lifecycle node (the segmenter's model is created in ``on_configure``, freed in ``on_cleanup``).

- subscribes ``planner/subtask`` (hvla_interfaces/Subtask, TRANSIENT_LOCAL): at each new subtask
  its ``distractor_boxes`` are segmented on the next frame of their camera; an empty list clears
  that camera's mask;
- subscribes ``cameras/<cam>/image_raw`` and ``camera_info`` for each camera in ``cameras``;
- publishes per camera ``perception/<cam>/image_filtered`` (same size, encoding and header as the
  input), ``perception/<cam>/mask`` (mono8, 255 = masked) and ``perception/<cam>/camera_info``
  (the input's, unchanged);
- publishes hvla_interfaces/PerceptionStatus on ``perception/status`` every ``status_period_s``
  per camera and at once on an error (stale input, bad image, bad boxes, segmenter failure);
- serves hvla_interfaces/Segment on ``perception/segment`` (one image, independent of tracking).

Bad input never stops the node: it is rejected, logged and reported on the status topic.

Example::

    perception_node --ros-args -p cameras:="[front, wrist]" -p fill:=blur
"""

from __future__ import annotations

import array
import functools
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from rclpy.service import Service
from rclpy.task import Future
from rclpy.timer import Timer
from sensor_msgs.msg import CameraInfo, Image

from hvla_interfaces.msg import PerceptionStatus, PixelBox, Subtask  # type: ignore[attr-defined]
from hvla_interfaces.srv import Segment  # type: ignore[attr-defined]
from hvla_ros import topics
from hvla_ros.perception import (
    BACKENDS,
    FILL_MODES,
    Box,
    BoxError,
    ImageError,
    MaskPropagator,
    PropagationConfig,
    SegmenterError,
    apply_mask,
    check_boxes,
    make_segmenter,
)
from hvla_ros.perception.propagation import PropagationStats
from hvla_ros.perception.segmenter import Segmenter
from hvla_ros.perception.worker import COLOUR_ENCODINGS, PropagationWorker, WorkerDied, to_rgb
from hvla_ros.rosutil.images import ImageConversionError, from_image_msg, to_image_msg
from hvla_ros.rosutil.node_main import run_lifecycle_node
from hvla_ros.rosutil.params import ParamSpec, declare_params
from hvla_ros.rosutil.qos import IMAGE_QOS, LATCHED_QOS, STATE_QOS


def _params() -> list[ParamSpec]:
    return [
        ParamSpec("cameras", ["front", "wrist"], "cameras to filter (names as in the robot configuration)",
                  check=lambda v: None if len(v) > 0 and len(set(v)) == len(v)
                  else f"parameter 'cameras' needs distinct names, got {list(v)!r}", read_only=True),
        ParamSpec("backend", "classical", "segmenter backend", choices=BACKENDS, read_only=True),
        ParamSpec("checkpoint", "", "model checkpoint file (SAM-family backends)", read_only=True),
        ParamSpec("model_type", "", "model type, e.g. vit_b / vit_t / efficientvit-sam-l0 (SAM family)",
                  read_only=True),
        ParamSpec("device", "cpu", "torch device for SAM-family backends", read_only=True),
        ParamSpec("fill", "zero", "what masked pixels become", choices=FILL_MODES),
        ParamSpec("max_boxes", 8, "most distractor boxes accepted per camera and subtask", min=1, max=64),
        ParamSpec("stale_timeout_s", 1.0, "input older than this (wall s) is reported stale",
                  min=0.05, max=600.0),
        ParamSpec("status_period_s", 0.5, "seconds between status messages per camera", min=0.05, max=60.0),
        ParamSpec("publish_mask", True, "also publish the mask image"),
        ParamSpec("propagation.scale", 0.5, "optical-flow resolution relative to the image",
                  min=0.1, max=1.0, read_only=True),
        ParamSpec("propagation.drift_threshold", 0.5, "re-segment an object above this drift",
                  min=0.01, max=1.0, read_only=True),
        ParamSpec("propagation.resegment_interval", 0, "also re-segment every N frames (0: on drift only)",
                  min=0, max=100000, read_only=True),
        ParamSpec("propagation.reacquire_interval", 5, "frames between searches for objects out of view",
                  min=1, max=1000, read_only=True),
        ParamSpec("pipelined", True, "publish each frame at once with the latest mask and propagate in a "
                  "worker thread per camera (the mask lags by at most one frame); false: propagate in the "
                  "image callback before publishing (exact, slower)", read_only=True),
        ParamSpec("propagation.process", False, "pipelined mode: propagate in a child process per camera "
                  "(a crash of the segmenter's native code then costs the masks of one subtask, not the node; "
                  "the worker is restarted; a SAM-family model is loaded once more per camera); false: in a "
                  "thread of this process", read_only=True),
        ParamSpec("propagation.nice", 10, "pipelined mode: how much lower the propagation's CPU priority is "
                  "than the image path's (0-19; the thread, or the child process)", min=0, max=19, read_only=True),
        ParamSpec("pipeline_dilate_px", 2, "pipelined mode: grow the mask by this many pixels to cover "
                  "the motion of one frame (more coverage of a moving object, lower IoU)", min=0, max=50,
                  read_only=True),
        ParamSpec("autostart", True, "configure and activate at start (no lifecycle manager needed)",
                  read_only=True),
    ]


@dataclass(frozen=True)
class _MaskState:
    """A mask ready to apply: everything the image callback needs, computed off its path."""

    mask: np.ndarray  # H x W bool (dilated in pipelined mode): what is filtered
    keep: np.ndarray  # H x W x C (or H x W) uint8, 1 where the pixel is kept
    mask_data: array.array  # mono8 bytes of the mask (255 = masked), handed to messages as is
    fraction: float


def _mask_state(mask: np.ndarray, channels: int, dilate_px: int) -> _MaskState:
    m8 = np.ascontiguousarray(mask).view(np.uint8)
    if dilate_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        m8 = np.asarray(cv2.dilate(m8, k), dtype=np.uint8)
    keep1 = np.ascontiguousarray(m8 == 0).view(np.uint8)
    keep = cv2.merge([keep1] * channels) if channels > 1 else keep1
    data = array.array("B")
    data.frombytes(np.multiply(m8, np.uint8(255), dtype=np.uint8).tobytes())
    return _MaskState(m8.view(bool), keep, data, cv2.countNonZero(m8) / m8.size)


@dataclass
class _Camera:
    name: str
    propagator: MaskPropagator
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending_boxes: list[PixelBox] | None = None  # set by a new subtask, consumed by the next frame
    active: bool = False  # has a mask to apply
    frames: int = 0
    last_rx: float = 0.0  # monotonic time of the last image
    error_code: int = PerceptionStatus.ERROR_NONE
    error_msg: str = ""
    mask_fraction: float = 0.0
    shape: tuple[int, int] | None = None
    info: CameraInfo | None = None
    state: _MaskState | None = None  # the mask applied to the next published frame
    out: array.array | None = None  # preallocated filtered-frame buffer (message data, no copy)
    zero_mask: array.array | None = None  # mono8 all-zero mask for frames without a mask
    # pipelined mode: the newest frame waiting for the worker, and the worker itself
    cond: threading.Condition = field(default_factory=threading.Condition)
    latest: tuple[np.ndarray, str] | None = None
    worker: threading.Thread | None = None
    remote: PropagationWorker | None = None  # propagation in a child process (propagation.process)
    stop: bool = False

    @property
    def stats(self) -> PropagationStats:
        return self.remote.stats if self.remote is not None else self.propagator.stats


class PerceptionNode(LifecycleNode):
    """Thin ROS wrapper around :mod:`hvla_ros.perception`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("perception", **kwargs)
        self.p = declare_params(self, _params())
        self._segmenter: Segmenter | None = None
        self._cams: dict[str, _Camera] = {}
        self._subtask_key: tuple[str, int, int] | None = None
        self._active = False
        self._handles: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._seg_lock = threading.Lock()  # one segmenter call at a time (torch models are not reentrant)

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.p
        try:
            self._segmenter = make_segmenter(p["backend"], checkpoint=p["checkpoint"],
                                             model_type=p["model_type"], device=p["device"],
                                             max_boxes=p["max_boxes"])
            config = PropagationConfig(scale=p["propagation.scale"],
                                       drift_threshold=p["propagation.drift_threshold"],
                                       resegment_interval=p["propagation.resegment_interval"],
                                       reacquire_interval=p["propagation.reacquire_interval"])
        except (SegmenterError, ValueError) as exc:
            self.get_logger().error(f"cannot configure perception: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._cams = {c: _Camera(c, MaskPropagator(self._segmenter, config)) for c in p["cameras"]}
        self._pipelined = bool(p["pipelined"])
        self._worker_args = None
        if self._pipelined and p["propagation.process"]:
            self._worker_args = (p["backend"], {"checkpoint": p["checkpoint"], "model_type": p["model_type"],
                                                "device": p["device"], "max_boxes": p["max_boxes"]}, config)
            try:
                for cam in self._cams.values():
                    cam.remote = self._new_worker(cam.name)
            except SegmenterError as exc:
                self.get_logger().error(f"cannot start the propagation workers: {exc}")
                self._close_remotes()
                return TransitionCallbackReturn.FAILURE
        # Input queue a little deeper than IMAGE_QOS (still RELIABLE, compatible with any camera):
        # a frame arriving while the callback runs is queued, not overwritten.
        in_qos = QoSProfile(history=IMAGE_QOS.history, depth=max(4, IMAGE_QOS.depth),
                            reliability=IMAGE_QOS.reliability, durability=IMAGE_QOS.durability)
        if self._pipelined:
            # Hand the GIL over sooner (default 5 ms): the image callbacks must not wait for the
            # propagation workers' Python code.
            sys.setswitchinterval(0.0005)
        for cam in self._cams.values():
            group = MutuallyExclusiveCallbackGroup()  # cameras in parallel, frames of one in order
            self._pubs[f"img/{cam.name}"] = self.create_publisher(Image, topics.filtered_image(cam.name),
                                                                  IMAGE_QOS)
            self._pubs[f"mask/{cam.name}"] = self.create_publisher(Image, topics.mask_image(cam.name),
                                                                   IMAGE_QOS)
            self._pubs[f"info/{cam.name}"] = self.create_publisher(CameraInfo, topics.filtered_info(cam.name),
                                                                   IMAGE_QOS)
            self._handles.append(self.create_subscription(
                Image, topics.camera_image(cam.name), functools.partial(self._on_image, cam), in_qos,
                callback_group=group))
            if self._pipelined:
                cam.worker = threading.Thread(target=self._worker, args=(cam,), name=f"perception-{cam.name}",
                                              daemon=True)
                cam.worker.start()
            self._handles.append(self.create_subscription(
                CameraInfo, topics.camera_info(cam.name), functools.partial(self._on_info, cam), IMAGE_QOS,
                callback_group=group))
        self._pubs["status"] = self.create_publisher(PerceptionStatus, topics.PERCEPTION_STATUS, STATE_QOS)
        self._handles.append(self.create_subscription(Subtask, topics.CURRENT_SUBTASK, self._on_subtask,
                                                      LATCHED_QOS))
        self._handles.append(self.create_service(Segment, topics.SEGMENT_SERVICE, self._on_segment,
                                                 callback_group=MutuallyExclusiveCallbackGroup()))
        self._handles.append(self.create_timer(p["status_period_s"], self._publish_status_all))
        self.get_logger().info(f"configured: backend {p['backend']!r}, cameras {p['cameras']}, "
                               f"fill {p['fill']!r}, {'pipelined' if self._pipelined else 'synchronous'}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        now = time.monotonic()
        for cam in self._cams.values():
            cam.last_rx = now  # staleness counts from activation
        self._active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        return super().on_deactivate(state)

    def _new_worker(self, camera: str) -> PropagationWorker:
        assert self._worker_args is not None
        backend, kwargs, config = self._worker_args
        return PropagationWorker(backend, kwargs, config, name=f"hvla-propagation-{camera}",
                                 nice=self.p["propagation.nice"])

    def _close_remotes(self) -> None:
        for cam in self._cams.values():
            if cam.remote is not None:
                cam.remote.close()
                cam.remote = None

    def _stop_workers(self) -> None:
        for cam in self._cams.values():
            with cam.cond:
                cam.stop = True
                cam.cond.notify_all()
        for cam in self._cams.values():
            if cam.worker is not None:
                cam.worker.join(timeout=5.0)
                cam.worker = None
        self._close_remotes()

    def destroy_node(self) -> None:
        self._active = False
        self._stop_workers()
        super().destroy_node()

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_workers()
        for h in self._handles:
            if isinstance(h, Timer):
                self.destroy_timer(h)
            elif isinstance(h, Service):
                self.destroy_service(h)
            else:
                self.destroy_subscription(h)
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._handles.clear()
        self._pubs.clear()
        self._cams.clear()
        self._segmenter = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_workers()
        return TransitionCallbackReturn.SUCCESS

    # ------------------------------------------------------------------ inputs
    def _on_subtask(self, msg: Subtask) -> None:
        key = (msg.episode_id, int(msg.subtask_id), int(msg.attempt))
        if key == self._subtask_key:
            return
        self._subtask_key = key
        by_cam: dict[str, list[PixelBox]] = {c: [] for c in self._cams}
        for box in msg.distractor_boxes:
            if box.camera in by_cam:
                by_cam[box.camera].append(box)
            else:
                self.get_logger().warning(f"subtask {key}: distractor box for camera {box.camera!r} "
                                          f"which this node does not filter ({list(self._cams)})")
        for name, boxes in by_cam.items():
            cam = self._cams[name]
            with cam.lock, cam.cond:
                cam.pending_boxes = boxes
                if not boxes and self._pipelined:
                    cam.state = None  # no distractors: stop masking from the next frame
        self.get_logger().info(f"subtask {key} {msg.instruction!r}: "
                               f"{ {n: len(b) for n, b in by_cam.items()} } distractor box(es)")

    def _on_info(self, cam: _Camera, msg: CameraInfo) -> None:
        cam.info = msg
        if self._active:
            self._pubs[f"info/{cam.name}"].publish(msg)

    def _on_image(self, cam: _Camera, msg: Image) -> None:
        if not self._active:
            return
        cam.last_rx = time.monotonic()
        try:
            arr = from_image_msg(msg)  # a view of the received buffer, no copy
            _check_encoding(msg.encoding, arr)
            hw = (int(msg.height), int(msg.width))
            if self._pipelined:
                with cam.cond:
                    state = cam.state
                    if state is not None and state.mask.shape != hw:
                        raise ImageError(f"image size changed from {state.mask.shape[1]}x{state.mask.shape[0]} "
                                         f"to {hw[1]}x{hw[0]} while tracking; waiting for a new subtask")
            else:
                state = self._process(cam, arr, msg.encoding, hw)
        except (ImageConversionError, ImageError, BoxError, SegmenterError, ValueError) as exc:
            self._report(cam, _error_code(exc), str(exc))
            return
        except Exception as exc:  # a bug must not take the cameras down: report it and go on
            self._report_bug(cam, exc)
            return
        cam.frames += 1
        self._publish(cam, msg, arr, state)
        if self._pipelined:
            # Only now wake the worker for this frame: on a machine with few cores it would
            # otherwise take the CPU from the publish.
            with cam.cond:
                cam.latest = (arr, msg.encoding)  # the worker propagates the newest frame
                cam.cond.notify()
        if cam.error_code in (PerceptionStatus.ERROR_STALE_INPUT, PerceptionStatus.ERROR_BAD_IMAGE):
            cam.error_code, cam.error_msg = PerceptionStatus.ERROR_NONE, ""

    @staticmethod
    def _take_pending(cam: _Camera, hw: tuple[int, int]) -> list[PixelBox] | None:
        """The boxes of a new subtask waiting for this frame, if any (caller holds ``cam.lock``);
        a frame of another size while tracking is an error."""
        pending, cam.pending_boxes = cam.pending_boxes, None
        if cam.shape is not None and cam.shape != hw and cam.active and pending is None:
            raise ImageError(f"image size changed from {cam.shape[1]}x{cam.shape[0]} to "
                             f"{hw[1]}x{hw[0]} while tracking; waiting for a new subtask")
        cam.shape = hw
        return pending

    def _process(self, cam: _Camera, arr: np.ndarray, encoding: str, hw: tuple[int, int]) -> _MaskState | None:
        """Start tracking on new boxes or propagate the mask to this frame; the mask to apply."""
        rgb = to_rgb(arr, encoding)
        with cam.lock:
            pending = self._take_pending(cam, hw)
            if pending is not None:
                self._start_tracking(cam, rgb, pending)
            if not cam.active:
                return None
            mask = cam.propagator.update(rgb) if pending is None else cam.propagator.mask
            if mask is None:
                return None
            dilate = self.p["pipeline_dilate_px"] if self._pipelined else 0
            return _mask_state(mask, 1 if arr.ndim == 2 else arr.shape[2], dilate)

    def _process_remote(self, cam: _Camera, arr: np.ndarray, encoding: str,
                        hw: tuple[int, int]) -> _MaskState | None:
        """:meth:`_process` with the propagator in the camera's child process."""
        assert cam.remote is not None
        with cam.lock:
            pending = self._take_pending(cam, hw)
        boxes: list[Box] | None = None
        rejected = False
        if pending is not None:
            cam.active = False
            boxes, rejected = self._accept_boxes(cam, pending, (*hw, 3))
        elif not cam.active:
            return None
        result = cam.remote.process(arr, encoding, boxes)
        if result.segment_ms is not None:
            cam.active = True
            self.get_logger().info(f"{cam.name}: segmented {len(boxes or [])} box(es) in "
                                   f"{result.segment_ms:.0f} ms (propagation worker pid {cam.remote.pid})")
        if pending is not None and not rejected:
            cam.error_code, cam.error_msg = PerceptionStatus.ERROR_NONE, ""
        if result.mask is None:
            return None
        return _mask_state(result.mask, 1 if arr.ndim == 2 else arr.shape[2], self.p["pipeline_dilate_px"])

    def _worker(self, cam: _Camera) -> None:
        """Pipelined mode: propagate the newest frame of one camera, publish nothing."""
        _lower_priority(self.p["propagation.nice"])
        while True:
            with cam.cond:
                while cam.latest is None and not cam.stop:
                    cam.cond.wait(0.5)
                if cam.stop:
                    return
                assert cam.latest is not None
                (arr, encoding), cam.latest = cam.latest, None
            try:
                if cam.remote is not None:
                    state = self._process_remote(cam, arr, encoding, arr.shape[:2])
                else:
                    state = self._process(cam, arr, encoding, arr.shape[:2])
                with cam.cond:
                    if cam.pending_boxes is None:  # else a newer subtask decides
                        cam.state = state
            except WorkerDied as exc:
                self._restart_worker(cam, exc)
            except (ImageConversionError, ImageError, BoxError, SegmenterError, ValueError) as exc:
                self._report(cam, _error_code(exc), str(exc))
            except Exception as exc:  # keep the worker alive: report and go on with the next frame
                self._report_bug(cam, exc)

    def _restart_worker(self, cam: _Camera, exc: WorkerDied) -> None:
        """A dead propagation process: report it, stop masking, start a new one (tracking resumes
        with the next subtask's boxes)."""
        with cam.cond:
            cam.state = None
        cam.active = False
        self._report(cam, PerceptionStatus.ERROR_SEGMENTER_FAILED, f"{exc}; masking stops until the next subtask")
        if cam.remote is not None:
            cam.remote.close(timeout_s=1.0)
        try:
            cam.remote = self._new_worker(cam.name)
            self.get_logger().warning(f"{cam.name}: propagation worker restarted (pid {cam.remote.pid})")
        except SegmenterError as again:
            cam.remote = None  # propagate in this process from now on
            self._report(cam, PerceptionStatus.ERROR_SEGMENTER_FAILED,
                         f"propagation worker cannot restart ({again}); propagating in-process")

    def _publish(self, cam: _Camera, msg: Image, arr: np.ndarray, state: _MaskState | None) -> None:
        """Publish the filtered frame (and mask): one pass over the pixels into a reused buffer."""
        if state is None:
            self._pubs[f"img/{cam.name}"].publish(msg)  # nothing to mask: forward the frame as it came
            cam.mask_fraction = 0.0
        else:
            if cam.out is None or len(cam.out) != arr.nbytes:
                cam.out = array.array("B", bytes(arr.nbytes))
            view = np.frombuffer(cam.out, np.uint8).reshape(arr.shape)
            fill = self.p["fill"]
            if fill == "zero" and state.keep.shape == arr.shape:
                cv2.multiply(arr, state.keep, dst=view)  # I * (1 - Q)
            else:
                apply_mask(arr, state.mask, fill, out=view)
            out = Image(header=msg.header, height=msg.height, width=msg.width, encoding=msg.encoding,
                        is_bigendian=0, step=view.strides[0])
            out.data = cam.out  # array('B'): taken as is; publish() serialises it before returning
            self._pubs[f"img/{cam.name}"].publish(out)
            cam.mask_fraction = state.fraction
        if self.p["publish_mask"]:
            h, w = arr.shape[:2]
            if state is None:
                if cam.zero_mask is None or len(cam.zero_mask) != h * w:
                    cam.zero_mask = array.array("B", bytes(h * w))
                data = cam.zero_mask
            else:
                data = state.mask_data
            m = Image(header=msg.header, height=h, width=w, encoding="mono8", is_bigendian=0, step=w)
            m.data = data
            self._pubs[f"mask/{cam.name}"].publish(m)

    def _report_bug(self, cam: _Camera, exc: Exception) -> None:
        self.get_logger().error(f"{cam.name}: unexpected {type(exc).__name__}: {exc}\n"
                                f"{traceback.format_exc()}", throttle_duration_sec=5.0)
        self._report(cam, PerceptionStatus.ERROR_SEGMENTER_FAILED, f"{type(exc).__name__}: {exc}")

    def _start_tracking(self, cam: _Camera, rgb: np.ndarray, boxes: Sequence[PixelBox]) -> None:
        """Segment the subtask's boxes on this frame (caller holds ``cam.lock``)."""
        cam.active = False
        cam.propagator.reset()
        accepted, rejected = self._accept_boxes(cam, boxes, rgb.shape)
        if not accepted:
            if not rejected:  # no distractors: nothing to mask, nothing wrong
                cam.error_code, cam.error_msg = PerceptionStatus.ERROR_NONE, ""
            return
        with self._seg_lock:
            t0 = time.perf_counter()
            cam.propagator.initialize(rgb, accepted)
        cam.active = True
        if not rejected:
            cam.error_code, cam.error_msg = PerceptionStatus.ERROR_NONE, ""
        self.get_logger().info(f"{cam.name}: segmented {len(accepted)} box(es) in "
                               f"{(time.perf_counter() - t0) * 1e3:.0f} ms")

    def _accept_boxes(self, cam: _Camera, boxes: Sequence[PixelBox],
                      shape: tuple[int, ...]) -> tuple[list[Box], bool]:
        """A subtask's boxes clipped to the image, and whether any was rejected (reported on the
        status topic); more than ``max_boxes`` raises :class:`BoxError`."""
        if not boxes:
            return [], False
        check = check_boxes(list(boxes), shape, max_boxes=self.p["max_boxes"])
        if check.rejected:
            self._report(cam, PerceptionStatus.ERROR_BAD_BOXES, check.error_text)
        return check.accepted, bool(check.rejected)

    async def _on_segment(self, req: Segment.Request, resp: Segment.Response) -> Segment.Response:
        """Segment in a thread of its own: the executor thread keeps serving the cameras meanwhile."""
        done: Future = Future(executor=self.executor)
        done.add_done_callback(lambda _f: None)  # its completion wakes the executor, which resumes us

        def work() -> None:
            try:
                done.set_result(self._segment(req, resp))
            except BaseException as exc:  # _segment handles errors; this only keeps the caller from hanging
                done.set_exception(exc)

        threading.Thread(target=work, name="perception-segment", daemon=True).start()
        result: Segment.Response = await done
        return result

    def _segment(self, req: Segment.Request, resp: Segment.Response) -> Segment.Response:
        resp.error_code = Segment.Response.ERROR_NONE
        if self._segmenter is None:
            resp.error_code, resp.error_msg = Segment.Response.ERROR_SEGMENTER_FAILED, "node not configured"
            return resp
        try:
            arr = from_image_msg(req.image)
            _check_encoding(req.image.encoding, arr)
            rgb = to_rgb(arr, req.image.encoding)
            check = check_boxes(list(req.boxes), rgb.shape, max_boxes=self.p["max_boxes"])
            accepted = [req.boxes[i] for i in check.accepted_index]
            mask = np.zeros(rgb.shape[:2], bool)
            scores = np.zeros(0, np.float32)
            if check.accepted:
                with self._seg_lock:
                    mask, scores = self._segmenter.segment(rgb, check.accepted)
            for box, clipped in zip(accepted, check.accepted, strict=True):
                box.x_min, box.y_min = float(clipped.x_min), float(clipped.y_min)
                box.x_max, box.y_max = float(clipped.x_max), float(clipped.y_max)
            resp.accepted_boxes = accepted
            resp.scores = [float(s) for s in scores]
            resp.mask = to_image_msg(mask.view(np.uint8) * np.uint8(255), "mono8", req.image.header)
            if check.rejected:
                resp.error_code, resp.error_msg = Segment.Response.ERROR_BAD_BOXES, check.error_text
        except (ImageConversionError, ImageError) as exc:
            resp.error_code, resp.error_msg = Segment.Response.ERROR_BAD_IMAGE, str(exc)
        except BoxError as exc:
            resp.error_code, resp.error_msg = Segment.Response.ERROR_BAD_BOXES, str(exc)
        except (SegmenterError, ValueError, RuntimeError) as exc:
            resp.error_code, resp.error_msg = Segment.Response.ERROR_SEGMENTER_FAILED, str(exc)
        except Exception as exc:  # never let one request take the node down
            self.get_logger().error(f"segment request: {traceback.format_exc()}")
            resp.error_code = Segment.Response.ERROR_SEGMENTER_FAILED
            resp.error_msg = f"{type(exc).__name__}: {exc}"
        if resp.error_code:
            self.get_logger().warning(f"segment request: {resp.error_msg}")
        return resp

    # ------------------------------------------------------------------ status
    def _report(self, cam: _Camera, code: int, text: str) -> None:
        cam.error_code, cam.error_msg = code, text
        self.get_logger().error(f"{cam.name}: {text}", throttle_duration_sec=2.0)
        self._publish_status(cam)

    def _publish_status_all(self) -> None:
        if not self._active:
            return
        now = time.monotonic()
        for cam in self._cams.values():
            stale = now - cam.last_rx > self.p["stale_timeout_s"]
            if stale and cam.error_code != PerceptionStatus.ERROR_STALE_INPUT:
                cam.error_code = PerceptionStatus.ERROR_STALE_INPUT
                cam.error_msg = f"no image on {topics.camera_image(cam.name)} for {now - cam.last_rx:.1f} s"
                self.get_logger().warning(f"{cam.name}: {cam.error_msg}")
            self._publish_status(cam, stale=stale)

    def _publish_status(self, cam: _Camera, *, stale: bool | None = None) -> None:
        if "status" not in self._pubs:
            return
        s = PerceptionStatus()
        s.header.stamp = self.get_clock().now().to_msg()
        s.camera = cam.name
        s.stale = bool(stale) if stale is not None else cam.error_code == PerceptionStatus.ERROR_STALE_INPUT
        s.frames_processed = cam.frames
        st = cam.stats
        s.reinitializations = st.reinitializations + st.reacquisitions
        s.mask_fraction = cam.mask_fraction
        s.drift = float(st.drift)
        s.error_code = cam.error_code
        s.error_msg = cam.error_msg
        self._pubs["status"].publish(s)


def _check_encoding(encoding: str, arr: np.ndarray) -> None:
    """Raise :class:`ImageError` unless the image is 8-bit colour or mono (what can be masked)."""
    if encoding not in COLOUR_ENCODINGS and not (arr.ndim == 2 and arr.dtype == np.uint8):
        raise ImageError(f"unsupported encoding {encoding!r} for filtering (8-bit colour or mono images only)")


def _lower_priority(nice: int) -> None:
    """Lower the CPU priority of the calling thread (Linux: a thread has its own nice value)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass  # not permitted here: run at the process's priority


def _error_code(exc: Exception) -> int:
    if isinstance(exc, BoxError):
        return PerceptionStatus.ERROR_BAD_BOXES
    if isinstance(exc, (ImageError, ImageConversionError)):
        return PerceptionStatus.ERROR_BAD_IMAGE
    return PerceptionStatus.ERROR_SEGMENTER_FAILED


def main(args: Sequence[str] | None = None) -> int:
    # One executor thread: the image callbacks are short (propagation and segmentation run in
    # threads of their own) and a single-threaded executor hands them over about twice as fast.
    return run_lifecycle_node(PerceptionNode, args, executor_kind="single_threaded")


if __name__ == "__main__":
    raise SystemExit(main())
