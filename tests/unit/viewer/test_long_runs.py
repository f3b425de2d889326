"""A long run's page stays bounded: the chart, the tools section and the files list show the
last turns with a note linking the raw file, and a fragment reads only its own files."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from kcd.api.types import Event, RunInfo
from kcd.viewer import pages
from kcd.viewer.pages import MAX_CHART_TURNS, MAX_FILES_PER_DIR, MAX_TOOL_TURNS, fragment, run_page, shown_files
from kcd.viewer.routes import read_view
from kcd.viewer.rundata import load_run, parse_events

NS = "{http://www.w3.org/2000/svg}"


def _events(turns: int, calls_per_turn: int = 1) -> list[Event]:
    out: list[Event] = []

    def add(type_: str, **data) -> None:
        out.append(Event(seq=len(out) + 1, ts=f"2026-01-01T00:{len(out) // 60 % 60:02d}:{len(out) % 60:02d}.000Z",
                         run_id="long", type=type_, data=data))
    for n in range(1, turns + 1):
        add("turn.start", turn=n, route="mock/dev")
        add("llm.attempt", turn=n, attempt=1, kind="primary", route="mock/dev", ok=True, status=200, latency_s=0.5)
        for c in range(calls_per_turn):
            add("tool.call", turn=n, call_id=f"c{n}_{c}", name="read_file", args="{}")
            add("tool.result", turn=n, call_id=f"c{n}_{c}", name="read_file", ok=True, output=f"out {n}")
    return out


def _info(run_dir: str = "/nonexistent") -> RunInfo:
    return RunInfo(id="long", status="completed", run_dir=run_dir, created_at="2026-01-01T00:00:00Z")


def _frag(name: str, record, files: list[str] | None = None) -> str:
    return fragment(name, info=_info(), live=False, record=record, conversation=None, diff=None, files=files or [])


def test_the_chart_of_a_long_run_draws_its_last_turns_and_says_so() -> None:
    turns = MAX_CHART_TURNS + 30
    html = _frag("timeline", parse_events(_events(turns)))
    svg = ET.fromstring(html[html.index("<svg"):html.index("</svg>") + 6])
    drawn = [int(g.get("data-turn")) for g in svg.iter(f"{NS}g") if g.get("class") == "turn"]
    assert drawn == list(range(31, turns + 1))
    assert len(re.findall(r'<tr data-turn="\d+" data-attempt', html)) == MAX_CHART_TURNS  # the table: same turns
    note = re.search(r'<p class="note" id="timeline-cut" data-shown="(\d+)" data-turns="(\d+)">(.*?)</p>', html)
    assert note and note.group(1, 2) == (str(MAX_CHART_TURNS), str(turns))
    assert f"last {MAX_CHART_TURNS} of {turns} turns" in note.group(3)
    assert '<a class="raw-link" href="/ui/runs/long/files/meta/events.jsonl">' in note.group(3)


def test_a_run_within_the_caps_is_drawn_whole_without_a_note() -> None:
    timeline = _frag("timeline", parse_events(_events(MAX_CHART_TURNS)))
    assert timeline.count('<g class="turn"') == MAX_CHART_TURNS and "timeline-cut" not in timeline
    tools = _frag("tools", parse_events(_events(MAX_TOOL_TURNS, calls_per_turn=3)))
    assert tools.count('<div class="tool-call"') == 3 * MAX_TOOL_TURNS and "tools-cut" not in tools


def test_the_tools_of_a_long_run_are_its_last_turns_calls_with_a_note() -> None:
    turns = MAX_TOOL_TURNS + 10
    html = _frag("tools", parse_events(_events(turns, calls_per_turn=2)))
    shown = [int(t) for t in re.findall(r'<div class="tool-call" data-turn="(\d+)"', html)]
    assert shown == [n for n in range(11, turns + 1) for _ in range(2)]  # every call of those turns, in order
    note = re.search(r'<p class="note" id="tools-cut" data-shown="(\d+)" data-calls="(\d+)">(.*?)</p>', html)
    assert note and note.group(1, 2) == (str(2 * MAX_TOOL_TURNS), str(2 * turns))
    assert '<a class="raw-link" href="/ui/runs/long/files/meta/events.jsonl">' in note.group(3)


def test_a_per_turn_directory_lists_its_last_files_by_turn_number() -> None:
    many = [f"raw/responses/turn_{n}_attempt_1.json" for n in range(1, MAX_FILES_PER_DIR + 71)]
    files = ["meta/events.jsonl", "workspace.diff", *sorted(many), "errors/turn_3.json"]
    shown, hidden = shown_files(files)
    assert hidden == {"raw/responses": 70}
    assert [f for f in shown if f.startswith("raw/responses/")] == many[70:]  # turn_71 ... not turn_99 last
    assert {"meta/events.jsonl", "workspace.diff", "errors/turn_3.json"} <= set(shown)
    html = _frag("files", parse_events([]), files)
    assert html.count('<a class="raw-file"') == len(shown)
    assert '<p class="note files-cut" data-dir="raw/responses" data-hidden="70">' in html


def _run_dir(tmp_path: Path, turns: int) -> Path:
    run_dir = tmp_path / "run"
    (run_dir / "meta").mkdir(parents=True)
    (run_dir / "raw" / "responses").mkdir(parents=True)
    (run_dir / "conversation").mkdir()
    lines = [json.dumps({"seq": e.seq, "ts": e.ts, "run_id": e.run_id, "type": e.type, "data": e.data})
             for e in _events(turns)]
    (run_dir / "meta" / "events.jsonl").write_text("\n".join(lines) + "\n")
    for n in range(1, turns + 1):
        (run_dir / "raw" / "responses" / f"turn_{n}_attempt_1.json").write_text(json.dumps({"ttft_s": n / 100}))
    (run_dir / "conversation" / "conversation.md").write_text("**User**\n\n[fallback_route] from=a to=b\n")
    (run_dir / "workspace.diff").write_text("+added\n")
    return run_dir


def test_times_to_first_token_are_read_for_the_charted_turns_only(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, 5)
    ttfts = lambda record: [a.ttft_s for t in record.turns for a in t.attempts]  # noqa: E731
    assert ttfts(load_run(run_dir)) == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert ttfts(load_run(run_dir, ttft_turns=2)) == [None, None, None, 0.04, 0.05]
    assert ttfts(load_run(run_dir, ttft_turns=0)) == [None] * 5


def test_a_fragment_reads_only_what_it_shows_and_the_page_reads_everything(tmp_path: Path) -> None:
    info = _info(str(_run_dir(tmp_path, 3)))
    timeline = read_view(info, ("timeline",), live=False)
    assert len(timeline["record"].turns) == 3 and timeline["record"].turns[-1].attempts[0].ttft_s == 0.03
    assert (timeline["conversation"], timeline["diff"], timeline["files"]) == (None, None, [])
    tools = read_view(info, ("tools",), live=False)
    assert len(tools["record"].tools) == 3 and tools["record"].turns[0].attempts[0].ttft_s is None
    convo = read_view(info, ("conversation",), live=False)
    assert convo["record"].events == [] and convo["conversation"].startswith("**User**")
    whole = read_view(info, pages.PAGE, live=False)
    assert whole["diff"] == "+added\n" and "meta/events.jsonl" in whole["files"]
    html = run_page(**whole)
    assert html.count("<li data-seq=") == 3 * 4 and 'data-last-seq="12"' in html
    assert '<span class="marker" data-marker="fallback_route">[fallback_route] from=a to=b</span>' in html
    assert '<span class="add">+added</span>' in html
    # the fragments a live page fetches are the page's own sections
    for name in ("timeline", "tools", "conversation", "diff", "files", "summary"):
        assert f'<section id="{name}">{fragment(name, **read_view(info, (name,), live=False))}</section>' in html


def test_transcript_sections_and_markers_are_escaped_once() -> None:
    text = '**<b>"Sys"</b>**\n[circuit-open] route <x> & "y"\n[Not-a-marker] <i>\n'
    html = _frag_convo(text)
    assert '<span class="section">&lt;b&gt;&quot;Sys&quot;&lt;/b&gt;</span>' in html
    assert ('<span class="marker" data-marker="circuit-open">[circuit-open] route &lt;x&gt; &amp; '
            '&quot;y&quot;</span>') in html
    assert "\n[Not-a-marker] &lt;i&gt;" in html and "<i>" not in html and "<b>" not in html


def _frag_convo(text: str) -> str:
    return fragment("conversation", info=_info(), live=False, record=parse_events([]), conversation=text, diff=None,
                    files=[])
