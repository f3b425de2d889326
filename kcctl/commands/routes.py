"""`kcctl routes`: circuit breakers per route, and resetting one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kcctl.commands.common import Ctx, guard, print_json, with_client

if TYPE_CHECKING:
    from kcctl.client import Client


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    import time

    return f"{max(time.time() - ts, 0):.0f}s ago"


def _show_routes(obj: Ctx, route: str | None, as_json: bool) -> None:
    with obj.client() as client:
        data = client.call("GET", "/v1/routes", params={"route": route} if route else None)["routes"]
    if as_json:
        print_json(data)
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


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@guard
def routes(ctx: click.Context, as_json: bool) -> None:
    """Circuit breakers per route: state, recent failures, lockout left, last error."""
    if ctx.invoked_subcommand is None:
        _show_routes(ctx.obj, None, as_json)


@routes.command("show")
@click.argument("route")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@guard
def routes_show(obj: Ctx, route: str, as_json: bool) -> None:
    """One route's breaker."""
    _show_routes(obj, route, as_json)


@routes.command("reset")
@click.argument("route")
@with_client
def routes_reset(client: Client, route: str) -> None:
    """Close a route's breaker now (an audited operator action)."""
    data = client.call("POST", "/v1/routes/reset", {"route": route})["routes"]
    click.echo(f"{route}: {data[route]['state']}")
