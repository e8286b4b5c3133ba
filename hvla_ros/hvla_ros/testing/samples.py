"""Deterministic sample instances of any ROS message type, for round-trip and fuzz tests.

Values are derived from each field's rosidl type, so new fields are covered automatically.
Variants:
- ``empty``: default values, empty strings and sequences (the edge case DDS must keep empty);
- ``full``: extreme numeric values, unicode strings, nested sequences of a few elements;
- ``large``: like ``full`` but with long sequences and strings (hundreds of kB per message).
"""

from __future__ import annotations

import importlib
from typing import Any

from rosidl_parser import definition as d

VARIANTS = ("empty", "full", "large")

_INT_LIMITS = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
_FLOAT_EXTREMES = {"float": 3.4028234663852886e38, "double": 1.7976931348623157e308}
_UNICODE = "grüße ✓ 日本語 🤖 \"quotes\" \\ newline\n"


def message_class(namespaced: d.NamespacedType) -> type:
    """Import the Python class of a rosidl NamespacedType (e.g. std_msgs/msg/Header)."""
    module = importlib.import_module(".".join(namespaced.namespaces))
    return getattr(module, namespaced.name)


def _basic(typename: str, variant: str, index: int) -> Any:
    if typename == "boolean":
        return variant != "empty" and index % 2 == 0
    if typename in ("octet", "byte"):
        return bytes([0 if variant == "empty" else (255 - index) % 256])
    if typename == "char":
        return 0 if variant == "empty" else 65 + index % 26
    if typename in _INT_LIMITS:
        lo, hi = _INT_LIMITS[typename]
        if variant == "empty":
            return 0
        offset = index % 100  # stays inside even the uint8 range for long sequences
        return hi - offset if index % 2 == 0 else lo + offset
    if typename in ("float", "double", "long double"):
        if variant == "empty":
            return 0.0
        big = _FLOAT_EXTREMES.get(typename, 1.0e300)
        choices = (big, -big, 1.5, -0.0, 2.0**-20)
        return choices[index % len(choices)]
    raise TypeError(f"unsupported basic type {typename!r}")


def _string(variant: str, index: int, bound: int | None) -> str:
    if variant == "empty":
        return ""
    text = _UNICODE + str(index)
    if variant == "large":
        text = (text * 2000)[: 60_000]
    if bound is not None:
        text = text[:bound]
    return text


def _value(t: Any, variant: str, index: int, depth: int) -> Any:
    if isinstance(t, d.BasicType):
        return _basic(t.typename, variant, index)
    if isinstance(t, (d.AbstractString, d.AbstractWString)):
        bound = getattr(t, "maximum_size", None)
        return _string(variant, index, bound)
    if isinstance(t, d.NamespacedType):
        return make_sample(message_class(t), variant, seed=index, _depth=depth + 1)
    if isinstance(t, d.Array):
        return [_value(t.value_type, variant if variant != "empty" else "full", index + i, depth)
                for i in range(t.size)]
    if isinstance(t, d.AbstractSequence):
        if variant == "empty":
            return []
        n = 3
        if variant == "large":
            n = 20_000 if isinstance(t.value_type, d.BasicType) else (8 if depth == 0 else 2)
        if isinstance(t, d.BoundedSequence):
            n = min(n, t.maximum_size)
        if depth >= 2 and not isinstance(t.value_type, d.BasicType):
            n = min(n, 1)
        values = [_value(t.value_type, "full" if variant == "large" and not isinstance(
            t.value_type, d.BasicType) else variant, index + i, depth) for i in range(n)]
        return values
    raise TypeError(f"unsupported field type {t!r}")


def make_sample(cls: Any, variant: str = "full", *, seed: int = 0, _depth: int = 0) -> Any:
    """An instance of message class ``cls`` with every field set according to ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    msg = cls()
    fields = list(cls.get_fields_and_field_types())
    for i, (name, slot_type) in enumerate(zip(fields, cls.SLOT_TYPES)):
        setattr(msg, name, _value(slot_type, variant, seed + i, _depth))
    return msg


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Path and values of the first field where two messages differ, or None if equal."""
    if hasattr(a, "get_fields_and_field_types") and type(a) is type(b):
        for name in a.get_fields_and_field_types():
            diff = first_difference(getattr(a, name), getattr(b, name), f"{path}.{name}")
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) or hasattr(a, "tolist"):
        la = list(a.tolist() if hasattr(a, "tolist") else a)
        lb = list(b.tolist() if hasattr(b, "tolist") else b)
        if len(la) != len(lb):
            return f"{path}: length {len(la)} != {len(lb)}"
        for i, (x, y) in enumerate(zip(la, lb)):
            diff = first_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if a != b:
        ra, rb = repr(a), repr(b)
        return f"{path}: {ra[:80]} != {rb[:80]}"
    return None
