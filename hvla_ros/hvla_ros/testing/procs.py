"""Child processes for tests and tools whose output is kept in a file, never an undrained pipe.

A node started with ``stdout=subprocess.PIPE`` and read only at the end stops dead once the
pipe is full: the next log line blocks its executor thread, callbacks stop, and the test times
out with no clue. The pipe holds 64 KiB at best and a single page when the user's pipe quota
is used up, so a chatty node (every refused chunk is logged) can stall after a few dozen lines.
:func:`spawn` sends stdout and stderr to a temporary file instead; :func:`output` reads what
has been written so far and :func:`stop` ends the process and returns all of it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["output", "spawn", "stop", "wait_for_line"]

_LOGS: dict[int, Path] = {}


def spawn(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``cmd`` with stdout and stderr going to a temporary log file."""
    fd, name = tempfile.mkstemp(prefix="hvla-proc-", suffix=".log")
    try:
        proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env), stdout=fd,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)  # the child keeps its own descriptor
    _LOGS[proc.pid] = Path(name)
    return proc


def output(proc: subprocess.Popen) -> str:
    """Everything the process has written so far (stdout and stderr interleaved)."""
    path = _LOGS.get(proc.pid)
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """The first output line starting with ``prefix``; AssertionError (with the output) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in output(proc).splitlines():
            if line.startswith(prefix):
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no line starting with {prefix!r} from {proc.args!r} "
                         f"(exit code {proc.poll()}):\n{output(proc)[-4000:]}")


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """SIGTERM (SIGKILL after ``timeout``), then return the whole output and remove the log file."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    out = output(proc)
    path = _LOGS.pop(proc.pid, None)
    if path is not None:
        path.unlink(missing_ok=True)
    return out
