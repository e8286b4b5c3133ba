"""The episode log: one JSON object per line, appended and flushed as things happen.

Every prompt, reply, decision and timing goes in. Lines reach the kernel on every write, so a
``kill -9`` of the planner loses nothing already written; a torn last line (killed mid-write)
is skipped when reading. ``checkpoint`` records carry the loop state that resuming needs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

_log = logging.getLogger(__name__)
_EPISODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class EpisodeLogError(ValueError):
    """A bad episode id or an unreadable log; the message names it."""


def check_episode_id(episode_id: str) -> str:
    """Episode ids become file names: letters, digits, ``_.-``, at most 128 characters."""
    if not _EPISODE_ID.fullmatch(episode_id) or ".." in episode_id:
        raise EpisodeLogError(
            f"episode id {episode_id!r} must match {_EPISODE_ID.pattern} (it names the log file)"
        )
    return episode_id


def new_episode_id() -> str:
    return time.strftime("ep_%Y%m%d_%H%M%S_", time.gmtime()) + os.urandom(3).hex()


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return f"<array {'x'.join(map(str, obj.shape))} {obj.dtype}>"
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


class EpisodeLog:
    """Append-only JSON-lines log of one episode at ``<directory>/<episode_id>.jsonl``."""

    def __init__(self, directory: str | os.PathLike[str], episode_id: str, *, fsync: bool = False) -> None:
        self.episode_id = check_episode_id(episode_id)
        self.path = Path(directory) / f"{episode_id}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._file: IO[str] | None = None
        self._seq = 0
        if self.path.exists():
            self._seq = sum(1 for _ in self.read())

    def events(self) -> list[dict[str, Any]]:
        return list(self.read())

    def read(self) -> Iterator[dict[str, Any]]:
        """Every complete record written so far (a torn last line is skipped)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    _log.warning(f"episode log {self.path}: skipping torn line {n}")
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    _log.warning(f"episode log {self.path}: skipping unreadable line {n}")
                    continue
                if isinstance(rec, dict):
                    yield rec

    def write(self, event: str, **fields: Any) -> None:
        """Append one record and flush it to the OS."""
        if self._file is None:
            self._repair_tail()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the episode
        self._seq += 1
        rec = {"seq": self._seq, "t": time.time(), "event": event, **fields}
        self._file.write(json.dumps(rec, default=_default, separators=(",", ":")) + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def _repair_tail(self) -> None:
        # A kill mid-write leaves a line without its newline; end it so new records stay parseable.
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
