"""When to try an HTTP call again: the rules kcd's dispatcher and kcctl's exporter share.

- `full_jitter(base, cap, index, rng)`: the wait before retry number `index` (0-based),
  uniform over [0, min(cap, base * 2**index)]. Full jitter, not equal or decorrelated:
  many clients that failed together do not retry in lockstep.
- `parse_retry_after(value)`: a Retry-After header as seconds, delta-seconds or HTTP-date
  (RFC 9110 §10.2.3); None when absent or unreadable, never negative.
- `retry_after_from_headers(headers)`: the same from a header mapping with lower-cased
  names, honouring the millisecond variants some providers send first.
- `retryable_status(status)`: the statuses worth another attempt at the same endpoint when
  nothing else is known (408, 429, 5xx but 501). The dispatcher has a richer decision table
  (`kcd.providers.retry.decide`); this is the rule for plain HTTP sinks.

Pure and standard library only: kcctl imports it, and its start-up is measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

__all__ = ["RETRY_AFTER_MS_HEADERS", "full_jitter", "parse_retry_after", "retry_after_from_headers",
           "retryable_status"]

RETRY_AFTER_MS_HEADERS = ("retry-after-ms", "x-ms-retry-after-ms")


def full_jitter(base: float, cap: float, index: int, rng: Callable[[], float]) -> float:
    """Seconds to wait before retry `index` (0-based): uniform over [0, min(cap, base·2^index)]."""
    if index < 0:
        raise ValueError("retry index must be >= 0")
    ceiling = cap
    if index < 64:  # beyond that base * 2**index is past any sane cap (and overflows floats)
        ceiling = min(cap, base * (2 ** index))
    return rng() * ceiling


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After value (delta-seconds or HTTP-date) as seconds from now; None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # only for the rare HTTP-date form

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_from_headers(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Retry-After from lower-cased headers, the millisecond variants first."""
    for name in RETRY_AFTER_MS_HEADERS:
        raw = headers.get(name)
        if raw:
            try:
                return max(0.0, float(raw) / 1000.0)
            except ValueError:
                pass
    return parse_retry_after(headers.get("retry-after"), now=now)


def retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth another attempt when nothing else is known."""
    return status in (408, 429) or (status >= 500 and status != 501)
