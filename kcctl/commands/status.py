"""`kcctl status`: the daemon's health in a few lines."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from kcctl.commands.common import print_json, with_client

if TYPE_CHECKING:
    from kcctl.client import Client


@click.command()
@click.option("--json", "as_json", is_flag=True)
@with_client
def status(client: Client, as_json: bool) -> None:
    """Show the daemon's health."""
    h = client.call("GET", "/v1/health")
    if as_json:
        print_json(h)
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
