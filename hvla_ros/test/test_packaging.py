"""Every dependency the code imports is declared once and used by both install paths.

- Python packages: listed in requirements/runtime.txt (or no-deps.txt), pinned exactly in
  requirements/constraints.txt; the Dockerfile installs from the same files as `make setup`.
- ROS packages (rclpy, message packages): declared as <exec_depend> in hvla_ros/package.xml, so
  rosdep installs them on a real ROS 2 machine.
"""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "hvla_ros" / "hvla_ros"
REQ = REPO / "requirements"
OWN = {"hvla_ros", "hvla_interfaces"}

pytestmark = pytest.mark.skipif(not REQ.is_dir(), reason="needs the repository checkout")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.add(_normalize(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0]))
    return names


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[_normalize(m.group(1))] = m.group(2)
    return pins


def _imported_modules() -> dict[str, set[str]]:
    """Top-level third-party modules imported by the package -> files importing them."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in OWN or top == "__future__":
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _classify() -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, set[str]]]:
    dists = packages_distributions()
    ros, python = {}, {}
    imports = _imported_modules()
    for module in imports:
        names = dists.get(module, [])
        if any(d.startswith("ros-") for d in names):
            ros[module] = names
        else:
            python[module] = names
    return ros, python, imports


def test_python_imports_are_required_and_pinned() -> None:
    _, python, imports = _classify()
    required = (_requirement_names(REQ / "runtime.txt") | _requirement_names(REQ / "no-deps.txt")
                | _requirement_names(REQ / "no-build-isolation.txt"))
    pins = _pins(REQ / "constraints.txt") | _pins(REQ / "no-deps.txt")
    optional = _requirement_names(REQ / "optional.txt")
    problems = []
    for module, dists in sorted(python.items()):
        if _normalize(module) in optional:
            continue  # imported lazily behind a feature the user opts into (requirements/optional.txt)
        if not dists:
            problems.append(f"'{module}' (imported by {sorted(imports[module])}) is not installed")
            continue
        norm = {_normalize(d) for d in dists}
        if not norm & required:
            problems.append(f"'{module}' ({sorted(norm)}) imported by {sorted(imports[module])} "
                            "is missing from requirements/runtime.txt")
        elif not norm & set(pins):
            problems.append(f"'{module}' ({sorted(norm)}) has no exact pin in requirements/constraints.txt")
    assert not problems, "\n".join(problems)


def test_ros_imports_are_declared_in_package_xml() -> None:
    ros, _, imports = _classify()
    xml = ET.parse(REPO / "hvla_ros" / "package.xml").getroot()
    declared = {e.text for tag in ("exec_depend", "depend") for e in xml.iter(tag)}
    missing = {m: sorted(imports[m]) for m in ros if m not in declared}
    assert not missing, f"ROS packages imported but not <exec_depend> in package.xml: {missing}"


def test_every_runtime_requirement_is_pinned() -> None:
    pins = _pins(REQ / "constraints.txt")
    unpinned = sorted((_requirement_names(REQ / "runtime.txt") | _requirement_names(REQ / "no-build-isolation.txt"))
                      - set(pins))
    assert not unpinned, f"requirements without an exact pin in constraints.txt: {unpinned}"
    assert pins.get("torch") == "2.13.0", "torch must stay pinned to the CPU build's version"


def test_dockerfile_uses_the_same_requirement_files() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM ros:jazzy" in dockerfile
    for name in ("constraints.txt", "runtime.txt", "no-deps.txt", "no-build-isolation.txt"):
        assert f"requirements/{name}" in dockerfile, f"Dockerfile does not use requirements/{name}"
    assert "rosdep install" in dockerfile and "colcon build" in dockerfile
    assert "bringup.launch.py" in dockerfile


def test_setup_script_uses_the_same_requirement_files() -> None:
    script = (REPO / "scripts" / "setup.sh").read_text()
    for name in ("constraints.txt", "runtime.txt", "no-deps.txt", "no-build-isolation.txt", "ros-jazzy.txt",
                 "dev.txt"):
        assert name in script, f"scripts/setup.sh does not use requirements/{name}"
