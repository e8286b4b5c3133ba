"""Shared helpers for benchmark scripts: machine description, percentiles, result files.

Every benchmark prints a readable table and writes ``benchmarks/results/<name>.json`` with the
date, the machine, the exact command and its figures (baselines measured in the same run and
the ratios to them included).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, core count, memory and GPU (if torch sees one)."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = round(int(f.readline().split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    gpu = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "gpu": gpu,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def percentiles(samples: Iterable[float], ps: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    arr = np.asarray(list(samples), dtype=float)
    if arr.size == 0:
        return {f"p{int(p)}": float("nan") for p in ps}
    out = {f"p{int(p)}": float(np.percentile(arr, p)) for p in ps}
    out["mean"] = float(arr.mean())
    out["n"] = int(arr.size)
    return out


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def write_result(name: str, figures: dict[str, Any], *, notes: str = "") -> Path:
    """Write ``benchmarks/results/<name>.json`` and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "figures": figures,
        "notes": notes,
    }
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"\nresults written to {path.relative_to(RESULTS_DIR.parent.parent)}")
    return path
