"""The attempt timeline, drawn from a recorded run's events (a breaker-open run: retries,
fallbacks to a second route, and a `[circuit-open]` skip)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kcd.api.types import Event
from kcd.observe.eventlog import read_events
from kcd.viewer.rundata import Skip, parse_events
from kcd.viewer.timeline import in_time_order, label_width, timeline_svg

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "viewer" / "fallback_breaker_events.jsonl"
NS = "{http://www.w3.org/2000/svg}"


def _svg(events: list[Event], ttft: dict | None = None) -> ET.Element:
    return ET.fromstring(timeline_svg(parse_events(events, ttft).turns))


def test_every_attempt_and_skip_of_the_recorded_run_is_drawn() -> None:
    events = read_events(FIXTURE)
    root = _svg(events, {(1, 1): 0.03})
    assert root.get("id") == "timeline-chart"
    groups = [g for g in root.iter(f"{NS}g") if "attempt" in (g.get("class") or "").split()]
    got = [(g.get("data-turn"), g.get("data-attempt"), g.get("data-kind"), g.get("data-route"), g.get("data-status"),
            g.get("data-breaker")) for g in groups]
    assert got == [
        ("1", "1", "primary", "openrouter/x-ai/grok-4-fast", "503", "closed"),
        ("1", "2", "retry", "openrouter/x-ai/grok-4-fast", "503", "closed"),
        ("1", "3", "retry", "openrouter/x-ai/grok-4-fast", "503", "closed"),
        ("1", "4", "fallback", "openai/gpt-4o-mini", "200", "closed"),
        ("2", "1", "primary", "openrouter/x-ai/grok-4-fast", "503", "open"),
        ("2", "2", "fallback", "openai/gpt-4o-mini", "200", "closed"),
    ]
    skips = [g for g in root.iter(f"{NS}g") if g.get("class") == "skip"]
    assert [(g.get("data-turn"), g.get("data-route")) for g in skips] == [("2", "openrouter/x-ai/grok-4-fast")]
    # retries show their wait; the failed attempts are marked failed, the fallback is not
    assert len([ln for ln in root.iter(f"{NS}line") if ln.get("class") == "retry-wait"]) == 3
    assert [("failed" in g.get("class")) for g in groups] == [True, True, True, False, True, False]
    # TTFT of turn 1 attempt 1 is in its hover text
    assert "TTFT 0.030s" in groups[0].find(f"{NS}title").text


def test_bars_are_placed_in_time_within_their_turn() -> None:
    root = _svg(read_events(FIXTURE))
    xs = [float(g.find(f"{NS}rect").get("x")) for g in root.iter(f"{NS}g")
          if "attempt" in (g.get("class") or "").split() and g.get("data-turn") == "1"]
    assert xs == sorted(xs) and xs[0] < xs[-1]


def test_model_text_in_an_event_cannot_inject_markup() -> None:
    evil = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    events = [Event(seq=1, ts="2026-01-01T00:00:00.000Z", run_id="r", type="turn.start", data={"turn": 1}),
              Event(seq=2, ts="2026-01-01T00:00:01.000Z", run_id="r", type="llm.attempt",
                    data={"turn": 1, "attempt": 1, "kind": evil, "route": evil, "ok": False, "status": None,
                          "error": evil, "latency_s": 0.5, "breaker": evil}),
              Event(seq=3, ts="2026-01-01T00:00:02.000Z", run_id="r", type="policy",
                    data={"turn": 1, "marker": "circuit-open", "text": f"Skipping direct call for route {evil} (x)"})]
    svg = timeline_svg(parse_events(events).turns)
    assert "<script" not in svg and "<img" not in svg
    ET.fromstring(svg)  # still well-formed


def test_torn_and_odd_events_are_tolerated() -> None:
    events = [Event(seq=1, ts="not a time", run_id="r", type="llm.attempt", data={"turn": "x", "latency_s": "?"}),
              Event(seq=2, ts="2026-01-01T00:00:00Z", run_id="r", type="tool.result", data={"call_id": 5})]
    record = parse_events(events)
    assert len(record.turns) == 1 and record.turns[0].attempts[0].latency_s == 0.0
    assert re.search(r'data-turn="0"', timeline_svg(record.turns))
    assert timeline_svg([]).count("no attempts yet") == 1


UNAVAILABLE = FIXTURE.with_name("fallback_unavailable_events.jsonl")  # grok 503s three times, gpt-4o-mini serves


def _labels(root: ET.Element) -> list[tuple[str, float, float, str]]:
    """(turn, x, baseline y, text) of every label drawn above or below a bar."""
    out = []
    for turn in root.iter(f"{NS}g"):
        if turn.get("class") != "turn":
            continue
        for t in turn.iter(f"{NS}text"):
            if t.get("class") == "attempt-label":
                out.append((turn.get("data-turn"), float(t.get("x")), float(t.get("y")), t.text))
    return out


def test_labels_of_close_bars_do_not_overlap() -> None:
    """Turn 1 of the recorded fallback run: the last 503 and the fallback's 200 start 9 units
    apart, and used to read "R1 503R2 200" on one line."""
    for fixture in (UNAVAILABLE, FIXTURE):
        root = _svg(read_events(fixture))
        labels = _labels(root)
        for i, (turn, x, y, text) in enumerate(labels):
            for turn2, x2, y2, text2 in labels[i + 1:]:
                if (turn, y) == (turn2, y2):
                    assert x2 >= x + label_width(text) or x >= x2 + label_width(text2), (fixture.name, labels)
    root = _svg(read_events(UNAVAILABLE))
    turn1 = [(x, y, text) for turn, x, y, text in _labels(root) if turn == "1"]
    assert [text for _, _, text in turn1] == ["R1 503", "R1 503", "R1 503", "R2 200"]
    assert turn1[2][1] != turn1[3][1]  # the fallback's label is staggered below its bar, still shown
    groups = [g for g in root.iter(f"{NS}g") if g.get("data-label")]
    assert all(g.get("data-label") in ("above", "below", "none") for g in groups)
    # a group whose label was left out draws no text; every other draws exactly one
    for g in groups:
        assert len([t for t in g.iter(f"{NS}text")]) == (0 if g.get("data-label") == "none" else 1)


def test_a_third_label_at_the_same_place_is_left_out() -> None:
    events = [Event(seq=1, ts="2026-01-01T00:00:00.000Z", run_id="r", type="turn.start", data={"turn": 1})]
    for k in range(1, 4):  # three attempts within a millisecond, then a long one
        events.append(Event(seq=k + 1, ts=f"2026-01-01T00:00:00.00{k}Z", run_id="r", type="llm.attempt",
                            data={"turn": 1, "attempt": k, "route": "a", "ok": False, "status": 503,
                                  "latency_s": 0.0005}))
    events.append(Event(seq=9, ts="2026-01-01T00:00:05.000Z", run_id="r", type="llm.attempt",
                        data={"turn": 1, "attempt": 4, "route": "b", "ok": True, "status": 200, "latency_s": 1.0}))
    root = _svg(events)
    lanes = [g.get("data-label") for g in root.iter(f"{NS}g") if "attempt" in (g.get("class") or "").split()]
    assert lanes == ["above", "below", "none", "above"]


def test_rows_are_in_time_order_with_the_skip_before_the_fallback_it_caused() -> None:
    turn2 = parse_events(read_events(FIXTURE)).turns[1]
    order = [("skip", r.route) if isinstance(r, Skip) else (r.kind, r.route) for r in in_time_order(turn2)]
    assert order == [("primary", "openrouter/x-ai/grok-4-fast"), ("skip", "openrouter/x-ai/grok-4-fast"),
                     ("fallback", "openai/gpt-4o-mini")]
    # equal start times: attempt number, and a skip before the attempt logged after it
    same = [Event(seq=1, ts="2026-01-01T00:00:00.000Z", run_id="r", type="turn.start", data={"turn": 1}),
            Event(seq=2, ts="2026-01-01T00:00:00.000Z", run_id="r", type="llm.attempt",
                  data={"turn": 1, "attempt": 1, "route": "a", "ok": False, "status": 503, "latency_s": 0.0}),
            Event(seq=3, ts="2026-01-01T00:00:00.000Z", run_id="r", type="policy",
                  data={"turn": 1, "marker": "circuit-open", "text": "Skipping direct call for route a (x)"}),
            Event(seq=4, ts="2026-01-01T00:00:00.000Z", run_id="r", type="llm.attempt",
                  data={"turn": 1, "attempt": 2, "route": "b", "ok": True, "status": 200, "latency_s": 0.0})]
    rows = in_time_order(parse_events(same).turns[0])
    assert [getattr(r, "attempt", "skip") for r in rows] == [1, "skip", 2]


def _two_turns() -> list[Event]:
    """Turn 1: one 1 s attempt. Turn 2: a failed 1 s attempt, then a 3 s one (4 s in all)."""
    def ev(seq: int, ts: str, type_: str, **data) -> Event:
        return Event(seq=seq, ts=f"2026-01-01T00:00:{ts}Z", run_id="r", type=type_, data=data)
    attempt = dict(route="mock/dev", kind="primary", ok=True, status=200)
    return [ev(1, "00.000", "turn.start", turn=1),
            ev(2, "01.000", "llm.attempt", turn=1, attempt=1, latency_s=1.0, **attempt),
            ev(3, "10.000", "turn.start", turn=2),
            ev(4, "11.000", "llm.attempt", turn=2, attempt=1, latency_s=1.0, **{**attempt, "ok": False, "status": 503}),
            ev(5, "14.000", "llm.attempt", turn=2, attempt=2, latency_s=3.0, **attempt)]


def _widths(root: ET.Element) -> dict[tuple[str, str], float]:
    return {(g.get("data-turn"), g.get("data-attempt")): float(g.find(f"{NS}rect").get("width"))
            for g in root.iter(f"{NS}g") if "attempt" in (g.get("class") or "").split()}


def test_a_shared_scale_draws_equal_durations_equally_wide_across_turns() -> None:
    turns = parse_events(_two_turns()).turns
    own, shared = ET.fromstring(timeline_svg(turns)), ET.fromstring(timeline_svg(turns, "shared"))
    assert own.get("data-axis") == "turn" and own.get("data-full-scale-s") is None
    assert shared.get("data-axis") == "shared" and shared.get("data-full-scale-s") == "4"
    w_own, w_shared = _widths(own), _widths(shared)
    # on its own scale turn 1's 1 s fills the row, four times turn 2's 1 s; shared, they are equal
    assert w_own[("1", "1")] == 4 * w_own[("2", "1")]
    assert w_shared[("1", "1")] == w_shared[("2", "1")] == w_own[("2", "1")]
    assert w_shared[("2", "2")] == 3 * w_shared[("2", "1")]
    # each row still prints its own duration, whatever the scale
    for root in (own, shared):
        assert [t.text for t in root.iter(f"{NS}text") if t.get("class") == "scale"] == ["1s", "4s"]


def test_an_unknown_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="axis must be one of"):
        timeline_svg(parse_events(_two_turns()).turns, "absolute")
