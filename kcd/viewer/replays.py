"""The replay parts of a run page: the run a replay replays, its report, the runs replaying a run.

`kcctl replay` makes a replay an ordinary run with `replay_of` set and a `replay.json` written
before its `run.end` (kcd/replay). What the caller may open is decided by `routes` with the
access rule; this module reads the report and draws what it is given.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import msgspec

from kcd.api.types import ReplayReport, RunInfo
from kcd.errors import KcError
from kcd.viewer.confine import read_confined
from kcd.viewer.markup import attr, esc

__all__ = ["REPORT_FILE", "ReplayView", "load_report", "replay_of_line", "replays_list", "report_attrs",
           "report_section"]

REPORT_FILE = "replay.json"  # kcd.replay.service.REPORT, read here without importing the replay machinery


class ReplayView(msgspec.Struct, kw_only=True):
    """What a run page shows about replays, already loaded and access-checked."""

    recorded: str | None = None  # the run this run replays
    recorded_visible: bool = False  # whether the caller may open the recorded run's page
    report: ReplayReport | None = None
    report_error: str | None = None  # replay.json present but not readable
    replays: list[RunInfo] = []  # the caller's visible replays of this run, newest first


def load_report(run_dir: Path) -> tuple[ReplayReport | None, str | None]:
    """(the report, None), (None, None) while it is not written, or (None, why it is unreadable).
    Blocking: call it in a worker thread."""
    try:
        data = read_confined(run_dir, REPORT_FILE)
    except KcError as exc:
        return None, (None if exc.code == "file_not_found" else str(exc))
    try:
        return msgspec.json.decode(data, type=ReplayReport), None
    except msgspec.DecodeError as exc:  # DecodeError covers ValidationError too
        return None, f"{REPORT_FILE} is not a replay report: {exc}"


def _href(run_id: str) -> str:
    return f"/ui/runs/{quote(run_id, safe='')}"


def replay_of_line(view: ReplayView) -> str:
    """"replay of RUN", a link when the caller may open RUN ('' for a run that is no replay)."""
    if not view.recorded:
        return ""
    if view.recorded_visible:
        target = f'<a class="replay-of" href={attr(_href(view.recorded))}>{esc(view.recorded)}</a>'
    else:  # the id is in the caller's own run info; the page behind it is not theirs
        target = f'{esc(view.recorded)} <span class="note">(not yours to view)</span>'
    return f'<p id="replay-of" data-replay-of={attr(view.recorded)}>replay of {target}</p>'


def report_attrs(view: ReplayView) -> str:
    """The report's state as attributes: `data-divergences` once it is written."""
    if view.report is None:
        return ' data-state="pending"' if view.report_error is None else ' data-state="unreadable"'
    return f' data-state="written" data-divergences="{view.report.divergences_total}"'


def report_section(view: ReplayView, live: bool) -> str:
    """The inner HTML of `<section id="replay">`: the comparison, divergence by divergence,
    in a `div.replay-report` carrying the section's attributes (viewer.js copies them when it
    refreshes the section at the run's end)."""
    return f'<div class="replay-report"{report_attrs(view)}><h2>Replay report</h2>{_report_body(view, live)}</div>'


def _report_body(view: ReplayView, live: bool) -> str:
    if view.report_error:
        return f'<p class="error">{esc(view.report_error)}</p>'
    r = view.report
    if r is None:
        when = "is written when the replay ends" if live else "was not written (the replay did not finish)"
        return f'<p class="empty">The report {esc(when)}.</p>'
    verdict = ("no divergence" if r.identical else
               f"{r.divergences_total or len(r.divergences)} divergence(s)")
    facts = [("result", verdict), ("turns compared", r.turns_compared), ("tool calls compared", r.calls_compared),
             ("turns recorded / replayed", f"{r.recorded_turns} / {r.replayed_turns}"),
             ("exit reason recorded / replayed", f"{r.recorded_exit_reason} / {r.replayed_exit_reason}"),
             ("workspace", r.workspace), ("responses served", f"{r.responses_served} of {r.responses_recorded}"),
             ("treated as volatile", ", ".join(r.normalised))]
    dl = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    rows = "".join(
        f'<tr class="divergence" data-turn="{d.turn}" data-call={attr("" if d.call_index is None else d.call_index)} '
        f'data-tool={attr(d.tool or "")} data-kind={attr(d.kind)} data-field={attr(d.field)}>'
        f"<td>{d.turn}</td><td>{esc(d.call_index)}</td><td>{esc(d.tool)}</td><td>{esc(d.kind)}</td>"
        f"<td><code>{esc(d.field)}</code></td><td><pre class=\"recorded\">{esc(d.recorded)}</pre></td>"
        f"<td><pre class=\"replayed\">{esc(d.replayed)}</pre></td></tr>" for d in r.divergences)
    capped = (f'<p class="note">The first {len(r.divergences)} of {r.divergences_total} are listed.</p>'
              if r.divergences_total > len(r.divergences) else "")
    table = ('<table id="divergences"><thead><tr><th>turn</th><th>call</th><th>tool</th><th>kind</th><th>field</th>'
             f"<th>recorded</th><th>replayed</th></tr></thead><tbody>{rows}</tbody></table>{capped}"
             if r.divergences else "")
    return f'<dl class="facts">{dl}</dl>{table}'


def replays_list(view: ReplayView) -> str:
    """`<section id="replays">` on a recorded run's page ('' when it has none the caller may see)."""
    if not view.replays:
        return ""
    items = "".join(
        f'<li data-run-id={attr(r.id)} data-status={attr(r.status)}><a class="replay-run" href={attr(_href(r.id))}>'
        f"{esc(r.id)}</a> {esc(r.status)} {esc(r.exit_reason)} <span class=\"note\">{esc(r.created_at)}</span></li>"
        for r in view.replays)
    return f'<section id="replays"><h2>Replays of this run</h2><ul>{items}</ul></section>'
