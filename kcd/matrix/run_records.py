"""What a finished run recorded about its providers, read from its run directory.

`read_run_records(run_dir)` gathers, per attempt in order, what `kcd.matrix.from_run`
needs to replay the run on the simulator: the `llm.attempt` events (route, kind, ok,
status, content type, latency, classification, breaker state), the per-attempt response
records under `raw/responses/` (TTFT, SSE events, missing terminator, HTML, Retry-After,
the body as received), the error records under `errors/`, the circuit-open skips, the
chain and resilience settings of the resolved config and the outcome (`result.json`).

It never reads what was sent (`meta/requests/`, `raw/requests/`, the task or the
prompts): a scenario made from these records cannot carry a request body. Bodies are
returned as received; the caller scrubs them. Unreadable or missing files leave fields empty.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

import msgspec

from kcd.api.backoff import parse_retry_after

__all__ = ["AttemptRecord", "RunRecords", "SkipRecord", "read_run_records"]

MAX_BODY_BYTES = 64 * 1024  # a longer error body or page is cut: its start is what classifies it
_SKIP = re.compile(r"Skipping direct call for route (\S+) \(([a-z_]+)(?:, reopens in ([0-9.]+)s)?\)")


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One request to one route, as the run saw the response."""

    seq: int  # the llm.attempt event's number in the run (orders attempts and skips)
    turn: int
    attempt: int
    kind: str  # primary | retry | fallback
    route: str
    ok: bool
    status: int | None = None
    content_type: str | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    streamed: bool = False
    error: str | None = None  # classification (errors/turn_N.json's error_type when present)
    sse_events: int = 0
    no_terminator: bool = False
    html_detected: bool = False
    retry_after_s: float | None = None
    body: str | None = None  # the response body as received (unscrubbed), failed attempts only
    breaker: str | None = None  # the route's breaker state after the attempt


class SkipRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A route the run did not call because its circuit was open."""

    seq: int
    turn: int
    route: str
    reason: str  # failure_rate | retry_after | forced | half_open_busy | ...
    reopens_in_s: float | None = None


class RunRecords(msgspec.Struct, kw_only=True):
    run_id: str | None = None
    created_at: str | None = None
    primary: str | None = None
    fallbacks: list[str] = []
    stream: bool | None = None
    native_tools: bool | None = None
    max_steps: int | None = None
    timeouts: dict[str, float] = {}  # the primary's, as the resolved config wrote them
    retry: dict[str, float] = {}
    duration_s: float | None = None
    completed: bool | None = None
    exit_reason: str | None = None
    error_type: str | None = None
    served_route: str | None = None
    attempts: list[AttemptRecord] = []
    skips: list[SkipRecord] = []
    fallbacks_seen: list[dict[str, Any]] = []  # provider_metrics.json fallbacks: from, to, reason
    stream_overrides: list[dict[str, Any]] = []


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _events(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    try:
        with (run_dir / "meta" / "events.jsonl").open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    out.append(event)
    except OSError:
        pass
    return out


def _body(run_dir: Path, stem: str) -> str | None:
    """The body as received: the base64 copy when it agrees with the text excerpt (the run's
    redaction may have masked a secret's base64 inside it, which decodes to garbage), else
    the excerpt, which the run already redacted as text."""
    folder = run_dir / "raw" / "responses"
    try:
        excerpt: bytes | None = (folder / f"{stem}.raw_excerpt.txt").read_bytes()
    except OSError:
        excerpt = None
    try:
        full = base64.b64decode(b"".join((folder / f"{stem}.body.b64").read_bytes().split()), validate=True)
    except (OSError, binascii.Error, ValueError):
        full = None
    raw = full if full is not None and (excerpt is None or full.startswith(excerpt.rstrip())) else excerpt
    if raw is None:
        return None
    return raw[:MAX_BODY_BYTES].decode("utf-8", "replace")


def _error_attempts(run_dir: Path) -> dict[tuple[int, int], dict[str, Any]]:
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for path in (run_dir / "errors").glob("turn_*.json"):
        doc = _dict(_json(path))
        turn = doc.get("turn")
        for a in doc.get("attempts") or ():
            if isinstance(a, dict) and isinstance(turn, int) and isinstance(a.get("attempt"), int):
                out[(turn, a["attempt"])] = a
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _attempt(run_dir: Path, seq: int, data: dict[str, Any], errors: dict[tuple[int, int], dict[str, Any]]) -> \
        AttemptRecord:
    turn, k = int(data.get("turn") or 0), int(data.get("attempt") or 0)
    stem = f"turn_{turn}_attempt_{k}"
    response = _dict(_json(run_dir / "raw" / "responses" / f"{stem}.json"))
    error = errors.get((turn, k), {})
    headers = {str(h).lower(): v for h, v in _dict(response.get("headers")).items()}
    retry_after = _number(_dict(error.get("retry_schedule")).get("retry_after_s"))
    if retry_after is None and isinstance(headers.get("retry-after"), str):
        retry_after = parse_retry_after(headers["retry-after"])
    ok = data.get("ok") is True
    status = data.get("status") if isinstance(data.get("status"), int) else response.get("status_code")
    return AttemptRecord(
        seq=seq, turn=turn, attempt=k, kind=str(data.get("kind") or ""), route=str(data.get("route") or ""),
        ok=ok, status=status if isinstance(status, int) else None,
        content_type=data.get("content_type") or response.get("content_type"),
        latency_s=_number(data.get("latency_s")) or _number(response.get("latency_s")),
        ttft_s=_number(response.get("ttft_s")), streamed=bool(data.get("stream") or response.get("streamed")),
        error=None if ok else str(error.get("error_type") or data.get("error") or "unknown"),
        sse_events=int(response.get("sse_events") or 0), no_terminator=response.get("no_terminator") is True,
        html_detected=response.get("html_detected") is True, retry_after_s=retry_after,
        body=None if ok else _body(run_dir, stem), breaker=data.get("breaker"))


def _primary_settings(config: dict[str, Any], primary: str | None) -> tuple[list[str], dict, dict, bool | None]:
    providers = _dict(config.get("providers"))
    entry = next((m for m in providers.get("models") or () if isinstance(m, dict) and m.get("id") == primary), {})
    routing = _dict(entry.get("routing") or entry.get("routing_preferences"))
    fallbacks = [r for r in routing.get("fallback_models") or () if isinstance(r, str)]
    timeouts = {**_dict(providers.get("timeouts")), **_dict(entry.get("timeouts"))}
    retry = {**_dict(providers.get("retry")), **_dict(entry.get("retry"))}
    native = _dict(config.get("provider_tools")).get("use_native")
    return fallbacks, timeouts, retry, native if isinstance(native, bool) else None


def read_run_records(run_dir: Path) -> RunRecords:
    run = _dict(_json(run_dir / "meta" / "run.json"))
    result = _dict(_json(run_dir / "result.json"))
    metrics = _dict(_json(run_dir / "meta" / "provider_metrics.json"))
    primary = run.get("route") if isinstance(run.get("route"), str) else None
    fallbacks, timeouts, retry, native = _primary_settings(_dict(run.get("resolved_config")), primary)
    errors = _error_attempts(run_dir)
    attempts: list[AttemptRecord] = []
    skips: list[SkipRecord] = []
    for i, event in enumerate(_events(run_dir)):
        data = _dict(event.get("data"))
        seq = event.get("seq") if isinstance(event.get("seq"), int) else i
        if event.get("type") == "llm.attempt":
            attempts.append(_attempt(run_dir, seq, data, errors))
        elif event.get("type") == "run.start" and isinstance(data.get("native_tools"), bool):
            native = data["native_tools"]
        elif event.get("type") == "policy" and data.get("marker") == "circuit-open":
            m = _SKIP.match(str(data.get("text") or ""))
            if m:
                skips.append(SkipRecord(seq=seq, turn=int(data.get("turn") or 0), route=m.group(1),
                                        reason=m.group(2), reopens_in_s=float(m.group(3)) if m.group(3) else None))
    timings = _dict(run.get("timings"))
    return RunRecords(
        run_id=run.get("run_id") or result.get("run_id"), created_at=timings.get("created_at"), primary=primary,
        fallbacks=fallbacks, stream=run.get("stream") if isinstance(run.get("stream"), bool) else None,
        native_tools=native, max_steps=run.get("max_steps") if isinstance(run.get("max_steps"), int) else None,
        timeouts={k: v for k, v in timeouts.items() if _number(v) is not None},
        retry={k: v for k, v in retry.items() if _number(v) is not None},
        duration_s=_number(timings.get("duration_s")), completed=result.get("completed"),
        exit_reason=result.get("exit_reason"), error_type=result.get("error_type"),
        served_route=result.get("served_route"), attempts=sorted(attempts, key=lambda a: a.seq),
        skips=skips, fallbacks_seen=[f for f in metrics.get("fallbacks") or () if isinstance(f, dict)],
        stream_overrides=[o for o in metrics.get("stream_overrides") or () if isinstance(o, dict)])
