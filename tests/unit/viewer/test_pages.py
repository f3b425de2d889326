"""Pages from loaded data: markers highlighted, everything from the model or tools escaped."""

from __future__ import annotations

import re
from pathlib import Path

from kcd.api.types import Event, ReplayDivergence, ReplayReport, RunInfo
from kcd.observe.eventlog import read_events
from kcd.viewer import pages
from kcd.viewer.pages import EVENT_KEYS, daemon_page, run_page, runs_page
from kcd.viewer.replays import ReplayView
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


def test_a_warning_event_shows_its_message_escaped_and_the_keys_are_handed_to_viewer_js() -> None:
    events = [Event(seq=1, ts="2026-01-01T00:00:00Z", run_id="r", type="warning",
                    data={"message": "tool 'x' is not implemented " + EVIL}),
              Event(seq=2, ts="2026-01-01T00:00:01Z", run_id="r", type="run.end",
                    data={"status": "completed", "exit_reason": "mark_task_complete", "completed": True})]
    html = run_page(info=_info(), live=False, record=parse_events(events), conversation=None, diff=None, files=[])
    assert "<script" not in html and "<img" not in html
    item = re.search(r'<li data-seq="1" data-type="warning">(.*?)</li>', html).group(1)
    assert '<span class="brief">message=tool &#x27;x&#x27; is not implemented &lt;script&gt;' in item
    keys = re.search(r'<ol id="events" data-keys="([^"]*)">', html).group(1).split()
    assert keys == list(EVENT_KEYS) and "message" in keys
    # viewer.js builds live lines from that attribute, not from a list of its own
    js = (Path(pages.__file__).parent / "static" / "viewer.js").read_text()
    assert "list.dataset.keys" in js and '"exit_reason"' not in js and "innerHTML = html" in js


def test_the_attempts_table_is_in_the_charts_time_order() -> None:
    html = run_page(info=_info(), live=False, record=parse_events(read_events(FIXTURE)), conversation=None,
                    diff=None, files=[])
    table = html[html.index('<table id="attempts">'):]
    rows = re.findall(r'<tr (?:class="skip" )?data-turn="2"(?: data-attempt="(\d+)")?>', table)
    assert rows == ["1", "", "2"]  # primary, the breaker-open skip, then the fallback it caused


def _report(**kw) -> ReplayReport:
    base = dict(recorded_run="rec123", replay_run="abc123", identical=False, turns_compared=3, calls_compared=3,
                recorded_turns=3, replayed_turns=3, recorded_exit_reason="mark_task_complete",
                replayed_exit_reason="mark_task_complete", workspace="an uploaded tree", responses_recorded=3,
                responses_served=3, normalised=["workspace paths"], divergences_total=2,
                divergences=[ReplayDivergence(turn=2, kind="result", field="out", recorded="A toy in C",
                                              replayed=EVIL, call_index=0, tool="read_file"),
                             ReplayDivergence(turn=2, kind="result", field="data.content", recorded="x",
                                              replayed="y", call_index=0, tool="read_file")])
    return ReplayReport(**{**base, **kw})


def test_a_replay_page_links_the_recorded_run_and_shows_each_divergence_escaped() -> None:
    view = ReplayView(recorded="rec123", recorded_visible=True, report=_report())
    html = run_page(info=_info(replay_of="rec123"), live=False, record=parse_events([]), conversation=None,
                    diff=None, files=[], replay=view)
    assert "<script" not in html and "<img" not in html
    assert '<p id="replay-of" data-replay-of="rec123">replay of <a class="replay-of" href="/ui/runs/rec123">' in html
    assert '<section id="replay" data-state="written" data-divergences="2">' in html
    rows = re.findall(r'<tr class="divergence" data-turn="(\d+)" data-call="(\d*)" data-tool="([^"]*)" '
                      r'data-kind="result" data-field="([^"]*)">', html)
    assert rows == [("2", "0", "read_file", "out"), ("2", "0", "read_file", "data.content")]
    assert '<pre class="replayed">&lt;script&gt;alert(1)&lt;/script&gt;' in html
    # another user's recorded run: named (it is in the caller's own run info), never linked
    hidden = run_page(info=_info(replay_of="rec123"), live=True, record=parse_events([]), conversation=None,
                      diff=None, files=[], replay=ReplayView(recorded="rec123"))
    assert 'href="/ui/runs/rec123"' not in hidden and "not yours to view" in hidden
    assert '<section id="replay" data-state="pending">' in hidden and "written when the replay ends" in hidden
    # a run that is no replay has neither, and lists the replays it is given
    plain = run_page(info=_info(), live=False, record=parse_events([]), conversation=None, diff=None, files=[],
                     replay=ReplayView(replays=[_info(id="rep1", replay_of="abc123")]))
    assert 'id="replay"' not in plain and 'id="replay-of"' not in plain
    assert '<section id="replays">' in plain and '<a class="replay-run" href="/ui/runs/rep1">' in plain


def test_runs_page_marks_replays_linking_only_runs_the_caller_may_open() -> None:
    runs = [_info(id="rep1", replay_of="mine"), _info(id="rep2", replay_of="theirs"), _info(id="plain")]
    html = runs_page(runs, {}, limit=50, who="uid 1", openable={"mine"})
    assert '<tr class="run" data-run-id="rep1" data-status="completed" data-route="mock/dev" ' \
           'data-exit-reason="mark_task_complete" data-replay-of="mine">' in html
    assert 'replay of <a href="/ui/runs/mine">mine</a>' in html
    assert "replay of theirs" in html and 'href="/ui/runs/theirs"' not in html
    assert html.count("data-replay-of=") == 2
