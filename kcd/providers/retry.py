"""Retry and fallback decisions for one failed attempt, and the backoff schedule.

`decide` is the per-outcome decision table (HTTP status, timeout class,
stream failure, HTML body, OpenRouter's 402/403 conventions): given a typed `ProviderFailure` it says whether the same route may be tried
again, whether the turn may move down the chain, and how the breaker should
treat the outcome. It is pure: budgets (attempts, turn deadline, inline waits)
are applied by the dispatcher, which owns the one retry loop.

Breaker treatment, per outcome:
- ``counted``: a failure toward the trip count (transient, provider-side);
- ``ignored``: neither success nor failure (request faults: context length,
  content policy, other 400/422) — the dispatcher calls ``record_ignored``;
- neither: a failure the breaker records but never trips on (auth, billing,
  unknown model, our own config) — ``record_failure(counted=False)``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import msgspec

from kcd.api.backoff import full_jitter, retry_after_from_headers
from kcd.providers import errors as E
from kcd.providers.errors import ProviderFailure

__all__ = [
    "Decision",
    "RetryPolicy",
    "backoff_delay",
    "decide",
    "inline_wait_ok",
    "same_route_retries",
]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Retry budgets, backoff and deadlines for one turn."""

    retries_per_route: int = 2  # same-route retries after the first attempt (transient failures only)
    max_attempts_per_turn: int = 4  # all attempts of a turn, fallbacks included
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    retry_after_inline_max_s: float = 60.0  # wait inline for a Retry-After up to this (and within budget)
    turn_deadline_s: float = 900.0
    all_open_max_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if self.retries_per_route < 0 or self.max_attempts_per_turn < 1:
            raise ValueError("retries_per_route must be >= 0 and max_attempts_per_turn >= 1")
        if self.backoff_base_s < 0 or self.backoff_cap_s < 0:
            raise ValueError("backoff_base_s and backoff_cap_s must be >= 0")


class Decision(msgspec.Struct, frozen=True):
    retry_same_route: bool  # another attempt on this route is allowed (budget permitting)
    fall_over: bool  # moving to the next route in the chain is allowed
    counted: bool  # counts toward the breaker
    ignored: bool  # neither success nor failure for the breaker
    retry_after_s: float | None  # the provider's Retry-After, unclamped (the breaker clamps)
    reason: str  # short machine reason for markers: "http_503", "upstream_html", "timeout.ttft", ...
    hint: str | None  # what to fix, for fail-fast errors
    # Refinements of the three verdicts above:
    retry_limit: int | None = None  # cap on same-route retries for this class (None: the policy's)
    flag: str | None = None  # operator flag for BreakerBoard.flag: "auth_error" / "billing_error"
    chain: str | None = None  # error-class chain to try instead: "context_window" / "content_policy"


def backoff_delay(policy: RetryPolicy, retry_index: int,
                  rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff before same-route retry number `retry_index` (0-based):
    U(0, min(cap, base·2^i)). Full jitter keeps concurrent runs from retrying in lockstep."""
    return full_jitter(policy.backoff_base_s, policy.backoff_cap_s, retry_index, rng)


def same_route_retries(policy: RetryPolicy, decision: Decision) -> int:
    """How many same-route retries this failure class allows in total."""
    if not decision.retry_same_route:
        return 0
    if decision.retry_limit is None:
        return policy.retries_per_route
    return min(policy.retries_per_route, decision.retry_limit)


def inline_wait_ok(policy: RetryPolicy, retry_after_s: float, remaining_s: float) -> bool:
    """Wait inline for a Retry-After (then take the half-open trial) rather than fall over?"""
    return retry_after_s <= policy.retry_after_inline_max_s and retry_after_s <= remaining_s


# ------------------------------------------------------------------ the table

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
_REQUEST_FAULT_STATUS = frozenset({400, 413, 422})

_CONTEXT_RE = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|input is too long"
    r"|too many (input )?tokens|reduce the length of", re.IGNORECASE)
_POLICY_CODE_RE = re.compile(r"content[ _-]?(filter|policy)|moderation", re.IGNORECASE)
_POLICY_MSG_RE = re.compile(
    r"moderation|flagged|content[ _-]?(management )?(filter|policy)|safety system", re.IGNORECASE)

_BASE_URL_HINT = ("a successful HTML page usually means the base URL points at a web page, "
                  "login or captive portal instead of the API; check the route's base_url")


def _d(*, retry: bool, fall_over: bool, counted: bool, reason: str, ignored: bool = False,
       retry_after_s: float | None = None, hint: str | None = None, retry_limit: int | None = None,
       flag: str | None = None, chain: str | None = None) -> Decision:
    return Decision(retry, fall_over, counted, ignored, retry_after_s, reason, hint,
                    retry_limit=retry_limit, flag=flag, chain=chain)


def _retry_after(failure: ProviderFailure) -> float | None:
    """Retry-After in seconds from the attempt's evidence (`retry-after`, `-ms` variants)."""
    value = failure.details.get("retry_after_s")
    if isinstance(value, (int, float)):
        return max(0.0, float(value))
    return retry_after_from_headers(failure.details.get("response_headers") or {})

def _provider_error(failure: ProviderFailure) -> dict[str, Any]:
    record = failure.details.get("provider_error")
    return record if isinstance(record, dict) else {}


def _embedded_status(record: dict[str, Any]) -> int | None:
    """An HTTP-like status carried inside an error object (`code` or `status`)."""
    for key in ("code", "status"):
        value = record.get(key)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
            return value
    return None


def _text_fields(failure: ProviderFailure, record: dict[str, Any]) -> tuple[str, str]:
    """(codes, message) of the provider's error, as searchable text."""
    codes = " ".join(str(record.get(k) or "") for k in ("code", "type", "param"))
    message = str(record.get("message") or failure.message or "")
    return codes, message


def _is_context_length(failure: ProviderFailure, record: dict[str, Any]) -> bool:
    codes, message = _text_fields(failure, record)
    return "context_length_exceeded" in codes or bool(_CONTEXT_RE.search(message))


def _is_content_policy(failure: ProviderFailure, record: dict[str, Any]) -> bool:
    metadata = record.get("metadata")
    if isinstance(metadata, dict) and ("flagged_input" in metadata or "reasons" in metadata):
        return True  # OpenRouter's moderation 403
    codes, message = _text_fields(failure, record)
    return bool(_POLICY_CODE_RE.search(codes) or _POLICY_MSG_RE.search(message))


def _context_length() -> Decision:
    return _d(retry=False, fall_over=False, counted=False, ignored=True, reason="context_length",
              chain="context_window",
              hint="the request exceeds the route's context window; use a larger-context route "
                   "or shorten the conversation")


def _content_policy() -> Decision:
    return _d(retry=False, fall_over=False, counted=False, ignored=True, reason="content_policy",
              chain="content_policy", hint="the provider's content policy rejected the request")


def _auth(failure: ProviderFailure, status: int | None, key_env: str | None) -> Decision:
    code = f" (HTTP {status})" if status else ""
    if key_env:
        hint = f"the API key in {key_env} was rejected{code}; check {key_env}"
    else:
        hint = failure.details.get("hint") or f"the provider rejected the credentials{code}"
    return _d(retry=False, fall_over=True, counted=False, reason="auth_error", hint=hint,
              flag="auth_error")


def _by_status(failure: ProviderFailure, status: int | None, key_env: str | None,
               retry_after_s: float | None) -> Decision:
    """The HTTP rows of the table, for real statuses and those embedded in error bodies."""
    record = _provider_error(failure)
    reason = f"http_{status}" if status is not None else failure.classification
    if status is None or 200 <= status < 300 or status in _TRANSIENT_STATUS or status >= 500:
        return _d(retry=True, fall_over=True, counted=True, reason=reason,
                  retry_after_s=retry_after_s)
    if status in _REQUEST_FAULT_STATUS:
        if _is_context_length(failure, record):
            return _context_length()
        if _is_content_policy(failure, record):
            return _content_policy()
        # The same request fails the same way elsewhere; the dispatcher logs it (the same
        # 400 on every turn points at a capability the route lacks, not at an outage).
        return _d(retry=False, fall_over=False, counted=False, ignored=True, reason=reason,
                  hint=f"the provider rejected the request as invalid (HTTP {status})")
    if status in (401, 403):
        return _content_policy() if _is_content_policy(failure, record) else _auth(
            failure, status, key_env)
    if status == 402:
        who = f"the account behind {key_env}" if key_env else "the account"
        return _d(retry=False, fall_over=True, counted=False, reason="billing_error",
                  retry_after_s=retry_after_s, flag="billing_error",
                  hint=f"{who} has no credit or budget left (HTTP 402); check billing")
    if status == 404:
        return _d(retry=False, fall_over=True, counted=False, reason="unknown_model",
                  hint="unknown model — check the route id (HTTP 404)")
    if status < 200 or 300 <= status < 400:
        return _d(retry=False, fall_over=True, counted=False, reason=reason,
                  hint=f"unexpected HTTP {status} from the API; check the route's base_url")
    # Other 4xx (405, 410, 415, ...): specific to this route's endpoint; cheap to skip.
    return _d(retry=False, fall_over=True, counted=False, reason=reason)


def _unparsable_body(failure: ProviderFailure, retry_after_s: float | None) -> Decision:
    """HTML and other non-JSON bodies: always a counted failure (a proxy or error page, not an answer)."""
    status = failure.status_code
    c = failure.classification
    if status is not None and 200 <= status < 300 and c == E.UPSTREAM_HTML:
        # Likely a wrong base URL or a portal page: the same page comes back every time.
        return _d(retry=False, fall_over=True, counted=True, reason=c,
                  hint=failure.details.get("hint") or _BASE_URL_HINT)
    # A 4xx page (404 from a wrong path, a proxy's 403) will not change on a retry.
    retry = status is None or status < 400 or status >= 500 or status in _TRANSIENT_STATUS
    return _d(retry=retry, fall_over=True, counted=True, reason=c, retry_after_s=retry_after_s,
              hint=failure.details.get("hint"))


def _embedded(failure: ProviderFailure, key_env: str | None,
              retry_after_s: float | None) -> Decision:
    """Error objects inside a 2xx body or a stream: judged by what they carry."""
    record = _provider_error(failure)
    if _is_context_length(failure, record):
        return _context_length()
    if _is_content_policy(failure, record):
        return _content_policy()
    status = _embedded_status(record)
    if status is not None and 400 <= status < 500 and status not in _TRANSIENT_STATUS:
        return _by_status(failure, status, key_env, retry_after_s)
    # 429/5xx-like, or no usable code: transient; a stream error restarts the turn.
    return _d(retry=True, fall_over=True, counted=True, reason=failure.classification,
              retry_after_s=retry_after_s)


def decide(failure: ProviderFailure, *, key_env: str | None = None) -> Decision:
    """The retry/fallback/breaker treatment of one failed attempt.

    `key_env` names the variable holding the route's API key, for auth hints.
    A Decision with `retry_after_s` set means: the breaker opens the route until
    then, so any same-route retry waits for it (inline only if `inline_wait_ok`).
    """
    c = failure.classification
    status = failure.status_code
    retry_after_s = _retry_after(failure)

    if c == E.CONNECTION_RESET:
        # The request went out and the connection died before any header: often a
        # recycled keep-alive socket or a restarting backend; once, then fall over.
        return _d(retry=True, fall_over=True, counted=True, reason=c, retry_limit=1)
    if c == E.CONNECT_ERROR:  # refused, DNS, TLS: the same next time; move on
        return _d(retry=False, fall_over=True, counted=True, reason=c)
    if c in (E.TIMEOUT_CONNECT, E.TIMEOUT_TTFT, E.TIMEOUT_TOTAL):
        # A silent or crawling route gets no second wait (simulator faults F08, F09,
        # F31): paying the same timeout again would triple the turn; move on.
        return _d(retry=False, fall_over=True, counted=True, reason=c)
    if c in (E.TIMEOUT_WRITE, E.TIMEOUT_IDLE, E.TIMEOUT_IDLE_PROGRESS,
             E.STREAM_TRUNCATED, E.STREAM_MALFORMED):
        # The turn is restarted from the same input: its output is acted on only once
        # complete, so a broken attempt is simply thrown away (no prefill continuation).
        return _d(retry=True, fall_over=True, counted=True, reason=c)
    if c == E.HTTP_ERROR:
        return _by_status(failure, status, key_env, retry_after_s)
    if c == E.AUTH_ERROR:
        if _is_content_policy(failure, _provider_error(failure)):
            return _content_policy()  # OpenRouter signals moderation with a 403
        return _auth(failure, status, key_env)
    if c in (E.UPSTREAM_HTML, E.NON_JSON):
        return _unparsable_body(failure, retry_after_s)
    if c in (E.JSON_ERROR_BODY, E.STREAM_ERROR):
        return _embedded(failure, key_env, retry_after_s)
    if c == E.EMPTY_RESPONSE:
        return _d(retry=True, fall_over=True, counted=True, reason=c, retry_limit=1)
    if c == E.MISSING_API_KEY:
        hint = f"set {key_env} in the daemon's environment" if key_env else failure.details.get("hint")
        return _d(retry=False, fall_over=True, counted=False, reason=c, hint=hint)
    if c == E.CONFIG_ERROR:
        return _d(retry=False, fall_over=True, counted=False, reason=c,
                  hint=failure.details.get("hint") or failure.message)
    # Unknown class: most likely our own bug, which must never eject a provider
    # (Envoy's local-origin split); try the next route, don't retry this one.
    return _d(retry=False, fall_over=True, counted=False, reason=c or "unknown")
