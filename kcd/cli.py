"""`kcd`: run the daemon (`kcd serve`, the default) or the provider simulator."""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
from pathlib import Path

import click


@click.group(invoke_without_command=True)
@click.pass_context
def main(ctx: click.Context) -> None:
    """KyleCode daemon."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="daemon config (YAML)")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="control socket path")
@click.option("--system", is_flag=True, help="system mode (/run/kylecode, /var/lib/kylecode)")
@click.option("--state-dir", type=click.Path(path_type=Path))
@click.option("--runs-root", type=click.Path(path_type=Path))
@click.option("--executor", type=click.Choice(["ray", "in-process"]))
@click.option("--ray-address", help="connect to an existing Ray cluster (host:port)")
@click.option("--max-body-bytes", type=int)
@click.option("--heartbeat", "heartbeat_s", type=float)
@click.option("--idle-exit", "idle_exit_s", type=float, help="exit after N idle seconds (auto-start)")
@click.option("--log-level", default=None)
def serve(config_path, socket_path, system, state_dir, runs_root, executor, ray_address,
          max_body_bytes, heartbeat_s, idle_exit_s, log_level) -> None:
    """Run the daemon in the foreground."""
    from kcd.sandbox.keys import restart_without_secrets

    # Provider keys leave the process environment before anything else runs (kcd.sandbox.keys).
    secrets = restart_without_secrets()
    env = {**os.environ, **secrets}
    from kcd.sandbox.linux import Libc

    Libc().set_dumpable(False)
    import anyio

    from kcd.config.daemon import DaemonConfigError, load_daemon_config
    from kcd.daemon import Daemon
    from kcd.server.listener import SocketInUse, loop_options

    overrides = {"socket": socket_path, "state_dir": state_dir, "runs_root": runs_root,
                 "executor": executor, "ray_address": ray_address, "max_body_bytes": max_body_bytes,
                 "heartbeat_s": heartbeat_s, "idle_exit_s": idle_exit_s, "log_level": log_level,
                 "mode": "system" if system else None}
    try:
        config = load_daemon_config(config_path, env, overrides)
    except DaemonConfigError as exc:
        click.echo(f"kcd: invalid configuration: {exc}", err=True)
        sys.exit(2)
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A native crash (SIGSEGV, SIGABRT) then leaves every thread's Python stack in the journal.
    faulthandler.enable(sys.stderr, all_threads=True)
    from kcd.api.paths import SocketPathError
    from kcd.sandbox.modes import IsolationUnavailable

    try:
        anyio.run(Daemon(config, env).run, backend="asyncio", backend_options=loop_options())
    except SocketInUse as exc:
        click.echo(f"kcd: {exc}", err=True)
        sys.exit(1)
    except IsolationUnavailable as exc:
        click.echo(f"kcd: cannot contain tool commands: {exc}", err=True)
        sys.exit(2)
    except SocketPathError as exc:
        click.echo(f"kcd: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True, type=int)
def simulate(host: str, port: int) -> None:
    """Run the OpenAI-compatible provider simulator alone."""
    from kcd.simulator.server import run_standalone

    run_standalone(port, host=host)


if __name__ == "__main__":
    main()
