"""`kcctl config check`: validate an agent config the way the daemon loads it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from kcctl.commands.common import EXIT_USAGE, fail, with_client

if TYPE_CHECKING:
    from kcctl.client import Client


@click.group()
def config() -> None:
    """Agent configs."""


@config.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@with_client
def config_check(client: Client, file: Path) -> None:
    """Validate an agent config the way the daemon will load it."""
    res = client.call("POST", "/v1/config/check",
                      {"config_text": file.read_text(encoding="utf-8"), "config_path": str(file.resolve())})
    for w in res.get("warnings") or []:
        click.echo(f"warning: {w}", err=True)
    if not res["ok"]:
        fail(res["error"]["message"], EXIT_USAGE)
    click.echo(f"ok: {file} (route {res['route']}, {res['digest']})")
