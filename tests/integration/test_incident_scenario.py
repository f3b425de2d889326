"""`kcctl incident RUN --scenario NAME` end to end: real runs on the simulator through a real
daemon, the scenario written by kcctl, then `kcctl matrix --only NAME` on it.

The daemon knows two secrets (CANARY_KEYS, which `auth_401;echo_key=1` echoes into an error
body, and an extra token in its environment, which a scripted upstream puts in its body);
neither, nor the task or the system prompt, may reach the scenario file.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import CANARY_KEYS
from .resilience_support import GROK, OPENAI_MINI, read_json, run_json, write_config

TOKEN = "kc-scenario-canary-7d1e4b9a2c"  # not key-shaped: only the daemon's known values catch it
SECRETS = [TOKEN, *CANARY_KEYS.values()]


@pytest.fixture
def skcd(make_kcd, sim):
    sim.reset()
    return make_kcd("--executor", "in-process", env_extra={
        "OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base, "KC_SCENARIO_CANARY_TOKEN": TOKEN})


def kcctl(daemon, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kcctl.cli", "--socket", str(daemon.socket), "--no-autostart",
                           *args], env=daemon.env, capture_output=True, text=True, timeout=300, cwd=cwd)


def make_run(daemon, tmp_path: Path, fallbacks=(OPENAI_MINI,), task: str = "list the workspace",
             **config) -> tuple[dict, Path]:
    end, run_dir = run_json(daemon, write_config(tmp_path / "cfg.yaml", GROK, list(fallbacks), **config), task=task)
    return read_json(run_dir / "result.json"), run_dir


def scenario(daemon, run: str, name: str, cwd: Path, *extra: str) -> tuple[Path, dict]:
    proc = kcctl(daemon, "incident", run, "--scenario", name, *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = cwd / "configs" / "matrix" / f"{name}.yaml"
    assert proc.stdout.splitlines()[0] == f"[scenario] {path.relative_to(cwd)}", proc.stdout
    return path, yaml.safe_load(path.read_text())


def matrix(daemon, name: str, cwd: Path) -> tuple[int, dict]:
    proc = kcctl(daemon, "matrix", "--only", name, "--json", cwd=cwd)
    assert proc.stdout.strip().startswith("{"), proc.stdout + proc.stderr
    (result,) = json.loads(proc.stdout)["results"]
    return proc.returncode, result


def test_a_fallback_run_becomes_a_scenario_that_reproduces_the_fallback(skcd, sim, tmp_path):
    sim.fault(GROK, "unavailable_persistent")
    result, run_dir = make_run(skcd, tmp_path)
    assert result["completed"] and result["served_route"] == OPENAI_MINI
    proc = kcctl(skcd, "incident", result["run_id"], "--scenario", "fb_incident", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "primary openrouter/x-ai/grok-4-fast: 6 request(s): 503 application/json x6" in proc.stdout
    doc = yaml.safe_load((tmp_path / "configs/matrix/fb_incident.yaml").read_text())
    assert doc["routes"]["primary"] == GROK and doc["routes"]["fallbacks"] == [OPENAI_MINI]
    assert [(f["route"], f["name"], f["count"], f["params"]["status"]) for f in doc["fault"]] == [
        ("primary", "scripted", 6, 503)]
    assert doc["expect"]["fallback_target"] == "fallback" and doc["expect"]["upstream"]["primary"] == ">=6"
    sim.reset()  # the replay needs no programmed fault of ours: the scenario carries its own
    code, res = matrix(skcd, "fb_incident", tmp_path)
    assert code == 0 and res["verdict"] == "pass", res
    assert res["route_used"] == OPENAI_MINI and res["fallbacks"] >= 1
    (step,) = res["steps"]
    replay = Path(step["run_dir"])
    metrics = read_json(replay / "meta" / "provider_metrics.json")
    assert metrics["fallbacks"][0] == {"from": GROK, "to": OPENAI_MINI, "reason": "http_error"}
    attempts = [json.loads(x)["data"] for x in (replay / "meta" / "events.jsonl").read_text().splitlines()
                if '"llm.attempt"' in x]
    recorded = [json.loads(x)["data"] for x in (run_dir / "meta" / "events.jsonl").read_text().splitlines()
                if '"llm.attempt"' in x]
    assert [(a["route"], a["status"]) for a in attempts] == [(a["route"], a["status"]) for a in recorded]


def _open_primary(daemon, sim, tmp_path) -> tuple[dict, Path]:
    """Runs with a failing primary until one finds its circuit open before calling it."""
    sim.fault(GROK, "unavailable_persistent")
    for _ in range(4):
        result, run_dir = make_run(daemon, tmp_path)
        metrics = read_json(run_dir / "meta" / "provider_metrics.json")
        if metrics["circuit_skips"] and GROK not in metrics["routes"]:
            return result, run_dir
    raise AssertionError("the primary's breaker never opened")


def test_a_breaker_open_run_becomes_a_scenario_that_reproduces_the_skip(skcd, sim, tmp_path):
    result, run_dir = _open_primary(skcd, sim, tmp_path)
    assert "[circuit-open]" in (run_dir / "conversation" / "conversation.md").read_text()
    path, doc = scenario(skcd, run_dir.name, "open_incident", tmp_path)
    trip, replay = doc["steps"]
    assert trip["fault"] == [{"route": "primary", "name": "unavailable_persistent"}]
    assert trip["concurrent"] == 3 and doc["breaker"]["threshold"] == 3  # the daemon's settings
    assert replay["expect"]["upstream"]["primary"] == 0 and replay["expect"]["breaker"] == {"primary": "open"}
    sim.reset()
    code, res = matrix(skcd, "open_incident", tmp_path)
    assert code == 0 and res["verdict"] == "pass", res
    assert len(res["steps"]) == 4  # three tripping runs at once, then the replay
    skip_run = Path(res["steps"][-1]["run_dir"])
    metrics = read_json(skip_run / "meta" / "provider_metrics.json")
    assert GROK in metrics["circuit_skips"] and GROK not in metrics["routes"]
    assert "[circuit-open] Skipping direct call for route " + GROK in (
        skip_run / "conversation" / "conversation.md").read_text()


def test_a_failed_run_fails_as_fixed_until_fixed_and_passes_as_recorded(skcd, sim, tmp_path):
    sim.fault(GROK, "unavailable_persistent")
    sim.fault(OPENAI_MINI, "unavailable_persistent")
    result, run_dir = make_run(skcd, tmp_path)
    assert not result["completed"] and result["exit_reason"] == "provider_error"
    _, fixed = scenario(skcd, run_dir.name, "failed_fixed", tmp_path)
    _, recorded = scenario(skcd, run_dir.name, "failed_recorded", tmp_path, "--expect-outcome", "recorded")
    assert fixed["expect"]["completed"] is True and recorded["expect"]["completed"] is False
    sim.reset()
    code, res = matrix(skcd, "failed_fixed", tmp_path)
    assert code != 0 and res["verdict"] == "fail" and "completed is False, expected True" in res["reasons"], res
    code, res = matrix(skcd, "failed_recorded", tmp_path)
    assert code == 0 and res["verdict"] == "pass", res
    assert res["steps"][0]["exit_reason"] == "provider_error"


def _views(blob: bytes) -> list[bytes]:
    return [blob, blob.lower()]


def test_no_secret_prompt_or_request_body_reaches_the_scenario(skcd, sim, tmp_path):
    prompt = "PROMPT-CANARY-3f9a please list the workspace"
    sim.fault(GROK, "auth_401", 1, echo_key=1)  # the presented key, quoted in the error body
    sim.http.post("/_sim/faults", json={"model": "gpt-4o-mini", "fault": "scripted", "count": 1, "params": {
        "status": 500, "content_type": "application/json",
        "body": json.dumps({"error": {"message": f"upstream leaked {TOKEN} and Bearer {TOKEN}",
                                      "b64": base64.b64encode(TOKEN.encode()).decode()}})}}).raise_for_status()
    result, run_dir = make_run(skcd, tmp_path, fallbacks=(OPENAI_MINI, "openrouter/openai/gpt-4o-mini"), task=prompt)
    assert result["completed"], result
    assert len(list((run_dir / "raw" / "responses").glob("*.b64"))) == 2  # the run kept both error bodies
    path, doc = scenario(skcd, result["run_id"], "leak_check", tmp_path)
    blob = path.read_bytes()
    for secret in SECRETS:
        for view in _views(blob):
            assert secret.encode() not in view and secret.lower().encode() not in view, secret
        assert base64.b64encode(secret.encode())[:16] not in blob, secret
    assert b"PROMPT-CANARY" not in blob and b"careful software engineering agent" not in blob
    assert b"messages" not in blob and str(tmp_path).encode() not in blob
    bodies = [f["params"].get("body", "") for f in doc["fault"] if "params" in f]
    assert any("Incorrect API key" in b for b in bodies) and any("upstream leaked" in b for b in bodies)
    sim.reset()
    code, res = matrix(skcd, "leak_check", tmp_path)  # scrubbed bodies still reproduce the failures
    assert code == 0 and res["verdict"] == "pass", (res["reasons"], path.read_text())


def test_clear_errors(skcd, sim, tmp_path):
    result, run_dir = make_run(skcd, tmp_path)
    for bad in ("Bad-Name", "x" * 81, "../up", "_lead"):
        proc = kcctl(skcd, "incident", result["run_id"], "--scenario", bad, cwd=tmp_path)
        assert proc.returncode == 2 and "scenario name" in proc.stderr, (bad, proc.stderr)
    path, _ = scenario(skcd, result["run_id"], "twice", tmp_path)
    path.write_text("# edited by hand\n")
    proc = kcctl(skcd, "incident", result["run_id"], "--scenario", "twice", cwd=tmp_path)
    assert proc.returncode == 2 and "exists; pass --force" in proc.stderr
    assert path.read_text() == "# edited by hand\n"
    proc = kcctl(skcd, "incident", result["run_id"], "--scenario", "twice", "--force", cwd=tmp_path)
    assert proc.returncode == 0 and path.read_text().startswith("# Generated by `kcctl incident")
    out = tmp_path / "elsewhere"
    proc = kcctl(skcd, "incident", run_dir.name, "--scenario", "there", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0 and (out / "there.yaml").is_file() and f"--dir {out}" in proc.stdout
    for unknown in ("nosuchrun123", "20991231-000000_nothing", "/etc"):
        proc = kcctl(skcd, "incident", unknown, "--scenario", "nope", cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.startswith("kcctl: "), (unknown, proc.stderr)
        assert not (tmp_path / "configs/matrix/nope.yaml").exists()
    proc = kcctl(skcd, "incident", result["run_id"], "--force", cwd=tmp_path)
    assert proc.returncode == 2 and "go with --scenario" in proc.stderr
    # the daemon checks the name too (a client that skips kcctl's check)
    with skcd.http() as client:
        r = client.post("/v1/scenarios/from-run", json={"run": result["run_id"], "name": "../../etc/x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
