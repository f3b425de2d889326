"""The retry/fallback decision table (`kcd.providers.retry.decide`) and backoff."""

from __future__ import annotations

import json

import httpx
import pytest

from kcd.providers import errors as E
from kcd.providers.endpoints import Endpoint, Secret
from kcd.providers.errors import ProviderFailure
from kcd.providers.openai_compat import Timeouts, send_chat
from kcd.providers.retry import (
    Decision,
    RetryPolicy,
    backoff_delay,
    decide,
    inline_wait_ok,
    same_route_retries,
)
from kcd.providers.routes import parse_route
from kcd.providers.types import ChatMessage, ChatRequest

ROUTE = "openrouter/x-ai/grok-4-fast"
KEY_ENV = "OPENROUTER_API_KEY"


def failure(classification: str, status: int | None = None, message: str = "boom", *,
            error: dict | None = None, **details) -> ProviderFailure:
    if error is not None:
        details["provider_error"] = error
    return ProviderFailure(ROUTE, classification, message, status_code=status, details=details)


def row(d: Decision) -> tuple[bool, bool, bool, bool]:
    return d.retry_same_route, d.fall_over, d.counted, d.ignored


RETRY = (True, True, True, False)  # retry with backoff, then fall over; counted
FALL_AT_ONCE = (False, True, True, False)
NOT_COUNTED_FALL = (False, True, False, False)
IGNORED_STOP = (False, False, False, True)


# ------------------------------------------------------------------ transport and timeouts


def test_connect_failures_fall_over_at_once():
    for f in (failure(E.CONNECT_ERROR, message="cannot connect to http://x/v1 (ConnectError: refused)"),
              failure(E.TIMEOUT_CONNECT, message="connect timed out after 10s")):
        d = decide(f)
        assert row(d) == FALL_AT_ONCE and d.retry_after_s is None
    assert decide(failure(E.TIMEOUT_CONNECT)).reason == "timeout.connect"


def test_reset_before_headers_retries_once():
    d = decide(failure(E.CONNECTION_RESET, message="connection to r (http://x/v1) was reset after "
                                                   "the request was sent, before any response header"))
    assert row(d) == RETRY and d.reason == "connection_reset" and d.retry_limit == 1
    assert same_route_retries(RetryPolicy(), d) == 1


@pytest.mark.parametrize("classification", [E.TIMEOUT_TTFT, E.TIMEOUT_TOTAL])
def test_silent_or_crawling_route_falls_over_without_a_second_wait(classification):
    d = decide(failure(classification, message="no content within 45s"))
    assert row(d) == FALL_AT_ONCE and d.reason == classification


@pytest.mark.parametrize("classification", [
    E.STREAM_ERROR, E.STREAM_TRUNCATED, E.STREAM_MALFORMED, E.TIMEOUT_IDLE,
    E.TIMEOUT_IDLE_PROGRESS, E.TIMEOUT_WRITE])
def test_broken_streams_and_stalls_restart_the_turn(classification):
    d = decide(failure(classification))
    assert row(d) == RETRY and d.reason == classification and d.retry_limit is None


# ------------------------------------------------------------------ HTTP statuses


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_retry_with_backoff(status):
    d = decide(failure(E.HTTP_ERROR, status))
    assert row(d) == RETRY and d.reason == f"http_{status}" and d.retry_after_s is None


def test_retry_after_is_carried_from_the_evidence():
    d = decide(failure(E.HTTP_ERROR, 429, retry_after_s=7.0))
    assert row(d) == RETRY and d.retry_after_s == 7.0
    ms = decide(failure(E.HTTP_ERROR, 429, response_headers={"retry-after-ms": "1500"}))
    assert ms.retry_after_s == 1.5
    header = decide(failure(E.HTTP_ERROR, 503, response_headers={"retry-after": "12"}))
    assert header.retry_after_s == 12.0
    unreadable = decide(failure(E.HTTP_ERROR, 429, response_headers={"retry-after": "soon"}))
    assert unreadable.retry_after_s is None


@pytest.mark.parametrize("error,message", [
    ({"code": "context_length_exceeded", "message": "too long"}, "too long"),
    ({"message": "This model's maximum context length is 128000 tokens."}, "x"),
    (None, "prompt is too long: 250000 tokens > 200000 maximum"),
])
def test_context_length_is_ignored_and_goes_to_the_context_window_chain(error, message):
    d = decide(failure(E.HTTP_ERROR, 400, message, error=error))
    assert row(d) == IGNORED_STOP and d.reason == "context_length" and d.chain == "context_window"


@pytest.mark.parametrize("classification,status,error", [
    (E.AUTH_ERROR, 403, {"code": 403,
                         "message": "Your chosen model requires moderation and your input was flagged",
                         "metadata": {"reasons": ["violence"], "flagged_input": "...",
                                      "provider_name": "OpenAI", "model_slug": "openai/gpt-4o"}}),
    (E.HTTP_ERROR, 400, {"code": "content_filter", "message": "The response was filtered"}),
    (E.HTTP_ERROR, 400, {"code": "content_policy_violation", "message": "rejected"}),
])
def test_content_policy_is_ignored_and_goes_to_the_content_policy_chain(classification, status, error):
    d = decide(failure(classification, status, error["message"], error=error))
    assert row(d) == IGNORED_STOP and d.reason == "content_policy" and d.chain == "content_policy"


@pytest.mark.parametrize("status", [400, 413, 422])
def test_other_request_faults_are_ignored_without_retry_or_fallback(status):
    d = decide(failure(E.HTTP_ERROR, status, "invalid tool schema", error={"message": "invalid tool schema"}))
    assert row(d) == IGNORED_STOP and d.reason == f"http_{status}" and d.chain is None


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_are_not_counted_fall_over_and_name_the_key(status):
    d = decide(failure(E.AUTH_ERROR, status, "No auth credentials found"), key_env=KEY_ENV)
    assert row(d) == NOT_COUNTED_FALL and d.reason == "auth_error" and d.flag == "auth_error"
    assert d.hint == (f"the API key in {KEY_ENV} was rejected (HTTP {status}); check {KEY_ENV}")
    # Without the variable's name the adapter's own hint is kept.
    d2 = decide(failure(E.AUTH_ERROR, status, hint="check OPENAI_API_KEY"))
    assert d2.hint == "check OPENAI_API_KEY"


def test_billing_402_is_not_counted_flags_and_keeps_retry_after():
    d = decide(failure(E.HTTP_ERROR, 402, "Insufficient credits"), key_env=KEY_ENV)
    assert row(d) == NOT_COUNTED_FALL and d.flag == "billing_error" and d.reason == "billing_error"
    assert KEY_ENV in d.hint and d.retry_after_s is None
    budget = decide(failure(E.HTTP_ERROR, 402, retry_after_s=30.0))
    assert budget.retry_after_s == 30.0 and not budget.counted


def test_unknown_model_404_falls_over_with_a_hint():
    d = decide(failure(E.HTTP_ERROR, 404, "No endpoints found for x-ai/grok-9"))
    assert row(d) == NOT_COUNTED_FALL and d.reason == "unknown_model"
    assert "check the route id" in d.hint


def test_redirects_and_odd_4xx_fall_over_uncounted():
    assert row(decide(failure(E.HTTP_ERROR, 302))) == NOT_COUNTED_FALL
    assert "base_url" in decide(failure(E.HTTP_ERROR, 302)).hint
    assert row(decide(failure(E.HTTP_ERROR, 405))) == NOT_COUNTED_FALL


# ------------------------------------------------------------------ bodies


def test_html_with_an_error_status_is_retryable_and_counted():
    d = decide(failure(E.UPSTREAM_HTML, 502, E.HTML_MESSAGE))
    assert row(d) == RETRY and d.reason == "upstream_html"


def test_html_on_2xx_falls_over_with_a_base_url_hint():
    d = decide(failure(E.UPSTREAM_HTML, 200, E.HTML_MESSAGE))
    assert row(d) == FALL_AT_ONCE and "base_url" in d.hint


def test_html_4xx_page_is_counted_but_not_retried():
    assert row(decide(failure(E.UPSTREAM_HTML, 404))) == FALL_AT_ONCE
    assert row(decide(failure(E.UPSTREAM_HTML, 429, retry_after_s=3.0))) == RETRY


@pytest.mark.parametrize("status", [200, 500, None])
def test_non_json_bodies_are_retryable_and_counted(status):
    d = decide(failure(E.NON_JSON, status))
    assert row(d) == RETRY and d.reason == "non_json"


@pytest.mark.parametrize("classification", [E.JSON_ERROR_BODY, E.STREAM_ERROR])
@pytest.mark.parametrize("error,expected", [
    ({"code": 502, "message": "Provider returned error"}, RETRY),
    ({"code": "429", "message": "rate limited"}, RETRY),
    ({"message": "something broke"}, RETRY),
    ({"code": 400, "message": "bad parameter"}, IGNORED_STOP),
    ({"code": 401, "message": "bad key"}, NOT_COUNTED_FALL),
    ({"code": "context_length_exceeded", "message": "too long"}, IGNORED_STOP),
])
def test_embedded_errors_follow_their_code(classification, error, expected):
    d = decide(failure(classification, 200, error["message"], error=error), key_env=KEY_ENV)
    assert row(d) == expected


def test_empty_response_retries_once():
    d = decide(failure(E.EMPTY_RESPONSE, 200, "no content and no tool calls"))
    assert row(d) == RETRY and d.retry_limit == 1


def test_local_failures_fall_over_uncounted():
    missing = decide(failure(E.MISSING_API_KEY, message="no API key"), key_env=KEY_ENV)
    assert row(missing) == NOT_COUNTED_FALL and missing.hint == f"set {KEY_ENV} in the daemon's environment"
    config = decide(failure(E.CONFIG_ERROR, message="no provider simulator is available"))
    assert row(config) == NOT_COUNTED_FALL and config.hint == "no provider simulator is available"
    unknown = decide(failure("something_new"))
    assert row(unknown) == NOT_COUNTED_FALL and unknown.reason == "something_new"


@pytest.mark.parametrize("classification", sorted(E.CLASSIFICATIONS))
@pytest.mark.parametrize("status", [None, 200, 400, 401, 402, 404, 429, 502])
def test_every_classification_has_a_consistent_decision(classification, status):
    d = decide(failure(classification, status, retry_after_s=1.0), key_env=KEY_ENV)
    assert d.reason
    assert not (d.ignored and d.counted)
    assert not (d.ignored and (d.retry_same_route or d.fall_over))
    if d.retry_same_route:
        assert d.counted  # only transient, provider-side failures are retried in place


# ------------------------------------------------------------------ through the real adapter

ENDPOINT = Endpoint(provider="openrouter", base_url="http://upstream.test/api/v1",
                    api_key=Secret("sk-test"), key_env=KEY_ENV)
FAST = Timeouts(connect=2, write=2, ttft=2, idle=2, progress=2, total=5)


async def _attempt(handler) -> ProviderFailure:
    async def async_handler(request: httpx.Request) -> httpx.Response:
        return handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(async_handler)) as client:
        att = await send_chat(client, ENDPOINT, parse_route(ROUTE),
                              ChatRequest(messages=[ChatMessage(role="user", content="hi")]),
                              timeouts=FAST)
    assert att.failure is not None
    return att.failure


def _raise(exc: Exception):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc
    return handler


def _json(status: int, obj: dict, headers: dict | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=obj, headers=headers)
    return handler


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("handler,expected,reason", [
    (_raise(httpx.ConnectError("refused")), FALL_AT_ONCE, "connect_error"),
    (_raise(httpx.RemoteProtocolError("Server disconnected")), RETRY, "connection_reset"),
    (_json(429, {"error": {"message": "slow down"}}, {"retry-after": "2"}), RETRY, "http_429"),
    (_json(401, {"error": {"message": "No auth credentials found", "code": 401}}),
     NOT_COUNTED_FALL, "auth_error"),
    (_json(403, {"error": {"code": 403, "message": "input was flagged",
                           "metadata": {"reasons": ["x"], "flagged_input": "y"}}}),
     IGNORED_STOP, "content_policy"),
    (_json(400, {"error": {"message": "maximum context length is 8192 tokens",
                           "code": "context_length_exceeded"}}), IGNORED_STOP, "context_length"),
    (_json(200, {"error": {"message": "Provider returned error", "code": 502}}), RETRY,
     "json_error_body"),
    (lambda r: httpx.Response(200, text="<html>Sign in</html>", headers={"content-type": "text/html"}),
     FALL_AT_ONCE, "upstream_html"),
    (lambda r: httpx.Response(502, text="<html>Bad gateway</html>", headers={"content-type": "text/html"}),
     RETRY, "upstream_html"),
])
async def test_decisions_on_real_adapter_failures(anyio_backend, handler, expected, reason):
    d = decide(await _attempt(handler), key_env=KEY_ENV)
    assert (row(d), d.reason) == (expected, reason)
    if reason == "http_429":
        assert d.retry_after_s == 2.0


# ------------------------------------------------------------------ backoff and budgets


def test_backoff_is_full_jitter_exponential_and_capped():
    policy = RetryPolicy()
    top = [backoff_delay(policy, i, rng=lambda: 1.0) for i in range(7)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delay(policy, 3, rng=lambda: 0.25) == 1.0
    assert backoff_delay(policy, 0, rng=lambda: 0.0) == 0.0
    assert backoff_delay(policy, 10_000, rng=lambda: 1.0) == 8.0  # no float overflow
    with pytest.raises(ValueError):
        backoff_delay(policy, -1)


def test_backoff_with_a_seeded_rng_stays_within_bounds():
    import random

    rng = random.Random(42)
    policy = RetryPolicy(backoff_base_s=0.5, backoff_cap_s=8.0)
    for i in range(8):
        ceiling = min(8.0, 0.5 * 2 ** i)
        samples = [backoff_delay(policy, i, rng=rng.random) for _ in range(200)]
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # spread across the range, not stuck at the bottom


def test_same_route_retries_and_inline_waits():
    policy = RetryPolicy(retries_per_route=2, retry_after_inline_max_s=60)
    assert same_route_retries(policy, decide(failure(E.HTTP_ERROR, 503))) == 2
    assert same_route_retries(policy, decide(failure(E.TIMEOUT_TTFT))) == 0
    assert same_route_retries(policy, decide(failure(E.EMPTY_RESPONSE, 200))) == 1
    assert inline_wait_ok(policy, 2.0, remaining_s=100)
    assert not inline_wait_ok(policy, 61.0, remaining_s=1000)  # beyond the inline cap
    assert not inline_wait_ok(policy, 30.0, remaining_s=10)  # beyond the turn budget


def test_policy_defaults_and_validation():
    p = RetryPolicy()
    assert (p.retries_per_route, p.max_attempts_per_turn, p.backoff_base_s, p.backoff_cap_s,
            p.retry_after_inline_max_s, p.turn_deadline_s, p.all_open_max_wait_s) == (
        2, 4, 0.5, 8.0, 60.0, 900.0, 30.0)
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts_per_turn=0)


def test_decision_encodes_for_telemetry():
    import msgspec

    d = decide(failure(E.HTTP_ERROR, 429, retry_after_s=3.0))
    assert json.loads(msgspec.json.encode(d))["reason"] == "http_429"
