"""`kcctl daemon`: start, reload or stop a daemon."""

from __future__ import annotations

import json

import click

from kcctl.client import Client, start_user_daemon
from kcctl.commands.common import Ctx, fail, guard, with_client


@click.group()
def daemon() -> None:
    """Start or stop a user-mode daemon."""


@daemon.command("start")
@click.pass_obj
@guard
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
@with_client
def daemon_reload(client: Client, as_json: bool) -> None:
    """Reopen the central telemetry file, retry a failed executor, re-probe routes (operators)."""
    done = client.call("POST", "/v1/reload")
    if as_json:
        click.echo(json.dumps(done))
        return
    click.echo("reloaded: " + ", ".join(k for k, v in done.items() if v is True) + f"; executor {done['executor']}")


@daemon.command("stop")
@click.option("--timeout", default=60.0, show_default=True)
@click.pass_obj
@guard
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
    fail(f"kcd (pid {h['pid']}) did not stop within {timeout:.0f}s", 1)
