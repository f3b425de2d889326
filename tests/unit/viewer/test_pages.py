"""Pages from loaded data: markers highlighted, everything from the model or tools escaped."""

from __future__ import annotations

from pathlib import Path

from kcd.api.types import Event, RunInfo
from kcd.observe.eventlog import read_events
from kcd.viewer.pages import daemon_page, run_page, runs_page
from kcd.viewer.rundata import parse_events

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "viewer" / "fallback_breaker_events.jsonl"
EVIL = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def _info(**kw) -> RunInfo:
    base = dict(id="abc123", status="completed", run_dir="/nonexistent", created_at="2026-01-01T00:00:00Z",
                route="mock/dev", exit_reason="mark_task_complete", task=EVIL, peer_uid=1000)
    return RunInfo(**{**base, **kw})


def test_run_page_highlights_markers_and_escapes_the_model() -> None:
    convo = ("# Conversation Transcript\n\n**Assistant**\n\n" + EVIL + "\n\n**System**\n\n"
             "[fallback_route] from=a to=b reason=x\n[circuit-open] Skipping direct call\n"
             "[stream-policy] Disabled streaming\n")
    events = [Event(seq=1, ts="2026-01-01T00:00:00Z", run_id="r", type="tool.call",
                    data={"turn": 1, "call_id": "c1", "name": "run_shell", "args": EVIL}),
              Event(seq=2, ts="2026-01-01T00:00:01Z", run_id="r", type="tool.result",
                    data={"turn": 1, "call_id": "c1", "name": "run_shell", "ok": True, "output": EVIL})]
    html = run_page(info=_info(), live=False, record=parse_events(events), conversation=convo,
                    diff="+" + EVIL + "\n", files=["meta/events.jsonl"])
    assert "<script" not in html and "<img" not in html
    assert html.count("&lt;script&gt;") >= 4
    for marker in ("fallback_route", "circuit-open", "stream-policy"):
        assert f'<span class="marker" data-marker="{marker}">' in html
    assert '<div class="tool-call" data-turn="1" data-tool="run_shell"' in html
    assert '<div class="tool-result" data-state="ok">' in html
    assert '<a class="raw-file" href="/ui/runs/abc123/files/meta/events.jsonl">' in html
    assert 'data-live="false"' in html and '<span id="run-status" class="status status-completed">' in html


def test_run_page_of_a_recorded_run_lists_its_events() -> None:
    record = parse_events(read_events(FIXTURE))
    html = run_page(info=_info(status="running"), live=True, record=record, conversation=None, diff=None, files=[])
    assert 'data-live="true"' in html and f'data-last-seq="{record.last_seq}"' in html
    assert html.count("<li data-seq=") == len(record.events)


def test_runs_page_rows_and_filters_are_escaped() -> None:
    html = runs_page([_info(route=EVIL, exit_reason=EVIL)], {"route": EVIL}, limit=50, who="uid 1")
    assert "<script" not in html and "<img" not in html
    assert '<tr class="run" data-run-id="abc123" data-status="completed"' in html
    assert '<a class="run-link" href="/ui/runs/abc123">' in html
    for name in ("status", "route", "exit_reason", "since", "until"):
        assert f'name="{name}"' in html
    assert '<form id="filters" method="get"' in html


def test_daemon_page_shows_routes_probes_and_charts() -> None:
    html = daemon_page(routes={EVIL: {"state": "open", "last_error": EVIL}, "mock/dev": {"state": "closed"}},
                       probes=[{"route": "mock/dev", "stream_success": True, "error": EVIL}],
                       series={"attempts": [(0.0, 1.0), (15.0, 3.0)], "runs_active": []}, interval_s=15,
                       health={"version": "x"})
    assert "<script" not in html and "<img" not in html
    assert '<tr data-route="mock/dev" data-state="closed">' in html
    assert 'data-state="open"' in html
    assert '<svg class="metric-chart" data-metric="attempts" data-points="2"' in html
    assert '<section id="probes">' in html and '<table id="routes">' in html
