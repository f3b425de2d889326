"""Daemon-owned capability probes: does a route really stream, call tools and honour JSON mode?

The original KyleCode's probes offered no tool and used no JSON mode (so they
failed healthy routes) and ran once per process; these are real checks whose
results outlive a run.

Per route, three tiny requests run in parallel, each under its own timeout:

- stream: a streamed "PING" must come back as a real SSE stream with content;
- tool: a forced call to the no-op tool `kc_probe_noop` must come back as a
  structured tool call whose arguments parse as a JSON object;
- json: JSON mode (`response_format: json_object`) must give a JSON object.

A 400, an HTML page, a timeout or a wrong answer is a failure with its reason;
nothing unknown passes. Probes call `send_chat` directly (one attempt each),
never `Dispatcher.complete`, so they move no breaker, metric or retry
budget of real traffic. Only portable parameters are sent (no reasoning or
other provider-specific switches), with small `max_tokens` and temperature 0,
except that OpenAI's reasoning models, which refuse temperature 0 and think
first, get a larger limit and no temperature (`probe_params`).

Results are cached per route and shared by every run: a result with all three
probes passing stays fresh for `ttl_s`; a failed or skipped one for
`failure_ttl_s`, so a transient 502 does not pin a capability off for an hour
and a key added later is picked up. Ages are wall-clock, so results persisted
in the StateStore are still valid after a restart. A run that sees the
provider answer with another model than the probe did (a silent upstream swap)
makes the route's result stale (`note_used`). Concurrent `get`s for one route
share one probe run.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
import msgspec
from anyio.abc import TaskStatus

from kcd.providers.dispatcher import ChainEntry, Dispatcher
from kcd.providers.endpoints import Endpoint
from kcd.providers.openai_compat import Attempt, Timeouts, UpstreamClient, send_chat
from kcd.providers.routes import Route, is_openai_reasoning
from kcd.providers.types import ChatMessage, ChatRequest, ToolSchema

if TYPE_CHECKING:
    from kcd.state import StateStore

__all__ = ["NOOP_TOOL_NAME", "PROBE_SYSTEM", "ProbeManager", "ProbeResult", "skipped_result"]

log = logging.getLogger(__name__)

PROBE_SYSTEM = "You are a diagnostic probe. Reply concisely."
NOOP_TOOL_NAME = "kc_probe_noop"
SMALL_MAX_TOKENS = 16
TOOL_MAX_TOKENS = 64  # a call with its arguments needs a little more than a word
# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5…) accept only the default temperature and
# spend tokens thinking before the first visible one, so they get room to think and no
# temperature. (`build_body` sends their limit as `max_completion_tokens`.)
REASONING_MAX_TOKENS = 1024
EXCERPT_CHARS = 120  # of a wrong answer, quoted in the error


def probe_params(route: Route, max_tokens: int) -> dict[str, Any]:
    """The length and temperature parameters a probe request may send to `route`."""
    if is_openai_reasoning(route):
        return {"max_tokens": REASONING_MAX_TOKENS}
    return {"max_tokens": max_tokens, "temperature": 0}


class ProbeResult(msgspec.Struct, kw_only=True):
    """One probe run of one route: the original's `capability_probes.json` record plus kcd's fields."""

    model_id: str  # the route id (the original's field name)
    route: str
    attempted: bool
    stream_success: bool | None
    tool_stream_success: bool | None
    json_mode_success: bool | None
    # "missing_api_key" | "runtime_init_failed" | "client_init_failed" | "disabled"
    skipped_reason: str | None = None
    error: str | None = None  # the last error, stream → tool → json order (original field)
    errors: dict[str, str] = {}  # per probe: "stream" | "tool" | "json" -> error text
    elapsed: float = 0.0  # seconds for the whole (parallel) run
    probe_elapsed: dict[str, float] = {}  # seconds per probe
    stream_events: int | None = None  # content-bearing SSE events the stream probe received
    checked_at: float  # wall clock (epoch seconds) when the run finished
    model_reported: str | None = None  # the model the provider said answered

    def summary(self) -> dict[str, bool | None]:
        return {"stream": self.stream_success, "tool": self.tool_stream_success,
                "json": self.json_mode_success}

    def passed(self) -> bool:
        return self.attempted and all(v is True for v in self.summary().values())

    def record(self) -> dict[str, Any]:
        """JSON-ready (one element of `meta/capability_probes.json`)."""
        return msgspec.to_builtins(self)


def skipped_result(route: str, reason: str, *, checked_at: float, error: str | None = None) -> ProbeResult:
    """A record for a route that was not probed (also for `disabled`, decided by the caller)."""
    return ProbeResult(model_id=route, route=route, attempted=False, stream_success=None,
                       tool_stream_success=None, json_mode_success=None, skipped_reason=reason,
                       error=error, checked_at=checked_at)


# ------------------------------------------------------------------ the probes


class _Outcome(NamedTuple):
    ok: bool
    error: str | None = None
    model: str | None = None
    content_events: int | None = None


def _messages(user: str) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=PROBE_SYSTEM), ChatMessage(role="user", content=user)]


def _failure_text(attempt: Attempt) -> str:
    failure = attempt.failure
    if failure is None:
        return "no response"
    status = f" (HTTP {failure.status_code})" if failure.status_code is not None else ""
    return f"{failure.classification}{status}: {failure.message}"


def _excerpt(text: str) -> str:
    return repr(text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else ""))


def _json_object(text: str) -> bool:
    try:
        return isinstance(msgspec.json.decode(text), dict)
    except msgspec.DecodeError:
        return False


async def _probe_stream(client: UpstreamClient, endpoint: Endpoint, route: Route,
                        timeouts: Timeouts) -> _Outcome:
    events = 0

    def count(_: str) -> None:
        nonlocal events
        events += 1

    request = ChatRequest(messages=_messages("Respond with the single word PING."), stream=True,
                          params=probe_params(route, SMALL_MAX_TOKENS))
    attempt = await send_chat(client, endpoint, route, request, timeouts=timeouts, on_chunk=count)
    if not attempt.ok:
        return _Outcome(False, _failure_text(attempt), content_events=events)
    assert attempt.response is not None
    model = attempt.response.model
    if not attempt.streamed:  # a whole JSON body: the server ignores stream=true
        return _Outcome(False, f"asked to stream, got a whole {attempt.content_type or 'untyped'} body",
                        model, events)
    if events == 0 or not attempt.response.content.strip():
        return _Outcome(False, f"the stream carried no content ({attempt.events} SSE events)", model, events)
    return _Outcome(True, None, model, events)


async def _probe_tool(client: UpstreamClient, endpoint: Endpoint, route: Route,
                      timeouts: Timeouts) -> _Outcome:
    tool = ToolSchema(name=NOOP_TOOL_NAME, description="Does nothing. Call it when asked to.",
                      parameters={"type": "object", "properties": {"echo": {"type": "string"}},
                                  "required": ["echo"]})
    request = ChatRequest(
        messages=_messages(f'Call the {NOOP_TOOL_NAME} tool with echo="ping".'), tools=[tool],
        params={"tool_choice": {"type": "function", "function": {"name": NOOP_TOOL_NAME}},
                **probe_params(route, TOOL_MAX_TOKENS)})
    attempt = await send_chat(client, endpoint, route, request, timeouts=timeouts)
    if not attempt.ok:
        return _Outcome(False, _failure_text(attempt))
    assert attempt.response is not None
    resp = attempt.response
    call = next((c for c in resp.tool_calls if c.name == NOOP_TOOL_NAME), None)
    if call is None:
        if resp.tool_calls:
            names = ", ".join(c.name for c in resp.tool_calls)
            return _Outcome(False, f"called {names} instead of {NOOP_TOOL_NAME}", resp.model)
        return _Outcome(False, f"no structured tool call (finish_reason {resp.finish_reason}; "
                               f"content {_excerpt(resp.content)})", resp.model)
    if not _json_object(call.arguments):
        return _Outcome(False, f"tool-call arguments are not a JSON object: {_excerpt(call.arguments)}",
                        resp.model)
    return _Outcome(True, None, resp.model)


async def _probe_json(client: UpstreamClient, endpoint: Endpoint, route: Route,
                      timeouts: Timeouts) -> _Outcome:
    request = ChatRequest(
        messages=_messages('Reply with the JSON object {"pong":"yes"} and nothing else.'),
        params={"response_format": {"type": "json_object"}, **probe_params(route, SMALL_MAX_TOKENS)})
    attempt = await send_chat(client, endpoint, route, request, timeouts=timeouts)
    if not attempt.ok:
        return _Outcome(False, _failure_text(attempt))
    assert attempt.response is not None
    content = attempt.response.content
    if not _json_object(content):
        return _Outcome(False, f"content is not a JSON object: {_excerpt(content)}", attempt.response.model)
    return _Outcome(True, None, attempt.response.model)


_Probe = Callable[[UpstreamClient, Endpoint, Route, Timeouts], Awaitable[_Outcome]]
_PROBES: tuple[tuple[str, _Probe], ...] = (("stream", _probe_stream), ("tool", _probe_tool),
                                          ("json", _probe_json))


# ------------------------------------------------------------------ the manager


class _Flight:
    """One probe run in progress; every concurrent `get` for the route waits on it."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: ProbeResult | None = None  # None after `done`: the run was cancelled


class ProbeManager:
    """The daemon's capability-probe cache: runs probes per route and shares results."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        store: StateStore | None,
        *,
        ttl_s: float = 3600,
        failure_ttl_s: float = 600,
        timeout_s: float = 20,
        refresh_before_s: float = 300,
        refresh_every_s: float = 30,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_result: Callable[[ProbeResult, Mapping[str, bool | None]], None] | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._db = store
        self.ttl_s = ttl_s
        self.failure_ttl_s = min(failure_ttl_s, ttl_s)
        self.timeout_s = timeout_s
        self.refresh_before_s = refresh_before_s
        self.refresh_every_s = refresh_every_s
        self._clock = clock
        self._wall = wall
        self._on_result = on_result
        self._redact = redact or (lambda text: text)
        self._results: dict[str, ProbeResult] = {}
        self._flights: dict[str, _Flight] = {}
        self._entries: dict[str, ChainEntry] = {}  # the last entry seen per route (for the refresher)
        self._used_at: dict[str, float] = {}  # wall time a run last used the route
        self._stale: set[str] = set()  # invalidated before their TTL (model swap, config reload)

    # ---- reading the cache ------------------------------------------------------

    def entry_for(self, route: str) -> ChainEntry | None:
        """The request settings a run last used for `route` (for on-demand refreshes)."""
        return self._entries.get(route)

    def cached(self, route: str) -> ProbeResult | None:
        return self._results.get(route)

    def results(self) -> list[ProbeResult]:
        return [self._results[r] for r in sorted(self._results)]

    def age_s(self, result: ProbeResult) -> float:
        return self._wall() - result.checked_at

    def ttl_for(self, result: ProbeResult) -> float:
        return self.ttl_s if result.passed() else self.failure_ttl_s

    def is_fresh(self, result: ProbeResult) -> bool:
        if result.route in self._stale:
            return False
        age = self.age_s(result)
        return 0 <= age < self.ttl_for(result)  # a negative age: the wall clock went back; re-probe

    # ---- what runs tell us ------------------------------------------------------

    def note_used(self, route: str, entry: ChainEntry, *, model_reported: str | None = None) -> None:
        """A run used `route` (through `entry`). `model_reported`: the model its
        response named; if it differs from the probe's, the result is stale."""
        self._entries[route] = entry
        self._used_at[route] = self._wall()
        cached = self._results.get(route)
        if (model_reported and cached is not None and cached.model_reported
                and model_reported != cached.model_reported and route not in self._stale):
            log.info("probe result for %s is stale: the provider now reports model %r (probed: %r)",
                     route, model_reported, cached.model_reported)
            self._stale.add(route)

    def invalidate(self, route: str | None = None) -> None:
        """Make one route's result (or all) stale, e.g. after a config reload."""
        self._stale.update(self._results if route is None else (route,))

    # ---- probing ----------------------------------------------------------------

    async def get(self, entry: ChainEntry, *, refresh: bool = False) -> ProbeResult:
        """The route's capabilities: the cached result while fresh (no request),
        else a new probe run (shared with concurrent callers). `refresh` forces a run."""
        route = entry.route.id
        self._entries[route] = entry
        while True:
            if not refresh:
                cached = self._results.get(route)
                if cached is not None and self.is_fresh(cached):
                    return cached
            flight = self._flights.get(route)
            if flight is None:
                break
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
            # That run was cancelled with its caller: go round, and run it here if nobody else does.
        flight = self._flights[route] = _Flight()
        try:
            result = await self._run(entry)
            self._keep(result)
            flight.result = result
        finally:
            del self._flights[route]
            flight.done.set()
        return result

    async def _run(self, entry: ChainEntry) -> ProbeResult:
        route = entry.route.id
        started = self._clock()
        try:
            with anyio.fail_after(self.timeout_s):  # a mock route may wait for the simulator to start
                endpoint = await self._dispatcher.endpoint_for(entry.route, entry.base_url)
            client = self._dispatcher.client_for(endpoint)
        except Exception as exc:  # ProviderFailure, EndpointError, TimeoutError, ...
            return skipped_result(route, "client_init_failed", checked_at=self._wall(),
                                  error=self._redact(f"{type(exc).__name__}: {exc}"))
        if endpoint.provider != "mock" and not endpoint.has_key:
            return skipped_result(route, "missing_api_key", checked_at=self._wall(),
                                  error=f"{endpoint.key_env} is not set")
        timeouts = self._timeouts(entry.timeouts)
        outcomes: dict[str, _Outcome] = {}
        elapsed: dict[str, float] = {}

        async def one(name: str, probe: _Probe) -> None:
            t0 = self._clock()
            try:
                outcomes[name] = await probe(client, endpoint, entry.route, timeouts)
            except Exception as exc:  # a bug in one probe must not sink the others or the caller
                log.exception("capability probe %s of %s crashed", name, route)
                outcomes[name] = _Outcome(False, f"probe crashed: {type(exc).__name__}: {exc}")
            elapsed[name] = round(self._clock() - t0, 6)

        async with anyio.create_task_group() as tg:
            for name, probe in _PROBES:
                tg.start_soon(one, name, probe)
        ordered = [(name, outcomes[name]) for name, _ in _PROBES]  # stream, tool, json
        errors = {name: self._redact(o.error) for name, o in ordered if o.error is not None}
        return ProbeResult(
            model_id=route, route=route, attempted=True,
            stream_success=outcomes["stream"].ok, tool_stream_success=outcomes["tool"].ok,
            json_mode_success=outcomes["json"].ok,
            error=list(errors.values())[-1] if errors else None, errors=errors,
            elapsed=round(self._clock() - started, 6), probe_elapsed=elapsed,
            stream_events=outcomes["stream"].content_events, checked_at=self._wall(),
            model_reported=next((o.model for _, o in ordered if o.model), None),
        )

    def _timeouts(self, route_timeouts: Timeouts) -> Timeouts:
        """The route's own deadlines, none longer than the probe timeout."""
        t = self.timeout_s
        progress = route_timeouts.progress
        return Timeouts(connect=min(route_timeouts.connect, t), write=min(route_timeouts.write, t),
                        ttft=min(route_timeouts.ttft, t), idle=min(route_timeouts.idle, t),
                        progress=None if progress is None else min(progress, t), total=t)

    def _keep(self, result: ProbeResult) -> None:
        route = result.route
        self._results[route] = result
        self._stale.discard(route)
        if self._db is not None:
            try:
                self._db.save_probe(route, msgspec.json.encode(result), result.checked_at)
            except sqlite3.Error:
                log.warning("could not persist the probe result of %s", route, exc_info=True)
        if self._on_result is not None:
            try:
                self._on_result(result, result.summary())
            except Exception:
                log.exception("probe result callback failed for %s", route)

    # ---- persistence ------------------------------------------------------------

    def restore(self) -> int:
        """Load the results a previous daemon persisted; returns how many were taken.
        A record that no longer decodes is skipped (the next probe overwrites it)."""
        if self._db is None:
            return 0
        try:
            rows = self._db.load_probes()
        except sqlite3.Error:
            log.warning("could not load persisted probe results", exc_info=True)
            return 0
        taken = 0
        for route, data in rows.items():
            try:
                result = msgspec.json.decode(data, type=ProbeResult)
            except msgspec.DecodeError:
                log.warning("dropping an unreadable persisted probe result for %s", route)
                continue
            current = self._results.get(route)
            if current is None or current.checked_at < result.checked_at:
                self._results[route] = result
                taken += 1
        return taken

    # ---- background refresh -----------------------------------------------------

    def _due(self, route: str) -> bool:
        """Used by a run since its last probe, attempted, and expiring (or stale)."""
        result = self._results.get(route)
        used = self._used_at.get(route)
        if result is None or used is None or used < result.checked_at or not result.attempted:
            return False  # skipped routes cost no request: the next `get` redoes them
        if route in self._stale:
            return True
        return self.ttl_for(result) - self.age_s(result) <= self.refresh_before_s

    async def refresh_due(self) -> list[str]:
        """One refresher pass: re-probe (in parallel) every due route; returns them."""
        due = sorted(r for r in self._entries if self._due(r))

        async def refresh(entry: ChainEntry) -> None:
            try:
                await self.get(entry, refresh=True)
            except Exception:
                log.exception("refreshing the probes of %s failed", entry.route.id)

        async with anyio.create_task_group() as tg:
            for route in due:
                tg.start_soon(refresh, self._entries[route])
        return due

    async def refresher(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Background loop: every `refresh_every_s`, re-probe routes that runs use
        before their results expire, so runs never wait for a probe. Never raises
        (except cancellation)."""
        task_status.started()
        while True:
            await anyio.sleep(self.refresh_every_s)
            try:
                await self.refresh_due()
            except Exception:
                log.exception("probe refresher pass failed")
