"""Telemetry, live metrics and redaction through the real daemon."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kcd.observe.redact import encoded_forms

from .conftest import CANARY_KEYS, CONFIGS
from .resilience_support import GROK, OPENAI_MINI, read_json, run_json, write_config

SEED = CONFIGS / "workspaces" / "c_project"
TASK = "@" + str(CONFIGS / "tasks" / "enumerate_workspace.md")


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("echo", [1, 2, 3, 4], ids=["verbatim", "base64", "spelled-out", "url-encoded"])
def test_canary_key_never_written_anywhere(make_kcd, sim, kcd_root, tmp_path, echo):
    sim.reset()
    central = kcd_root / "central" / "telemetry.jsonl"
    daemon = make_kcd("--executor", "in-process", env_extra={
        "OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base,
        "RAYCODE_TELEMETRY_PATH": str(central)})
    canary = CANARY_KEYS["OPENROUTER_API_KEY"]
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI])
    # The provider echoes the presented key in its error body (as some do), then
    # other faults follow: every path that records a failure sees the canary.
    sim.fault(GROK, "auth_401", 2, echo_key=echo)
    sim.fault(GROK, "html_502", 1)
    sim.fault(GROK, "stream_cut", 1)
    for _ in range(2):
        end, run_dir = run_json(daemon, cfg)
        assert end["data"]["completed"]
    assert any(r["status"] == 401 for r in sim.requests(GROK))
    evidence = [json.dumps(read_json(p)) for p in run_dir.parent.glob("*/errors/turn_*.json")]
    assert any("Incorrect API key provided" in e for e in evidence)  # the evidence is kept, scrubbed
    responses = []
    with daemon.http() as c:
        runs = c.get("/v1/runs").json()["runs"]
        responses.append(json.dumps(runs))
        for r in runs:
            responses.append(c.get(f"/v1/runs/{r['id']}").text)
            responses.append(c.get(f"/v1/runs/{r['id']}/events").text)
        for path in ("/v1/routes", "/v1/metrics", "/v1/health"):
            responses.append(c.get(path).text)
    assert daemon.stop() == 0
    forms = [canary.encode(), *(f.encode() for f in encoded_forms(canary))]
    spelled = re.compile(r"[\s.,_:;|/\\-]{1,3}".join(re.escape(c) for c in canary).encode())
    leaks = []
    for path in kcd_root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if any(form in data for form in forms) or spelled.search(data):
            leaks.append(str(path))
        if path.suffix == ".b64" and canary.encode() in base64.b64decode(data):
            leaks.append(f"{path} (base64)")
    assert not leaks, leaks
    assert not [r for r in responses if any(f.decode() in r for f in forms) or spelled.search(r.encode())]
    assert canary.encode() not in daemon.log_path.read_bytes()
    assert central.exists() and central.stat().st_size > 0


def test_concurrent_runs_share_one_central_sink_exactly(make_kcd, kcd_root):
    central = kcd_root / "central.jsonl"
    daemon = make_kcd("--executor", "in-process", env_extra={"RAYCODE_TELEMETRY_PATH": str(central)})

    def one(_):
        return daemon.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", TASK, "--workspace", str(SEED),
                            "--json", timeout=300)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    run_dirs = [Path(json.loads(r.stdout.splitlines()[-1])["data"]["run_dir"]) for r in results]
    assert daemon.stop() == 0  # flushes the sink
    events = _lines(central)  # every line parses
    per_run = [_lines(d / "meta/telemetry.jsonl") for d in run_dirs]
    assert len(events) == sum(len(p) for p in per_run)
    for run_events in per_run:
        kinds = [e["event"] for e in run_events]
        assert kinds[0] == "run.start" and kinds[-1] == "run.end"
        assert "provider_metrics" in kinds and kinds.count("llm.attempt") == 3
        for e in run_events:
            assert e["ts"] and e["run_id"]
        attempt = next(e for e in run_events if e["event"] == "llm.attempt")
        assert attempt["route"] == "mock/dev" and attempt["status_code"] == 200
        assert attempt["attrs"]["gen_ai.operation.name"] == "chat"
        assert attempt["attrs"]["gen_ai.request.model"] == "dev"
        pm = next(e for e in run_events if e["event"] == "provider_metrics")
        assert set(pm) >= {"summary", "routes", "fallbacks", "stream_overrides", "tool_overrides", "ts",
                           "run_id", "route_id", "circuit_skips", "schema_version"}
    seqs = [e["seq"] for e in events if e["event"] != "provider_metrics"]  # that shape is the original's
    assert len(set(seqs)) == len(seqs)


def test_sighup_rotation_loses_no_line(make_kcd, kcd_root):
    central = kcd_root / "central.jsonl"
    daemon = make_kcd("--executor", "in-process", env_extra={"RAYCODE_TELEMETRY_PATH": str(central)})

    shell = Path(__file__).parent / "configs" / "shell.yaml"

    def one(_):  # each run: an attempt, a 2 s tool call, another attempt
        return daemon.kcctl("run", str(shell), "--task", "sleep 2", "--json", timeout=300)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(one, i) for i in range(8)]
        deadline = time.monotonic() + 30
        while len(_lines(central)) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.rename(central, kcd_root / "central.jsonl.1")  # logrotate's rename + create
        daemon.proc.send_signal(signal.SIGHUP)
        results = [f.result() for f in futures]
    run_dirs = [Path(json.loads(r.stdout.splitlines()[-1])["data"]["run_dir"]) for r in results]
    assert daemon.stop() == 0
    rotated, fresh = _lines(kcd_root / "central.jsonl.1"), _lines(central)
    assert fresh, "the daemon reopened the path after SIGHUP"
    expected = sum(len(_lines(d / "meta/telemetry.jsonl")) for d in run_dirs)
    assert len(rotated) + len(fresh) == expected


def test_kcctl_daemon_reload_reopens_the_central_file(make_kcd, kcd_root):
    central = kcd_root / "central.jsonl"
    daemon = make_kcd("--executor", "in-process", env_extra={"RAYCODE_TELEMETRY_PATH": str(central)})
    shell = Path(__file__).parent / "configs" / "shell.yaml"
    daemon.kcctl("run", str(shell), "--task", "true", "--json", check=True)
    os.rename(central, kcd_root / "central.jsonl.1")
    proc = daemon.kcctl("daemon", "reload", "--json", check=True)
    done = json.loads(proc.stdout)
    assert done["telemetry_reopened"] and done["probes_invalidated"] and done["executor"] == "ready", done
    daemon.kcctl("run", str(shell), "--task", "true", "--json", check=True)
    assert _lines(central), "the run after the reload wrote to the new file"


def test_live_metrics(kcd):
    proc = kcd.kcctl("run", str(CONFIGS / "demo.yaml"), "--task", TASK, "--workspace", str(SEED))
    assert proc.returncode == 0
    with kcd.http() as c:
        r = c.get("/v1/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for series in ("gen_ai_client_operation_duration_seconds_bucket", "gen_ai_client_token_usage_bucket",
                   'kylecode_runs_total{exit_reason="mark_task_complete"} 1',
                   "kylecode_tool_calls_total", "kylecode_telemetry_events_written_total"):
        assert series in text, series
    out = kcd.kcctl("metrics", check=True).stdout
    assert "gen_ai_client_operation_duration_seconds" in out
