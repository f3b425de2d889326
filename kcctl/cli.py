"""kcctl: the command-line client of kcd.

The root group loads each command's module (`kcctl.commands.<name>`) only when that
command runs, and lists commands for `kcctl --help` from the table below, so a short
command pays for the imports it needs and `--help` for almost none: start-up is most of
a warm `kcctl` call's wall time (docs/benchmarks.md §1).

Exit codes: 0 success (a run that completed), 1 a run that ended without completing,
2 usage or config errors, 3 the daemon is unreachable or died while answering (a
followed run's stream cut off by a crash), 4 `kcctl replay`: the replay diverged.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from kcctl.commands.common import Ctx

# name: one-line help for `kcctl --help`. Each command is the object of the same name in
# kcctl.commands.<name>; tests/unit/kcctl/test_kcctl_startup.py checks this table against them.
COMMANDS: dict[str, str] = {
    "bundle": "Build RUN's vendor bundle for a provider's support team.",
    "config": "Agent configs.",
    "daemon": "Start or stop a user-mode daemon.",
    "incident": "The runbook's incident checklist as one command.",
    "matrix": "Run the provider regression matrix through the daemon.",
    "metrics": "The daemon's live metrics (Prometheus text); `metrics export` summarises telemetry files.",
    "probes": "Capability probe results per route (streaming, native tools, JSON mode) and their age.",
    "replay": "Re-run a recorded run offline and report where tool results diverge.",
    "routes": "Circuit breakers per route: state, recent failures, lockout left, last error.",
    "run": "Start an agent run and stream its progress.",
    "runs": "Inspect and control runs.",
    "status": "Show the daemon's health.",
    "view": "Print a link to the run viewer (the runs list, or RUN's page).",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return getattr(importlib.import_module(f"kcctl.commands.{cmd_name}"), cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own version imports every command for its short help; the table has it.
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        rows = [(name, click.Command(name, help=text).get_short_help_str(limit))
                for name, text in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _terminal_width() -> int:
    """What shutil.get_terminal_size() says, without importing shutil (and through it bz2,
    lzma and fnmatch) on every `--help`: click only needs the width."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


@click.group(cls=LazyGroup, context_settings={"terminal_width": max(min(_terminal_width(), 80) - 2, 50)})
@click.option("--socket", envvar=None, help="control socket path (default: KYLECODE_HOST, then the user "
              "socket, then /run/kylecode/kcd.sock)")
@click.option("--no-autostart", is_flag=True, help="never start a user-mode kcd when none answers")
@click.version_option(package_name="kylecode", prog_name="kcctl")
@click.pass_context
def main(ctx: click.Context, socket: str | None, no_autostart: bool) -> None:
    """Control the KyleCode daemon."""
    ctx.obj = Ctx(socket, not no_autostart)


if __name__ == "__main__":
    main()
