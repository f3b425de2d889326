"""`kcctl metrics`: the daemon's live Prometheus text, and `metrics export` of telemetry files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kcctl.commands.common import EXIT_UNREACHABLE, EXIT_USAGE, Ctx, fail, guard
from kcctl.errors import DaemonError, DaemonUnreachable


@click.group(invoke_without_command=True)
@click.option("--grep", "pattern", help="only lines containing this text")
@click.pass_context
@guard
def metrics(ctx: click.Context, pattern: str | None) -> None:
    """The daemon's live metrics (Prometheus text); `metrics export` summarises telemetry files."""
    if ctx.invoked_subcommand is None:
        with ctx.obj.client() as client:
            text = client.text("/v1/metrics")
        for line in text.splitlines():
            if pattern is None or pattern in line:
                click.echo(line)


_RUN_ID = r"[A-Za-z0-9_-]+"


def _export_target(obj: Ctx, target: str) -> Path:
    """A telemetry file, a run directory, or a run id (the only case that asks kcd)."""
    import re

    path = Path(target)
    if path.exists() or not re.fullmatch(_RUN_ID, target):
        return path
    try:
        with obj.client() as client:
            info = client.call("GET", f"/v1/runs/{target}")
    except DaemonUnreachable as exc:
        fail(f"{target} is not a file or directory, and looking it up as a run id needs kcd: {exc}",
              EXIT_UNREACHABLE)
    except DaemonError as exc:
        if exc.status != 404:
            raise
        click.echo(f"[export-provider-metrics] telemetry file not found: {target} "
                   "(not a file, a run directory or a run id kcd knows)", err=True)
        sys.exit(EXIT_USAGE)
    return Path(info["run_dir"])


def _ts_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from kcctl.export import parse_ts

    try:
        return None if value is None else parse_ts(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time (e.g. 2025-10-15T02:14:19Z)") from None


@metrics.command("export")
@click.argument("target", metavar="RUN|PATH")
@click.option("--print-summary", is_flag=True,
              help="print the summary JSON (with --http-endpoint: after every batch was delivered)")
@click.option("--http-endpoint", metavar="URL",
              help="POST to URL instead of printing: events as JSON arrays (summary, jsonl), or the "
                   "otlp-json/prom document")
@click.option("--format", "fmt", type=click.Choice(["summary", "jsonl", "otlp-json", "prom"]),
              default="summary", show_default=True, help="what to print or deliver")
@click.option("--run-id", help="only events of this run")
@click.option("--since", callback=_ts_option, metavar="TS", help="only events at or after TS (ISO-8601)")
@click.option("--until", callback=_ts_option, metavar="TS", help="only events before TS (ISO-8601)")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="events per POST")
@click.option("--retries", type=click.IntRange(min=0), default=5, show_default=True,
              help="retries per POST after the first attempt")
@click.option("--backoff", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="first retry waits up to S seconds, doubling (full jitter)")
@click.option("--backoff-max", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="cap on any wait between attempts, Retry-After included")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="seconds per POST")
@click.pass_obj
@guard
def metrics_export(obj: Ctx, target: str, print_summary: bool, http_endpoint: str | None, fmt: str,
                   run_id: str | None, since: float | None, until: float | None, batch_size: int,
                   retries: int, backoff: float, backoff_max: float, timeout: float) -> None:
    """Summarise or forward a telemetry JSONL in one streaming pass.

    RUN|PATH is a telemetry file, a run directory (its meta/telemetry.jsonl) or a run id
    (its directory is asked of kcd). Exit codes: 0 done, 1 reading or delivery failed,
    2 usage error or no such file.
    """
    from kcctl import export

    opts = export.Options(
        fmt=fmt, print_summary=print_summary, endpoint=http_endpoint,  # type: ignore[arg-type]
        filters=export.Filters(run_id=run_id, since=since, until=until), batch_size=batch_size,
        policy=export.RetryPolicy(retries=retries, backoff=backoff, backoff_max=backoff_max, timeout=timeout))
    sys.exit(export.run_export(_export_target(obj, target), opts, err=lambda m: click.echo(m, err=True)))
