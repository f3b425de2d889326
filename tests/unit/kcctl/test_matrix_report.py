"""Rendering matrix results: progress, table, failure diagnostics, JUnit XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import msgspec

from kcctl import matrix_report as report
from kcd.matrix.types import Diagnostics, MatrixInfo, MatrixSummary, ScenarioResult, StepResult

FAILED = ScenarioResult(
    name="f04_unavailable_persistent", verdict="fail", grade="pass", description="503 on every call",
    reasons=["no artifact matches 'x/*'"], route_used="openai/gpt-4o-mini", fallbacks=2, seconds=0.4,
    run_dirs=["/runs/r1"],
    steps=[StepResult(verdict="fail", grade="pass", reasons=["no artifact matches 'x/*'"], run_id="r1",
                      run_dir="/runs/r1", exit_reason="mark_task_complete", completed=True,
                      served_route="openai/gpt-4o-mini", fallbacks=2, seconds=0.4,
                      diagnostics=Diagnostics(
                          markers=["[fallback_route] from=openrouter/x-ai/grok-4-fast to=openai/gpt-4o-mini"],
                          fallbacks=[{"from": "openrouter/x-ai/grok-4-fast", "to": "openai/gpt-4o-mini",
                                      "reason": "http_error"}],
                          stream_overrides=[{"route": "openrouter/x-ai/grok-4-fast", "reason": "stream_truncated"}],
                          attempt_errors=["turn 1 attempt 1 openrouter/x-ai/grok-4-fast: http_error (HTTP 503)"],
                          upstream={"x-ai/grok-4-fast": 3}, breaker={"openrouter/x-ai/grok-4-fast": "closed"}))])
PASSED = ScenarioResult(name="f03_server_error_once", verdict="pass", grade="pass",
                        route_used="openrouter/x-ai/grok-4-fast", seconds=0.1, run_dirs=["/runs/r2"])
SKIPPED = ScenarioResult(name="live_openai_direct", verdict="skip", live=True,
                         reasons=["OPENAI_API_KEY not set in kcd's environment"])
INFO = msgspec.to_builtins(MatrixInfo(
    id="mx-1", status="failed", created_at="2026-01-01T00:00:00Z", parallel=4, live=False,
    scenarios=["f03_server_error_once", "f04_unavailable_persistent", "live_openai_direct"],
    results=[FAILED, PASSED, SKIPPED],
    summary=MatrixSummary(total=3, passed=1, failed=1, skipped=1, grades={"pass": 2, "partial": 0, "safe": 0,
                                                                          "fail": 0}, seconds=1.5)))


def test_progress_and_result_lines():
    done = INFO["results"][:2]
    assert report.progress(done, 40, 4) == "[2/40] running 4… pass 1 fail 1"
    assert report.progress(INFO["results"], 3, 0) == "[3/3] done pass 1 fail 1 skip 1"
    assert report.result_line(1, 3, INFO["results"][1]) == "[1/3] pass f03_server_error_once (pass) 0.1s"


def test_table_is_in_catalogue_order_with_the_issue_columns():
    lines = report.table(INFO).splitlines()
    assert lines[0].split() == ["SCENARIO", "OUTCOME", "GRADE", "ROUTE", "USED", "FALLBACKS", "TIME"]
    assert [line.split()[0] for line in lines[1:]] == INFO["scenarios"]
    assert lines[2].split()[1:] == ["FAIL", "pass", "openai/gpt-4o-mini", "2", "0.4s"]


def test_details_show_stream_and_fallback_diagnostics_and_the_run_dir():
    text = report.details(INFO["results"][0])
    for words in ("✗ f04_unavailable_persistent", "no artifact matches", "markers:", "[fallback_route] from=",
                  "stream overrides: openrouter/x-ai/grok-4-fast (stream_truncated)",
                  "fallbacks:        openrouter/x-ai/grok-4-fast -> openai/gpt-4o-mini (http_error)",
                  "http_error (HTTP 503)", "upstream calls:   x-ai/grok-4-fast=3", "run dir:          /runs/r1"):
        assert words in text, words
    assert "skipped" in report.details(INFO["results"][2])


def test_summary_line_has_the_scorecard():
    line = report.summary_line(INFO)
    assert "3 scenarios: 1 passed, 1 failed, 1 skipped" in line
    assert "scorecard pass 2 / partial 0 / safe 0 / fail 0" in line


def test_junit_parses_and_counts():
    suite = ET.fromstring(report.junit_xml(INFO))
    assert suite.tag == "testsuite" and suite.get("tests") == "3"
    assert suite.get("failures") == "1" and suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == set(INFO["scenarios"])
    failure = cases["f04_unavailable_persistent"].find("failure")
    assert failure is not None and "no artifact matches" in failure.get("message")
    assert "run dir:" in failure.text
    assert cases["live_openai_direct"].find("skipped") is not None
    assert cases["f03_server_error_once"].find("failure") is None


# What kcctl may import of kcd (docs/architecture.md §7): the wire types, and the two
# stdlib-only modules it shares with the daemon (workspace archives, checking a bundle).
KCCTL_MAY_IMPORT = ("kcd.api", "kcd.workspaces.archive", "kcd.bundles.check")


def test_kcctl_imports_nothing_of_kcd_but_its_api():
    # The layering rule (docs/architecture.md): kcctl depends on kcd.api (and the modules above)
    # only, lazy imports included.
    import ast

    root = Path(__file__).resolve().parents[3] / "kcctl"
    bad = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if (name.split(".")[0] == "kcd" and name != "kcd"
                        and not any(name == ok or name.startswith(ok + ".") for ok in KCCTL_MAY_IMPORT)):
                    bad.append(f"{path.relative_to(root)}:{node.lineno} {name}")
    assert not bad, bad
