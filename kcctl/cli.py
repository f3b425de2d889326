"""kcctl: the command-line client of kcd.

Exit codes: 0 success (a run that completed), 1 a run that ended without
completing, 2 usage or config errors, 3 the daemon is unreachable or died
while answering (a followed run's stream cut off by a crash).
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
    for n in ex.get("nodes") or []:
        extra = " ".join(f"{k}={v:g}" for k, v in sorted((n.get("resources") or {}).items()))
        click.echo(f"    node {n['node_id'][:12]} {n['address']:<15} {'alive' if n['alive'] else 'DEAD '} "
                   f"cpus {n['cpus_free']:g}/{n['cpus_total']:g} free  runs {n['runs']}"
                   + ("  (kcd's host)" if n.get("local") else "") + (f"  {extra}" if extra else ""))
    click.echo(f"  active runs: {h['runs_active']}")
    sb = h.get("sandbox")
    if sb:
        caps = f"processes by {sb.get('processes_capped_by') or 'nothing'}, memory by {sb.get('memory_capped_by') or 'nothing'}"
        click.echo(f"  sandbox:   {sb['mode']}{' (WEAKER)' if sb.get('weaker') else ''} "
                   f"(configured {sb['configured']}; {caps}): {sb['guarantees']}")
    if h.get("upstream_client"):
        click.echo(f"  http:      upstream via {h['upstream_client']}, event loop {h.get('event_loop')}")
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
    # WINDOW: failed / logical requests in the breaker's window, and the failure rate.
    click.echo(f"{'ROUTE':<40} {'STATE':<11} {'WINDOW':>12} {'K':>2} {'LOCKOUT':>9}  LAST ERROR")
    for name, r in sorted(data.items()):
        left = r.get("reopens_in_s")
        lockout = f"{left:.0f}s" if left else "-"
        err = " ".join((r.get("last_error") or "-").split())
        failed = r.get("window_failures", len(r.get("failures", [])))
        calls = r.get("window_calls", failed)
        window = f"{failed}/{calls} {100 * r.get('failure_rate', 0):.0f}%"
        click.echo(f"{name:<40} {r['state']:<11} {window:>12} "
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


# ---- vendor bundle, incident ------------------------------------------------------------
# `kcctl bundle` and `kcctl incident` (runbook §6 vendor escalation, §7 incident checklist).
# The daemon builds the bundle (POST /v1/bundles): it can read the run directory and knows the
# secret values. The client only names the run and decides where the bytes land.

BUNDLE_PREFIX = "[vendor-bundle]"
_BUNDLE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*_vendor_bundle\.zip"
_FAILED_BUNDLE = ("bundle_refused", "bundle_too_large")  # the run is fine; the bundle is not: exit 1


def _run_ref(run: str) -> str:
    """An id or run-dir name goes as typed; a path is resolved here (the daemon's working
    directory is not ours), physically: `link/..` means the link target's parent, as in the
    shell, never a lexical shortcut back into the runs root. The daemon checks it again."""
    import os

    return os.path.realpath(run) if "/" in run or os.path.exists(run) else run


def _fetch_bundle(client: Client, run: str, matrix_files: tuple[Path, ...] = ()) -> tuple[str, bytes]:
    """(file name, zip bytes) of RUN's bundle; DaemonError as the daemon says."""
    import re

    attachments = []
    for path in matrix_files:
        try:
            attachments.append({"name": path.name, "content": path.read_text(encoding="utf-8")})
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(f"cannot read {path} as UTF-8 text: {exc}", param_hint="--with-matrix")
    headers, content = client.fetch("POST", "/v1/bundles", {"run": _run_ref(run), "matrix": attachments})
    name = headers.get("x-kc-bundle-name", "")
    if not re.fullmatch(_BUNDLE_NAME, name):  # never let the daemon pick a path
        raise DaemonError(502, "bad_response", f"kcd named the bundle {name!r}; not using that as a file name")
    return name, content


def _write_file(path: Path, data: bytes) -> None:
    """Whole or not at all: a failed write leaves no half bundle behind."""
    import os

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _redaction_line(manifest: dict) -> str:
    t = manifest["redaction"]["totals"]
    return (f"{BUNDLE_PREFIX} run {manifest.get('run_id') or manifest['run']}: {len(manifest['files'])} files; "
            f"{t['secrets_masked']} secrets masked ({t['already_masked']} masked by the run already), "
            f"{t['paths_replaced']} local paths and {t['user_names_replaced']} user names replaced")


class _BundleFailed(Exception):
    """kcd refused the bundle, or sent one that does not match its manifest."""


def _get_bundle(obj: Ctx, run: str, matrix_files: tuple[Path, ...] = ()) -> tuple[str, bytes, dict]:
    """Fetch and check a bundle: (file name, bytes, manifest)."""
    from kcd.api.bundle_check import verify_bundle

    try:
        with obj.client() as client:
            name, data = _fetch_bundle(client, run, matrix_files)
    except DaemonError as exc:
        if exc.code in _FAILED_BUNDLE:
            raise _BundleFailed(exc.message) from None
        raise
    try:
        return name, data, verify_bundle(data)
    except (ValueError, KeyError) as exc:
        raise _BundleFailed(f"the bundle kcd sent does not match its manifest: {exc}") from None


def _get_bundle_or_exit(obj: Ctx, run: str, matrix_files: tuple[Path, ...] = ()) -> tuple[str, bytes, dict]:
    try:
        return _get_bundle(obj, run, matrix_files)
    except _BundleFailed as exc:
        _fail(f"{BUNDLE_PREFIX} {exc}", EXIT_NOT_COMPLETED)
        raise  # unreachable: _fail exits


@main.command()
@click.argument("run")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the zip (default: ./<run dir name>_vendor_bundle.zip)")
@click.option("--with-matrix", "matrix_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a matrix result (JSON or JUnit) to include under matrix/; repeatable")
@click.pass_obj
@_guard
def bundle(obj: Ctx, run: str, out: Path | None, matrix_files: tuple[Path, ...]) -> None:
    """Build RUN's vendor bundle for a provider's support team.

    RUN is a run id, or a run directory under the daemon's runs root (anything resolving
    outside it is refused). The zip holds an allow-list of the run's evidence, scrubbed of
    secret values, local paths and user names, with MANIFEST.json (size and sha256 of every
    file, redaction report) and SUMMARY.md. Exit codes: 0 written, 1 refused (a secret would
    remain, or too large), 2 no such run or a path outside the runs root, 3 kcd unreachable.
    """
    name, data, manifest = _get_bundle_or_exit(obj, run, matrix_files)
    target = out or Path(name)
    _write_file(target, data)
    click.echo(f"{BUNDLE_PREFIX} Wrote {target}")
    click.echo(_redaction_line(manifest))


class _Piece:
    """One deliverable of `kcctl incident` and how it went."""

    def __init__(self, title: str, status: str, files: list[str], detail: str):
        self.title, self.status, self.files, self.detail = title, status, files, detail

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _zip_member(data: bytes, name: str) -> bytes | None:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        try:
            return zf.read(name)
        except KeyError:
            return None


def _run_routes(data: bytes) -> list[str]:
    """Every route the run touched: its primary, every metered route, every fallback end."""
    routes: set[str] = set()
    for member in ("meta/run.json", "meta/provider_metrics.json", "result.json"):
        try:
            doc = json.loads(_zip_member(data, member) or b"{}")
        except (ValueError, RecursionError):
            continue
        if not isinstance(doc, dict):
            continue
        routes.update(r for r in (doc.get("route"), doc.get("served_route")) if isinstance(r, str))
        metered = doc.get("routes")
        if isinstance(metered, dict):
            routes.update(r for r in metered if isinstance(r, str))
        for fb in doc.get("fallbacks") or []:
            if isinstance(fb, dict):
                routes.update(r for r in (fb.get("from"), fb.get("to")) if isinstance(r, str))
    return sorted(routes)


def _incident_metrics(data: bytes, manifest: dict, folder: Path) -> _Piece:
    """incident_metrics.json: the exporter's summary of the run's telemetry lines, taken from
    the bundle the daemon sent (so scrubbed and limited to this run)."""
    import tempfile

    from kcctl import export

    title, target = "metrics summary", folder / "incident_metrics.json"
    lines = _zip_member(data, "meta/telemetry.jsonl")
    if not lines:
        return _Piece(title, "failed", [], "the run has no telemetry lines (meta/telemetry.jsonl)")
    messages: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "telemetry.jsonl"
        source.write_bytes(lines)
        with open(target, "wb") as fh:
            code = export.run_export(source, export.Options(fmt="summary"), out=fh, err=messages.append)
    if code != export.EXIT_OK:
        target.unlink(missing_ok=True)
        return _Piece(title, "failed", [], "; ".join(messages) or f"the exporter exited {code}")
    row = next((f for f in manifest["files"] if f["path"] == "meta/telemetry.jsonl"), {})
    note = " (telemetry truncated by the bundle's per-file cap: partial)" if row.get("truncated") else ""
    summary = json.loads(target.read_bytes())
    return _Piece(title, "ok", [target.name], f"{summary['calls']} calls, {summary['errors']} errors, "
                  f"{summary['html_errors']} HTML errors, {summary['fallbacks']} fallbacks{note}")


def _incident_readme(run_name: str, manifest: dict, routes: list[str], pieces: list[_Piece],
                     summary_md: str) -> str:
    rows = "\n".join(f"| {p.title} | {p.status} | {', '.join(f'`{f}`' for f in p.files) or '-'} | {p.detail} |"
                     for p in pieces)
    attach = [f"`{f}`" for p in pieces if not p.failed for f in p.files]
    return "\n".join([
        f"# Incident: run {manifest.get('run_id') or run_name}", "",
        f"Made by `kcctl incident` (KyleCode {manifest['kylecode_version']}) from run directory `{run_name}`.",
        f"Routes the run used: {', '.join(f'`{r}`' for r in routes) or '-'}.", "",
        "| Piece | Status | Files | Detail |", "|---|---|---|---|", rows, "",
        "## Attach to the ticket", "",
        *(f"{i}. {f}" for i, f in enumerate(attach, 1)),
        f"{len(attach) + 1}. Paste the summary below (SUMMARY.md from the bundle) into the ticket body.", "",
        "The bundle is scrubbed (secret values, local paths, user names); its MANIFEST.json lists every",
        "file with its size and sha256 and a redaction report.", "",
        "---", "", summary_md])


@main.command()
@click.argument("run")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="folder to write (default: ./incident_<run dir name>); must be new or empty")
@click.option("--require-matrix", is_flag=True,
              help="fail unless the matrix rerun ran (by default an unavailable or empty rerun is reported only)")
@click.pass_context
@_guard
def incident(ctx: click.Context, run: str, out: Path | None, require_matrix: bool) -> None:
    """The runbook's incident checklist as one command.

    Writes into one folder: the run's vendor bundle, incident_metrics.json (the telemetry
    summary export), matrix/ (results.json and junit.xml of a rerun of the regression
    scenarios whose routes the run used; also inside the bundle), and README.md saying
    what to attach to the ticket. Failing scenarios are a finding (the problem reproduces
    under the harness), not a failure of this command. Exit codes: 0 every piece written,
    1 a piece could not be produced, 2 no such run or a path outside the runs root,
    3 kcd unreachable.
    """
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.UsageError(f"{out} exists and is not an empty directory")
    name, data, manifest = _get_bundle_or_exit(ctx.obj, run)
    folder = out or Path(f"incident_{manifest['run']}")
    if out is None and folder.exists() and any(folder.iterdir()):
        raise click.UsageError(f"{folder} exists and is not empty; choose another with --out")
    routes = _run_routes(data)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = _incident_metrics(data, manifest, folder)
    matrix_piece, data, manifest = _incident_matrix(ctx, run, routes, folder, data, manifest, require_matrix)
    _write_file(folder / name, data)  # with the matrix results inside when the rerun ran
    pieces = [_Piece("vendor bundle", "ok", [name], _redaction_line(manifest)[len(BUNDLE_PREFIX) + 1:]),
              metrics, matrix_piece]
    summary_md = (_zip_member(data, "SUMMARY.md") or b"").decode("utf-8", "replace")
    (folder / "README.md").write_text(_incident_readme(manifest["run"], manifest, routes, pieces, summary_md),
                                      encoding="utf-8")
    click.echo(f"[incident] {folder}/")
    for p in pieces:
        click.echo(f"[incident] {p.title}: {p.status}: {p.detail}")
    click.echo("[incident] attach to the ticket:")
    for f in (f for p in pieces if not p.failed for f in p.files):
        click.echo(f"  {folder / f}")
    click.echo(f"  and paste the summary in {folder / 'README.md'} (the bundle's SUMMARY.md) into the ticket body")
    sys.exit(EXIT_NOT_COMPLETED if any(p.failed for p in pieces) else EXIT_OK)


def _scenario_files(paths: list[Path]) -> list[dict[str, str]]:
    """Scenario files as a MatrixRequest carries them: the text, and the path that anchors
    the scenario's relative references."""
    return [{"text": p.read_text(encoding="utf-8"), "path": str(p.resolve())} for p in paths]


def _matrix_selection(obj: Ctx, routes: list[str]) -> list[str]:
    """Offline scenarios of `kcctl matrix`'s default catalogue whose route chain meets `routes`:
    a dry run of the matrix, selected by kcd (it loads the scenarios and knows their chains).
    Raises click.UsageError (no catalogue) or DaemonError."""
    files = _scenario_files(_matrix_files((), None))
    try:
        with obj.client() as client:
            info = client.call("POST", "/v1/matrix", {"files": files, "routes": routes, "dry_run": True})
    except DaemonError as exc:
        if exc.code == "no_scenario":
            return []
        raise
    return list(info["scenarios"])


def _run_matrix(ctx: click.Context, names: list[str], workdir: Path) -> tuple[int, str]:
    """`kcctl matrix --scenario N... --json --junit FILE` in this process: (exit code, stdout)."""
    import contextlib
    import io

    command = main.commands["matrix"]
    args = [a for n in names for a in ("--scenario", n)] + ["--json", "--junit", str(workdir / "junit.xml")]
    out = io.StringIO()
    code = EXIT_OK
    try:
        with contextlib.redirect_stdout(out), command.make_context("matrix", args, parent=ctx) as sub:
            command.invoke(sub)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_NOT_COMPLETED
    return code, out.getvalue()


def _incident_matrix(ctx: click.Context, run: str, routes: list[str], folder: Path, data: bytes, manifest: dict,
                     require: bool) -> tuple[_Piece, bytes, dict]:
    """Rerun the scenarios for the run's routes; their results come back scrubbed by kcd inside
    a rebuilt bundle (they name daemon paths), and are copied from it into matrix/.
    Returns the piece and the bundle to keep."""
    import tempfile

    title = "matrix rerun"

    def not_run(kind: str, why: str) -> tuple[_Piece, bytes, dict]:
        return _Piece(title, "failed" if require else kind, [], f"matrix: {kind} ({why})"), data, manifest

    if "matrix" not in main.commands:
        return not_run("unavailable", "this kcctl has no `matrix` command")
    try:
        names = _matrix_selection(ctx.obj, routes)
    except (click.UsageError, DaemonError, OSError) as exc:
        return not_run("unavailable", f"cannot load the scenario catalogue: {exc}")
    if not names:
        return not_run("skipped", f"no offline scenario uses {', '.join(routes) or 'the run’s routes'}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        code, stdout = _run_matrix(ctx, names, work)
        try:
            results = json.loads(stdout)
            status = results["status"]
        except (ValueError, KeyError, TypeError):
            return _Piece(title, "failed", [], f"kcctl matrix exited {code} without results"), data, manifest
        (work / "results.json").write_text(stdout, encoding="utf-8")
        outputs = tuple(p for p in (work / "results.json", work / "junit.xml") if p.is_file())
        try:
            name, data2, manifest2 = _get_bundle(ctx.obj, run, outputs)
        except _BundleFailed as exc:
            return _Piece(title, "failed", [], f"the results could not be scrubbed into the bundle: {exc}"), \
                data, manifest
    (folder / "matrix").mkdir(exist_ok=True)
    files = []
    for p in outputs:
        _write_file(folder / "matrix" / p.name, _zip_member(data2, f"matrix/{p.name}") or b"")
        files.append(f"matrix/{p.name}")
    summary = results.get("summary") or {}
    failed = [r["name"] for r in results.get("results") or [] if r.get("verdict") == "fail"]
    if status == "cancelled":
        return _Piece(title, "failed", files, f"the matrix was cancelled ({len(names)} scenarios)"), data2, manifest2
    finding = (f"{len(failed)} failed: {', '.join(failed[:8])}{' …' if len(failed) > 8 else ''}: the problem "
               "reproduces under the harness" if failed else "all passed: it does not reproduce under the harness")
    return _Piece(title, "ok", files, f"{summary.get('total', len(names))} scenarios for {', '.join(routes)}, "
                  f"{summary.get('passed', '?')} passed, {finding}"), data2, manifest2


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


@daemon.command("reload")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_guard
def daemon_reload(obj: Ctx, as_json: bool) -> None:
    """Reopen the central telemetry file, retry a failed executor, re-probe routes (operators)."""
    with obj.client() as client:
        done = client.call("POST", "/v1/reload")
    if as_json:
        click.echo(json.dumps(done))
        return
    click.echo("reloaded: " + ", ".join(k for k, v in done.items() if v is True) + f"; executor {done['executor']}")


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


# ---- regression matrix -------------------------------------------------------------------
# `kcctl matrix`: the daemon runs the scenarios (POST /v1/matrix) as real runs against its
# simulator and judges them from their run directories; the client sends the scenario files,
# follows the NDJSON events and renders (kcctl.matrix_report: stdlib only).

MATRIX_DIR = Path("configs") / "matrix"


def _matrix_files(files: tuple[Path, ...], directory: Path | None) -> list[Path]:
    if files:
        return list(files)
    candidates = [directory] if directory else [MATRIX_DIR, Path(__file__).resolve().parents[1] / MATRIX_DIR]
    for d in candidates:
        if d.is_dir():
            found = sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
            if found:
                return found
    raise click.UsageError(f"no scenario files in {' or '.join(map(str, candidates))}; use --dir or --config")


@main.command()
@click.option("--scenario", "-s", "names", multiple=True, metavar="NAME",
              help="run only this scenario (fnmatch patterns allowed); repeatable")
@click.option("--config", "files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE", help="a scenario YAML or plan JSON to run instead of the catalogue; repeatable")
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="catalogue directory (default: configs/matrix)")
@click.option("--live", is_flag=True, help="run the live scenarios on real providers (keys from kcd's "
              "environment); scenarios whose keys are missing are skipped")
@click.option("--parallel", "-j", type=click.IntRange(1, 32), default=4, show_default=True,
              help="scenarios run at once")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON on stdout")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="write JUnit XML to FILE")
@click.option("--list", "list_only", is_flag=True, help="load and check the scenarios, list them, run nothing")
@click.pass_obj
@_guard
def matrix(obj: Ctx, names: tuple[str, ...], files: tuple[Path, ...], directory: Path | None, live: bool,
           parallel: int, as_json: bool, junit: Path | None, list_only: bool) -> None:
    """Run the provider regression matrix through the daemon.

    Every scenario (configs/matrix/*.yaml, plus the plan file's grid) is a real run
    against kcd's fault-injecting simulator, several at a time. Prints a progress line,
    then a table (scenario, outcome, route used, fallbacks, time) and, for failures, the
    stream and fallback diagnostics and the run directory. Exit codes: 0 every scenario
    passed (skips allowed), 1 a scenario failed or the matrix was cancelled, 2 a scenario
    file does not load or no scenario matches, 3 kcd unreachable.
    """
    from kcctl import matrix_report as report

    sources = _matrix_files(files, directory)
    body = {"files": _scenario_files(sources),
            "scenarios": list(names), "parallel": parallel, "live": live, "dry_run": list_only}
    with obj.client() as client:
        info = client.call("POST", "/v1/matrix", body)
        if list_only:
            if as_json:
                _print_json(info)
            else:
                for name in info["scenarios"]:
                    click.echo(f"{name:<44} {info['descriptions'].get(name, '')}")
            return
        total = len(info["scenarios"])
        click.echo(f"[regression-matrix] {info['id']}: {total} {'live ' if live else ''}scenario(s), "
                   f"{parallel} at a time", err=True)
        try:
            final = _follow_matrix(client, info["id"], total)
        except KeyboardInterrupt:
            client.call("POST", f"/v1/matrix/{info['id']}/cancel")
            click.echo(f"\nmatrix {info['id']} cancelled", err=True)
            sys.exit(130)
    if junit is not None:
        junit.write_text(report.junit_xml(final), encoding="utf-8")
    if as_json:
        _print_json(final)
    else:
        click.echo(report.table(final))
        for r in final["results"]:
            if r["verdict"] != "pass":
                click.echo("\n" + report.details(r))
        click.echo("\n" + report.summary_line(final))
    if junit is not None:
        click.echo(f"[regression-matrix] JUnit XML: {junit}", err=True)
    sys.exit(EXIT_OK if final["status"] == "passed" else EXIT_NOT_COMPLETED)


def _follow_matrix(client: Client, matrix_id: str, total: int) -> dict:
    """Follow the matrix's events with a progress line; returns the final MatrixInfo."""
    from kcctl import matrix_report as report

    tty = sys.stderr.isatty()
    done: list[dict] = []
    running = 0
    for line in client.stream_lines(f"/v1/matrix/{matrix_id}/events", {"follow": "1"}):
        event = msgspec.json.decode(line)
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "scenario.start":
            running += 1
        elif kind == "scenario.end":
            running -= 1
            done.append(data["result"])
            if not tty:
                click.echo(report.result_line(len(done), total, data["result"]), err=True)
        elif kind == "matrix.end":
            if tty:
                click.echo("\r" + report.progress(done, total, 0) + "\033[K", err=True)
            return data["info"]
        if tty and kind in ("scenario.start", "scenario.end"):
            click.echo("\r" + report.progress(done, total, running) + "\033[K", err=True, nl=False)
    return client.call("GET", f"/v1/matrix/{matrix_id}")  # the stream ended early: ask for the state


if __name__ == "__main__":
    main()
