#!/usr/bin/env python3
"""Run the provider regression matrix (runbook §4): `kcctl matrix` with the catalogue in
configs/matrix/, through the daemon (a user-mode kcd is started if none answers).

    python scripts/run_regression_matrix.py                  # every offline scenario
    python scripts/run_regression_matrix.py --junit out.xml  # any `kcctl matrix` option passes through
    python scripts/run_regression_matrix.py --live           # the live scenarios (keys from kcd's env)

Prints `[regression-matrix] Running <cmd>` and returns kcctl's exit code (0: every scenario
passed, 1: a scenario failed, 2: a scenario file does not load, 3: kcd unreachable).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    cmd = [sys.executable, "-m", "kcctl.cli", "matrix", "--dir", str(REPO / "configs" / "matrix"), *argv]
    print(f"[regression-matrix] Running {shlex.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=REPO)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
