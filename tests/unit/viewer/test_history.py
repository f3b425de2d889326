"""The metrics sampler: a bounded ring per series; counters as increases per interval."""

from __future__ import annotations

import anyio

from kcd.observe.prometheus import DaemonMetrics
from kcd.viewer.history import SERIES, MetricsHistory
from kcd.viewer.sparkline import sparkline_svg


def test_samples_are_bounded_and_counters_become_increases() -> None:
    metrics = DaemonMetrics()
    now = [0.0]
    history = MetricsHistory(metrics, interval_s=15, points=5, clock=lambda: now[0])
    for i in range(12):
        metrics.attempt("mock/dev", "mock", "dev", ok=True, error_type=None, duration_s=0.1, ttft_s=None,
                        input_tokens=None, output_tokens=None, retry=False, html=False, status_code=200)
        metrics.attempt("mock/b", "mock", "b", ok=True, error_type=None, duration_s=0.1, ttft_s=None,
                        input_tokens=None, output_tokens=None, retry=False, html=False, status_code=200)
        metrics.run_started()
        history.sample()
        now[0] += 15
    series = history.series()
    assert set(series) == {name for name, _, _ in SERIES}
    assert len(series["attempts"]) == 5 and all(v == 2.0 for _, v in series["attempts"])  # both routes summed
    assert [v for _, v in series["runs_active"]] == [8.0, 9.0, 10.0, 11.0, 12.0]
    assert 'data-points="5"' in sparkline_svg("attempts", series["attempts"])
    assert "collecting samples" in sparkline_svg("x", [])


def test_the_sampler_runs_until_cancelled() -> None:
    history = MetricsHistory(DaemonMetrics(), interval_s=0.01, points=240)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(history.run)
            await anyio.sleep(0.2)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert len(history.series()["runs_active"]) >= 3
