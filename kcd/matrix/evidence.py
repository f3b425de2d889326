"""Reading what a finished run left in its directory (blocking: call it in a thread).

The same files a person checks by hand (docs/runbook.md §4): `result.json`,
`meta/provider_metrics.json`, `conversation/conversation.md`,
`meta/events.jsonl` (run.start) and `errors/turn_*.json`, plus the list of
every file for artifact globs. Missing or torn files read as empty: the
expectations then say what is missing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from kcd.matrix.expect import AttemptError, Evidence

__all__ = ["MARKER_LINE", "marker_lines", "read_run"]

MARKER_LINE = re.compile(r"^\[[a-z][a-z_-]*\] .*$", re.MULTILINE)
_SKIP_DIRS = ("workspace",)  # the agent's files are not evidence


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _run_start(run_dir: Path) -> dict[str, Any]:
    try:
        with (run_dir / "meta" / "events.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("type") == "run.start":
                    return event.get("data") or {}
    except OSError:
        pass
    return {}


def _files(run_dir: Path) -> list[str]:
    out: list[str] = []
    for root, dirs, names in os.walk(run_dir):
        rel_root = Path(root).relative_to(run_dir)
        if rel_root == Path("."):
            dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        out.extend((rel_root / n).as_posix() for n in names)
    return sorted(out)


def _attempt_errors(run_dir: Path) -> list[AttemptError]:
    out: list[AttemptError] = []
    for path in sorted((run_dir / "errors").glob("turn_*.json")):
        doc = _json(path) or {}
        for a in doc.get("attempts") or ():
            out.append(AttemptError(turn=int(doc.get("turn") or 0), attempt=int(a.get("attempt") or 0),
                                    route=str(a.get("route")), error_type=str(a.get("error_type")),
                                    status=a.get("status_code")))
    return sorted(out, key=lambda a: (a.turn, a.attempt))


def read_run(run_dir: Path, *, ended: bool, seconds: float) -> Evidence:
    result = _json(run_dir / "result.json") or {}
    return Evidence(
        ended=ended, seconds=seconds, exit_reason=result.get("exit_reason"), completed=result.get("completed"),
        steps=result.get("steps"), served_route=result.get("served_route"), error=result.get("error"),
        error_type=result.get("error_type"), native_tools=_run_start(run_dir).get("native_tools"),
        metrics=_json(run_dir / "meta" / "provider_metrics.json") or {},
        conversation=_text(run_dir / "conversation" / "conversation.md"),
        files=_files(run_dir), attempt_errors=_attempt_errors(run_dir))


def marker_lines(conversation: str, limit: int = 20) -> list[str]:
    """The policy marker lines of a transcript (`[fallback_route] ...`), for diagnostics."""
    return MARKER_LINE.findall(conversation)[:limit]
