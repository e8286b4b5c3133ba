#!/usr/bin/env bash
# Source ROS and the workspace, and put the pinned Python stack in front of the distro's.
set -e
source /opt/ros/jazzy/setup.bash
source /ws/install/setup.bash
site="$("$HVLA_VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')"
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
exec "$@"
