"""The daemon's metrics over the last hour: a sampler the daemon owns.

Every `interval_s` it reads a few series of `DaemonMetrics` (summed over their labels) into
a bounded ring of `points` samples per series; the daemon page draws them. Started and
stopped with the daemon in its task group; nothing is kept across restarts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import anyio

from kcd.observe.prometheus import DaemonMetrics

__all__ = ["SERIES", "MetricsHistory"]

# (chart name, Prometheus series, "gauge": its value | "rate": its increase per interval)
SERIES: tuple[tuple[str, str, str], ...] = (
    ("runs_active", "kylecode_runs_active", "gauge"),
    ("runs_finished", "kylecode_runs_total", "rate"),
    ("attempts", "kylecode_attempts_total", "rate"),
    ("retries", "kylecode_retries_total", "rate"),
    ("fallbacks", "kylecode_fallbacks_total", "rate"),
    ("breaker_skips", "kylecode_route_rejected_total", "rate"),
    ("tool_calls", "kylecode_tool_calls_total", "rate"),
)


class MetricsHistory:
    """A ring of (wall time, value) per series in `SERIES`."""

    def __init__(self, metrics: DaemonMetrics, *, interval_s: float = 15.0, points: int = 240,
                 clock: Callable[[], float] = time.time):
        self.metrics = metrics
        self.interval_s = interval_s
        self.clock = clock
        self._rings: dict[str, deque[tuple[float, float]]] = {name: deque(maxlen=points) for name, _, _ in SERIES}
        self._last: dict[str, float] = {}

    def sample(self) -> None:
        now = self.clock()
        for name, series, kind in SERIES:
            metric = self.metrics.registry.scalar(series)
            value = metric.total() if metric is not None else 0.0
            if kind == "rate":
                previous = self._last.get(name)
                self._last[name] = value
                if previous is None:
                    continue  # the first reading is the baseline
                value = max(value - previous, 0.0)
            self._rings[name].append((now, value))

    def series(self) -> dict[str, list[tuple[float, float]]]:
        return {name: list(ring) for name, ring in self._rings.items()}

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Sample now and every `interval_s` until cancelled (the daemon's task group)."""
        self.sample()
        task_status.started()
        while True:
            await anyio.sleep(self.interval_s)
            self.sample()
