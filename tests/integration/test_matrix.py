"""`kcctl matrix` end to end: a real daemon, its embedded simulator over loopback HTTP,
scenarios run as real runs, judged by the daemon, rendered by kcctl."""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import REPO

MATRIX = REPO / "configs" / "matrix"


def matrix(daemon, *args: str, timeout: float = 300):
    return daemon.kcctl("matrix", *args, timeout=timeout)


@pytest.fixture
def mkcd(make_kcd):
    return make_kcd("--executor", "in-process")


def test_selected_scenarios_pass_with_json_and_junit(mkcd, tmp_path):
    junit = tmp_path / "matrix.xml"
    names = ["f04_unavailable_persistent", "openrouter_streaming_fallback", "breaker_open_half_open_close",
             "plan_openai_direct_stream_tools"]
    proc = matrix(mkcd, *[a for n in names for a in ("--scenario", n)], "--json", "--junit", str(junit))
    assert proc.returncode == 0, proc.stdout + proc.stderr + mkcd.log()[-3000:]
    info = json.loads(proc.stdout)
    assert info["status"] == "passed" and sorted(info["scenarios"]) == sorted(names)
    results = {r["name"]: r for r in info["results"]}
    assert all(r["verdict"] == "pass" for r in results.values()), results
    f04 = results["f04_unavailable_persistent"]
    assert f04["route_used"] == "openai/gpt-4o-mini" and f04["fallbacks"] >= 1
    run_dir = Path(f04["run_dirs"][0])
    assert (run_dir / "errors" / "turn_1.json").is_file() and (run_dir / "result.json").is_file()
    assert len(results["breaker_open_half_open_close"]["steps"]) == 3
    assert results["breaker_open_half_open_close"]["seconds"] >= 2.0  # the cooldown wait counts
    assert "[4/4]" in proc.stderr  # progress, one line per scenario when stderr is not a terminal
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "0"
    # The runs are ordinary runs of the daemon.
    with mkcd.http() as c:
        run = c.get(f"/v1/runs/{f04['steps'][0]['run_id']}").json()
    assert run["status"] == "completed" and run["run_dir"] == str(run_dir)


def test_injected_faults_never_touch_the_daemons_own_breakers_or_probes(mkcd):
    # F30 opens grok's breaker for an hour and F24 fails a probe, but in the scenario's sandbox.
    proc = matrix(mkcd, "-s", "f30_huge_retry_after", "-s", "f24_tool_stripping", "-s", "f01_*")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with mkcd.http() as c:
        assert c.get("/v1/routes").json()["routes"] == {}
        assert c.get("/v1/probes").json()["probes"] == []
        namespaces = c.get("/v1/simulator").json()
        sim = namespaces["control_url"]
    import httpx

    left = httpx.get(f"{sim}/namespaces", timeout=10).json()["namespaces"]
    assert left == []  # every scenario dropped its simulator namespace


def test_a_failing_scenario_exits_1_with_diagnostics(mkcd, tmp_path):
    bad = tmp_path / "wrong_expectation.yaml"
    bad.write_text("""
name: wrong_expectation
description: F04 with an expectation that cannot hold (the primary never serves).
routes: {primary: openrouter/x-ai/grok-4-fast, fallbacks: [openai/gpt-4o-mini]}
fault: {route: primary, name: unavailable_persistent}
expect:
  served_route: primary
  fallbacks_max: 0
""")
    junit = tmp_path / "out.xml"
    proc = matrix(mkcd, "--config", str(bad), "--junit", str(junit))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "wrong_expectation" in out and "FAIL" in out
    for words in ("✗ wrong_expectation", "served_route is 'openai/gpt-4o-mini', expected "
                  "'openrouter/x-ai/grok-4-fast'",
                  "fallbacks:        openrouter/x-ai/grok-4-fast -> openai/gpt-4o-mini",
                  "failed attempts:  turn 1 attempt 1 openrouter/x-ai/grok-4-fast: http_error (HTTP 503)",
                  "markers:          [tool-policy]", "run dir:", "1 failed"):
        assert words in out, words
    run_dir = out.split("run dir:", 1)[1].split()[0]
    assert Path(run_dir, "conversation", "conversation.md").is_file()
    failure = ET.parse(junit).getroot().find("testcase/failure")
    assert failure is not None and "served_route" in failure.get("message")


def test_a_scenario_file_that_does_not_load_is_a_usage_error(mkcd, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nroutes: {primary: openai/gpt-4o-mini}\nexpect: {fallbacks_min: lots}\n")
    proc = matrix(mkcd, "--config", str(bad))
    assert proc.returncode == 2
    assert f"{bad}: $.expect.fallbacks_min: Expected `int" in proc.stderr
    proc = matrix(mkcd, "--scenario", "no_such_scenario")
    assert proc.returncode == 2 and "no scenario matches 'no_such_scenario'" in proc.stderr


def test_live_without_keys_skips_clearly(make_kcd):
    daemon = make_kcd("--executor", "in-process", env_extra={"OPENAI_API_KEY": "", "OPENROUTER_API_KEY": ""})
    proc = matrix(daemon, "--live")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "live_openai_direct skipped" in proc.stdout
    assert "OPENAI_API_KEY not set in kcd's environment" in proc.stdout
    assert "OPENROUTER_API_KEY not set in kcd's environment" in proc.stdout
    assert "0 failed, 2 skipped" in proc.stdout
    listed = matrix(daemon, "--list")
    assert "live_openai_direct" not in listed.stdout and "f04_unavailable_persistent" in listed.stdout


def _cancelled(c, files: list[dict], after_s: float) -> tuple[list[dict], dict, float]:
    info = c.post("/v1/matrix", json={"files": files, "parallel": 2}).json()
    time.sleep(after_s)
    assert c.post(f"/v1/matrix/{info['id']}/cancel").status_code == 202
    cancelled = time.monotonic()
    events = [json.loads(line) for line in
              c.get(f"/v1/matrix/{info['id']}/events", params={"follow": "1"}).text.splitlines()]
    return events, c.get(f"/v1/matrix/{info['id']}").json(), time.monotonic() - cancelled


def test_cancel_finalises_the_runs_and_leaves_the_simulator_working(mkcd):
    files = [{"text": (MATRIX / f"{n}.yaml").read_text(), "path": str(MATRIX / f"{n}.yaml")}
             for n in ("f08_no_response", "f31_slow_trickle")]
    with mkcd.http(timeout=120) as c:
        # At once: the simulator is still starting (a regression: it was left unable to accept).
        _, first, _ = _cancelled(c, files, 0.0)
        events, final, ended_after = _cancelled(c, files, 1.0)  # runs in flight
        runs = c.get("/v1/runs").json()["runs"]
    assert first["status"] == "cancelled"
    assert ended_after < 30, f"matrix.end came {ended_after:.1f}s after the cancel\n{mkcd.log()[-3000:]}"
    assert events[0]["type"] == "matrix.start" and events[-1]["type"] == "matrix.end"
    assert final["status"] == "cancelled" and {r["verdict"] for r in final["results"]} == {"fail"}
    assert runs and all(r["status"] in ("cancelled", "completed", "failed") for r in runs), runs
    proc = matrix(mkcd, "-s", "f03_server_error_once")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_scenario_runs_keep_their_telemetry_out_of_the_central_file(make_kcd, kcd_root):
    # Faults injected on purpose are not production evidence: each scenario run has its own
    # meta/telemetry.jsonl, and the central file the exporter reads has none of their lines.
    central = kcd_root / "central.jsonl"
    daemon = make_kcd("--executor", "in-process", env_extra={"RAYCODE_TELEMETRY_PATH": str(central)})
    proc = matrix(daemon, "-s", "f04_unavailable_persistent", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    run_dir = Path(result["run_dirs"][0])
    own = [json.loads(line) for line in (run_dir / "meta" / "telemetry.jsonl").read_text().splitlines()]
    assert {e["event"] for e in own} >= {"run.start", "llm.attempt", "run.end"}
    assert daemon.stop() == 0  # flushes both sinks
    run_ids = {e["run_id"] for e in own}
    central_lines = central.read_text().splitlines() if central.exists() else []
    assert not [line for line in central_lines if any(r in line for r in run_ids)]
