"""Test-wide settings: every run gets its own DDS domain, discovery stays on this host.

Set before rclpy is imported anywhere so parallel test runs (and a developer's running stack)
never see each other's traffic. Subprocesses started by tests inherit the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A domain per run: Fast DDS derives its ports from the id, so two runs with different ids
# never exchange discovery traffic. 1..100 keeps the port range valid on Linux.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("HVLA_TEST_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
# Tests share two cores with each other; keep numeric libraries from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest


@pytest.fixture
def rclpy_context():
    """An initialised rclpy context, shut down (after its nodes) when the test ends."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    try:
        yield ctx
    finally:
        rclpy.try_shutdown(context=ctx)


@pytest.fixture(autouse=True)
def _clean_dead_fastdds_shared_memory(request):
    """Before each DDS test: remove shared-memory segments that killed processes left behind.

    A node that had to be SIGKILLed leaves its Fast DDS segment in /dev/shm; later participants
    then stall for a second or more on it, and a reliable queue drops samples meanwhile.
    ``fastdds shm clean`` removes only segments no live process holds.
    """
    tool = Path(sys.executable).with_name("fastdds")
    if request.node.get_closest_marker("ros") is not None and tool.exists():
        subprocess.run([str(tool), "shm", "clean"], capture_output=True, timeout=30, check=False)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests over DDS get one rerun, reported as such (``-ra`` lists it as ``R``).

    They start real nodes as processes on a shared two-core machine, where a discovery or delivery
    stall of seconds happens now and then without any fault in the code under test; a second
    failure in a row still fails the run. Plain-Python tests are never rerun.
    """
    if not config.pluginmanager.hasplugin("rerunfailures"):
        return
    for item in items:
        if item.get_closest_marker("ros") is not None and item.get_closest_marker("flaky") is None:
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))


def pytest_terminal_summary(terminalreporter):
    """Print the first try of every rerun test: a flaky test that passed on its rerun otherwise
    leaves only its name in the log, and its cause cannot be traced afterwards."""
    for report in terminalreporter.stats.get("rerun", []):
        terminalreporter.write_sep("-", f"first try of {report.nodeid} (rerun)")
        terminalreporter.write_line(report.longreprtext[-4000:])
        for name, text in report.sections:  # what the test printed (the nodes' logs, timings)
            if name.startswith("Captured stdout") and text.strip():
                terminalreporter.write_line(f"{name}:\n{text[-3000:]}")
