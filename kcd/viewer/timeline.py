"""The per-turn attempt timeline as inline SVG (no script, no inline style: CSS classes).

One row per turn, each on its own time scale by default (a 2 ms retry and a 30 s stall both
stay legible), or on one scale shared by every row (`axis="shared"`: which turns were slow); a bar per attempt from its start to its end, the time to first token as a tick
inside it, the wait before the next retry as a dashed line after it, and a mark for each
route skipped because its breaker was open. Each group carries the data attributes the
browser tests read, and a `<title>` with the details for a hover.

Labels ("R1 503") go above their bar; one that would overlap the previous label of its row
goes below the bar instead, and one that would overlap there too is left out (its group says
`data-label="none"`: the hover and the table under the chart have every value).
"""

from __future__ import annotations

from kcd.viewer.markup import attr, esc
from kcd.viewer.rundata import Attempt, Skip, Turn

__all__ = ["AXES", "in_time_order", "label_width", "route_tags", "start_s", "timeline_svg"]

WIDTH, LABEL, ROW, BAR, TOP = 960, 170, 44, 16, 14  # TOP: room above each bar for its label
PLOT = WIDTH - LABEL - 70
# viewer.css draws labels at 10px; 6.2 units a character is wider than its digits and capitals,
# so an estimate that says "no overlap" is true in the browser too.
CHAR_W, LABEL_GAP = 6.2, 4.0
ABOVE, BELOW = -3.0, BAR + 12.0  # label baselines relative to the bar's top
AXES = ("turn", "shared")  # each row on its own scale | every row on the longest turn's


def start_s(row: Attempt | Skip) -> float:
    """When an attempt started (or a skip happened), seconds after its turn started."""
    return row.at_s if isinstance(row, Skip) else max(row.end_s - row.latency_s, 0.0)


def in_time_order(turn: Turn) -> list[Attempt | Skip]:
    """The turn's attempts and skips by start time; equal times by attempt number, a skip
    before the attempt logged after it (the fallback it caused)."""
    rows: list[Attempt | Skip] = [*turn.attempts, *turn.skips]
    return sorted(rows, key=lambda r: (start_s(r), r.after_attempts + 0.5 if isinstance(r, Skip) else r.attempt))


def label_width(text: str) -> float:
    return len(text) * CHAR_W


class _Labels:
    """One row's label lanes (above and below the bars): the right edge of each lane's last label."""

    def __init__(self) -> None:
        self.right = {ABOVE: float("-inf"), BELOW: float("-inf")}

    def place(self, x: float, text: str) -> float | None:
        """The baseline offset for a label at `x`, or None when both lanes are taken there."""
        for lane in (ABOVE, BELOW):
            if x >= self.right[lane] + LABEL_GAP:
                self.right[lane] = x + label_width(text)
                return lane
        return None


def _label(x: float, y: float, lane: float | None, text: str) -> str:
    if lane is None:
        return ""
    return f'<text class="attempt-label" x="{x:.1f}" y="{y + lane:.1f}">{esc(text)}</text>'


def _lane_name(lane: float | None) -> str:
    return "none" if lane is None else ("above" if lane == ABOVE else "below")


def _status(a: Attempt) -> str:
    if a.status is not None and a.status > 0:
        return str(a.status)
    return a.error or ("ok" if a.ok else "error")


def _x(t: float, span: float) -> float:
    return LABEL + (t / span) * PLOT if span > 0 else LABEL


def _attempt(a: Attempt, y: float, span: float, tag: str, labels: _Labels) -> str:
    start = start_s(a)
    x0, x1 = _x(start, span), _x(a.end_s, span)
    width = max(x1 - x0, 3.0)
    cls = f"attempt {'ok' if a.ok else 'failed'} kind-{a.kind}"
    text = f"{tag} {_status(a)}"
    lane = labels.place(x0, text)
    title = (f"turn {a.turn} attempt {a.attempt} ({a.kind}) {a.route}: {_status(a)}"
             f"{' ' + a.error if a.error and a.status else ''}, latency {a.latency_s:.3f}s"
             + (f", TTFT {a.ttft_s:.3f}s" if a.ttft_s is not None else "")
             + (f", retry in {a.retry_in_s:.2f}s" if a.retry_in_s else "")
             + f", breaker {a.breaker or '?'}")
    parts = [f'<g class={attr(cls)} data-turn="{a.turn}" data-attempt="{a.attempt}" data-route={attr(a.route)} '
             f'data-status={attr(_status(a))} data-kind={attr(a.kind)} data-breaker={attr(a.breaker or "")} '
             f'data-label="{_lane_name(lane)}">',
             f"<title>{esc(title)}</title>",
             f'<rect x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" height="{BAR}" rx="2"></rect>']
    if a.ttft_s is not None and 0 < a.ttft_s < a.latency_s:
        xt = _x(start + a.ttft_s, span)
        parts.append(f'<line class="ttft" x1="{xt:.1f}" x2="{xt:.1f}" y1="{y:.1f}" y2="{y + BAR:.1f}"></line>')
    if a.retry_in_s:
        xr = _x(a.end_s + a.retry_in_s, span)
        parts.append(f'<line class="retry-wait" x1="{x0 + width:.1f}" x2="{xr:.1f}" y1="{y + BAR / 2:.1f}" '
                     f'y2="{y + BAR / 2:.1f}"></line>')
    parts.append(f"{_label(x0, y, lane, text)}</g>")
    return "".join(parts)


def _skip(s: Skip, y: float, span: float, tag: str, labels: _Labels) -> str:
    x = _x(s.at_s, span)
    text = f"{tag} open"
    lane = labels.place(x - 6, text)
    return (f'<g class="skip" data-turn="{s.turn}" data-route={attr(s.route)} data-breaker="open" '
            f'data-label="{_lane_name(lane)}">'
            f"<title>{esc(s.text)}</title>{_label(x - 6, y, lane, text)}"
            f'<path d="M{x - 6:.1f},{y:.1f} L{x + 6:.1f},{y + BAR:.1f} M{x + 6:.1f},{y:.1f} L{x - 6:.1f},{y + BAR:.1f}">'
            f"</path></g>")


def route_tags(turns: list[Turn]) -> dict[str, str]:
    """R1, R2, ... per route, in the order the run first tried them (the chart's labels)."""
    tags: dict[str, str] = {}
    for turn in turns:
        for route in [a.route for a in turn.attempts] + [s.route for s in turn.skips]:
            tags.setdefault(route, f"R{len(tags) + 1}")
    return tags


def timeline_svg(turns: list[Turn], axis: str = "turn") -> str:
    """The chart for `turns` (an empty chart when there are none yet). Each row's own duration is
    printed at its right; with `axis="shared"` the full width is the longest turn's."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, not {axis!r}")
    height = max(len(turns), 1) * ROW + 10
    tags = route_tags(turns)
    shared = max((t.span_s for t in turns), default=0.0) or 1.0
    rows: list[str] = []
    for i, turn in enumerate(turns):
        y = TOP + 5 + i * ROW
        span = shared if axis == "shared" else turn.span_s or 1.0
        routes = sorted({a.route for a in turn.attempts} | {s.route for s in turn.skips})
        label = f"turn {turn.number}" + (f" · {len(routes)} routes" if len(routes) > 1 else "")
        rows.append(f'<g class="turn" data-turn="{turn.number}">'
                    f'<text class="label" x="4" y="{y + BAR - 4}">{esc(label)}</text>'
                    f'<line class="axis" x1="{LABEL}" x2="{LABEL + PLOT}" y1="{y + BAR + 4}" y2="{y + BAR + 4}"></line>'
                    f'<text class="scale" x="{LABEL + PLOT + 6}" y="{y + BAR - 4}">{turn.span_s or 0.0:.3g}s</text>')
        labels = _Labels()  # placed left to right, so each label only looks at the lanes' last ones
        rows.extend(_skip(r, y, span, tags[r.route], labels) if isinstance(r, Skip)
                    else _attempt(r, y, span, tags[r.route], labels) for r in in_time_order(turn))
        rows.append("</g>")
    empty = "" if turns else f'<text class="empty" x="{LABEL}" y="25">no attempts yet</text>'
    full = f' data-full-scale-s="{shared:.6g}"' if axis == "shared" else ""
    return (f'<svg id="timeline-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
            f'width="{WIDTH}" height="{height}" role="img" aria-label="attempts per turn" data-axis="{axis}"{full}>'
            f"{empty}{''.join(rows)}</svg>")
