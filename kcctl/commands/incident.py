"""`kcctl incident`: the runbook's incident checklist as one command (bundle, metrics
summary, matrix rerun, a README saying what to attach)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from kcctl.bundles import BUNDLE_PREFIX, BundleFailed, get_bundle, get_bundle_or_exit, redaction_line, write_file
from kcctl.commands.common import EXIT_NOT_COMPLETED, EXIT_OK, Ctx, fail, guard
from kcctl.commands.matrix import matrix as matrix_command
from kcctl.commands.matrix import matrix_files, scenario_files
from kcctl.errors import DaemonError


class _Piece:
    """One deliverable of `kcctl incident` and how it went."""

    def __init__(self, title: str, status: str, files: list[str], detail: str):
        self.title, self.status, self.files, self.detail = title, status, files, detail

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _zip_member(data: bytes, name: str) -> bytes | None:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        try:
            return zf.read(name)
        except KeyError:
            return None


def _run_routes(data: bytes) -> list[str]:
    """Every route the run touched: its primary, every metered route, every fallback end."""
    routes: set[str] = set()
    for member in ("meta/run.json", "meta/provider_metrics.json", "result.json"):
        try:
            doc = json.loads(_zip_member(data, member) or b"{}")
        except (ValueError, RecursionError):
            continue
        if not isinstance(doc, dict):
            continue
        routes.update(r for r in (doc.get("route"), doc.get("served_route")) if isinstance(r, str))
        metered = doc.get("routes")
        if isinstance(metered, dict):
            routes.update(r for r in metered if isinstance(r, str))
        for fb in doc.get("fallbacks") or []:
            if isinstance(fb, dict):
                routes.update(r for r in (fb.get("from"), fb.get("to")) if isinstance(r, str))
    return sorted(routes)


def _incident_metrics(data: bytes, manifest: dict, folder: Path) -> _Piece:
    """incident_metrics.json: the exporter's summary of the run's telemetry lines, taken from
    the bundle the daemon sent (so scrubbed and limited to this run)."""
    import tempfile

    from kcctl import export  # the exporter only when this piece is made

    title, target = "metrics summary", folder / "incident_metrics.json"
    lines = _zip_member(data, "meta/telemetry.jsonl")
    if not lines:
        return _Piece(title, "failed", [], "the run has no telemetry lines (meta/telemetry.jsonl)")
    messages: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "telemetry.jsonl"
        source.write_bytes(lines)
        with open(target, "wb") as fh:
            code = export.run_export(source, export.Options(fmt="summary"), out=fh, err=messages.append)
    if code != export.EXIT_OK:
        target.unlink(missing_ok=True)
        return _Piece(title, "failed", [], "; ".join(messages) or f"the exporter exited {code}")
    row = next((f for f in manifest["files"] if f["path"] == "meta/telemetry.jsonl"), {})
    note = " (telemetry truncated by the bundle's per-file cap: partial)" if row.get("truncated") else ""
    summary = json.loads(target.read_bytes())
    return _Piece(title, "ok", [target.name], f"{summary['calls']} calls, {summary['errors']} errors, "
                  f"{summary['html_errors']} HTML errors, {summary['fallbacks']} fallbacks{note}")


def _incident_readme(run_name: str, manifest: dict, routes: list[str], pieces: list[_Piece],
                     summary_md: str) -> str:
    rows = "\n".join(f"| {p.title} | {p.status} | {', '.join(f'`{f}`' for f in p.files) or '-'} | {p.detail} |"
                     for p in pieces)
    attach = [f"`{f}`" for p in pieces if not p.failed for f in p.files]
    return "\n".join([
        f"# Incident: run {manifest.get('run_id') or run_name}", "",
        f"Made by `kcctl incident` (KyleCode {manifest['kylecode_version']}) from run directory `{run_name}`.",
        f"Routes the run used: {', '.join(f'`{r}`' for r in routes) or '-'}.", "",
        "| Piece | Status | Files | Detail |", "|---|---|---|---|", rows, "",
        "## Attach to the ticket", "",
        *(f"{i}. {f}" for i, f in enumerate(attach, 1)),
        f"{len(attach) + 1}. Paste the summary below (SUMMARY.md from the bundle) into the ticket body.", "",
        "The bundle is scrubbed (secret values, local paths, user names); its MANIFEST.json lists every",
        "file with its size and sha256 and a redaction report.", "",
        "---", "", summary_md])


@click.command()
@click.argument("run")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="folder to write (default: ./incident_<run dir name>); must be new or empty. With "
                   "--scenario: the folder for NAME.yaml (default: ./configs/matrix)")
@click.option("--require-matrix", is_flag=True,
              help="fail unless the matrix rerun ran (by default an unavailable or empty rerun is reported only)")
@click.option("--scenario", "scenario_name", metavar="NAME",
              help="instead: write a regression scenario NAME.yaml ([a-z0-9_]+) that replays the run's "
                   "provider behaviour on the simulator, for `kcctl matrix --only NAME`")
@click.option("--expect-outcome", type=click.Choice(["recorded", "fixed"]),
              help="with --scenario, for a failed run: `fixed` (default) expects the run to complete, so the "
                   "scenario fails until the bug is fixed; `recorded` expects the recorded failure")
@click.option("--force", is_flag=True, help="with --scenario: overwrite an existing NAME.yaml")
@click.pass_context
@guard
def incident(ctx: click.Context, run: str, out: Path | None, require_matrix: bool, scenario_name: str | None,
             expect_outcome: str | None, force: bool) -> None:
    """The runbook's incident checklist as one command.

    Writes into one folder: the run's vendor bundle, incident_metrics.json (the telemetry
    summary export), matrix/ (results.json and junit.xml of a rerun of the regression
    scenarios whose routes the run used; also inside the bundle), and README.md saying
    what to attach to the ticket. Failing scenarios are a finding (the problem reproduces
    under the harness), not a failure of this command. Exit codes: 0 every piece written,
    1 a piece could not be produced, 2 no such run or a path outside the runs root,
    3 kcd unreachable.

    With --scenario NAME it writes one file instead, <--out>/NAME.yaml: a matrix scenario
    that replays the run's provider responses per request (statuses, content types,
    scrubbed error bodies, stream cuts, delays, Retry-After; breakers that were already
    open) with expectations taken from the run. No prompt or request body goes in it.
    """
    if scenario_name is not None:
        _write_scenario(ctx.obj, run, scenario_name, out or Path("configs/matrix"), expect_outcome, force)
        return
    if expect_outcome is not None or force:
        raise click.UsageError("--expect-outcome and --force go with --scenario")
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.UsageError(f"{out} exists and is not an empty directory")
    name, data, manifest = get_bundle_or_exit(ctx.obj, run)
    folder = out or Path(f"incident_{manifest['run']}")
    if out is None and folder.exists() and any(folder.iterdir()):
        raise click.UsageError(f"{folder} exists and is not empty; choose another with --out")
    routes = _run_routes(data)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = _incident_metrics(data, manifest, folder)
    matrix_piece, data, manifest = _incident_matrix(ctx, run, routes, folder, data, manifest, require_matrix)
    write_file(folder / name, data)  # with the matrix results inside when the rerun ran
    pieces = [_Piece("vendor bundle", "ok", [name], redaction_line(manifest)[len(BUNDLE_PREFIX) + 1:]),
              metrics, matrix_piece]
    summary_md = (_zip_member(data, "SUMMARY.md") or b"").decode("utf-8", "replace")
    (folder / "README.md").write_text(_incident_readme(manifest["run"], manifest, routes, pieces, summary_md),
                                      encoding="utf-8")
    click.echo(f"[incident] {folder}/")
    for p in pieces:
        click.echo(f"[incident] {p.title}: {p.status}: {p.detail}")
    click.echo("[incident] attach to the ticket:")
    for f in (f for p in pieces if not p.failed for f in p.files):
        click.echo(f"  {folder / f}")
    click.echo(f"  and paste the summary in {folder / 'README.md'} (the bundle's SUMMARY.md) into the ticket body")
    sys.exit(EXIT_NOT_COMPLETED if any(p.failed for p in pieces) else EXIT_OK)


def _write_scenario(obj: Ctx, run: str, name: str, folder: Path, outcome: str | None, force: bool) -> None:
    """Ask kcd for the scenario (it reads and scrubs the run), then write it here."""
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9_]{0,79}", name):
        raise click.UsageError(f"scenario name {name!r}: use lower-case letters, digits and _ (at most 80), "
                               "starting with a letter or digit")
    target = folder / f"{name}.yaml"
    if target.exists() and not force:
        raise click.UsageError(f"{target} exists; pass --force to overwrite it")
    if folder.exists() and not folder.is_dir():
        raise click.UsageError(f"{folder} is not a directory")
    with obj.client() as client:
        made = client.call("POST", "/v1/scenarios/from-run", {"run": run, "name": name, "expect_outcome": outcome})
    folder.mkdir(parents=True, exist_ok=True)
    write_file(target, made["text"].encode("utf-8"))
    click.echo(f"[scenario] {target}")
    click.echo(f"[scenario] from run {made['run_id']}; expected outcome: {made['expect_outcome']}")
    for line in made["summary"]:
        click.echo(f"  {line}")
    click.echo(f"[scenario] run it: kcctl matrix --only {name}"
               + ("" if folder.resolve() == Path("configs/matrix").resolve() else f" --dir {folder}"))


def _matrix_selection(obj: Ctx, routes: list[str]) -> list[str]:
    """Offline scenarios of `kcctl matrix`'s default catalogue whose route chain meets `routes`:
    a dry run of the matrix, selected by kcd (it loads the scenarios and knows their chains).
    Raises click.UsageError (no catalogue) or DaemonError."""
    files = scenario_files(matrix_files((), None))
    try:
        with obj.client() as client:
            info = client.call("POST", "/v1/matrix", {"files": files, "routes": routes, "dry_run": True})
    except DaemonError as exc:
        if exc.code == "no_scenario":
            return []
        raise
    return list(info["scenarios"])


def _run_matrix(ctx: click.Context, names: list[str], workdir: Path) -> tuple[int, str]:
    """`kcctl matrix --scenario N... --json --junit FILE` in this process: (exit code, stdout)."""
    import contextlib
    import io

    command = matrix_command
    args = [a for n in names for a in ("--scenario", n)] + ["--json", "--junit", str(workdir / "junit.xml")]
    out = io.StringIO()
    code = EXIT_OK
    try:
        with contextlib.redirect_stdout(out), command.make_context("matrix", args, parent=ctx) as sub:
            command.invoke(sub)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else EXIT_NOT_COMPLETED
    return code, out.getvalue()


def _incident_matrix(ctx: click.Context, run: str, routes: list[str], folder: Path, data: bytes, manifest: dict,
                     require: bool) -> tuple[_Piece, bytes, dict]:
    """Rerun the scenarios for the run's routes; their results come back scrubbed by kcd inside
    a rebuilt bundle (they name daemon paths), and are copied from it into matrix/.
    Returns the piece and the bundle to keep."""
    import tempfile

    title = "matrix rerun"

    def not_run(kind: str, why: str) -> tuple[_Piece, bytes, dict]:
        return _Piece(title, "failed" if require else kind, [], f"matrix: {kind} ({why})"), data, manifest

    try:
        names = _matrix_selection(ctx.obj, routes)
    except (click.UsageError, DaemonError, OSError) as exc:
        return not_run("unavailable", f"cannot load the scenario catalogue: {exc}")
    if not names:
        return not_run("skipped", f"no offline scenario uses {', '.join(routes) or 'the run’s routes'}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        code, stdout = _run_matrix(ctx, names, work)
        try:
            results = json.loads(stdout)
            status = results["status"]
        except (ValueError, KeyError, TypeError):
            return _Piece(title, "failed", [], f"kcctl matrix exited {code} without results"), data, manifest
        (work / "results.json").write_text(stdout, encoding="utf-8")
        outputs = tuple(p for p in (work / "results.json", work / "junit.xml") if p.is_file())
        try:
            name, data2, manifest2 = get_bundle(ctx.obj, run, outputs)
        except BundleFailed as exc:
            return _Piece(title, "failed", [], f"the results could not be scrubbed into the bundle: {exc}"), \
                data, manifest
    (folder / "matrix").mkdir(exist_ok=True)
    files = []
    for p in outputs:
        write_file(folder / "matrix" / p.name, _zip_member(data2, f"matrix/{p.name}") or b"")
        files.append(f"matrix/{p.name}")
    summary = results.get("summary") or {}
    failed = [r["name"] for r in results.get("results") or [] if r.get("verdict") == "fail"]
    if status == "cancelled":
        return _Piece(title, "failed", files, f"the matrix was cancelled ({len(names)} scenarios)"), data2, manifest2
    finding = (f"{len(failed)} failed: {', '.join(failed[:8])}{' …' if len(failed) > 8 else ''}: the problem "
               "reproduces under the harness" if failed else "all passed: it does not reproduce under the harness")
    return _Piece(title, "ok", files, f"{summary.get('total', len(names))} scenarios for {', '.join(routes)}, "
                  f"{summary.get('passed', '?')} passed, {finding}"), data2, manifest2
