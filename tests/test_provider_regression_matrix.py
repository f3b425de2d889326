"""The provider regression matrix, whole and offline, through a real daemon (docs/runbook.md §9).

`python scripts/run_regression_matrix.py` runs the same catalogue (configs/matrix/) against
the user's daemon; this test runs it against a private one and asserts every scenario passes.
"""

from __future__ import annotations

import json
import time

from tests.integration.conftest import REPO, kcd_root, make_kcd  # noqa: F401  (fixtures)


def test_every_offline_scenario_passes(make_kcd, tmp_path):  # noqa: F811
    daemon = make_kcd("--executor", "in-process")
    junit = tmp_path / "matrix.xml"
    started = time.monotonic()
    proc = daemon.kcctl("matrix", "--dir", str(REPO / "configs" / "matrix"), "--parallel", "4", "--json",
                        "--junit", str(junit), timeout=600)
    elapsed = time.monotonic() - started
    info = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None
    assert info is not None, proc.stdout + proc.stderr + daemon.log()[-3000:]
    failed = {r["name"]: r["reasons"] for r in info["results"] if r["verdict"] != "pass"}
    assert not failed, json.dumps(failed, indent=2)
    assert proc.returncode == 0 and info["status"] == "passed"
    assert info["summary"]["total"] >= 23 and junit.is_file()
    assert elapsed < 300, f"the offline matrix took {elapsed:.0f}s"
