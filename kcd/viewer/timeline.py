"""The per-turn attempt timeline as inline SVG (no script, no inline style: CSS classes).

One row per turn, each on its own time scale (a 2 ms retry and a 30 s stall both stay
legible); a bar per attempt from its start to its end, the time to first token as a tick
inside it, the wait before the next retry as a dashed line after it, and a mark for each
route skipped because its breaker was open. Each group carries the data attributes the
browser tests read, and a `<title>` with the details for a hover.
"""

from __future__ import annotations

from kcd.viewer.markup import attr, esc
from kcd.viewer.rundata import Attempt, Skip, Turn

__all__ = ["route_tags", "timeline_svg"]

WIDTH, LABEL, ROW, BAR, TOP = 960, 170, 44, 16, 14  # TOP: room above each bar for its label
PLOT = WIDTH - LABEL - 70


def _status(a: Attempt) -> str:
    if a.status is not None and a.status > 0:
        return str(a.status)
    return a.error or ("ok" if a.ok else "error")


def _x(t: float, span: float) -> float:
    return LABEL + (t / span) * PLOT if span > 0 else LABEL


def _attempt(a: Attempt, y: float, span: float, tag: str) -> str:
    start = max(a.end_s - a.latency_s, 0.0)
    x0, x1 = _x(start, span), _x(a.end_s, span)
    width = max(x1 - x0, 3.0)
    cls = f"attempt {'ok' if a.ok else 'failed'} kind-{a.kind}"
    title = (f"turn {a.turn} attempt {a.attempt} ({a.kind}) {a.route}: {_status(a)}"
             f"{' ' + a.error if a.error and a.status else ''}, latency {a.latency_s:.3f}s"
             + (f", TTFT {a.ttft_s:.3f}s" if a.ttft_s is not None else "")
             + (f", retry in {a.retry_in_s:.2f}s" if a.retry_in_s else "")
             + f", breaker {a.breaker or '?'}")
    parts = [f'<g class={attr(cls)} data-turn="{a.turn}" data-attempt="{a.attempt}" data-route={attr(a.route)} '
             f'data-status={attr(_status(a))} data-kind={attr(a.kind)} data-breaker={attr(a.breaker or "")}>',
             f"<title>{esc(title)}</title>",
             f'<rect x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" height="{BAR}" rx="2"></rect>']
    if a.ttft_s is not None and 0 < a.ttft_s < a.latency_s:
        xt = _x(start + a.ttft_s, span)
        parts.append(f'<line class="ttft" x1="{xt:.1f}" x2="{xt:.1f}" y1="{y:.1f}" y2="{y + BAR:.1f}"></line>')
    if a.retry_in_s:
        xr = _x(a.end_s + a.retry_in_s, span)
        parts.append(f'<line class="retry-wait" x1="{x0 + width:.1f}" x2="{xr:.1f}" y1="{y + BAR / 2:.1f}" '
                     f'y2="{y + BAR / 2:.1f}"></line>')
    parts.append(f'<text class="attempt-label" x="{x0:.1f}" y="{y - 3:.1f}">{esc(tag)} {esc(_status(a))}</text></g>')
    return "".join(parts)


def _skip(s: Skip, y: float, span: float, tag: str) -> str:
    x = _x(s.at_s, span)
    return (f'<g class="skip" data-turn="{s.turn}" data-route={attr(s.route)} data-breaker="open">'
            f"<title>{esc(s.text)}</title>"
            f'<text class="attempt-label" x="{x - 6:.1f}" y="{y - 3:.1f}">{esc(tag)} open</text>'
            f'<path d="M{x - 6:.1f},{y:.1f} L{x + 6:.1f},{y + BAR:.1f} M{x + 6:.1f},{y:.1f} L{x - 6:.1f},{y + BAR:.1f}">'
            f"</path></g>")


def route_tags(turns: list[Turn]) -> dict[str, str]:
    """R1, R2, ... per route, in the order the run first tried them (the chart's labels)."""
    tags: dict[str, str] = {}
    for turn in turns:
        for route in [a.route for a in turn.attempts] + [s.route for s in turn.skips]:
            tags.setdefault(route, f"R{len(tags) + 1}")
    return tags


def timeline_svg(turns: list[Turn]) -> str:
    """The chart for `turns` (an empty chart when there are none yet)."""
    height = max(len(turns), 1) * ROW + 10
    tags = route_tags(turns)
    rows: list[str] = []
    for i, turn in enumerate(turns):
        y = TOP + 5 + i * ROW
        span = turn.span_s or 1.0
        routes = sorted({a.route for a in turn.attempts} | {s.route for s in turn.skips})
        label = f"turn {turn.number}" + (f" · {len(routes)} routes" if len(routes) > 1 else "")
        rows.append(f'<g class="turn" data-turn="{turn.number}">'
                    f'<text class="label" x="4" y="{y + BAR - 4}">{esc(label)}</text>'
                    f'<line class="axis" x1="{LABEL}" x2="{LABEL + PLOT}" y1="{y + BAR + 4}" y2="{y + BAR + 4}"></line>'
                    f'<text class="scale" x="{LABEL + PLOT + 6}" y="{y + BAR - 4}">{span:.3g}s</text>')
        rows.extend(_attempt(a, y, span, tags[a.route]) for a in turn.attempts)
        rows.extend(_skip(s, y, span, tags[s.route]) for s in turn.skips)
        rows.append("</g>")
    empty = "" if turns else f'<text class="empty" x="{LABEL}" y="25">no attempts yet</text>'
    return (f'<svg id="timeline-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
            f'width="{WIDTH}" height="{height}" role="img" aria-label="attempts per turn">'
            f"{empty}{''.join(rows)}</svg>")
