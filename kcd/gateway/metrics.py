"""Request-level series of the OpenAI endpoint, added to the daemon's live metrics.

Attempts are already counted per route by `DaemonMetrics.attempt`; these add
what only the endpoint knows: requests by model name and status, and the
daemon's own added time per request (`x-kylecode-overhead-ms`: total time minus upstream time).
Registered once per daemon on the same registry, so `/v1/metrics` shows them.
"""

from __future__ import annotations

from kcd.observe.prometheus import DaemonMetrics

__all__ = ["EndpointMetrics"]

# Overhead is sub-millisecond when healthy: finer buckets than the GenAI durations.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class EndpointMetrics:
    def __init__(self, metrics: DaemonMetrics):
        r = metrics.registry
        self.requests = r.counter("kylecode_gateway_requests_total",
                                  "OpenAI-endpoint requests by model name, status and stream mode.",
                                  ("model", "status", "mode"))
        self.overhead = r.histogram("kylecode_gateway_overhead_seconds",
                                    "Time the daemon added to a request: total minus upstream time "
                                    "minus retry waits.", ("model",), OVERHEAD_BUCKETS)
        self.midstream_errors = r.counter(
            "kylecode_gateway_midstream_errors_total",
            "Passthrough streams ended with an in-band error after text reached the client.", ("model",))
        self.client_disconnects = r.counter(
            "kylecode_gateway_client_disconnects_total",
            "Requests whose client left before the answer was complete; their turn was cancelled.",
            ("model", "mode"))

    def request(self, model: str, status: int, mode: str) -> None:
        self.requests.inc((model, str(status), mode))

    def client_disconnected(self, model: str, mode: str) -> None:
        # 499: nginx's "client closed request", so dashboards keyed on status see it too.
        self.requests.inc((model, "499", mode))
        self.client_disconnects.inc((model, mode))

    def served(self, model: str, overhead_s: float) -> None:
        self.overhead.observe((model,), overhead_s)
