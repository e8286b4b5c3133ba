"""Fast DDS settings for camera images between processes (no rclpy import).

The default Fast DDS shared-memory segment (512 KiB) is smaller than one 480x640 rgb8 frame
(900 KiB), so frames fall back to UDP loopback in 64 KiB fragments and are lost or repaired
late when the reader's socket buffer overflows. ``config/fastdds_large_data.xml`` enlarges the
shared-memory segment and the UDP buffers; see ``perception/README.md`` for the measurements.

The profile is read when a process creates its first DDS participant, so
:func:`use_large_data_profile` must run before ``rclpy.init()``.

It also keeps glibc's allocator from returning large blocks to the kernel after each message
(:func:`keep_large_buffers`). By default every buffer over 128 KiB on the way of a frame (the
writer's and reader's payloads, the C message, the Python bytes) is a fresh ``mmap`` whose
pages fault in one by one: a 480x640 rgb8 frame then took 2.2 ms from ``publish`` to the
callback in one process, 1.1 ms with large blocks kept on the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


#: glibc tunables: serve blocks up to 64 MiB from the heap and keep up to 256 MiB of free heap
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_large_buffers(environ: MutableMapping[str, str] | None = None) -> bool:
    """Apply :data:`MALLOC_ENV` to this process (``mallopt``) and to the processes it starts.

    Returns False where the C library is not glibc (nothing changed in this process). Memory
    cost: freed frame buffers stay in the process (up to the trim threshold) for the next frame.
    """
    env = os.environ if environ is None else environ
    for var, value in MALLOC_ENV.items():
        env.setdefault(var, value)
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(env["MALLOC_MMAP_THRESHOLD_"]))
    ok &= mallopt(_M_TRIM_THRESHOLD, int(env["MALLOC_TRIM_THRESHOLD_"]))
    return bool(ok)


def fastdds_profile_path() -> Path:
    """Path of the packaged Fast DDS profile for large camera images."""
    return Path(str(resources.files("hvla_ros") / "config" / "fastdds_large_data.xml"))


def use_large_data_profile(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the large-data profile unless the user chose a profile (or opted out).

    Returns the profile path now in effect, or None when Fast DDS keeps its defaults. Only
    affects DDS participants created after the call (call before ``rclpy.init``). Unless opted
    out, also :func:`keep_large_buffers` (whatever the middleware).
    """
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT_VAR, "1") == "0":
        return None
    if environ is None:
        keep_large_buffers(env)
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
