"""kcctl: the command-line client of kcd.

Exit codes: 0 success (a run that completed), 1 a run that ended without
completing, 2 usage or config errors, 3 the daemon is unreachable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from kcctl.client import Client, DaemonError, DaemonUnreachable, connect, start_user_daemon
from kcctl.render import render_event

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Ctx:
    def __init__(self, socket: str | None, autostart: bool):
        self.socket = socket
        self.autostart = autostart

    def client(self) -> Client:
        return connect(self.socket, autostart=self.autostart, echo=lambda m: click.echo(m, err=True))


def _fail(message: str, code: int) -> None:
    click.echo(f"kcctl: {message}", err=True)
    sys.exit(code)


def _guard(fn):
    """Map client errors to the documented exit codes."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaemonUnreachable as exc:
            _fail(str(exc), EXIT_UNREACHABLE)
        except DaemonError as exc:
            code = EXIT_USAGE if exc.status in (400, 404, 413, 422) or exc.code == "version_mismatch" else 1
            _fail(exc.message, code)
    return wrapper


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@click.group()
@click.option("--socket", envvar=None, help="control socket path (default: KYLECODE_HOST, then the user "
              "socket, then /run/kylecode/kcd.sock)")
@click.option("--no-autostart", is_flag=True, help="never start a user-mode kcd when none answers")
@click.version_option(package_name="kylecode", prog_name="kcctl")
@click.pass_context
def main(ctx: click.Context, socket: str | None, no_autostart: bool) -> None:
    """Control the KyleCode daemon."""
    ctx.obj = Ctx(socket, not no_autostart)


# ---- run ----------------------------------------------------------------------

def _read_task(task: str) -> str:
    if task.startswith("@"):
        path = Path(task[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read task file {path}: {exc.strerror}", param_hint="--task")
    return task


def follow_run(client: Client, run_id: str, *, as_json: bool, since: int = 0) -> dict | None:
    """Stream a run's events until run.end; returns the run.end event."""
    end = None
    for line in client.stream_lines(f"/v1/runs/{run_id}/events", {"follow": "1", "since": str(since)}):
        event = msgspec.json.decode(line)
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


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--task", "-t", required=True, help="task text, or @FILE to read it from a file")
@click.option("--workspace", "-w", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="upload DIR as the run's seed workspace (.gitignore'd files and .git are skipped); "
                   "DIR itself is not modified unless --apply")
@click.option("--include-git", is_flag=True, help="upload DIR's .git directory too")
@click.option("--apply", "apply_back", is_flag=True,
              help="when the run ends, apply its changes back to DIR (refused if DIR changed meanwhile)")
@click.option("--max-steps", "-m", type=click.IntRange(min=1), help="step limit (default: the config's)")
@click.option("--stream/--no-stream", default=None, help="override the route's streaming setting")
@click.option("--detach", is_flag=True, help="print the run id and return at once")
@click.option("--json", "as_json", is_flag=True, help="print events as NDJSON")
@click.pass_obj
@_guard
def run(obj: Ctx, config: Path, task: str, workspace: Path | None, include_git: bool, apply_back: bool,
        max_steps: int | None, stream: bool | None, detach: bool, as_json: bool) -> None:
    """Start an agent run and stream its progress."""
    if apply_back and (workspace is None or detach):
        raise click.UsageError("--apply needs --workspace and cannot be combined with --detach")
    body = {"config_text": config.read_text(encoding="utf-8"), "config_path": str(config.resolve()),
            "task": _read_task(task), "max_steps": max_steps, "stream": stream}
    with obj.client() as client:
        manifest = None
        if workspace is not None:
            upload, manifest = _upload(client, workspace, include_git)
            body["workspace_upload"] = upload
        try:
            info = client.call("POST", "/v1/runs", {k: v for k, v in body.items() if v is not None})
        except DaemonError as exc:
            if exc.status == 400:
                _fail(exc.message, EXIT_USAGE)
            raise
        run_id = info["id"]
        if detach:
            if as_json:
                _print_json(info)
            else:
                click.echo(f"run {run_id} started\n  run dir: {info['run_dir']}\n"
                           f"  follow:  kcctl runs events {run_id} --follow")
            return
        try:
            end = follow_run(client, run_id, as_json=as_json)
        except KeyboardInterrupt:
            click.echo(f"\ndetached from run {run_id}; it keeps running. "
                       f"Cancel it with: kcctl runs cancel {run_id}", err=True)
            sys.exit(130)
        if end is not None and apply_back:
            assert workspace is not None and manifest is not None
            _apply_changes(client, run_id, workspace, manifest, include_git)
    if end is None:
        _fail(f"the event stream of run {run_id} ended before run.end", EXIT_NOT_COMPLETED)
    sys.exit(EXIT_OK if end["data"].get("completed") else EXIT_NOT_COMPLETED)


def _upload(client: Client, workspace: Path, include_git: bool) -> tuple[str, dict[str, str]]:
    from kcd.api.archive import ArchiveTooLarge, pack_workspace

    try:
        packed = pack_workspace(workspace, include_git=include_git)
    except ArchiveTooLarge as exc:
        _fail(str(exc), EXIT_USAGE)
    with packed.file:
        info = client.call_raw("POST", "/v1/workspaces", packed.file, "application/gzip")
    for rel in packed.skipped:
        click.echo(f"kcctl: not uploaded (not a file, directory or link): {rel}", err=True)
    return info["upload_id"], packed.manifest


def _apply_changes(client: Client, run_id: str, workspace: Path, manifest: dict[str, str],
                   include_git: bool) -> None:
    """Write the run's changes into DIR, only if DIR is exactly as it was uploaded."""
    import base64
    import os

    from kcd.api.archive import sha256_file, workspace_manifest

    now = workspace_manifest(workspace, include_git=include_git)
    if now != manifest:
        changed = sorted(set(now.items()) ^ set(manifest.items()))
        names = sorted({path for path, _ in changed})
        _fail(f"not applying: {workspace} changed since it was uploaded ({', '.join(names[:5])}"
              f"{'…' if len(names) > 5 else ''}); the diff is in the run directory (workspace.diff)",
              EXIT_NOT_COMPLETED)
    changes = client.call("GET", f"/v1/runs/{run_id}/changes")["changes"]
    root = workspace.resolve()
    for ch in changes:
        target = (root / ch["path"]).resolve()
        if os.path.commonpath([str(target), str(root)]) != str(root):
            _fail(f"refusing a change outside {root}: {ch['path']}", EXIT_NOT_COMPLETED)
        if ch["action"] != "added" and (not target.is_file() or sha256_file(target) != ch["sha256_before"]):
            _fail(f"not applying: {ch['path']} differs from the uploaded version", EXIT_NOT_COMPLETED)
    for ch in changes:
        target = root / ch["path"]
        if ch["action"] == "deleted":
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(ch["content_b64"]))
            if ch.get("mode") is not None:
                os.chmod(target, ch["mode"])
        click.echo(f"applied: {ch['action']:<8} {ch['path']}", err=True)
    if not changes:
        click.echo("applied: no changes", err=True)


# ---- status, runs -----------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_guard
def status(obj: Ctx, as_json: bool) -> None:
    """Show the daemon's health."""
    with obj.client() as client:
        h = client.call("GET", "/v1/health")
    if as_json:
        _print_json(h)
        return
    ex = h["executor"]
    click.echo(f"kcd {h['version']} (api {h['api']}) pid {h['pid']} uid {h['uid']}  state={h['state']}  "
               f"up {h['uptime_s']:.0f}s")
    click.echo(f"  socket:    {h['socket']}")
    click.echo(f"  runs root: {h['runs_root']}")
    click.echo(f"  executor:  {ex['mode']} ({ex['state']}) {json.dumps(ex.get('detail') or {})}")
    click.echo(f"  active runs: {h['runs_active']}")
    if h.get("peer"):
        click.echo(f"  you:       uid {h['peer']['uid']} pid {h['peer']['pid']}")


@main.group()
def runs() -> None:
    """Inspect and control runs."""


@runs.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--status", "status_", help="only runs with this status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_guard
def runs_list(obj: Ctx, limit: int, status_: str | None, as_json: bool) -> None:
    """List recent runs, newest first."""
    with obj.client() as client:
        data = client.call("GET", "/v1/runs", params={"limit": limit, **({"status": status_} if status_ else {})})
    if as_json:
        _print_json(data)
        return
    rows = data["runs"]
    if not rows:
        click.echo("no runs")
        return
    click.echo(f"{'ID':<13} {'STATUS':<11} {'EXIT':<20} {'STEPS':>5}  {'ROUTE':<28} CREATED")
    for r in rows:
        click.echo(f"{r['id']:<13} {r['status']:<11} {r.get('exit_reason') or '-':<20} "
                   f"{r.get('steps') if r.get('steps') is not None else '-':>5}  {r.get('route') or '-':<28} "
                   f"{r['created_at']}")


@runs.command("show")
@click.argument("run_id")
@click.pass_obj
@_guard
def runs_show(obj: Ctx, run_id: str) -> None:
    """Show one run."""
    with obj.client() as client:
        _print_json(client.call("GET", f"/v1/runs/{run_id}"))


@runs.command("events")
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="keep streaming until the run ends")
@click.option("--since", default=0, show_default=True, help="only events with seq > N")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_guard
def runs_events(obj: Ctx, run_id: str, follow: bool, since: int, as_json: bool) -> None:
    """Print a run's events (a finished run replays from meta/events.jsonl)."""
    with obj.client() as client:
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
                text = render_event(msgspec.json.decode(line))
                if text:
                    click.echo(text)


@runs.command("fetch")
@click.argument("run_id")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="directory to write the run's final workspace into (new or empty)")
@click.pass_obj
@_guard
def runs_fetch(obj: Ctx, run_id: str, out: Path) -> None:
    """Write a run's final workspace into a directory."""
    import tempfile

    from kcd.api.archive import UnsafeArchive, safe_extract

    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"{out} exists and is not empty")
    with obj.client() as client, tempfile.TemporaryFile() as tmp:
        for chunk in client.stream_bytes(f"/v1/runs/{run_id}/workspace"):
            tmp.write(chunk)
        tmp.seek(0)
        try:
            files = safe_extract(tmp, out)
        except UnsafeArchive as exc:
            _fail(f"refusing the archive: {exc}", 1)
    click.echo(f"wrote {len(files)} files to {out}")


@runs.command("cancel")
@click.argument("run_id")
@click.pass_obj
@_guard
def runs_cancel(obj: Ctx, run_id: str) -> None:
    """Cancel a run (its artifacts are still written)."""
    with obj.client() as client:
        info = client.call("POST", f"/v1/runs/{run_id}/cancel")
    click.echo(f"cancel requested for run {info['id']} (status: {info['status']})")


# ---- routes ---------------------------------------------------------------------------

def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    import time

    return f"{max(time.time() - ts, 0):.0f}s ago"


def _show_routes(obj: Ctx, route: str | None, as_json: bool) -> None:
    with obj.client() as client:
        data = client.call("GET", "/v1/routes", params={"route": route} if route else None)["routes"]
    if as_json:
        _print_json(data)
        return
    if not data:
        click.echo("no route has been called yet")
        return
    click.echo(f"{'ROUTE':<40} {'STATE':<11} {'FAILS':>5} {'K':>2} {'LOCKOUT':>9}  LAST ERROR")
    for name, r in sorted(data.items()):
        left = r.get("reopens_in_s")
        lockout = f"{left:.0f}s" if left else "-"
        err = " ".join((r.get("last_error") or "-").split())
        click.echo(f"{name:<40} {r['state']:<11} {r.get('window_failures', len(r.get('failures', []))):>5} "
                   f"{r.get('k', 0):>2} {lockout:>9}  {err[:90]}"
                   + (f" ({_ago(r.get('last_failure_ts'))})" if r.get("last_failure_ts") else ""))


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_guard
def routes(ctx: click.Context, as_json: bool) -> None:
    """Circuit breakers per route: state, recent failures, lockout left, last error."""
    if ctx.invoked_subcommand is None:
        _show_routes(ctx.obj, None, as_json)


@routes.command("show")
@click.argument("route")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_guard
def routes_show(obj: Ctx, route: str, as_json: bool) -> None:
    """One route's breaker."""
    _show_routes(obj, route, as_json)


@routes.command("reset")
@click.argument("route")
@click.pass_obj
@_guard
def routes_reset(obj: Ctx, route: str) -> None:
    """Close a route's breaker now (an audited operator action)."""
    with obj.client() as client:
        data = client.call("POST", "/v1/routes/reset", {"route": route})["routes"]
    click.echo(f"{route}: {data[route]['state']}")


# ---- probes ---------------------------------------------------------------------------

@main.command()
@click.argument("route", required=False)
@click.option("--refresh", is_flag=True, help="probe ROUTE now (needs ROUTE)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_guard
def probes(obj: Ctx, route: str | None, refresh: bool, as_json: bool) -> None:
    """Capability probe results per route (streaming, native tools, JSON mode) and their age."""
    if refresh and not route:
        raise click.UsageError("--refresh needs a ROUTE")
    with obj.client() as client:
        if refresh:
            data = client.call("POST", "/v1/probes/refresh", {"route": route})["probes"]
        else:
            data = client.call("GET", "/v1/probes", params={"route": route} if route else None)["probes"]
    if as_json:
        _print_json(data)
        return
    if not data:
        click.echo("no probe results yet (probes run when a config enables them)")
        return

    def b(v):
        return "-" if v is None else ("ok" if v else "FAIL")

    click.echo(f"{'ROUTE':<40} {'STREAM':<6} {'TOOLS':<6} {'JSON':<6} {'AGE':>7}  NOTE")
    for r in sorted(data, key=lambda r: r["route"]):
        note = r.get("skipped_reason") or r.get("error") or ""
        age = f"{r['age_s']:.0f}s" + ("" if r.get("fresh") else "*")
        click.echo(f"{r['route']:<40} {b(r['stream_success']):<6} {b(r['tool_stream_success']):<6} "
                   f"{b(r['json_mode_success']):<6} {age:>7}  {' '.join(str(note).split())[:80]}")


# ---- metrics --------------------------------------------------------------------------

@main.group(invoke_without_command=True)
@click.option("--grep", "pattern", help="only lines containing this text")
@click.pass_context
@_guard
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
        _fail(f"{target} is not a file or directory, and looking it up as a run id needs kcd: {exc}",
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
@_guard
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


# ---- config, daemon -------------------------------------------------------------------

@main.group()
def config() -> None:
    """Agent configs."""


@config.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
@_guard
def config_check(obj: Ctx, file: Path) -> None:
    """Validate an agent config the way the daemon will load it."""
    with obj.client() as client:
        res = client.call("POST", "/v1/config/check",
                          {"config_text": file.read_text(encoding="utf-8"), "config_path": str(file.resolve())})
    for w in res.get("warnings") or []:
        click.echo(f"warning: {w}", err=True)
    if not res["ok"]:
        _fail(res["error"]["message"], EXIT_USAGE)
    click.echo(f"ok: {file} (route {res['route']}, {res['digest']})")


@main.group()
def daemon() -> None:
    """Start or stop a user-mode daemon."""


@daemon.command("start")
@click.pass_obj
@_guard
def daemon_start(obj: Ctx) -> None:
    """Start kcd in the background if none answers."""
    from kcd.api.paths import resolve_socket

    path, _ = resolve_socket(obj.socket)
    start_user_daemon(path, echo=lambda m: click.echo(m, err=True))
    with Client(path) as client:
        h = client.call("GET", "/v1/health")
    click.echo(f"kcd {h['version']} running, pid {h['pid']}, socket {h['socket']}")


def _alive(pid: int) -> bool:
    """Whether the daemon process still exists (it finalises runs before exiting)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@daemon.command("stop")
@click.option("--timeout", default=60.0, show_default=True)
@click.pass_obj
@_guard
def daemon_stop(obj: Ctx, timeout: float) -> None:
    """Stop the daemon: running runs are cancelled and finalised first."""
    import time

    from kcd.api.paths import resolve_socket

    path, _ = resolve_socket(obj.socket)
    with Client(path) as client:
        h = client.call("GET", "/v1/health")
        client.call("POST", "/v1/shutdown")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(h["pid"]) and not path.exists():
            click.echo(f"kcd (pid {h['pid']}) stopped")
            return
        time.sleep(0.05)
    _fail(f"kcd (pid {h['pid']}) did not stop within {timeout:.0f}s", 1)


if __name__ == "__main__":
    main()
