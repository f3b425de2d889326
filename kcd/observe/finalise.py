"""The shape of a run's final artifacts, shared by normal finalisation and by the
recovery of runs a dead daemon left behind (kcd.observe.recovery)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

LAUNCH = "meta/launch.json"


class Launch(msgspec.Struct):
    """What only submission knows and recovery needs, written when the run starts: a
    `kill -9` leaves no meta/run.json, and the seed directory is in no other file."""

    run_id: str
    max_steps: int
    seed_dir: str | None = None


def read_launch(run_dir: Path) -> Launch | None:
    try:
        return msgspec.json.decode((run_dir / LAUNCH).read_bytes(), type=Launch)
    except (OSError, msgspec.DecodeError):
        return None  # a run from before launch records, or a torn write


def result_document(*, run_id: str, status: str, exit_reason: str, completed: bool, steps: int,
                    method: str, exit_kind: str, max_steps: int | None, summary: str | None = None,
                    error: str | None = None, error_type: str | None = None, hint: str | None = None,
                    details: dict[str, Any] | None = None, served_route: str | None = None) -> dict[str, Any]:
    """result.json (the original's keys, plus `status`)."""
    return {
        "run_id": run_id, "status": status, "completion_reason": exit_reason, "completed": completed,
        "exit_reason": exit_reason, "steps": steps,
        "completion_summary": {
            "completed": completed, "reason": exit_reason, "method": method,
            "exit_kind": exit_kind, "steps_taken": steps, "max_steps": max_steps},
        "summary": summary, "error": error, "error_type": error_type,
        "hint": hint, "details": details, "served_route": served_route}
