"""Per-route attempt timeouts and retry settings of the agent config.

Both blocks may appear under `providers` (the provider-wide default) and under
a `providers.models[]` entry; a route gets the provider-wide keys with its own
entry's keys layered on top, key by key (`AgentConfig.timeouts_for`,
`AgentConfig.retry_for`). Every key is optional: only the keys written are
returned, so the consumer's own defaults (`kcd.providers.attempt.Timeouts`,
`kcd.providers.retry.RetryPolicy`) fill in the rest. The field names match
those classes exactly.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["RouteRetry", "RouteTimeouts", "layered"]

Seconds = Annotated[float, Meta(gt=0)]


class _Layer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    def set_values(self) -> dict[str, float | int]:
        """The keys written (non-null), in field order."""
        return {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}


class RouteTimeouts(_Layer, kw_only=True, forbid_unknown_fields=True):
    """Deadlines of one attempt, in seconds (> 0)."""

    connect: Seconds | None = None  # TCP/TLS connect and waiting for a pooled connection
    write: Seconds | None = None  # sending the request body
    ttft: Seconds | None = None  # streams: until the first content event
    idle: Seconds | None = None  # no bytes at all once the headers are in
    progress: Seconds | None = None  # bytes but no content, after the first token
    total: Seconds | None = None  # the whole attempt


class RouteRetry(_Layer, kw_only=True, forbid_unknown_fields=True):
    """Retry and fallback budgets: same-route retries, attempts per turn, backoff, deadlines."""

    retries_per_route: Annotated[int, Meta(ge=0)] | None = None
    max_attempts_per_turn: Annotated[int, Meta(ge=1)] | None = None
    backoff_base_s: Seconds | None = None
    backoff_cap_s: Seconds | None = None
    retry_after_inline_max_s: Annotated[float, Meta(ge=0)] | None = None  # 0: never wait inline
    turn_deadline_s: Seconds | None = None
    all_open_max_wait_s: Seconds | None = None


def layered(base: _Layer | None, top: _Layer | None) -> dict[str, float | int]:
    """`base`'s written keys with `top`'s written keys over them."""
    out = base.set_values() if base is not None else {}
    if top is not None:
        out.update(top.set_values())
    return out
