"""The episode report: one self-contained HTML page per episode, opened in any browser.

Built from the planner's episode log (JSON lines: plans, issued subtasks, executor reports,
verdicts, reflections, memory updates, reasoner calls with timings) and the key frames saved by
the operator (raw and filtered camera images at subtask transitions).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvla_ros.operator import KeyFrame

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%;font-size:.9em}
td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;text-align:left}
th{background:#f4f4f4}.ok{color:#137333;font-weight:bold}.bad{color:#b3261e;font-weight:bold}
.frames{display:flex;flex-wrap:wrap;gap:12px}.frame{border:1px solid #ddd;padding:6px}
.frame img{width:256px;display:block}.muted{color:#777}pre{white-space:pre-wrap;background:#f8f8f8;padding:8px}
"""


@dataclass
class AttemptRow:
    k: int
    attempt: int
    skill: str = ""
    instruction: str = ""
    issued_t: float = 0.0
    termination: str = ""
    steps: int = 0
    verdict: str = ""
    reason: str = ""
    diagnosis: str = ""
    recovery: str = ""
    ended_t: float = 0.0


@dataclass
class EpisodeSummary:
    episode_id: str = ""
    goal: str = ""
    state: str = ""
    error: str = ""
    started: float = 0.0
    ended: float = 0.0
    plans: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[AttemptRow] = field(default_factory=list)
    reasoner_calls: list[dict[str, Any]] = field(default_factory=list)
    working_memory: str = ""


def summarize(events: Sequence[dict[str, Any]]) -> EpisodeSummary:
    """Fold the episode log's records into what the report shows."""
    s = EpisodeSummary()
    rows: dict[tuple[int, int], AttemptRow] = {}
    for ev in events:
        kind = ev.get("event")
        t = float(ev.get("t", 0.0))
        if kind == "episode_start":
            s.goal, s.episode_id, s.started = str(ev.get("goal", "")), str(ev.get("episode_id", "")), t
        elif kind == "plan":
            s.plans.append({"version": ev.get("version"), "reason": ev.get("reason", ""),
                            "plan": ev.get("plan", {})})
        elif kind == "issue":
            sub = ev.get("subtask", {}) or {}
            row = AttemptRow(k=int(ev.get("k", 0)), attempt=int(ev.get("attempt", 0)),
                             skill=str(sub.get("skill", "")), instruction=str(sub.get("instruction", "")),
                             issued_t=t)
            rows[(row.k, row.attempt)] = row
            s.attempts.append(row)
        elif kind in ("report", "verdict", "reflection"):
            found = rows.get((int(ev.get("k", -1)), int(ev.get("attempt", -1))))
            if found is None:
                continue
            row = found
            if kind == "report":
                row.termination, row.steps = str(ev.get("termination", "")), int(ev.get("steps", 0) or 0)
            elif kind == "verdict":
                row.verdict, row.reason, row.ended_t = str(ev.get("status", "")), str(ev.get("reason", "")), t
            else:
                row.diagnosis, row.recovery = str(ev.get("diagnosis", "")), str(ev.get("recovery", ""))
        elif kind == "memory":
            s.working_memory = str(ev.get("working_memory", ""))
        elif kind == "episode_end":
            s.state, s.ended = str(ev.get("state", "")), t
            s.error = str(ev.get("error_msg", "") or ev.get("message", "") or "")
        elif kind in ("reasoner_call", "call", "vlm_call") or "prompt" in ev:
            s.reasoner_calls.append(ev)
    return s


def read_events(log_path: Path) -> list[dict[str, Any]]:
    events = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    events.append(rec)
    return events


def _e(x: Any) -> str:
    return html.escape(str(x))


def _duration(a: float, b: float) -> str:
    return f"{b - a:.1f} s" if a and b and b >= a else "–"


def render_html(summary: EpisodeSummary, frames: Sequence[KeyFrame], extra: dict[str, Any] | None = None) -> str:
    ok = summary.state in ("succeeded", "success")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Episode {_e(summary.episode_id)}"
             f"</title><style>{_CSS}</style></head><body>"]
    parts.append(f"<h1>Episode {_e(summary.episode_id)}</h1>")
    parts.append("<table>")
    started = _dt.datetime.fromtimestamp(summary.started, _dt.timezone.utc).isoformat(timespec="seconds") \
        if summary.started else "–"
    for key, value in (("Goal", _e(summary.goal)),
                       ("Outcome", f"<span class='{'ok' if ok else 'bad'}'>{_e(summary.state or 'unknown')}"
                                   "</span>" + (f" — {_e(summary.error)}" if summary.error else "")),
                       ("Started (UTC)", started),
                       ("Duration", _duration(summary.started, summary.ended)),
                       ("Plans", str(len(summary.plans))),
                       ("Subtask attempts", str(len(summary.attempts))),
                       ("Reasoner calls", str(len(summary.reasoner_calls))),
                       *((_e(k), _e(v)) for k, v in (extra or {}).items())):
        parts.append(f"<tr><th>{key}</th><td>{value}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Plans</h2>")
    for p in summary.plans:
        subtasks = (p.get("plan") or {}).get("subtasks", [])
        parts.append(f"<h3>Plan v{_e(p.get('version'))} <span class='muted'>{_e(p.get('reason'))}</span></h3>")
        parts.append("<table><tr><th>#</th><th>skill</th><th>instruction</th><th>post-condition</th>"
                     "<th>horizon</th></tr>")
        for i, sub in enumerate(subtasks):
            post = sub.get("post") or sub.get("postcondition") or {}
            post_text = post.get("text", "") if isinstance(post, dict) else post
            parts.append(f"<tr><td>{i + 1}</td><td>{_e(sub.get('skill', ''))}</td>"
                         f"<td>{_e(sub.get('instruction', ''))}</td><td>{_e(post_text)}</td>"
                         f"<td>{_e(sub.get('horizon_s', sub.get('horizon', '')))}</td></tr>")
        parts.append("</table>")

    parts.append("<h2>Attempts</h2><table><tr><th>subtask</th><th>attempt</th><th>skill</th>"
                 "<th>instruction</th><th>executor</th><th>verifier</th><th>reflection</th><th>time</th></tr>")
    for r in summary.attempts:
        cls = "ok" if r.verdict == "success" else "bad"
        reflection = f"{_e(r.diagnosis)} → <b>{_e(r.recovery)}</b>" if r.recovery else ""
        parts.append(f"<tr><td>{r.k + 1}</td><td>{r.attempt}</td><td>{_e(r.skill)}</td>"
                     f"<td>{_e(r.instruction)}</td><td>{_e(r.termination)} ({r.steps} steps)</td>"
                     f"<td><span class='{cls}'>{_e(r.verdict)}</span> {_e(r.reason)}</td>"
                     f"<td>{reflection}</td><td>{_duration(r.issued_t, r.ended_t)}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Key frames</h2><div class='frames'>")
    for f in frames:
        imgs = "".join(f"<img src='{_e(name)}' alt='{_e(kind)}'><div class='muted'>{_e(kind)}</div>"
                       for kind, name in sorted(f.files.items()))
        parts.append(f"<div class='frame'><b>{_e(f.tag)}</b>{imgs or '<i>no image</i>'}</div>")
    parts.append("</div>")

    if summary.working_memory:
        parts.append(f"<h2>Working memory at the end</h2><pre>{_e(summary.working_memory)}</pre>")
    if summary.reasoner_calls:
        parts.append("<h2>Reasoner calls</h2><table><tr><th>call</th><th>time</th><th>error</th></tr>")
        for c in summary.reasoner_calls[:200]:
            dt = c.get("seconds", c.get("dt", c.get("duration_s", "")))
            parts.append(f"<tr><td>{_e(c.get('call', c.get('event', '')))}</td>"
                         f"<td>{_e(f'{dt:.3f} s' if isinstance(dt, (int, float)) else dt)}</td>"
                         f"<td>{_e(c.get('error', '') or '')}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: Path, log_path: Path | None, frames: Sequence[KeyFrame],
                 extra: dict[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/report.html`` (frames' images must already be in ``out_dir``)."""
    events = read_events(log_path) if log_path is not None and log_path.exists() else []
    page = render_html(summarize(events), frames, extra)
    path = Path(out_dir) / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
