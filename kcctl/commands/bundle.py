"""`kcctl bundle`: a run's scrubbed vendor bundle for a provider's support team."""

from __future__ import annotations

from pathlib import Path

import click

from kcctl.bundles import BUNDLE_PREFIX, get_bundle_or_exit, redaction_line, write_file
from kcctl.commands.common import Ctx, guard


@click.command()
@click.argument("run")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="where to write the zip (default: ./<run dir name>_vendor_bundle.zip)")
@click.option("--with-matrix", "matrix_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="a matrix result (JSON or JUnit) to include under matrix/; repeatable")
@click.pass_obj
@guard
def bundle(obj: Ctx, run: str, out: Path | None, matrix_files: tuple[Path, ...]) -> None:
    """Build RUN's vendor bundle for a provider's support team.

    RUN is a run id, or a run directory under the daemon's runs root (anything resolving
    outside it is refused). The zip holds an allow-list of the run's evidence, scrubbed of
    secret values, local paths and user names, with MANIFEST.json (size and sha256 of every
    file, redaction report) and SUMMARY.md. Exit codes: 0 written, 1 refused (a secret would
    remain, or too large), 2 no such run or a path outside the runs root, 3 kcd unreachable.
    """
    name, data, manifest = get_bundle_or_exit(obj, run, matrix_files)
    target = out or Path(name)
    write_file(target, data)
    click.echo(f"{BUNDLE_PREFIX} Wrote {target}")
    click.echo(redaction_line(manifest))
