"""Daemon-owned capability probes: cached, applied to runs, visible in kcctl."""

from __future__ import annotations

import json

from .resilience_support import GROK, OPENAI_MINI, read_json, run_json, write_config


def test_failed_probes_switch_stream_and_tools_off_and_are_cached(make_kcd, sim, tmp_path):
    sim.reset()
    daemon = make_kcd("--executor", "in-process", env_extra={
        "OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base, "KC_DISABLE_PROVIDER_PROBES": "0"})
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI], stream=True, use_native=True)
    sim.fault(GROK, "html_502", 3)  # exactly the three probe requests fail
    end, run_dir = run_json(daemon, cfg)
    assert end["data"]["completed"]
    probes = {p["route"]: p for p in read_json(run_dir / "meta/capability_probes.json")}
    grok = probes[GROK]
    assert grok["attempted"] and grok["stream_success"] is False and grok["tool_stream_success"] is False
    assert grok["json_mode_success"] is False and "upstream_html" in grok["error"]
    assert {"model_id", "skipped_reason", "elapsed", "checked_at", "route"} <= set(grok)
    assert probes[OPENAI_MINI]["stream_success"] is True
    convo = (run_dir / "conversation/conversation.md").read_text()
    assert f"[capability-probe] model={GROK} stream=false tool_stream=false json=false" in convo
    assert "[tool-policy]" in convo and "[stream-policy]" in convo
    metrics = read_json(run_dir / "meta/provider_metrics.json")
    assert {"route": GROK, "reason": "capability_probe_tool_failure"} in metrics["tool_overrides"]
    assert {"route": GROK, "reason": "capability_probe_stream_failure"} in metrics["stream_overrides"]
    assert read_json(run_dir / "result.json")["served_route"] == GROK  # text mode, non-streamed
    first = read_json(run_dir / "raw/requests/turn_1.request.json")
    assert not first["tools"] and first["stream"] is False

    # A second run while the results are fresh makes no probe calls of its own.
    before = len(sim.requests(GROK))
    end, run2 = run_json(daemon, cfg)
    assert end["data"]["completed"]
    assert len(sim.requests(GROK)) - before == end["data"]["steps"]  # one call per turn, no probes
    assert read_json(run2 / "meta/capability_probes.json")[0]["checked_at"] == grok["checked_at"]

    shown = daemon.kcctl("probes", check=True).stdout
    assert GROK in shown and "FAIL" in shown
    refreshed = json.loads(daemon.kcctl("probes", GROK, "--refresh", "--json", check=True).stdout)
    assert refreshed[0]["stream_success"] is True  # the fault is spent: the route recovered
    assert len(sim.requests(GROK)) == before + end["data"]["steps"] + 3
    with daemon.http() as c:
        metrics_text = c.get("/v1/metrics").text
    assert f'kylecode_probe_success{{route="{GROK}",probe="stream"}} 1' in metrics_text


def test_probes_off_by_environment(make_kcd, sim, tmp_path):
    sim.reset()
    daemon = make_kcd("--executor", "in-process", env_extra={
        "OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base, "KC_DISABLE_PROVIDER_PROBES": "1"})
    cfg = write_config(tmp_path / "cfg.yaml", GROK, [OPENAI_MINI])
    end, run_dir = run_json(daemon, cfg)
    assert end["data"]["completed"]
    probes = read_json(run_dir / "meta/capability_probes.json")
    assert all(p["attempted"] is False and p["skipped_reason"] == "disabled" for p in probes)
    assert len(sim.requests(GROK)) == end["data"]["steps"]  # no probe calls
