"""Finishing runs a dead daemon left behind (`kill -9`, OOM, power loss).

At start the daemon marks such runs `interrupted`; this writes what their own
finalisation never could, from what is on disk: workspace.diff, result.json
(status `interrupted`, the steps the event log shows) and `run.end` appended to
meta/events.jsonl. Each artifact is written only if missing, so a recovery cut
short by another crash simply continues at the next start.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import msgspec

from kcd.observe.eventlog import append_event, read_events
from kcd.observe.finalise import read_launch, result_document
from kcd.observe.rundir import RunDir, Scrub
from kcd.workspaces.diff import diff_against_seed

INTERRUPTED_ERROR = "the daemon stopped before the run ended"


class Recovered(msgspec.Struct):
    """The run's end as recovered, for the state store."""

    status: str
    exit_reason: str
    completed: bool
    steps: int
    ended_at: str
    error: str | None = None


def finish_interrupted(run_id: str, run_dir: Path, *, scrub: Scrub | None,
                       max_workspace_bytes: int) -> Recovered:
    """Blocking (diffs a workspace): run it in a worker thread."""
    if not run_dir.is_dir():  # removed by hand since: nothing to finish, and nothing to recreate
        return Recovered(status="interrupted", exit_reason="interrupted", completed=False, steps=0,
                         ended_at=_last_write(run_dir), error=INTERRUPTED_ERROR + "; its run directory is gone")
    events_path = run_dir / "meta" / "events.jsonl"
    events = read_events(events_path)
    if events and events[-1].type == "run.end":  # the crash came after finalisation's own end
        d = events[-1].data or {}
        return Recovered(status=d.get("status") or "interrupted", exit_reason=d.get("exit_reason") or "interrupted",
                         completed=bool(d.get("completed")), steps=int(d.get("steps") or 0),
                         ended_at=events[-1].ts, error=d.get("error"))
    steps = max((int((e.data or {}).get("turn") or 0) for e in events if e.type == "turn.start"), default=0)
    ended = _last_write(events_path)
    rundir = RunDir(run_dir, scrub)
    launch = read_launch(run_dir)
    if not (run_dir / "workspace.diff").exists():
        seed = Path(launch.seed_dir) if launch and launch.seed_dir else None
        try:
            diff = diff_against_seed(run_dir, seed, run_dir / "workspace", max_workspace_bytes)
        except Exception as exc:  # an unreadable seed must not cost the run its result
            diff = f"# workspace.diff could not be computed after the restart: {type(exc).__name__}: {exc}\n"
        rundir.write_text_sync("workspace.diff", diff)
    if not (run_dir / "result.json").exists():
        rundir.write_json_sync("result.json", result_document(
            run_id=run_id, status="interrupted", exit_reason="interrupted", completed=False, steps=steps,
            method="daemon_restart", exit_kind="interrupted", max_steps=launch.max_steps if launch else None,
            error=INTERRUPTED_ERROR))
    append_event(events_path, run_id, (events[-1].seq if events else 0) + 1, "run.end",
                 {"status": "interrupted", "exit_reason": "interrupted", "completed": False, "steps": steps,
                  "run_dir": str(run_dir), "error": INTERRUPTED_ERROR, "recovered": True}, scrub)
    return Recovered(status="interrupted", exit_reason="interrupted", completed=False, steps=steps,
                     ended_at=ended, error=INTERRUPTED_ERROR)


def _last_write(path: Path) -> str:
    """When the run last recorded anything: the best estimate of when it stopped."""
    try:
        stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError:
        stamp = datetime.now(timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
