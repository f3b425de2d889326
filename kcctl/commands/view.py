"""`kcctl view`: a login link to the run viewer that kcd serves."""

from __future__ import annotations

import click

from kcctl.commands.common import print_json, with_client


@click.command()
@click.argument("run", required=False)
@click.option("--open", "open_browser", is_flag=True, help="open the link in a browser, when there is one")
@click.option("--json", "as_json", is_flag=True, help="print {url, expires_in_s, run} as JSON")
@with_client
def view(client, run: str | None, open_browser: bool, as_json: bool) -> None:
    """Print a link to the run viewer (the runs list, or RUN's page).

    The link carries a one-time login token bound to your uid (open it within a couple of
    minutes; it becomes a browser session cookie) and points at kcd's loopback listener.
    You see your own runs; operators see every run. Exit codes: 0 printed, 1 refused (another
    user's run, the viewer turned off), 2 no such run, 3 kcd unreachable.
    """
    session = client.call("POST", "/v1/viewer/sessions", {"run": run} if run else {})
    if as_json:
        print_json(session)
    else:
        click.echo(session["url"])
    if open_browser:
        import webbrowser

        try:
            browser = webbrowser.get()
        except webbrowser.Error:
            click.echo("kcctl: no browser found here; open the link above yourself", err=True)
            return
        if not browser.open(session["url"]):
            click.echo("kcctl: the browser did not start; open the link above yourself", err=True)
