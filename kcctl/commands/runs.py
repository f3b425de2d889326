"""`kcctl runs`: list, show, follow, fetch and cancel runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kcctl.commands.common import Ctx, fail, guard, print_json, with_client
from kcctl.follow import follow_run
from kcctl.render import render_event

if TYPE_CHECKING:
    from kcctl.client import Client


@click.group()
def runs() -> None:
    """Inspect and control runs."""


@runs.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--status", "status_", help="only runs with this status")
@click.option("--json", "as_json", is_flag=True)
@with_client
def runs_list(client: Client, limit: int, status_: str | None, as_json: bool) -> None:
    """List recent runs, newest first."""
    data = client.call("GET", "/v1/runs", params={"limit": limit, **({"status": status_} if status_ else {})})
    if as_json:
        print_json(data)
        return
    rows = data["runs"]
    if not rows:
        click.echo("no runs")
        return
    click.echo(f"{'ID':<13} {'STATUS':<11} {'EXIT':<20} {'STEPS':>5}  {'ROUTE':<28} CREATED")
    for r in rows:
        click.echo(f"{r['id']:<13} {r['status']:<11} {r.get('exit_reason') or '-':<20} "
                   f"{r.get('steps') if r.get('steps') is not None else '-':>5}  {r.get('route') or '-':<28} "
                   f"{r['created_at']}{'  (pruned)' if r.get('pruned_at') else ''}"
                   f"{'  (replay of ' + r['replay_of'] + ')' if r.get('replay_of') else ''}")


@runs.command("show")
@click.argument("run_id")
@with_client
def runs_show(client: Client, run_id: str) -> None:
    """Show one run."""
    info = client.call("GET", f"/v1/runs/{run_id}")
    print_json(info)
    if info.get("pruned_at"):  # the JSON stays parseable on stdout
        click.echo(f"note: run directory {info['run_dir']} was deleted at {info['pruned_at']} by "
                   "logging.retention.max_runs; its events, workspace and artifacts are gone", err=True)


@runs.command("events")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="keep streaming until the run ends")
@click.option("--since", default=0, show_default=True, help="only events with seq > N")
@click.option("--json", "as_json", is_flag=True)
@with_client
def runs_events(client: Client, run_id: str, follow: bool, since: int, as_json: bool) -> None:
    """Print a run's events (a finished run replays from meta/events.jsonl)."""
    if follow:
        try:
            follow_run(client, run_id, as_json=as_json, since=since)
        except KeyboardInterrupt:
            sys.exit(130)
        return
    for line in client.stream_lines(f"/v1/runs/{run_id}/events", {"since": str(since)}):
        if as_json:
            click.echo(line.decode())
        else:
            text = render_event(json.loads(line))
            if text:
                click.echo(text)


@runs.command("fetch")
@click.argument("run_id")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="directory to write the run's final workspace into (new or empty)")
@click.pass_obj
@guard
def runs_fetch(obj: Ctx, run_id: str, out: Path) -> None:
    """Write a run's final workspace into a directory."""
    import tempfile

    from kcd.workspaces.archive import UnsafeArchive, safe_extract

    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} exists and is not empty")
    with obj.client() as client, tempfile.TemporaryFile() as tmp:
        for chunk in client.stream_bytes(f"/v1/runs/{run_id}/workspace"):
            tmp.write(chunk)
        tmp.seek(0)
        try:
            files = safe_extract(tmp, out)
        except UnsafeArchive as exc:
            fail(f"refusing the archive: {exc}", 1)
    click.echo(f"wrote {len(files)} files to {out}")


@runs.command("cancel")
@click.argument("run_id")
@with_client
def runs_cancel(client: Client, run_id: str) -> None:
    """Cancel a run (its artifacts are still written)."""
    info = client.call("POST", f"/v1/runs/{run_id}/cancel")
    click.echo(f"cancel requested for run {info['id']} (status: {info['status']})")
