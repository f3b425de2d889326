"""A flapping primary under concurrent clients, with the default breaker config.

The primary (a simulator route) is down (503) for 5 s, then up for 7 s, repeating. Eight
clients send requests to kcd's OpenAI-compatible endpoint over the control socket, each
retrying a failed request twice at once with the same body, as agent tools do. The
breaker must keep the primary's load while it is down to the detection burst plus one
trial per lockout, and bring the primary back within one lockout after it recovers.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import yaml

from .resilience_support import FAST_RETRY, FAST_TIMEOUTS, GROK, OPENAI_MINI

DOWN_S, UP_S, CYCLES, CLIENTS = 5.0, 7.0, 2, 8
IN_FLIGHT_SLACK_S = 0.25  # requests admitted before the trip may still arrive just after it


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _client_loop(socket: Path, index: int, stop: threading.Event, outcomes: list[int]) -> None:
    transport = httpx.HTTPTransport(uds=str(socket))
    with httpx.Client(transport=transport, base_url="http://kcd", timeout=30) as client:
        n = 0
        while not stop.is_set():
            n += 1
            body = {"model": "chat", "messages": [{"role": "user", "content": f"client {index} request {n}"}]}
            for _ in range(3):  # the request, then two immediate retries of the same body
                status = client.post("/v1/chat/completions", json=body).status_code
                if status < 500:
                    break
            outcomes.append(status)
            time.sleep(0.05)


def test_flapping_primary_gets_one_trial_per_lockout_and_recovers_within_one(make_kcd, sim, kcd_root):
    sim.reset()
    central = kcd_root / "central.jsonl"
    config = kcd_root / "kcd.yaml"
    config.write_text(yaml.safe_dump({"gateway": {"models": {"chat": {
        "route": GROK, "fallbacks": [OPENAI_MINI], "timeouts": dict(FAST_TIMEOUTS), "retry": dict(FAST_RETRY)}}}}))
    daemon = make_kcd("--executor", "in-process", "--config", str(config),
                      env_extra={"OPENROUTER_BASE_URL": sim.api_base, "OPENAI_BASE_URL": sim.api_base,
                                 "RAYCODE_TELEMETRY_PATH": str(central)})
    epoch = time.time() + 1.0  # the first outage starts a second into the traffic
    sim.fault(GROK, "flapping_timed", down=DOWN_S, up=UP_S, epoch=epoch)
    stop, outcomes = threading.Event(), []
    seen: dict[str, float] = {}  # the simulator keeps only its last 256 requests: collect as we go

    def collect() -> None:
        for entry in sim.requests(GROK):
            seen[entry["request_id"]] = entry["ts"]

    threads = [threading.Thread(target=_client_loop, args=(daemon.socket, i, stop, outcomes), daemon=True)
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    while time.time() < epoch + CYCLES * (DOWN_S + UP_S):
        collect()
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    collect()
    daemon.stop()

    assert outcomes and all(status == 200 for status in outcomes), sorted(set(outcomes))
    primary = sorted(seen.values())
    events = [json.loads(x) for x in central.read_text().splitlines()]
    circuit = sorted(((_wall(e["ts"]), e) for e in events
                      if e.get("event", "").startswith("circuit.") and e.get("route") == GROK),
                     key=lambda pair: pair[0])
    opens = [(t, e) for t, e in circuit if e["event"] == "circuit.open"]
    assert opens, "the breaker never opened on a primary that was down"
    report = []
    for cycle in range(CYCLES):
        down_at = epoch + cycle * (DOWN_S + UP_S)
        up_at = down_at + DOWN_S
        opened = [(t, e) for t, e in opens if down_at <= t < up_at]
        assert opened, f"cycle {cycle}: the primary was down {DOWN_S:g} s and the breaker never opened"
        first_open = opened[0][0]
        half_opens = [t for t, e in circuit if e["event"] == "circuit.half_open" and first_open <= t < up_at]
        while_open = [t for t in primary if first_open + IN_FLIGHT_SLACK_S <= t < up_at]
        report.append({"cycle": cycle, "detection_burst": len([t for t in primary if down_at <= t < first_open]),
                       "after_open": len(while_open), "trials": len(half_opens)})
        # At most one request per lockout while down: each one is a half-open trial.
        assert len(while_open) <= len(half_opens), report
        # Recovery within one lockout: the lockout in force when the primary came back.
        last_open_t, last_open = max(((t, e) for t, e in opens if t < up_at), key=lambda pair: pair[0])
        lockout = _wall(last_open["reopens_at"]) - last_open_t
        back = [t for t in primary if t >= up_at]
        assert back, f"cycle {cycle}: the primary never got traffic again after it came back"
        report[-1].update(recovered_after_s=round(back[0] - up_at, 2), lockout_s=round(lockout, 2))
        assert back[0] - up_at <= lockout + 0.5, (cycle, back[0] - up_at, lockout, report)
    print("flapping:", report)
