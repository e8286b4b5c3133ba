"""Typed, described, validated ROS parameters without generate_parameter_library.

Each node lists its parameters once as :class:`ParamSpec` entries; :func:`declare_params`
declares them with a ParameterDescriptor (type, description, range) and returns the values,
and :func:`validate` is reused as the on-set callback so bad values are refused with a reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: Sequence[Any] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    read_only: bool = False

    def error(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this parameter, or None."""
        if self.min is not None and value < self.min:
            return f"parameter '{self.name}' must be >= {self.min}, got {value!r}"
        if self.max is not None and value > self.max:
            return f"parameter '{self.name}' must be <= {self.max}, got {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"parameter '{self.name}' must be one of {list(self.choices)}, got {value!r}"
        if self.check is not None:
            return self.check(value)
        return None


def declare_params(node: Node, specs: Sequence[ParamSpec]) -> dict[str, Any]:
    """Declare ``specs`` on ``node``; return {name: value}. Raises ValueError on a bad value."""
    values: dict[str, Any] = {}
    for spec in specs:
        desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.choices is not None:
            desc.additional_constraints = f"one of {list(spec.choices)}"
        if isinstance(spec.default, bool):
            pass
        elif isinstance(spec.default, int) and (spec.min is not None or spec.max is not None):
            desc.integer_range = [IntegerRange(
                from_value=int(spec.min if spec.min is not None else -(2**31)),
                to_value=int(spec.max if spec.max is not None else 2**31 - 1), step=0)]
        elif isinstance(spec.default, float) and spec.min is not None and spec.max is not None:
            desc.floating_point_range = [FloatingPointRange(
                from_value=float(spec.min), to_value=float(spec.max), step=0.0)]
        value = node.declare_parameter(spec.name, spec.default, desc).value
        err = spec.error(value)
        if err:
            raise ValueError(err)
        values[spec.name] = value
    by_name = {s.name: s for s in specs}

    def on_set(params: list[Parameter]) -> SetParametersResult:
        for p in params:
            spec = by_name.get(p.name)
            if spec is None:
                continue
            err = spec.error(p.value)
            if err:
                return SetParametersResult(successful=False, reason=err)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return values
