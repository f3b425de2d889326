"""Dispatcher: the single path for every LLM call the daemon makes.

One turn = one `complete()` call over an ordered chain of routes (the primary,
then its fallbacks). For each route: the shared circuit breaker admits or
skips it; attempts go out on a warm per-endpoint `httpx.AsyncClient`; each
failure is classified (`retry.decide`) into retry-here, fall-over or fail-fast;
retries back off with full jitter (or honour Retry-After); a broken stream
makes the route non-streaming for the rest of the run. Every attempt, retry,
skip and fallback is reported to the caller's observer, which records it.
The whole turn runs under one deadline and one attempt budget.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import httpx
import msgspec

from kcd.providers.breaker import BreakerBoard, TrialLease
from kcd.providers.endpoints import Endpoint, resolve_endpoint
from kcd.providers.errors import ProviderFailure
from kcd.providers.openai_compat import Attempt, Timeouts, UpstreamClient, send_chat
from kcd.providers.retry import Decision, RetryPolicy, backoff_delay, decide, same_route_retries
from kcd.providers.routes import Route
from kcd.providers.types import ChatMessage, ChatRequest, ChatResponse, ToolSchema

if TYPE_CHECKING:  # the daemon passes its Redactor; providers do not depend on observe
    from kcd.observe.redact import Redactor

# Pool limits per endpoint. Large keep-alive pools make httpcore slow at high
# concurrency (httpx #3215); these keep reuse high without that cost.
POOL_LIMITS = httpx.Limits(max_connections=128, max_keepalive_connections=64, keepalive_expiry=30)

# Failures of a streamed attempt that mean "this route cannot stream right now":
# the turn restarts at once on the same route, non-streamed, and the route stays
# non-streamed for the rest of the run. (A TTFT timeout is silence, not a broken
# stream: it falls over instead.)
STREAM_FAILURES = frozenset({"stream_error", "stream_truncated", "stream_malformed", "timeout.idle",
                             "timeout.idle_progress"})
# Of those, the ones that are silence: the route stops streaming too, but it is not waited on
# a second time within the turn (as with TTFT and total timeouts): the turn moves on.
SILENT_FAILURES = frozenset({"timeout.idle", "timeout.idle_progress"})


@dataclass(frozen=True)
class ChainEntry:
    """One route of a turn's chain, with its own request settings."""

    route: Route
    base_url: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    params: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False
    native_tools: bool = True  # whether this route can take native tool schemas
    retries_per_route: int = 2
    context_window: int | None = None  # tokens, when known: where a context-length error may go


@dataclass
class AttemptRecord:
    """What the observer is told after every attempt."""

    number: int  # 1-based within the turn
    kind: str  # "primary" | "retry" | "fallback"
    entry: ChainEntry
    attempt: Attempt
    decision: Decision | None = None  # None on success
    next_delay_s: float | None = None  # the retry schedule: the wait before the next attempt here
    breaker_state: str | None = None


@dataclass
class Served:
    """A successful turn: the response, the route that served it and what it cost."""

    response: ChatResponse
    entry: ChainEntry
    attempts: int
    upstream_s: float  # time spent inside HTTP attempts (the rest is our own overhead)
    fallback_from: str | None = None


class CallObserver(Protocol):
    async def attempt(self, record: AttemptRecord) -> None: ...
    async def marker(self, prefix: str, text: str) -> None: ...
    async def fallback(self, from_route: str, to_route: str, reason: str) -> None: ...
    async def circuit_skip(self, route: str, reason: str, reopens_in_s: float | None) -> None: ...
    async def route_skipped(self, route: str, reason: str) -> None: ...
    async def stream_disabled(self, route: str, reason: str) -> None: ...


class AttemptTap(Protocol):
    """For callers that forward a turn's output live (the OpenAI endpoint's passthrough
    streams): told when each attempt starts, and asked after a failed attempt whether
    part of its output already reached their client. If so the turn ends with that
    failure: a retry or fallback would be spliced onto text the client already has."""

    def started(self, entry: ChainEntry, number: int) -> None: ...
    def committed(self) -> bool: ...


class NullObserver(CallObserver):
    """Observes nothing: the protocol's methods, inherited, each do nothing."""


def _failure_summary(route: str, failure: ProviderFailure) -> dict[str, Any]:
    return {"route": route, "classification": failure.classification,
            "status": failure.status_code, "message": failure.message}


class _Turn:
    """Mutable bookkeeping of one `complete()` call."""

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float], tap: AttemptTap | None = None):
        self.policy = policy
        self.tap = tap
        self.clock = clock
        self.deadline = clock() + policy.turn_deadline_s
        self.budget = policy.max_attempts_per_turn
        self.attempts = 0
        self.upstream_s = 0.0
        self.failures: list[dict[str, Any]] = []
        self.open_skips: list[str] = []
        self.last_failure: ProviderFailure | None = None
        self.last_decision: Decision | None = None

    def remaining(self) -> float:
        return self.deadline - self.clock()


class Dispatcher:
    """The single path for LLM calls: one retry loop over a turn's route chain."""

    def __init__(self, env: Mapping[str, str], *, breakers: BreakerBoard | None = None,
                 simulator_url: Callable[[], Awaitable[str]] | None = None,
                 clock: Callable[[], float] = time.monotonic, redactor: Redactor | None = None,
                 upstream_client: str = "aiohttp"):
        self._env = env
        self.upstream_client = upstream_client  # "aiohttp" or "httpx": who sends the bytes
        self._redactor = redactor
        self._simulator_url = simulator_url
        self._clients: dict[str, UpstreamClient] = {}
        self.breakers = breakers or BreakerBoard()
        self._clock = clock

    # ---- endpoints and pools ----------------------------------------------------

    async def endpoint_for(self, route: Route, base_url: str | None = None) -> Endpoint:
        sim = None
        if route.provider == "mock" and base_url is None:
            if self._simulator_url is None:
                raise ProviderFailure(route.id, "config_error",
                                      "no provider simulator is available in this daemon", retryable=False)
            sim = await self._simulator_url()
        return resolve_endpoint(route, self._env, base_url=base_url, simulator_url=sim)

    def client_for(self, endpoint: Endpoint) -> UpstreamClient:
        client = self._clients.get(endpoint.key)
        if client is None:
            trust_env = endpoint.provider != "mock"  # loopback simulator traffic never goes via a proxy
            if self.upstream_client == "aiohttp":
                from kcd.providers.aiohttp_client import AiohttpClient

                client = AiohttpClient(POOL_LIMITS, trust_env=trust_env)
            else:
                client = httpx.AsyncClient(limits=POOL_LIMITS, timeout=httpx.Timeout(30.0), trust_env=trust_env)
            self._clients[endpoint.key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    # ---- one turn ---------------------------------------------------------------

    async def complete(self, chain: Sequence[ChainEntry], messages: list[ChatMessage],
                       tools: list[ToolSchema], *, policy: RetryPolicy = RetryPolicy(),
                       turn_key: str, observer: CallObserver | None = None,
                       stream_off: set[str] | None = None,
                       on_chunk: Callable[[str], None] | None = None,
                       tap: AttemptTap | None = None) -> Served:
        """Serve one turn from the first route of `chain` that can, or raise.

        `stream_off` holds the routes this run no longer streams on; the
        dispatcher adds to it when a stream breaks. Raises `ProviderFailure`:
        the route's own failure when it must not be retried anywhere (a bad
        request), else an aggregate naming every attempt. With a `tap`, a failed
        attempt whose output the tap says was already delivered is raised as is.
        """
        obs = observer or NullObserver()
        stream_off = stream_off if stream_off is not None else set()
        turn = _Turn(policy, self._clock, tap)
        primary = chain[0].route.id
        tried: set[str] = set()
        reason_for_next = "primary_failed"
        needs_window: int | None = None  # after a context-length error: a larger known window
        for index, entry in enumerate(chain):
            route = entry.route.id
            if index > 0 and route in tried:
                continue  # never the primary (or any route) as its own fallback
            if needs_window is not None and (entry.context_window or 0) <= needs_window:
                await obs.route_skipped(route, f"context window {entry.context_window or 'unknown'} is not "
                                               f"larger than {needs_window}")
                continue
            tried.add(route)
            if tools and not entry.native_tools:
                await obs.route_skipped(route, "no_native_tools")
                continue
            endpoint = await self._endpoint_or_skip(entry, obs)
            if endpoint is None:
                continue
            admission = self.breakers.admit(route)
            if not admission.allowed:
                turn.open_skips.append(route)
                await obs.circuit_skip(route, admission.reason or "open", admission.reopens_in_s)
                if turn.attempts == 0:  # nothing was sent: the next route stands in for a skip
                    reason_for_next = "breaker_open"
                continue
            with self.breakers.lease(route, admission) as lease:
                if index > 0:
                    await obs.fallback(primary, route, reason_for_next)
                more = any(e.route.id not in tried for e in chain[index + 1:])
                result = await self._run_route(entry, endpoint, lease, messages, tools, turn,
                                               turn_key, obs, stream_off, index > 0, on_chunk, more)
            if isinstance(result, Served):
                result.fallback_from = primary if index > 0 else None
                return result
            if result is not None:  # fail fast: a fault of the request itself
                needs_window = self._larger_window_needed(chain, index, turn)
                if needs_window is None:
                    raise result
                reason_for_next = "context_length"
                continue
            if turn.attempts >= turn.budget or turn.remaining() <= 0:
                break
            reason_for_next = turn.last_failure.classification if turn.last_failure else "primary_failed"

        waited = await self._all_open_retry(chain, messages, tools, policy, turn, turn_key, obs,
                                            stream_off, on_chunk)
        if waited is not None:
            return waited
        raise self._aggregate(primary, turn)

    async def _endpoint_or_skip(self, entry: ChainEntry, obs: CallObserver) -> Endpoint | None:
        try:
            endpoint = await self.endpoint_for(entry.route, entry.base_url)
        except ProviderFailure as failure:
            await obs.route_skipped(entry.route.id, failure.classification)
            return None
        except ValueError as exc:  # EndpointError: no usable base URL
            await obs.route_skipped(entry.route.id, f"config_error: {exc}")
            return None
        if endpoint.provider != "mock" and not endpoint.has_key:
            await obs.route_skipped(entry.route.id, f"missing_api_key ({endpoint.key_env} is not set)")
            return None
        return endpoint

    async def _run_route(self, entry: ChainEntry, endpoint: Endpoint, lease: TrialLease,
                         messages: list[ChatMessage], tools: list[ToolSchema], turn: _Turn,
                         turn_key: str, obs: CallObserver, stream_off: set[str], is_fallback: bool,
                         on_chunk: Callable[[str], None] | None,
                         more_routes: bool = False) -> Served | ProviderFailure | None:
        """Attempts on one route. Served on success; a failure to raise at once
        for request faults; None to move on down the chain (`more_routes`: there is one)."""
        route = entry.route.id
        retries = 0
        kind = "fallback" if is_fallback else "primary"
        while True:
            remaining = turn.remaining()
            if turn.attempts >= turn.budget or remaining <= 0:
                return None
            stream = entry.stream and route not in stream_off
            request = ChatRequest(messages=messages, tools=list(tools) if entry.native_tools else [],
                                  stream=stream, params=dict(entry.params))
            timeouts = entry.timeouts
            if remaining < timeouts.total:
                timeouts = msgspec.structs.replace(timeouts, total=max(remaining, 0.001))
            turn.attempts += 1
            if turn.tap is not None:
                turn.tap.started(entry, turn.attempts)
            started = self._clock()
            attempt = await send_chat(self.client_for(endpoint), endpoint, entry.route, request,
                                      timeouts=timeouts, on_chunk=on_chunk)
            turn.upstream_s += self._clock() - started
            if attempt.failure is None and attempt.response is not None:
                self.breakers.record_success(route, trial=lease.spend(), turn_key=turn_key)
                await obs.attempt(AttemptRecord(turn.attempts, kind, entry, attempt,
                                                breaker_state=self.breakers.state(route)))
                return Served(attempt.response, entry, turn.attempts, turn.upstream_s)

            failure = attempt.failure or ProviderFailure(route, "empty_response", "no response")
            if self._redactor is not None:
                # Scrub at the exception-mapping point: providers echo keys in error bodies.
                failure = attempt.failure = self._scrub_failure(failure)
                attempt.raw_excerpt = self._redactor.text(attempt.raw_excerpt) if attempt.raw_excerpt else None
            decision = decide(failure, key_env=endpoint.key_env)
            turn.last_failure, turn.last_decision = failure, decision
            turn.failures.append(_failure_summary(route, failure))
            self._record_breaker(route, decision, failure, turn_key, lease.spend())

            stream_broke = stream and failure.classification in STREAM_FAILURES
            # Silence with another route to go to: not waited on again (with none, the one
            # non-streamed restart below is the only way left to an answer).
            silent = more_routes and failure.classification in SILENT_FAILURES
            delay = None if silent else self._retry_delay(decision, entry, retries, turn, stream_broke)
            await obs.attempt(AttemptRecord(turn.attempts, kind, entry, attempt, decision,
                                            next_delay_s=delay,
                                            breaker_state=self.breakers.state(route)))
            if turn.tap is not None and turn.tap.committed():
                return failure  # output of this attempt reached the caller's client: no splice
            if stream_broke:
                stream_off.add(route)
                await obs.stream_disabled(route, failure.classification)
            if silent:
                return None  # no second wait on a route that went quiet: the next route
            if not decision.fall_over and not decision.retry_same_route and not stream_broke:
                return failure
            if delay is None:
                return None
            retries += 1
            kind = "retry"
            await obs.marker("provider-retry",
                             f"route={route} attempt={turn.attempts + 1} reason={decision.reason}"
                             f" delay={delay:.2f}s")
            if delay > 0:
                await anyio.sleep(delay)
            # Admission after the wait: a Retry-After wait ends in the half-open trial.
            again = self.breakers.admit(route)
            if not again.allowed:  # the route opened meanwhile: move on
                await obs.circuit_skip(route, again.reason or "open", again.reopens_in_s)
                return None
            lease.renew(again)

    @staticmethod
    def _larger_window_needed(chain: Sequence[ChainEntry], index: int, turn: _Turn) -> int | None:
        """After a context-length error on chain[index]: its window, if a later route's known
        window is larger (the turn goes there); None to return the error at once."""
        decision = turn.last_decision
        window = chain[index].context_window
        if decision is None or decision.chain != "context_window" or window is None:
            return None
        if any((e.context_window or 0) > window for e in chain[index + 1:]):
            return window
        return None

    def _scrub_failure(self, failure: ProviderFailure) -> ProviderFailure:
        assert self._redactor is not None
        details = self._redactor.obj(failure.details)
        if isinstance(details.get("raw_body_b64"), str):
            # The base64 body hides secrets from text scrubbing: scrub the bytes, re-encode.
            raw = base64.b64decode(details["raw_body_b64"])
            details["raw_body_b64"] = base64.b64encode(self._redactor.bytes(raw)).decode("ascii")
        return ProviderFailure(failure.route, failure.classification, self._redactor.text(failure.message),
                               status_code=failure.status_code, retryable=failure.retryable, details=details)

    def _record_breaker(self, route: str, decision: Decision, failure: ProviderFailure,
                        turn_key: str, trial: bool) -> None:
        if decision.ignored:  # a fault of the request, not of the route
            self.breakers.record_ignored(route, trial=trial)
        else:
            # Uncounted failures (auth, billing) still update last_error, and a
            # Retry-After on them (402 in-flight budget) still locks the route.
            self.breakers.record_failure(route, turn_key=turn_key, error=str(failure),
                                         counted=decision.counted, retry_after_s=decision.retry_after_s,
                                         trial=trial)
        if decision.flag:
            self.breakers.flag(route, decision.flag, decision.hint or failure.message)

    def _retry_delay(self, decision: Decision, entry: ChainEntry, retries: int, turn: _Turn,
                     stream_broke: bool) -> float | None:
        """Seconds to wait before retrying this route, or None to move on."""
        if stream_broke:
            return 0.0  # restart the turn at once, without streaming
        allowed = min(entry.retries_per_route, same_route_retries(turn.policy, decision))
        if retries >= allowed:
            return None
        if turn.attempts >= turn.budget:
            return None
        left = turn.remaining()
        if decision.retry_after_s is not None:
            wait = decision.retry_after_s
            # Only a short Retry-After is worth waiting for; otherwise fall over now.
            return wait if wait <= min(turn.policy.retry_after_inline_max_s, left) else None
        delay = backoff_delay(turn.policy, retries)
        return delay if delay < left else None

    async def _all_open_retry(self, chain: Sequence[ChainEntry], messages: list[ChatMessage],
                              tools: list[ToolSchema], policy: RetryPolicy, turn: _Turn,
                              turn_key: str, obs: CallObserver, stream_off: set[str],
                              on_chunk: Callable[[str], None] | None) -> Served | None:
        """Every candidate was skipped as open: wait for the earliest reopen when
        it is close (typically a short Retry-After), then take its trial."""
        if turn.attempts > 0 or not turn.open_skips:
            return None
        earliest = self.breakers.earliest_reopen(turn.open_skips)
        if earliest is None:
            return None
        route, wait = earliest
        if wait > min(policy.all_open_max_wait_s, turn.remaining()):
            return None
        entry = next(e for e in chain if e.route.id == route)
        await obs.marker("circuit-open", f"All routes are open; waiting {wait:.1f}s for '{route}' "
                                         "to half-open.")
        await anyio.sleep(max(wait, 0.0) + 0.01)
        admission = self.breakers.admit(route)
        if not admission.allowed:
            return None
        with self.breakers.lease(route, admission) as lease:
            endpoint = await self._endpoint_or_skip(entry, obs)
            if endpoint is None:
                return None
            result = await self._run_route(entry, endpoint, lease, messages, tools, turn,
                                           turn_key, obs, stream_off, entry is not chain[0], on_chunk)
        if isinstance(result, ProviderFailure):
            raise result
        return result

    def _aggregate(self, primary: str, turn: _Turn) -> ProviderFailure:
        if turn.attempts == 0 and turn.open_skips:
            states = []
            for route in turn.open_skips:
                snap = self.breakers.snapshot(route).get(route, {})
                states.append({"route": route, "state": snap.get("state"), "reason": snap.get("reason"),
                               "reopens_in_s": snap.get("reopens_in_s"), "last_error": snap.get("last_error")})
            listing = "; ".join(f"{s['route']} {s['state']} ({s['reason']}, reopens in "
                                f"{(s['reopens_in_s'] or 0):.0f}s)" for s in states)
            return ProviderFailure(primary, "all_routes_open", f"every route is open: {listing}",
                                   retryable=False, details={"routes": states})
        if not turn.failures:
            return ProviderFailure(primary, "no_route_available",
                                   "no route in the chain could be tried (see the skipped routes)",
                                   retryable=False)
        listing = "; ".join(f"{f['route']}: {f['classification']}"
                            + (f" (HTTP {f['status']})" if f["status"] else "") for f in turn.failures)
        last = turn.last_failure
        assert last is not None
        cause = "budget exhausted" if turn.attempts >= turn.budget else (
            "turn deadline passed" if turn.remaining() <= 0 else "all routes failed")
        return ProviderFailure(
            last.route, last.classification,
            f"{cause} after {turn.attempts} attempt(s): {listing}", status_code=last.status_code,
            retryable=False, details={**(last.details or {}), "attempts": turn.failures,
                                      "primary": primary})
