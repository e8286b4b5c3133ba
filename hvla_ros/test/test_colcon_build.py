"""Both packages build with colcon as in a ROS 2 workspace, and the install space works.

Here the ROS 2 Jazzy wheels in the venv stand in for /opt/ros/jazzy (AMENT_PREFIX_PATH and
CMAKE_PREFIX_PATH point at the venv); the packages themselves are built exactly as colcon
builds them on a ROS install: hvla_interfaces with CMake + rosidl, hvla_ros with setup.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(shutil.which("colcon", path=str(Path(sys.executable).parent)) is None
                                 and shutil.which("colcon") is None, reason="colcon not installed")]


def test_colcon_build_and_install_space(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    env = {**os.environ, "AMENT_PREFIX_PATH": str(venv), "CMAKE_PREFIX_PATH": str(venv),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = ["colcon", "--log-base", str(tmp_path / "log"), "build",
           "--base-paths", str(REPO / "hvla_interfaces"), str(REPO / "hvla_ros"),
           "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
           "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
           "--event-handlers", "console_cohesion+"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]

    install = tmp_path / "install"
    share = install / "hvla_ros" / "share" / "hvla_ros"
    assert (share / "launch" / "bringup.launch.py").is_file()
    assert (share / "config" / "hvla.yaml").is_file()
    assert (share / "package.xml").is_file()
    assert (share / "description" / "so101_controllers.yaml").is_file()
    for exe in ("planner_node", "perception_node", "executor_node", "refiner_node", "sim_node", "hvla"):
        assert (install / "hvla_ros" / "lib" / "hvla_ros" / exe).is_file(), f"{exe} not installed for ros2 run"
    assert (install / "hvla_interfaces" / "share" / "hvla_interfaces" / "msg" / "Subtask.msg").is_file()

    # The interfaces import from the install space (not from the venv), as after sourcing it.
    site = next((install / "hvla_interfaces" / "lib").glob("python3*/site-packages"))
    probe = ("import hvla_interfaces.msg as m, sys; "
             "assert m.__file__.startswith(sys.argv[1]), m.__file__; print(m.ActionChunk.ORIGIN_REFINED)")
    libs = f"{install / 'hvla_interfaces' / 'lib'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}"
    run_env = {**os.environ, "PYTHONPATH": str(site), "LD_LIBRARY_PATH": libs}
    probe_out = subprocess.run([sys.executable, "-c", probe, str(site)], env=run_env, capture_output=True,
                               text=True, timeout=60, check=False)
    assert probe_out.returncode == 0 and probe_out.stdout.strip() == "1", probe_out.stderr
