"""Fast DDS settings for camera images between processes (no rclpy import).

The default Fast DDS shared-memory segment (512 KiB) is smaller than one 480x640 rgb8 frame
(900 KiB), so frames fall back to UDP loopback in 64 KiB fragments and are lost or repaired
late when the reader's socket buffer overflows. ``config/fastdds_large_data.xml`` enlarges the
shared-memory segment and the UDP buffers; see ``perception/README.md`` for the measurements.

The profile is read when a process creates its first DDS participant, so
:func:`use_large_data_profile` must run before ``rclpy.init()``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

#: Fast DDS 2.x (Jazzy) reads FASTRTPS_DEFAULT_PROFILES_FILE; Fast DDS 3.x (Kilted) FASTDDS_...
PROFILE_ENV_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
#: set to 0 to keep Fast DDS defaults in processes that would otherwise load the profile
OPT_OUT_VAR = "HVLA_FASTDDS_PROFILE"


def fastdds_profile_path() -> Path:
    """Path of the packaged Fast DDS profile for large camera images."""
    return Path(str(resources.files("hvla_ros") / "config" / "fastdds_large_data.xml"))


def use_large_data_profile(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the large-data profile unless the user chose a profile (or opted out).

    Returns the profile path now in effect, or None when Fast DDS keeps its defaults. Only
    affects DDS participants created after the call (call before ``rclpy.init``).
    """
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT_VAR, "1") == "0":
        return None
    if env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") not in ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp"):
        return None
    chosen = next((env[v] for v in PROFILE_ENV_VARS if env.get(v)), None)
    if chosen:
        return chosen  # the user's own profile wins
    path = fastdds_profile_path()
    if not path.is_file():
        log.warning("Fast DDS profile %s is missing; keeping Fast DDS defaults", path)
        return None
    for var in PROFILE_ENV_VARS:
        env[var] = str(path)
    return str(path)
