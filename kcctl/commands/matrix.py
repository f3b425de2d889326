"""`kcctl matrix`: the provider regression matrix, run by the daemon.

The daemon runs the scenarios (POST /v1/matrix) as real runs against its simulator and
judges them from their run directories; the client sends the scenario files, follows the
NDJSON events and renders (kcctl.matrix_report: stdlib only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kcctl.commands.common import EXIT_NOT_COMPLETED, EXIT_OK, Ctx, guard, print_json

if TYPE_CHECKING:
    from kcctl.client import Client


MATRIX_DIR = Path("configs") / "matrix"


def scenario_files(paths: list[Path]) -> list[dict[str, str]]:
    """Scenario files as a MatrixRequest carries them: the text, and the path that anchors
    the scenario's relative references."""
    return [{"text": p.read_text(encoding="utf-8"), "path": str(p.resolve())} for p in paths]


def matrix_files(files: tuple[Path, ...], directory: Path | None) -> list[Path]:
    if files:
        return list(files)
    candidates = [directory] if directory else [MATRIX_DIR, Path(__file__).resolve().parents[2] / MATRIX_DIR]
    for d in candidates:
        if d.is_dir():
            found = sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
            if found:
                return found
    raise click.UsageError(f"no scenario files in {' or '.join(map(str, candidates))}; use --dir or --config")


@click.command()
@click.option("--scenario", "--only", "-s", "names", multiple=True, metavar="NAME",
              help="run only this scenario (fnmatch patterns allowed); repeatable")
@click.option("--config", "files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              metavar="FILE", help="a scenario YAML or plan JSON to run instead of the catalogue; repeatable")
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="catalogue directory (default: configs/matrix)")
@click.option("--live", is_flag=True, help="run the live scenarios on real providers (keys from kcd's "
              "environment); scenarios whose keys are missing are skipped")
@click.option("--parallel", "-j", type=click.IntRange(1, 32), default=4, show_default=True,
              help="scenarios run at once")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON on stdout")
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="write JUnit XML to FILE")
@click.option("--list", "list_only", is_flag=True, help="load and check the scenarios, list them, run nothing")
@click.pass_obj
@guard
def matrix(obj: Ctx, names: tuple[str, ...], files: tuple[Path, ...], directory: Path | None, live: bool,
           parallel: int, as_json: bool, junit: Path | None, list_only: bool) -> None:
    """Run the provider regression matrix through the daemon.

    Every scenario (configs/matrix/*.yaml, plus the plan file's grid) is a real run
    against kcd's fault-injecting simulator, several at a time. Prints a progress line,
    then a table (scenario, outcome, route used, fallbacks, time) and, for failures, the
    stream and fallback diagnostics and the run directory. Exit codes: 0 every scenario
    passed (skips allowed), 1 a scenario failed or the matrix was cancelled, 2 a scenario
    file does not load or no scenario matches, 3 kcd unreachable.
    """
    from kcctl import matrix_report as report

    sources = matrix_files(files, directory)
    body = {"files": scenario_files(sources),
            "scenarios": list(names), "parallel": parallel, "live": live, "dry_run": list_only}
    with obj.client() as client:
        info = client.call("POST", "/v1/matrix", body)
        if list_only:
            if as_json:
                print_json(info)
            else:
                for name in info["scenarios"]:
                    click.echo(f"{name:<44} {info['descriptions'].get(name, '')}")
            return
        total = len(info["scenarios"])
        click.echo(f"[regression-matrix] {info['id']}: {total} {'live ' if live else ''}scenario(s), "
                   f"{parallel} at a time", err=True)
        try:
            final = _follow_matrix(client, info["id"], total)
        except KeyboardInterrupt:
            client.call("POST", f"/v1/matrix/{info['id']}/cancel")
            click.echo(f"\nmatrix {info['id']} cancelled", err=True)
            sys.exit(130)
    if junit is not None:
        junit.write_text(report.junit_xml(final), encoding="utf-8")
    if as_json:
        print_json(final)
    else:
        click.echo(report.table(final))
        for r in final["results"]:
            if r["verdict"] != "pass":
                click.echo("\n" + report.details(r))
        click.echo("\n" + report.summary_line(final))
    if junit is not None:
        click.echo(f"[regression-matrix] JUnit XML: {junit}", err=True)
    sys.exit(EXIT_OK if final["status"] == "passed" else EXIT_NOT_COMPLETED)


def _follow_matrix(client: Client, matrix_id: str, total: int) -> dict:
    """Follow the matrix's events with a progress line; returns the final MatrixInfo."""
    from kcctl import matrix_report as report

    tty = sys.stderr.isatty()
    done: list[dict] = []
    running = 0
    for line in client.stream_lines(f"/v1/matrix/{matrix_id}/events", {"follow": "1"}):
        event = json.loads(line)
        kind, data = event.get("type"), event.get("data") or {}
        if kind == "scenario.start":
            running += 1
        elif kind == "scenario.end":
            running -= 1
            done.append(data["result"])
            if not tty:
                click.echo(report.result_line(len(done), total, data["result"]), err=True)
        elif kind == "matrix.end":
            if tty:
                click.echo("\r" + report.progress(done, total, 0) + "\033[K", err=True)
            return data["info"]
        if tty and kind in ("scenario.start", "scenario.end"):
            click.echo("\r" + report.progress(done, total, running) + "\033[K", err=True, nl=False)
    return client.call("GET", f"/v1/matrix/{matrix_id}")  # the stream ended early: ask for the state
