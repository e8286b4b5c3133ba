"""The interface definitions follow the project's rules (checked on the generated classes)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hvla_ros.testing.echo_peer import interface_types

MSGS = interface_types("msg")
SRVS = interface_types("srv")
ACTIONS = interface_types("action")

# Types only ever embedded in other messages; everything else is published on its own and
# must carry a header (stamp + frame) first.
EMBEDDED_ONLY = {"PixelBox", "Predicate", "Condition", "MemoryEntry", "ErrorEntry"}

INTERFACES_DIR = Path(__file__).resolve().parents[2] / "hvla_interfaces"


def _error_constants(cls: type) -> dict[str, int]:
    return {k: v for k, v in vars(cls).items() if k.startswith("ERROR_") and isinstance(v, int)}


def _check_error_fields(cls: type, what: str) -> None:
    fields = cls.get_fields_and_field_types()
    assert fields.get("error_code") == "uint16", f"{what} lacks 'uint16 error_code'"
    assert fields.get("error_msg") == "string", f"{what} lacks 'string error_msg'"
    codes = _error_constants(cls)
    assert codes.get("ERROR_NONE") == 0, f"{what} must define ERROR_NONE=0, has {codes}"
    assert len(codes) >= 2, f"{what} must define at least one failure code besides ERROR_NONE"
    assert len(set(codes.values())) == len(codes), f"{what} reuses an error code value: {codes}"


@pytest.mark.parametrize("name", sorted(SRVS))
def test_every_service_response_carries_error_code_and_message(name: str) -> None:
    _check_error_fields(SRVS[name].Response, f"srv {name} response")


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_every_action_result_carries_error_code_and_message(name: str) -> None:
    _check_error_fields(ACTIONS[name].Result, f"action {name} result")


@pytest.mark.parametrize("name", sorted(set(MSGS) - EMBEDDED_ONLY))
def test_published_messages_start_with_a_header(name: str) -> None:
    first_name, first_type = next(iter(MSGS[name].get_fields_and_field_types().items()))
    assert (first_name, first_type) == ("header", "std_msgs/Header"), f"{name} must start with a header"


def test_embedded_only_list_names_real_types() -> None:
    assert set(MSGS) >= EMBEDDED_ONLY


def test_subtask_carries_what_the_planner_decides() -> None:
    from hvla_interfaces.msg import Subtask

    fields = Subtask.get_fields_and_field_types()
    for name in ("episode_id", "subtask_id", "attempt", "instruction", "precondition", "postcondition",
                 "horizon", "distractor_boxes", "skill", "arm", "parameters"):
        assert name in fields, f"Subtask lacks {name}"
    assert (Subtask.ARM_SINGLE, Subtask.ARM_LEFT, Subtask.ARM_RIGHT, Subtask.ARM_BOTH) == (0, 1, 2, 3)


def test_action_chunk_layout() -> None:
    from hvla_interfaces.msg import ActionChunk

    fields = ActionChunk.get_fields_and_field_types()
    assert fields["positions"] == "sequence<double>"
    assert fields["joint_names"] == "sequence<string>"
    assert fields["step_period"] == "builtin_interfaces/Duration"
    assert {"gripper_logits", "gripper_probabilities", "origin", "skill", "subtask_id"} <= set(fields)
    assert (ActionChunk.ORIGIN_ANCHOR, ActionChunk.ORIGIN_REFINED) == (0, 1)


@pytest.mark.skipif(not INTERFACES_DIR.is_dir(), reason="interface sources not beside this checkout")
def test_package_xml_declares_every_cmake_dependency() -> None:
    cmake = (INTERFACES_DIR / "CMakeLists.txt").read_text()
    deps = set(re.search(r"DEPENDENCIES ([^\n)]+)", cmake).group(1).split())  # type: ignore[union-attr]
    xml_deps = {e.text for e in ET.parse(INTERFACES_DIR / "package.xml").getroot().iter("depend")}
    assert deps <= xml_deps, f"package.xml misses {deps - xml_deps}"
    for dep in deps:
        assert f"find_package({dep} REQUIRED)" in cmake, f"CMakeLists.txt does not find_package({dep})"
