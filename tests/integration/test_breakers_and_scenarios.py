"""Shared circuit breakers across runs and restarts, and the runbook's scenarios."""

from __future__ import annotations

import time

import pytest

from .resilience_support import (
    GROK,
    OPENAI_MINI,
    OR_MINI,
    read_json,
    run_json,
    write_config,
)


def _env(sim):
    return {"OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base}


def test_breaker_opens_in_one_run_is_shared_survives_restart_and_closes(make_kcd, sim, kcd_root, tmp_path):
    sim.reset()
    daemon_cfg = kcd_root / "kcd.yaml"
    daemon_cfg.write_text("breaker:\n  threshold: 2\n  window_s: 600\n  cooldown_s: 4\n  jitter: 0\n")
    args = ("--executor", "in-process", "--config", str(daemon_cfg))
    daemon = make_kcd(*args, env_extra=_env(sim))
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI])
    sim.fault(GROK, "unavailable_persistent")

    # Run 1 (two turns on an empty workspace): every turn fails on the primary
    # (three attempts, counted once per turn) and falls back; after the second
    # turn the breaker is open.
    end, run1 = run_json(daemon, cfg)
    assert end["data"]["completed"] and read_json(run1 / "result.json")["served_route"] == OPENAI_MINI
    routes = daemon.kcctl("routes", "--json", check=True)
    import json

    state = json.loads(routes.stdout)[GROK]
    attempts = [(e["data"]["turn"], e["data"]["route"], e["data"]["error"]) for e in
                map(json.loads, (run1 / "meta/events.jsonl").read_text().splitlines()) if e["type"] == "llm.attempt"]
    assert state["state"] == "open", (state, attempts)
    table = daemon.kcctl("routes", check=True).stdout
    assert GROK in table and "open" in table
    row = next(line for line in table.splitlines() if line.startswith(GROK))
    assert "2/2 100%" in row, table  # the window's failed / logical requests and the rate

    # Run 2: zero upstream calls to the open route; it falls back at once.
    before = len(sim.requests(GROK))
    end, run2 = run_json(daemon, cfg)
    assert end["data"]["completed"]
    assert len(sim.requests(GROK)) == before
    convo = (run2 / "conversation/conversation.md").read_text()
    assert "[circuit-open]" in convo
    assert read_json(run2 / "meta/provider_metrics.json")["circuit_skips"]

    # The state survives a daemon restart.
    assert daemon.stop() == 0
    daemon = make_kcd(*args, env_extra=_env(sim))
    with daemon.http() as c:
        restored = c.get("/v1/routes").json()["routes"][GROK]
    assert restored["state"] == "open"

    # After the lockout, one trial call closes it.
    sim.reset()
    time.sleep(max(restored["reopens_in_s"] or 0, 0) + 0.3)
    before = len(sim.requests(GROK))
    end, run3 = run_json(daemon, cfg)
    assert end["data"]["completed"]
    assert read_json(run3 / "result.json")["served_route"] == GROK
    turns = read_json(run3 / "result.json")["steps"]
    assert len(sim.requests(GROK)) - before == turns  # one trial, then normal traffic
    with daemon.http() as c:
        assert c.get("/v1/routes").json()["routes"][GROK]["state"] == "closed"
    assert "closed" in daemon.kcctl("routes", check=True).stdout


def test_routes_reset(make_kcd, sim, tmp_path):
    sim.reset()
    daemon = make_kcd("--executor", "in-process", env_extra=_env(sim))
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI])
    sim.fault(GROK, "huge_retry_after", 1)
    run_json(daemon, cfg)
    assert "open" in daemon.kcctl("routes", "show", GROK, check=True).stdout
    out = daemon.kcctl("routes", "reset", GROK, check=True).stdout
    assert "closed" in out
    missing = daemon.kcctl("routes", "reset", "openai/never-called")
    assert missing.returncode == 2


# ---- the runbook's three scenarios ---------------------------------------------------

def test_openrouter_streaming_failure_falls_back(make_kcd, sim, tmp_path):
    sim.reset()
    daemon = make_kcd("--executor", "in-process", env_extra=_env(sim))
    cfg = write_config(tmp_path / "grok.yaml", GROK, [OR_MINI, OPENAI_MINI], stream=True)
    sim.fault(GROK, "failover_accounting")  # broken streamed, 502 non-streamed
    end, run_dir = run_json(daemon, cfg)
    assert end["data"]["completed"]
    convo = (run_dir / "conversation/conversation.md").read_text()
    for marker in ("[stream-policy]", "[tool-policy]", "[fallback_route]"):
        assert marker in convo, marker
    metrics = read_json(run_dir / "meta/provider_metrics.json")
    assert metrics["fallbacks"]
    assert metrics["summary"]["errors"] > 0
    assert metrics["summary"]["stream_overrides"] > 0
    assert metrics["tool_overrides"] == [{"route": GROK, "reason": "provider_default_no_native_tools"}]
    assert list(run_dir.glob("errors/turn_*.json"))
    events = [e["type"] for e in map(__import__("json").loads,
                                     (run_dir / "meta/events.jsonl").read_text().splitlines())]
    assert "policy" in events


def test_openrouter_text_only(make_kcd, sim, tmp_path):
    sim.reset()
    daemon = make_kcd("--executor", "in-process", env_extra=_env(sim))
    cfg = write_config(tmp_path / "grok.yaml", GROK, [OR_MINI, OPENAI_MINI], stream=False)
    end, run_dir = run_json(daemon, cfg)
    assert end["data"]["completed"]
    convo = (run_dir / "conversation/conversation.md").read_text()
    assert "[stream-policy]" not in convo and "[fallback_route]" not in convo
    metrics = read_json(run_dir / "meta/provider_metrics.json")
    assert metrics["fallbacks"] == [] and metrics["summary"]["errors"] == 0
    assert metrics["summary"]["stream_overrides"] == 0


def test_fallback_to_openai(make_kcd, sim, tmp_path):
    sim.reset()
    daemon = make_kcd("--executor", "in-process", env_extra=_env(sim))
    cfg = write_config(tmp_path / "compat.yaml", OR_MINI, [OPENAI_MINI], stream=True, use_native=True,
                       max_iterations=2)
    sim.fault(OR_MINI, "unavailable_persistent")
    end, run_dir = run_json(daemon, cfg)
    metrics = read_json(run_dir / "meta/provider_metrics.json")
    assert metrics["fallbacks"][0] == {"from": OR_MINI, "to": OPENAI_MINI,
                                       "reason": metrics["fallbacks"][0]["reason"]}
    assert OR_MINI in metrics["routes"] and OPENAI_MINI in metrics["routes"]
    assert read_json(run_dir / "result.json")["served_route"] == OPENAI_MINI
    assert end["data"]["steps"] == 2


def _two_routes_opened(make_kcd, sim, kcd_root, tmp_path, cooldown: float):
    sim.reset()
    daemon_cfg = kcd_root / "kcd.yaml"
    daemon_cfg.write_text(f"breaker:\n  threshold: 1\n  cooldown_s: {cooldown}\n  cap_s: {cooldown * 4}\n"
                          "  jitter: 0\n")
    daemon = make_kcd("--executor", "in-process", "--config", str(daemon_cfg), env_extra=_env(sim))
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI])
    sim.fault(GROK, "unavailable_persistent")
    sim.fault(OPENAI_MINI, "unavailable_persistent")
    end, _ = run_json(daemon, cfg)
    assert end["data"]["exit_reason"] == "provider_error"
    with daemon.http() as c:
        routes = c.get("/v1/routes").json()["routes"]
    assert routes[GROK]["state"] == routes[OPENAI_MINI]["state"] == "open"
    sim.reset()
    return daemon, cfg


def test_all_routes_open_waits_for_the_earliest_reopen_and_trials_it(make_kcd, sim, kcd_root, tmp_path):
    daemon, cfg = _two_routes_opened(make_kcd, sim, kcd_root, tmp_path, cooldown=1.0)
    end, run_dir = run_json(daemon, cfg)
    assert end["data"]["completed"], end
    convo = (run_dir / "conversation/conversation.md").read_text()
    assert "All routes are open; waiting" in convo
    with daemon.http() as c:
        routes = c.get("/v1/routes").json()["routes"]
    assert routes[read_json(run_dir / "result.json")["served_route"]]["state"] == "closed"


def test_all_routes_open_far_away_is_an_honest_typed_error(make_kcd, sim, kcd_root, tmp_path):
    daemon, cfg = _two_routes_opened(make_kcd, sim, kcd_root, tmp_path, cooldown=300.0)
    before = len(sim.requests())
    end, run_dir = run_json(daemon, cfg)
    assert end["data"]["exit_reason"] == "provider_error"
    assert len(sim.requests()) == before  # nothing was sent to the open routes
    result = read_json(run_dir / "result.json")
    assert result["error_type"] == "all_routes_open"
    for route in (GROK, OPENAI_MINI):
        assert route in result["error"]
    assert "reopens in" in result["error"]


def test_a_run_cancelled_during_its_half_open_trial_hands_the_permit_back(make_kcd, sim, kcd_root, tmp_path):
    """The old leak: the route refused everyone until half_open_max_wait_s (600 s), then reopened longer."""
    import json

    sim.reset()
    daemon_cfg = kcd_root / "kcd.yaml"
    daemon_cfg.write_text("breaker:\n  threshold: 1\n  cooldown_s: 1\n  jitter: 0\n  half_open_max_wait_s: 600\n")
    daemon = make_kcd("--executor", "in-process", "--config", str(daemon_cfg), env_extra=_env(sim))
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI], timeouts={"connect": 2, "ttft": 60, "idle": 60, "progress": 60, "total": 120})
    sim.fault(GROK, "unavailable_persistent")
    run_json(daemon, cfg)
    with daemon.http() as c:
        assert c.get("/v1/routes").json()["routes"][GROK]["state"] == "open"
    time.sleep(1.3)  # past the lockout: the next call is the half-open trial
    sim.reset()
    sim.fault(GROK, "no_response", hold=60)  # the trial hangs until the run is cancelled
    before = len(sim.requests(GROK))
    started = daemon.kcctl("run", str(cfg), "--task", "list the workspace", "--detach", "--json", check=True)
    run_id = json.loads(started.stdout)["id"]
    deadline = time.monotonic() + 30
    while len(sim.requests(GROK)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    with daemon.http() as c:
        held = c.get("/v1/routes").json()["routes"][GROK]
    assert held["state"] == "half_open" and held["trials_in_flight"] == 1, held
    daemon.kcctl("runs", "cancel", run_id, check=True)
    daemon.kcctl("runs", "events", run_id, "--follow", "--json", timeout=60)
    with daemon.http() as c:
        after = c.get("/v1/routes").json()["routes"][GROK]
    assert after["state"] == "half_open" and after["trials_in_flight"] == 0, after
    # The next run takes the trial at once and closes the route.
    sim.reset()
    end, run_dir = run_json(daemon, cfg)
    assert read_json(run_dir / "result.json")["served_route"] == GROK, end
    with daemon.http() as c:
        assert c.get("/v1/routes").json()["routes"][GROK]["state"] == "closed"
