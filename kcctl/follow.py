"""Following a run's event stream to its end, as `kcctl run` and `kcctl runs events -f` do."""

from __future__ import annotations

import json

import click

from kcctl.client import Client
from kcctl.errors import DaemonUnreachable
from kcctl.render import render_event


def follow_run(client: Client, run_id: str, *, as_json: bool, since: int = 0) -> dict | None:
    """Stream a run's events until run.end; returns the run.end event. A daemon that dies
    meanwhile is DaemonUnreachable (exit 3) with one line saying what became of the run."""
    try:
        return _follow_events(client, run_id, as_json=as_json, since=since)
    except DaemonUnreachable as exc:
        raise DaemonUnreachable(f"{exc}; if run {run_id} was still running, a restarted kcd finishes "
                                f"it as interrupted (kcctl runs show {run_id})") from None


def _follow_events(client: Client, run_id: str, *, as_json: bool, since: int) -> dict | None:
    end = None
    for line in client.stream_lines(f"/v1/runs/{run_id}/events", {"follow": "1", "since": str(since)}):
        event = json.loads(line)
        if event.get("type") == "heartbeat":
            continue
        if as_json:
            click.echo(line.decode() if isinstance(line, bytes) else line)
        else:
            text = render_event(event)
            if text:
                click.echo(text)
        if event.get("type") == "run.end":
            end = event
            break
    return end
