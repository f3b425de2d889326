#!/usr/bin/env python3
"""Build a run's vendor bundle (the runbook's entry point for `kcctl bundle`).

    python scripts/build_vendor_bundle.py logging/<run> [-o out.zip] [--with-matrix FILE]

Prints `[vendor-bundle] Wrote <path>`. As in the original, the default output is
`<parent>/<run>_vendor_bundle.zip` next to the run directory (a run id: the current
directory), and a missing directory prints `[error] Logging directory not found: …` and
exits 1. The bundle itself is built by kcd, exactly as `kcctl bundle` builds it: an
allow-list, scrubbed, with MANIFEST.json and SUMMARY.md, and only for run directories
under kcd's runs root. `--extra` is refused: kcd bundles never take arbitrary paths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from kcctl import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="build_vendor_bundle.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("log_dir", help="the run directory (under kcd's runs root), or a run id")
    ap.add_argument("-o", "--out", type=Path, help="output zip (default: <parent>/<run>_vendor_bundle.zip)")
    ap.add_argument("--with-matrix", action="append", default=[], metavar="FILE",
                    help="a matrix result (JSON or JUnit) to include; repeatable")
    ap.add_argument("--extra", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--socket", help="kcd's control socket (default: as kcctl resolves it)")
    a = ap.parse_args(argv)
    if a.extra:
        print("[error] --extra is not supported: kcd bundles hold an allow-list of run files only", file=sys.stderr)
        return 2
    path = Path(a.log_dir)
    looks_like_path = "/" in a.log_dir or path.exists()
    if looks_like_path and not path.is_dir():
        print(f"[error] Logging directory not found: {a.log_dir}", file=sys.stderr)
        return 1
    out = a.out
    if out is None and looks_like_path:
        real = path.resolve()
        out = real.parent / f"{real.name}_vendor_bundle.zip"
    args = ["--socket", a.socket] if a.socket else []
    args += ["bundle", a.log_dir, *(["--out", str(out)] if out else [])]
    for name in a.with_matrix:
        args += ["--with-matrix", name]
    try:
        cli.main.main(args=args, prog_name="build_vendor_bundle.py")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
