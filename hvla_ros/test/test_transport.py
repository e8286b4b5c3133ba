"""Large-data transport settings every process of the graph applies before ``rclpy.init``."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

from hvla_ros.rosutil import transport


def test_profile_is_set_unless_the_user_chose_one_or_opted_out() -> None:
    env: dict[str, str] = {}
    path = transport.use_large_data_profile(env)
    assert path == str(transport.fastdds_profile_path())
    assert all(env[v] == path for v in transport.PROFILE_ENV_VARS)
    ET.parse(path)  # the packaged profile is well-formed XML

    mine = {"FASTRTPS_DEFAULT_PROFILES_FILE": "/etc/my_profile.xml"}
    assert transport.use_large_data_profile(mine) == "/etc/my_profile.xml"
    assert "FASTDDS_DEFAULT_PROFILES_FILE" not in mine  # the user's choice is left alone

    off = {transport.OPT_OUT_VAR: "0"}
    assert transport.use_large_data_profile(off) is None and len(off) == 1
    other_rmw = {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}
    assert transport.use_large_data_profile(other_rmw) is None


def test_keep_large_buffers_applies_to_this_process_and_its_children() -> None:
    code = ("import os, ctypes\n"
            "from hvla_ros.rosutil import transport\n"
            "env = {}\n"
            "assert transport.keep_large_buffers(env)\n"
            "assert env == transport.MALLOC_ENV, env\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok"
    # a value the user set is kept
    env = {"MALLOC_MMAP_THRESHOLD_": "1048576"}
    code2 = ("from hvla_ros.rosutil import transport\n"
             "env = {'MALLOC_MMAP_THRESHOLD_': '1048576'}\n"
             "transport.keep_large_buffers(env)\n"
             "print(env['MALLOC_MMAP_THRESHOLD_'], env['MALLOC_TRIM_THRESHOLD_'])\n")
    out = subprocess.run([sys.executable, "-c", code2], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [env["MALLOC_MMAP_THRESHOLD_"], transport.MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]]
