"""A metric's recent history as a small inline SVG line chart, drawn on the server."""

from __future__ import annotations

from kcd.viewer.markup import attr, esc

__all__ = ["sparkline_svg"]

W, H, PAD = 320, 60, 4


def sparkline_svg(name: str, points: list[tuple[float, float]], *, unit: str = "") -> str:
    """`points` are (wall time, value), oldest first; the chart spans their time range."""
    head = (f'<svg class="metric-chart" data-metric={attr(name)} data-points="{len(points)}" '
            f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
            f'aria-label={attr(name)}><title>{esc(name)}</title>')
    if len(points) < 2:
        return head + f'<text class="empty" x="{PAD}" y="{H / 2:.0f}">collecting samples</text></svg>'
    t0, t1 = points[0][0], points[-1][0]
    top = max(v for _, v in points)
    span_t = (t1 - t0) or 1.0
    span_v = top or 1.0
    coords = " ".join(f"{PAD + (t - t0) / span_t * (W - 2 * PAD):.1f},{H - PAD - v / span_v * (H - 2 * PAD):.1f}"
                      for t, v in points)
    last = points[-1][1]
    return (head + f'<polyline points="{coords}"></polyline>'
            f'<text class="value" x="{W - PAD}" y="12" text-anchor="end">{last:g}{esc(unit)} (max {top:g})</text>'
            "</svg>")
