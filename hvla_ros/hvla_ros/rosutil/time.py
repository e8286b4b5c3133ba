"""Conversions between float seconds and builtin_interfaces Time/Duration (one definition)."""

from __future__ import annotations

from typing import Any

from builtin_interfaces.msg import Duration, Time

_NS = 1_000_000_000


def to_time(t: float) -> Time:
    """A Time message for ``t`` seconds (negative times clamp to 0, as ROS times cannot be)."""
    ns = max(0, round(t * 1e9))
    return Time(sec=ns // _NS, nanosec=ns % _NS)


def to_duration(t: float) -> Duration:
    """A Duration message for ``t`` >= 0 seconds (negative durations clamp to 0)."""
    ns = max(0, round(t * 1e9))
    return Duration(sec=ns // _NS, nanosec=ns % _NS)


def time_from_ns(ns: int) -> Time:
    return Time(sec=ns // _NS, nanosec=ns % _NS)


def seconds(stamp: Any) -> float:
    """Seconds of a Time or Duration message."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9
