"""`kcctl probes`: capability probe results per route, and refreshing one."""

from __future__ import annotations

import click

from kcctl.commands.common import Ctx, guard, print_json


@click.command()
@click.argument("route", required=False)
@click.option("--refresh", is_flag=True, help="probe ROUTE now (needs ROUTE)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@guard
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
        print_json(data)
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

