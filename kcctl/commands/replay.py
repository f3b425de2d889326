"""`kcctl replay RUN`: re-run a recorded run offline and report where the tool results diverge.

Exit codes: 0 no divergence, 4 the replay diverged (the report lists where), and the usual
ones otherwise (1 the replay ended without a report, 2 usage errors and a run that cannot
be replayed, 3 the daemon is unreachable).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from kcctl.commands.common import EXIT_NOT_COMPLETED, EXIT_OK, Ctx, fail, guard, print_json
from kcctl.follow import follow_run

EXIT_DIVERGED = 4
SHOWN = 20  # divergences listed in the summary; replay.json has them all


def _where(d: dict[str, Any]) -> str:
    call = f", call {d['call_index']}" if d.get("call_index") is not None else ""
    tool = f" ({d['tool']})" if d.get("tool") else ""
    return f"turn {d['turn']}{call}{tool}"


def render_report(report: dict[str, Any], run_dir: str | None) -> str:
    """The report as a few readable lines: the verdict, the first divergence, then the list."""
    head = f"replay {report['replay_run']} of run {report['recorded_run']} ({report['workspace']})"
    counts = f"{report['turns_compared']} turn(s) / {report['calls_compared']} tool call(s)"
    lines = [head]
    if report["identical"]:
        lines.append(f"✓ no divergence in {counts}")
    else:
        divs = report.get("divergences") or []
        total = report.get("divergences_total") or len(divs)
        first = divs[0]
        lines.append(f"✗ {total} divergence(s) in {counts}; first at {_where(first)}:")
        lines.append(f"  {first['kind']} {first['field']}")
        lines.append(f"    recorded: {first['recorded']!r}")
        lines.append(f"    replayed: {first['replayed']!r}")
        if total > 1:
            lines.append("  all:")
            for d in divs[:SHOWN]:
                lines.append(f"    {_where(d)}: {d['kind']} {d['field']}")
            if total > SHOWN:
                lines.append(f"    … {total - SHOWN} more in replay.json")
    lines.append(f"  turns: recorded {report['recorded_turns']} ({report['recorded_exit_reason']}), "
                 f"replayed {report['replayed_turns']} ({report['replayed_exit_reason']}); "
                 f"responses served {report['responses_served']}/{report['responses_recorded']}")
    if run_dir:
        lines.append(f"  report: {run_dir}/replay.json")
    return "\n".join(lines)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--workspace", "-w", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="replay against DIR (uploaded) instead of the recorded seed")
@click.option("--include-git", is_flag=True, help="upload DIR's .git directory too")
@click.option("--follow/--no-follow", default=True,
              help="show the replay's progress and its report (default), or print its id and return")
@click.option("--json", "as_json", is_flag=True, help="print the report (or, with --no-follow, the run) as JSON")
@click.pass_obj
@guard
def replay(obj: Ctx, run_id: str, workspace: Path | None, include_git: bool, follow: bool, as_json: bool) -> None:
    """Re-run a recorded run offline and report where tool results diverge."""
    from kcctl.commands.run import _upload

    with obj.client() as client:
        body: dict[str, Any] = {}
        if workspace is not None:
            body["workspace_upload"], _ = _upload(client, workspace, include_git)
        info = client.call("POST", f"/v1/runs/{run_id}/replay", body)
        new_id = info["id"]
        if not follow:
            if as_json:
                print_json(info)
            else:
                click.echo(f"replay {new_id} of run {run_id} started\n  run dir: {info['run_dir']}\n"
                           f"  follow:  kcctl runs events {new_id} --follow\n"
                           f"  report:  {info['run_dir']}/replay.json when it ends")
            return
        try:
            end = follow_run(client, new_id, as_json=False) if not as_json else _wait(client, new_id)
        except KeyboardInterrupt:
            click.echo(f"\ndetached from replay {new_id}; it keeps running. "
                       f"Cancel it with: kcctl runs cancel {new_id}", err=True)
            sys.exit(130)
        if end is None:
            fail(f"the event stream of replay {new_id} ended before run.end", EXIT_NOT_COMPLETED)
        from kcctl.errors import DaemonError

        try:
            report = client.call("GET", f"/v1/runs/{new_id}/replay")
        except DaemonError as exc:
            fail(f"replay {new_id} ended without a report: {exc.message}", EXIT_NOT_COMPLETED)
    if as_json:
        print_json(report)
    else:
        click.echo(render_report(report, info.get("run_dir")))
    sys.exit(EXIT_OK if report["identical"] else EXIT_DIVERGED)


def _wait(client, run_id: str) -> dict | None:
    """The run.end event, reading the event stream without printing it."""
    import json

    for line in client.stream_lines(f"/v1/runs/{run_id}/events", {"follow": "1", "since": "0"}):
        event = json.loads(line)
        if event.get("type") == "run.end":
            return event
    return None
