"""Record topics to rosbag2 MCAP and play bags back into the graph, without the ros2 CLI.

Recording subscribes with ``raw=True`` so messages are stored exactly as serialized on the wire
(CDR), the way rosbag2 stores them; the bag opens in ``ros2 bag``, Foxglove and the ``mcap``
tools. Message definitions of this project's types are registered from the installed
hvla_interfaces ``.msg`` files, so the MCAP schemas are complete.

Playback reads any rosbag2 bag (ours or one recorded elsewhere with standard types) and
republishes the serialized messages at the original timing (scaled by ``rate``) or as fast as
possible, optionally remapping topic names (e.g. a RealSense topic onto the camera topic the
graph expects).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Topics never recorded by default (ROS infrastructure chatter).
EXCLUDED_BY_DEFAULT = ("/rosout", "/parameter_events")


class BagError(RuntimeError):
    """A bag that cannot be written or read; the message names the file and the reason."""


def message_class(type_name: str) -> type:
    """Import a message class from ``pkg/msg/Name`` (or ``pkg/Name``)."""
    parts = type_name.split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3:
        raise BagError(f"malformed message type name {type_name!r}")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.{parts[1]}"), parts[2])  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        raise BagError(f"message type {type_name!r} is not installed here") from None


def _interface_share_dirs(package: str) -> list[Path]:
    prefixes = [Path(sys.prefix)]
    prefixes += [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return [p / "share" / package for p in prefixes if (p / "share" / package / "msg").is_dir()]


def project_typestore() -> Any:
    """A rosbags typestore for ROS 2 Jazzy plus every hvla_interfaces message."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_JAZZY)
    dirs = _interface_share_dirs("hvla_interfaces")
    if not dirs:
        raise BagError("hvla_interfaces message definitions not found under the install prefix "
                       "(share/hvla_interfaces/msg); build the interfaces first (`make setup`)")
    types: dict[str, Any] = {}
    for msg_file in sorted((dirs[0] / "msg").glob("*.msg")):
        types.update(get_types_from_msg(msg_file.read_text(), f"hvla_interfaces/msg/{msg_file.stem}"))
    store.register(types)
    return store


@dataclass
class RecordStats:
    messages: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)


class BagRecorder:
    """Record topics of a running graph into an MCAP bag through an rclpy node.

    ``topics``: names to record (relative names resolve against the node's namespace); None
    records every topic discovered except :data:`EXCLUDED_BY_DEFAULT`. New topics are picked up
    by :meth:`discover`, which callers run periodically (e.g. from a timer).
    """

    def __init__(self, node: Any, path: str | Path, topics: Sequence[str] | None = None) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self._node = node
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"bag {str(self.path)!r} already exists; choose a new name")
        self._wanted = None if topics is None else {node.resolve_topic_name(t) for t in topics}
        self._store = project_typestore()
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._lock = threading.Lock()
        self._connections: dict[str, Any] = {}
        self._subs: list[Any] = []
        self.stats = RecordStats()
        self._closed = False

    def discover(self) -> list[str]:
        """Subscribe to newly visible topics that should be recorded; returns the new ones."""
        from hvla_ros.rosutil.qos import STATE_QOS

        added: list[str] = []
        if self._closed:
            return added
        for topic, types in self._node.get_topic_names_and_types():
            if topic in self._connections or not types:
                continue
            if self._wanted is None and topic in EXCLUDED_BY_DEFAULT:
                continue
            if self._wanted is not None and topic not in self._wanted:
                continue
            type_name = types[0]
            if type_name not in self._store.types:
                log.warning(f"not recording {topic}: no definition for type {type_name}")
                self._connections[topic] = None
                continue
            try:
                cls = message_class(type_name)
            except BagError as exc:
                log.warning(f"not recording {topic}: {exc}")
                self._connections[topic] = None
                continue
            with self._lock:
                self._connections[topic] = self._writer.add_connection(
                    topic, type_name, typestore=self._store)
            self._subs.append(self._node.create_subscription(
                cls, topic, lambda data, t=topic: self._write(t, data), STATE_QOS, raw=True))
            added.append(topic)
        return added

    def _write(self, topic: str, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            self._writer.write(self._connections[topic], time.time_ns(), data)
            self.stats.messages += 1
            self.stats.per_topic[topic] = self.stats.per_topic.get(topic, 0) + 1

    def close(self) -> Path:
        with self._lock:
            if not self._closed:
                self._closed = True
                for sub in self._subs:
                    self._node.destroy_subscription(sub)
                self._writer.close()
        return self.path


@dataclass(frozen=True)
class BagMessage:
    topic: str
    type_name: str
    timestamp_ns: int
    data: bytes


def read_bag(path: str | Path, topics: Iterable[str] | None = None) -> list[BagMessage]:
    """Every message of the bag (optionally only ``topics``), in time order."""
    from rosbags.rosbag2 import Reader

    p = Path(path)
    if not p.exists():
        raise BagError(f"bag {str(p)!r} does not exist")
    wanted = set(topics) if topics is not None else None
    try:
        with Reader(p) as reader:
            conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
            return [BagMessage(c.topic, c.msgtype, ts, bytes(data))
                    for c, ts, data in reader.messages(connections=conns)]
    except Exception as exc:  # rosbags raises several unrelated types for unreadable bags
        if isinstance(exc, BagError):
            raise
        raise BagError(f"cannot read bag {str(p)!r}: {exc}") from exc


def deserialize(message: BagMessage) -> Any:
    """The rclpy message object of a recorded message."""
    from rclpy.serialization import deserialize_message

    return deserialize_message(message.data, message_class(message.type_name))


def header_stamp_ns(message: BagMessage) -> int | None:
    """The header stamp of a serialized message whose first field is a std_msgs/Header, else None.

    Read straight from the CDR bytes (4-byte encapsulation, then int32 sec and uint32 nanosec),
    so replaying large images costs no deserialization.
    """
    if not _starts_with_header(message.type_name) or len(message.data) < 12:
        return None
    little = message.data[1] in (0x01, 0x03)  # CDR_LE / PL_CDR_LE
    sec = int.from_bytes(message.data[4:8], "little" if little else "big", signed=True)
    nanosec = int.from_bytes(message.data[8:12], "little" if little else "big", signed=False)
    return sec * 1_000_000_000 + nanosec


_HEADER_FIRST: dict[str, bool] = {}


def _starts_with_header(type_name: str) -> bool:
    if type_name not in _HEADER_FIRST:
        try:
            fields = message_class(type_name).get_fields_and_field_types()  # type: ignore[attr-defined]
            _HEADER_FIRST[type_name] = next(iter(fields.values()), "") == "std_msgs/Header"
        except BagError:
            _HEADER_FIRST[type_name] = False
    return _HEADER_FIRST[type_name]


@dataclass
class ReplayStats:
    published: int = 0
    lateness_ms: list[float] = field(default_factory=list)


def replay(node: Any, messages: Sequence[BagMessage], *, rate: float = 1.0,
           remap: Mapping[str, str] | None = None, should_stop: Callable[[], bool] = lambda: False,
           qos: Any = None, wait_for_subscribers_s: float = 0.0, publish_clock: bool = False) -> ReplayStats:
    """Publish ``messages`` (serialized) on ``node``; ``rate`` 0 means as fast as possible.

    With ``wait_for_subscribers_s`` > 0, playback starts once every topic has a subscriber (or
    that many seconds passed), so the first messages are not published into the void.
    With ``publish_clock``, /clock follows the recorded header stamps (never going backwards), so
    nodes running with use_sim_time see the recording's time, as ``ros2 bag play --clock`` does.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    if rate < 0:
        raise ValueError(f"rate must be >= 0 (0: as fast as possible), got {rate}")
    remap = dict(remap or {})
    publishers: dict[str, Any] = {}
    for m in messages:
        out = remap.get(m.topic, m.topic)
        if out not in publishers:
            publishers[out] = node.create_publisher(
                message_class(m.type_name), out, qos or QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    stats = ReplayStats()
    if not messages:
        return stats
    clock_pub = None
    last_clock = -1
    if publish_clock:
        from rosgraph_msgs.msg import Clock

        from hvla_ros import topics

        clock_pub = node.create_publisher(Clock, topics.CLOCK, 10)
    deadline = time.monotonic() + wait_for_subscribers_s
    while time.monotonic() < deadline and not all(p.get_subscription_count() for p in publishers.values()):
        time.sleep(0.05)
    t0_bag = messages[0].timestamp_ns
    t0 = time.monotonic()
    for m in messages:
        if should_stop():
            break
        if rate > 0:
            due = t0 + (m.timestamp_ns - t0_bag) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            stats.lateness_ms.append(max(0.0, time.monotonic() - due) * 1e3)
        if clock_pub is not None:
            stamp = header_stamp_ns(m)
            if stamp is not None and stamp > last_clock:
                last_clock = stamp
                clock_pub.publish(_clock_msg(stamp))
        publishers[remap.get(m.topic, m.topic)].publish(m.data)
        stats.published += 1
    return stats


def _clock_msg(stamp_ns: int) -> Any:
    from rosgraph_msgs.msg import Clock

    from hvla_ros.rosutil.time import time_from_ns

    return Clock(clock=time_from_ns(stamp_ns))
