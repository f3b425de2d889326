"""A replay's report read for its page: absent while it runs, refused through a symlink,
reported (not raised) when it is not a report."""

from __future__ import annotations

from pathlib import Path

import msgspec

from kcd.api.types import ReplayReport
from kcd.viewer.replays import REPORT_FILE, load_report


def test_report_absent_written_corrupt_and_planted(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert load_report(run_dir) == (None, None)
    report = ReplayReport(recorded_run="a", replay_run="b", identical=True, turns_compared=1, calls_compared=1,
                          recorded_turns=1, replayed_turns=1, recorded_exit_reason=None, replayed_exit_reason=None,
                          workspace="recorded seed", responses_recorded=1, responses_served=1, normalised=[])
    (run_dir / REPORT_FILE).write_bytes(msgspec.json.encode(report))
    assert load_report(run_dir) == (report, None)
    (run_dir / REPORT_FILE).write_text('{"recorded_run": 5}')
    got, error = load_report(run_dir)
    assert got is None and error and "not a replay report" in error
    # a symlink in place of the report (to a file the viewer must not read) is not followed
    secret = tmp_path / "secret.json"
    secret.write_bytes(msgspec.json.encode(report))
    (run_dir / REPORT_FILE).unlink()
    (run_dir / REPORT_FILE).symlink_to(secret)
    got, error = load_report(run_dir)
    assert got is None and error and "symbolic link" in error
