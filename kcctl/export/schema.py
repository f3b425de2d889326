"""The partial event schema: typed msgspec Structs declaring only what the summary reads.

Unknown fields are skipped by the decoder without being built, and every Struct is
`gc=False` (they hold no cycles), so decoding a line allocates little the cyclic garbage
collector has to track: together about twice the speed of a generic `msgspec.json.decode`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Union

import msgspec


class Base(msgspec.Struct, tag_field="event", gc=False):
    ts: datetime | float | None = None
    run_id: str | None = None


class Attrs(msgspec.Struct, gc=False):
    input_tokens: int | None = msgspec.field(default=None, name="gen_ai.usage.input_tokens")
    output_tokens: int | None = msgspec.field(default=None, name="gen_ai.usage.output_tokens")


class Attempt(Base, tag="llm.attempt"):
    route: str | None = None
    status_code: int | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    outcome: str | None = None  # "ok" or an error class
    ok: bool | None = None  # only consulted when `outcome` is absent
    kind: str | None = None  # "primary" | "retry" | "fallback"
    retry: bool | None = None
    stream: bool | None = None
    html: bool | None = None
    html_detected: bool | None = None
    attrs: Attrs | None = None


class Fallback(Base, tag="fallback"):
    pass


class PMSummary(msgspec.Struct, gc=False):
    calls: int = 0
    success: int | None = None
    errors: int | None = None
    html_errors: int = 0
    circuit_skips: int | None = None
    stream_overrides: int | None = None
    tool_overrides: int | None = None


class PMUsage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class PMRoute(msgspec.Struct, gc=False):
    calls: int = 0
    success: int | None = None
    errors: int | None = None
    stream_calls: int = 0
    html_errors: int = 0
    retries: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    status_codes: dict[str, int] | None = None  # None, not {}: no empty dict built per route
    usage: PMUsage | None = None


class Metrics(Base, tag="provider_metrics"):
    summary: PMSummary | None = None
    routes: dict[str, PMRoute] | None = None
    # Only counted, so left undecoded.
    fallbacks: list[msgspec.Raw] | None = None
    stream_overrides: list[msgspec.Raw] | None = None
    tool_overrides: list[msgspec.Raw] | None = None
    circuit_skips: list[msgspec.Raw] | int | None = None


# Types the exporter passes through without aggregating; declared so they decode on the
# fast path. Any other `event` value takes the slower envelope path below.
_PASSIVE = tuple(msgspec.defstruct(f"_Passive{i}", [], bases=(Base,), tag=tag, gc=False) for i, tag in enumerate(
    ("run.start", "run.end", "circuit.open", "circuit.half_open", "circuit.close", "probe")))
AGGREGATED = frozenset({"llm.attempt", "fallback", "provider_metrics"})


class Envelope(msgspec.Struct, gc=False):
    """Any other event: only what filters, runs and the time window need."""

    event: str
    ts: datetime | float | None = None
    run_id: str | None = None


EVENT_DECODER = msgspec.json.Decoder(Union[(Attempt, Fallback, Metrics, *_PASSIVE)])  # noqa: UP007
ENVELOPE_DECODER = msgspec.json.Decoder(Envelope)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_ts(text: str) -> datetime:
    """ISO-8601 (naive means UTC) or Unix seconds → an aware datetime; ValueError otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        dt = datetime.fromisoformat(text.strip())
        return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    aware_ts = aware(seconds)
    if aware_ts is None:
        raise ValueError(f"{text!r} is out of range")
    return aware_ts


def aware(ts: datetime | float) -> datetime | None:
    """Naive (meaning UTC) or Unix seconds → aware; None for seconds out of range."""
    if isinstance(ts, datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
    try:
        return datetime.fromtimestamp(ts, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def unix_nano(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000
