"""The viewer's pages and fragments, as HTML strings from already-loaded data.

Pure functions: no I/O, no access checks (`routes` does both). A run page is made of
sections that `viewer.js` can refresh one by one from `/ui/runs/ID/fragment/NAME`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from kcd.api.types import Event, RunInfo
from kcd.viewer.markup import attr, esc
from kcd.viewer.replays import ReplayView, replay_of_line, replays_list, report_attrs, report_section
from kcd.viewer.rundata import RunRecord, Skip, Turn
from kcd.viewer.sparkline import sparkline_svg
from kcd.viewer.timeline import AXES, in_time_order, route_tags, timeline_svg

__all__ = ["FRAGMENTS", "PAGE", "daemon_page", "fragment", "run_page", "runs_page", "shown_files"]

FRAGMENTS = ("timeline", "tools", "conversation", "diff", "files", "summary", "replay")
PAGE = (*FRAGMENTS, "events", "replays")  # what the whole run page shows
MAX_TEXT = 2 * 1024 * 1024  # transcript and diff shown up to this many characters
# A long run's page stays a few hundred KiB, and a live refresh (every event, debounced) a few
# ms: the chart and its table show the last turns, the tools section the last turns' calls, the
# files section the last files of each per-turn directory. Each cut says so and links the raw file.
MAX_CHART_TURNS = 100
MAX_TOOL_TURNS = 50
MAX_FILES_PER_DIR = 50
EVENTS_FILE = "meta/events.jsonl"
_MARKER = re.compile(r"^\[([a-z_-]+)\]( .*)?$")
_DIGITS = re.compile(r"\d+")
FILTERS = ("status", "route", "exit_reason", "since", "until")
LIST_ATTR = ' list="statuses"'
STATUSES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
# The event fields an `#events` line shows, in order. The page hands them to viewer.js in
# `<ol id="events" data-keys>`, so a line appended live shows what a reload shows.
EVENT_KEYS = ("turn", "attempt", "route", "status", "name", "marker", "exit_reason", "message")


def _run_href(run_id: str) -> str:
    return f"/ui/runs/{quote(run_id, safe='')}"


def _raw_link(run_id: str, rel: str) -> str:
    return f'<a class="raw-link" href={attr(_run_href(run_id) + "/files/" + quote(rel))}>{esc(rel)}</a>'


def _filters_form(values: Mapping[str, str]) -> str:
    options = "".join(f"<option value={attr(s)}></option>" for s in STATUSES)
    field = lambda name, label: (  # noqa: E731
        f'<label>{esc(label)} <input type="text" name="{name}" value={attr(values.get(name, ""))}'
        f"{LIST_ATTR if name == 'status' else ''}></label>")
    return ('<form id="filters" method="get" action="/ui/">'
            f"{field('status', 'status')}<datalist id=\"statuses\">{options}</datalist>"
            f"{field('route', 'route')}{field('exit_reason', 'exit reason')}"
            f"{field('since', 'since (UTC)')}{field('until', 'until (UTC)')}"
            '<button type="submit">Filter</button> <a href="/ui/">clear</a></form>')


def _replay_mark(r: RunInfo, openable: Collection[str]) -> str:
    if not r.replay_of:
        return ""
    recorded = (f'<a href={attr(_run_href(r.replay_of))}>{esc(r.replay_of)}</a>' if r.replay_of in openable
                else esc(r.replay_of))
    return f' <span class="replay-mark">replay of {recorded}</span>'


def runs_page(runs: list[RunInfo], filters: Mapping[str, str], *, limit: int, who: str,
              openable: Collection[str] = ()) -> str:
    """The runs list; a replay is marked with the run it replays (a link when in `openable`)."""
    rows = []
    for r in runs:
        replay = f" data-replay-of={attr(r.replay_of)}" if r.replay_of else ""
        rows.append(
            f'<tr class="run" data-run-id={attr(r.id)} data-status={attr(r.status)} data-route={attr(r.route or "")} '
            f'data-exit-reason={attr(r.exit_reason or "")}{replay}>'
            f'<td><a class="run-link" href={attr(_run_href(r.id))}>{esc(r.id)}</a>{_replay_mark(r, openable)}</td>'
            f'<td class="status status-{esc(r.status)}">{esc(r.status)}</td><td>{esc(r.route)}</td>'
            f"<td>{esc(r.exit_reason)}</td><td>{esc(r.steps)}</td><td>{esc(r.created_at)}</td>"
            f"<td>{esc(r.peer_uid)}</td><td class=\"task\">{esc((r.task or '')[:120])}</td></tr>")
    more = (f'<p class="note">Showing the newest {limit}; narrow the filters to see older runs.</p>'
            if len(runs) >= limit else "")
    table = ('<table id="runs"><thead><tr><th>run</th><th>status</th><th>route</th><th>exit reason</th>'
             "<th>steps</th><th>created (UTC)</th><th>uid</th><th>task</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table>")
    empty = "" if runs else '<p class="empty">No runs match.</p>'
    return (f'<main id="runs-list"><h1>Runs</h1><p class="who">{esc(who)}</p>{_filters_form(filters)}'
            f"{table}{empty}{more}</main>")


# ---- the run page -------------------------------------------------------------------------

def _summary(info: RunInfo, live: bool, replay: ReplayView) -> str:
    facts = [("route", info.route), ("exit reason", info.exit_reason), ("steps", info.steps),
             ("completed", info.completed), ("created", info.created_at), ("ended", info.ended_at),
             ("owner uid", info.peer_uid), ("error", info.error),
             ("pruned", f"{info.pruned_at}: the run directory was deleted by retention" if info.pruned_at else None)]
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v is not None)
    return (f'<h1>Run {esc(info.id)} <span id="run-status" class="status status-{esc(info.status)}">'
            f'{esc(info.status)}</span>{" <span class=live>live</span>" if live else ""}</h1>'
            f'{replay_of_line(replay)}<p class="task">{esc(info.task)}</p><dl class="facts">{rows}</dl>')


def _attempts_table(turns: list[Turn]) -> str:
    rows = []
    for t in turns:
        for r in in_time_order(t):  # the chart's order: a skip before the fallback it caused
            if isinstance(r, Skip):
                rows.append(f'<tr class="skip" data-turn="{r.turn}"><td>{r.turn}</td><td>-</td><td>skip</td>'
                            f'<td>{esc(r.route)}</td><td colspan="5">{esc(r.text)}</td><td>open</td></tr>')
                continue
            rows.append(
                f'<tr data-turn="{r.turn}" data-attempt="{r.attempt}"><td>{r.turn}</td><td>{r.attempt}</td>'
                f"<td>{esc(r.kind)}</td><td>{esc(r.route)}</td><td>{esc(r.status)}</td><td>{esc(r.error)}</td>"
                f"<td>{r.latency_s:.3f}</td><td>{'' if r.ttft_s is None else f'{r.ttft_s:.3f}'}</td>"
                f"<td>{'' if r.retry_in_s is None else f'{r.retry_in_s:.2f}'}</td><td>{esc(r.breaker)}</td></tr>")
    return ('<table id="attempts"><thead><tr><th>turn</th><th>attempt</th><th>kind</th><th>route</th>'
            "<th>status</th><th>error</th><th>latency s</th><th>TTFT s</th><th>retry in s</th><th>breaker</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _axis_switch(turns: list[Turn], axis: str) -> str:
    """Links between the two scales (plain links: the page works without its script)."""
    names = {"turn": "each turn its own", "shared": "one for all turns"}
    current = {a: ' aria-current="true"' if a == axis else "" for a in AXES}
    links = " · ".join(f'<a href="?axis={a}#timeline" data-axis="{a}"{current[a]}>{names[a]}</a>' for a in AXES)
    longest = max(turns, key=lambda t: t.span_s, default=None)
    full = (f" (full width: {longest.span_s:.3g}s, turn {longest.number})"
            if axis == "shared" and longest is not None and longest.span_s > 0 else "")
    return f'<p class="axis-switch" id="timeline-axis" data-axis="{axis}">time scale: {links}{full}</p>'


def _timeline(record: RunRecord, run_id: str, axis: str = "turn") -> str:
    turns = record.turns[-MAX_CHART_TURNS:]
    cut = (f'<p class="note" id="timeline-cut" data-shown="{len(turns)}" data-turns="{len(record.turns)}">'
           f"The chart and the table show the last {len(turns)} of {len(record.turns)} turns; every attempt is "
           f"in {_raw_link(run_id, EVENTS_FILE)}.</p>" if len(turns) < len(record.turns) else "")
    routes = " · ".join(f'<span class="route-tag">{esc(tag)}</span> {esc(route)}'
                        for route, tag in route_tags(turns).items())
    legend = ('<p class="legend"><span class="key ok">ok</span> <span class="key failed">failed</span> '
              '<span class="key fallback">fallback</span> <span class="key skip">breaker-open skip</span> '
              f"tick: first token · dashes: wait before the retry</p><p class=\"routes\">{routes}</p>")
    return (f"<h2>Timeline</h2>{legend}{_axis_switch(turns, axis)}{cut}{timeline_svg(turns, axis)}"
            f"{_attempts_table(turns)}")


def _tools(record: RunRecord, run_id: str) -> str:
    turns = sorted({c.turn for c in record.tools})
    calls = record.tools
    cut = ""
    if len(turns) > MAX_TOOL_TURNS:
        first = turns[-MAX_TOOL_TURNS]
        calls = [c for c in record.tools if c.turn >= first]
        cut = (f'<p class="note" id="tools-cut" data-shown="{len(calls)}" data-calls="{len(record.tools)}">'
               f"The tool calls of the last {MAX_TOOL_TURNS} of {len(turns)} turns are shown ({len(calls)} of "
               f"{len(record.tools)} calls); every call and result is in {_raw_link(run_id, EVENTS_FILE)} "
               "and under provider_native/ in the raw files.</p>")
    items = []
    for c in calls:
        state = "pending" if c.ok is None else ("ok" if c.ok else "error")
        items.append(
            f'<div class="tool-call" data-turn="{c.turn}" data-tool={attr(c.name)} data-call-id={attr(c.call_id)}>'
            f'<div class="call"><span class="name">{esc(c.name)}</span> <code>{esc(c.args)}</code> '
            f'<span class="turn">turn {c.turn}</span></div>'
            f'<div class="tool-result" data-state="{state}"><pre>{esc(c.output if c.output is not None else "…")}'
            "</pre></div></div>")
    return "<h2>Tool calls</h2>" + cut + ("".join(items) or '<p class="empty">No tool calls yet.</p>')


def _conversation(text: str | None) -> str:
    if text is None:
        return '<h2>Conversation</h2><p class="empty">No transcript yet.</p>'
    lines = []
    # Escaped in one call, then marked: escaping keeps line breaks, `[marker]` and `**`.
    for line in esc(text[:MAX_TEXT]).splitlines():
        m = _MARKER.match(line) if line[:1] == "[" else None
        if m:
            lines.append(f'<span class="marker" data-marker="{m.group(1)}">{line}</span>')
        elif line[:2] == "**" and line.endswith("**") and len(line) > 4:
            lines.append(f'<span class="section">{line[2:-2]}</span>')
        else:
            lines.append(line)
    cut = '\n<span class="note">(truncated)</span>' if len(text) > MAX_TEXT else ""
    return f'<h2>Conversation</h2><pre class="transcript">{chr(10).join(lines)}{cut}</pre>'


def _diff(text: str | None) -> str:
    if not text:
        return '<h2>Workspace diff</h2><p class="empty">No changes (or the run has not ended).</p>'
    out = []
    for line in esc(text[:MAX_TEXT]).splitlines():  # escaping keeps line breaks, `+`, `-` and `@@`
        cls = "add" if line.startswith("+") else "del" if line.startswith("-") else \
            "hunk" if line.startswith("@@") else ""
        out.append(f'<span class="{cls}">{line}</span>' if cls else line)
    return f'<h2>Workspace diff</h2><pre class="diff">{chr(10).join(out)}</pre>'


def _by_turn(path: str) -> tuple[int, str]:
    """turn_2 before turn_10: the first number in the file's name, then the name."""
    m = _DIGITS.search(path, path.rfind("/") + 1)
    return (int(m.group()) if m else -1, path)


def shown_files(files: list[str]) -> tuple[list[str], dict[str, int]]:
    """The files listed: of a directory with more than MAX_FILES_PER_DIR, its last ones by turn
    (the files in it left out counted per directory)."""
    by_dir: dict[str, list[str]] = {}
    for f in files:
        by_dir.setdefault(f.rpartition("/")[0], []).append(f)
    shown, hidden = [], {}
    for d, names in by_dir.items():
        if d and len(names) > MAX_FILES_PER_DIR:
            names = sorted(names, key=_by_turn)
            hidden[d] = len(names) - MAX_FILES_PER_DIR
            names = names[-MAX_FILES_PER_DIR:]
        shown.extend(names)
    return shown, hidden


def _files(run_id: str, files: list[str]) -> str:
    base = _run_href(run_id)
    shown, hidden = shown_files(files)
    items = "".join(f'<li><a class="raw-file" href={attr(base + "/files/" + quote(f))}>{esc(f)}</a></li>'
                    for f in shown)
    cut = "".join(f'<p class="note files-cut" data-dir={attr(d)} data-hidden="{n}">{n} earlier files in '
                  f"{esc(d)}/ are not listed; each is served at {esc(base)}/files/{esc(d)}/NAME.</p>"
                  for d, n in hidden.items())
    return f"<h2>Raw files</h2>{cut}<ul class=\"files\">{items}</ul>"


def _brief_value(value: object) -> str:
    """A string as is, anything else as JSON: what viewer.js shows for the same value."""
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _event_item(ev: Event) -> str:
    d = ev.data if isinstance(ev.data, dict) else {}
    brief = " ".join(f"{k}={_brief_value(d[k])}" for k in EVENT_KEYS if d.get(k) is not None)
    return (f'<li data-seq="{ev.seq}" data-type={attr(ev.type)}><span class="seq">{ev.seq}</span> '
            f'<span class="type">{esc(ev.type)}</span> <span class="brief">{esc(brief)}</span></li>')


def fragment(name: str, *, info: RunInfo, live: bool, record: RunRecord, conversation: str | None,
             diff: str | None, files: list[str], replay: ReplayView | None = None, axis: str = "turn") -> str:
    """The inner HTML of one section of the run page (`name` in FRAGMENTS); `axis` is the
    timeline's time scale (`timeline.AXES`)."""
    replay = replay or ReplayView()
    if name == "replay":
        return report_section(replay, live) if replay.recorded else ""
    if name == "timeline":
        return _timeline(record, info.id, axis)
    if name == "tools":
        return _tools(record, info.id)
    if name == "conversation":
        return _conversation(conversation)
    if name == "diff":
        return _diff(diff)
    if name == "files":
        return _files(info.id, files)
    return _summary(info, live, replay)


def run_page(*, info: RunInfo, live: bool, record: RunRecord, conversation: str | None, diff: str | None,
             files: list[str], replay: ReplayView | None = None, axis: str = "turn") -> str:
    replay = replay or ReplayView()

    def part(name: str) -> str:
        return fragment(name, info=info, live=live, record=record, conversation=conversation, diff=diff, files=files,
                        replay=replay, axis=axis)

    report = (f'<section id="replay"{report_attrs(replay)}>{part("replay")}</section>'
              if replay.recorded else "")

    events = "".join(_event_item(ev) for ev in record.events[-500:])
    return (f'<main id="run" data-run-id={attr(info.id)} data-status={attr(info.status)} '
            f'data-live="{"true" if live else "false"}" data-last-seq="{record.last_seq}">'
            f'<section id="summary">{part("summary")}</section>{report}{replays_list(replay)}'
            f'<section id="timeline">{part("timeline")}</section>'
            f'<div class="columns"><section id="conversation">{part("conversation")}</section>'
            f'<section id="tools">{part("tools")}</section></div>'
            f'<section id="diff">{part("diff")}</section>'
            f'<section id="files">{part("files")}</section>'
            f'<section id="event-log"><h2>Events</h2><ol id="events" data-keys={attr(" ".join(EVENT_KEYS))}>'
            f"{events}</ol></section></main>")


# ---- the daemon page ----------------------------------------------------------------------

def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}s"


def _ago(ts: float | None, now: float) -> str:
    return "-" if not ts else f"{max(now - ts, 0):.0f}s ago"


def daemon_page(*, routes: Mapping[str, Mapping[str, Any]], probes: list[Mapping[str, Any]],
                series: Mapping[str, list[tuple[float, float]]], interval_s: float, health: Mapping[str, Any]) -> str:
    now = time.time()
    route_rows = "".join(
        f'<tr data-route={attr(name)} data-state={attr(r.get("state"))}><td>{esc(name)}</td>'
        f'<td class="state state-{esc(r.get("state"))}">{esc(r.get("state"))}</td>'
        f'<td>{esc(r.get("window_failures"))}/{esc(r.get("window_calls"))}</td><td>{esc(r.get("k"))}</td>'
        f'<td>{_secs(r.get("reopens_in_s"))}</td>'
        f'<td>{esc(r.get("last_error"))}</td><td>{_ago(r.get("last_failure_ts"), now)}</td></tr>'
        for name, r in sorted(routes.items()))
    routes_html = ('<table id="routes"><thead><tr><th>route</th><th>breaker</th><th>window failed/calls</th>'
                   "<th>k</th><th>reopens in</th><th>last error</th><th>last failure</th></tr></thead>"
                   f"<tbody>{route_rows}</tbody></table>"
                   + ("" if routes else '<p class="empty">No route has been called yet.</p>'))

    def yn(v: Any) -> str:
        return "-" if v is None else ("yes" if v else "no")

    probe_rows = "".join(
        f'<tr data-route={attr(p.get("route"))}><td>{esc(p.get("route"))}</td><td>{yn(p.get("stream_success"))}</td>'
        f'<td>{yn(p.get("tool_stream_success"))}</td><td>{yn(p.get("json_mode_success"))}</td>'
        f'<td>{esc(p.get("skipped_reason"))}</td><td>{esc(p.get("error"))}</td>'
        f'<td>{_ago(p.get("checked_at"), now)}</td></tr>' for p in probes)
    probes_html = ('<h2>Capability probes</h2><table class="probes"><thead><tr><th>route</th><th>stream</th>'
                   "<th>tool stream</th><th>JSON mode</th><th>skipped</th><th>error</th><th>checked</th></tr></thead>"
                   f"<tbody>{probe_rows}</tbody></table>"
                   + ("" if probes else '<p class="empty">No probe results yet.</p>'))
    charts = "".join(
        f'<figure><figcaption>{esc(name)}{"" if name == "runs_active" else f" (per {interval_s:g} s)"}'
        f"</figcaption>{sparkline_svg(name, points)}</figure>" for name, points in series.items())
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in health.items())
    return ('<main id="daemon"><h1>Daemon</h1>'
            f'<dl class="facts">{facts}</dl>'
            f'<section id="routes-section"><h2>Routes</h2>{routes_html}</section>'
            f'<section id="probes">{probes_html}</section>'
            f'<section id="metrics"><h2>Metrics, last hour</h2><div class="charts">{charts}</div></section></main>')
