"""What every command shares: the context object, the error-to-exit-code mapping, output.

Exit codes: 0 success (a run that completed), 1 a run that ended without completing or a
command that failed, 2 usage or config errors, 3 the daemon is unreachable or died while
answering (a followed run's stream cut off by a crash), 4 `kcctl replay`: the replay's tool
results diverged from the recorded ones (kcctl.commands.replay).
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

import click

from kcctl.errors import DaemonError, DaemonUnreachable

if TYPE_CHECKING:
    from kcctl.client import Client

EXIT_OK, EXIT_NOT_COMPLETED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Ctx:
    """The root group's options, and a client made from them on demand."""

    def __init__(self, socket: str | None, autostart: bool):
        self.socket = socket
        self.autostart = autostart

    def client(self) -> Client:
        from kcctl.client import connect

        return connect(self.socket, autostart=self.autostart, echo=lambda m: click.echo(m, err=True))


def fail(message: str, code: int) -> None:
    """Print `kcctl: <message>` to stderr and exit with `code`."""
    click.echo(f"kcctl: {message}", err=True)
    sys.exit(code)


def guard(fn):
    """Map client errors to the documented exit codes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaemonUnreachable as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except DaemonError as exc:
            code = EXIT_USAGE if exc.status in (400, 404, 413, 422) or exc.code == "version_mismatch" else 1
            fail(exc.message, code)
    return wrapper


def with_client(fn):
    """The decorator most commands share: the documented exit codes for client errors, and a
    connected `Client` (auto-starting a user-mode daemon when allowed) as the first argument.
    Commands that must check their own arguments before connecting use `pass_obj` + `guard`
    and call `obj.client()` themselves."""

    @functools.wraps(fn)
    def wrapper(obj: Ctx, *args, **kwargs):
        with obj.client() as client:
            return fn(client, *args, **kwargs)
    return click.pass_obj(guard(wrapper))


def print_json(obj: Any) -> None:
    import json

    click.echo(json.dumps(obj, indent=2, sort_keys=False))
