"""`kcctl run`: upload a workspace, start a run, follow it, optionally apply its changes back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kcctl.commands.common import EXIT_NOT_COMPLETED, EXIT_OK, EXIT_USAGE, Ctx, fail, guard, print_json
from kcctl.errors import DaemonError
from kcctl.follow import follow_run

if TYPE_CHECKING:
    from kcctl.client import Client


def _read_task(task: str) -> str:
    if task.startswith("@"):
        path = Path(task[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.BadParameter(f"cannot read task file {path}: {exc.strerror}", param_hint="--task")
    return task



@click.command()
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
@guard
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
                fail(exc.message, EXIT_USAGE)
            raise
        run_id = info["id"]
        if detach:
            if as_json:
                print_json(info)
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
        fail(f"the event stream of run {run_id} ended before run.end", EXIT_NOT_COMPLETED)
    sys.exit(EXIT_OK if end["data"].get("completed") else EXIT_NOT_COMPLETED)


def _upload(client: Client, workspace: Path, include_git: bool) -> tuple[str, dict[str, str]]:
    from kcd.workspaces.archive import ArchiveTooLarge, pack_workspace

    try:
        packed = pack_workspace(workspace, include_git=include_git)
    except ArchiveTooLarge as exc:
        fail(str(exc), EXIT_USAGE)
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

    from kcd.workspaces.archive import sha256_file, workspace_manifest

    now = workspace_manifest(workspace, include_git=include_git)
    if now != manifest:
        changed = sorted(set(now.items()) ^ set(manifest.items()))
        names = sorted({path for path, _ in changed})
        fail(f"not applying: {workspace} changed since it was uploaded ({', '.join(names[:5])}"
              f"{'…' if len(names) > 5 else ''}); the diff is in the run directory (workspace.diff)",
              EXIT_NOT_COMPLETED)
    changes = client.call("GET", f"/v1/runs/{run_id}/changes")["changes"]
    root = workspace.resolve()
    for ch in changes:
        target = (root / ch["path"]).resolve()
        if os.path.commonpath([str(target), str(root)]) != str(root):
            fail(f"refusing a change outside {root}: {ch['path']}", EXIT_NOT_COMPLETED)
        if ch["action"] != "added" and (not target.is_file() or sha256_file(target) != ch["sha256_before"]):
            fail(f"not applying: {ch['path']} differs from the uploaded version", EXIT_NOT_COMPLETED)
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
