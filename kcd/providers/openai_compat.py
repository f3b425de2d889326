"""OpenAI-compatible chat adapter: one HTTP attempt, fully classified.

`send_chat` performs exactly one attempt and never raises for a provider
fault: the outcome, good or bad, is an `Attempt` carrying either a
`ChatResponse` or a typed `ProviderFailure`, plus the evidence the attempt
records need (status, sanitised headers, request id, timings, excerpts).
Retries, fallback, breakers and stream policy belong to the dispatcher.

This module owns the I/O and the deadlines. The wire format is in
`openai_wire`; judging the body or the stream (complete, truncated, stalled,
malformed, in-band error) in `assembly`, with error envelopes and failure evidence in `envelope`; the
records in `attempt`. The Content-Type gate runs on every response whatever
the status.

Deadlines (all on one cancel scope, re-armed as bytes arrive):
- ttft (streamed requests only): from the start of the attempt until the first
  content-bearing event; comment lines and role-only deltas do not count. A
  non-streamed call sends nothing until the whole answer is generated, so its
  wait for the headers is bounded by `total` alone (its TTFT is its total time);
- idle: no bytes at all for `idle` seconds once the headers have arrived;
- progress: bytes keep coming (keep-alives) but no content for `progress`
  seconds after the first token;
- total: the whole attempt.
httpx's own read timeout is off because it would also cover the wait for the
headers, which belongs to ttft (or total).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Union

import anyio
import httpx

from kcd.providers import errors as E
from kcd.providers.assembly import Assembler
from kcd.providers.attempt import Attempt, Timeouts
from kcd.providers.endpoints import Endpoint
from kcd.providers.envelope import RAW_HEAD_BYTES, Evidence, mime_of
from kcd.providers.errors import find_request_id, redact_request_headers, sanitize_headers
from kcd.providers.openai_wire import ENCODER, build_body, request_headers
from kcd.providers.routes import Route
from kcd.providers.sse import SSEEvent, SSEParser
from kcd.providers.types import ChatRequest

if TYPE_CHECKING:
    from kcd.providers.aiohttp_client import AiohttpClient, UpstreamResponse

__all__ = ["Attempt", "Timeouts", "UpstreamClient", "build_body", "request_headers", "send_chat"]

# Who sends an attempt: httpx's client (tests, `upstream_client: httpx`) or the daemon's
# default, which offers the same `stream()` on aiohttp without httpx's client layer.
UpstreamClient = Union[httpx.AsyncClient, "AiohttpClient"]

BODY_EXCERPT_CHARS = 2048
DRAIN_GRACE_S = 2.0  # after [DONE]: how long to wait for the body to end before dropping it


class _Run:
    """State of one attempt while it is in flight: deadlines and reads.

    Everything learnt about the response goes into `ev`; the answer is built by
    `asm`, and both are copied into the `Attempt` when the attempt ends.
    """

    def __init__(
        self,
        attempt: Attempt,
        route: Route,
        endpoint: Endpoint,
        timeouts: Timeouts,
        on_chunk: Callable[[str], None] | None,
    ) -> None:
        self.a = attempt
        self.endpoint = endpoint
        self.t = timeouts
        self.ev = Evidence(route.id)
        self.asm = Assembler(self.ev, on_chunk)
        self.scope = anyio.CancelScope()
        self.start = anyio.current_time()
        self.total_dl = self.start + timeouts.total
        self.ttft_dl = self.start + (timeouts.ttft if attempt.stream_requested else timeouts.total)
        self.kind = "total"
        self.headers_at: float | None = None
        self.first_content_at: float | None = None
        self.last_content_at = 0.0
        self.last_read_at: float | None = None
        self.progress_on = False
        self.cut_line_bytes = 0  # a last SSE line cut off by EOF

    # deadlines ---------------------------------------------------------

    def _rearm(self, now: float) -> None:
        dl, kind = self.total_dl, "total"
        if self.asm.done:  # the answer is complete; we are only draining the body
            grace = now + min(self.t.idle, DRAIN_GRACE_S)
            if grace < dl:
                dl, kind = grace, "drain"
        else:
            if self.first_content_at is None:
                if self.ttft_dl < dl:
                    dl, kind = self.ttft_dl, "ttft"
            elif self.progress_on and self.t.progress is not None:
                p = self.last_content_at + self.t.progress
                if p < dl:
                    dl, kind = p, "idle_progress"
            if self.headers_at is not None and now + self.t.idle < dl:
                dl, kind = now + self.t.idle, "idle"
        self.kind = kind
        self.scope.deadline = dl

    def _on_read(self, now: float) -> None:
        if self.last_read_at is not None:
            gap = now - self.last_read_at
            if self.a.max_gap_s is None or gap > self.a.max_gap_s:
                self.a.max_gap_s = gap
        self.last_read_at = now

    def _content_seen(self, now: float) -> None:
        if self.first_content_at is None:
            self.first_content_at = now
            self.a.ttft_s = now - self.start
        self.last_content_at = now

    # outcome -----------------------------------------------------------

    def _auth_hint(self) -> str:
        env = self.endpoint.key_env
        if self.endpoint.api_key is None:
            return f"no API key was sent: {env or 'the key variable'} is not set"
        return f"the provider rejected the credentials; check {env or 'the API key'}"

    def _finish_stream(self) -> None:
        self.asm.finish_stream(events=self.a.events, cut_line_bytes=self.cut_line_bytes)

    def _timed_out(self) -> None:
        t, kind = self.t, self.kind
        if self.asm.done:
            self._finish_stream()  # [DONE] arrived; the server just kept the body open
            return
        seconds = {"ttft": t.ttft, "idle": t.idle, "idle_progress": t.progress, "total": t.total}[kind]
        what = {
            "ttft": "no content",
            "idle": "no bytes",
            "idle_progress": "no new content",
            "total": "attempt not finished",
        }[kind]
        self.asm.fail(f"timeout.{kind}", f"{what} within {seconds:g}s",
                      extra={"events": self.a.events, "comments": self.a.comments})

    def _record(self) -> None:
        a, asm = self.a, self.asm
        a.response, a.failure, a.partial = asm.response, asm.failure, asm.partial
        a.raw_excerpt = asm.raw_excerpt
        a.no_terminator = asm.no_terminator

    # the request -------------------------------------------------------

    async def execute(self, client: UpstreamClient, url: str, headers: dict[str, str],
                      payload: bytes) -> None:
        t, fail = self.t, self.asm.fail
        timeout = httpx.Timeout(connect=t.connect, write=t.write, read=None, pool=t.connect)
        self._rearm(self.start)
        try:
            with self.scope:
                async with client.stream(
                    "POST", url, content=payload, headers=headers, timeout=timeout
                ) as response:
                    await self._on_response(response)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            fail(E.TIMEOUT_CONNECT, f"connect timed out after {t.connect:g}s ({_exc(exc)})")
        except httpx.WriteTimeout as exc:
            fail(E.TIMEOUT_WRITE, f"sending the request timed out after {t.write:g}s ({_exc(exc)})")
        except httpx.ReadTimeout as exc:  # not armed by us; a transport may still raise it
            fail(E.TIMEOUT_IDLE, f"read timed out ({_exc(exc)})")
        except httpx.ConnectError as exc:
            fail(E.CONNECT_ERROR, f"cannot connect to {self.endpoint.base_url} ({_exc(exc)})")
        except httpx.DecodingError as exc:
            fail(E.NON_JSON, f"body could not be decoded ({_exc(exc)})")
        except httpx.TransportError as exc:
            if self.headers_at is None:
                self._failed_before_headers(exc)
            elif self.asm.done:
                self._finish_stream()  # the answer was complete; only the drain broke
            else:
                fail(E.STREAM_TRUNCATED, f"response body cut off ({_exc(exc)})")
        if self.scope.cancelled_caught and self.asm.failure is None and self.asm.response is None:
            self._timed_out()
        self._record()
        self.a.latency_s = anyio.current_time() - self.start

    def _failed_before_headers(self, exc: httpx.TransportError) -> None:
        """Connected (else ConnectError), then no response: say how the connection died."""
        where = f"connection to {self.ev.route} ({self.endpoint.base_url})"
        if isinstance(exc, httpx.WriteError):
            how = "was reset while the request was being sent"
        elif isinstance(exc, httpx.ReadError):
            how = "was reset after the request was sent, before any response header"
        elif isinstance(exc, httpx.RemoteProtocolError):
            # A close without a response, or bytes that are not HTTP: both cut the exchange.
            how = "ended after the request was sent, without a valid response header"
        else:  # proxy and protocol-use errors: nothing suggests a retry would help
            self.asm.fail(E.CONNECT_ERROR, f"no response from {self.endpoint.base_url} ({_exc(exc)})")
            return
        self.asm.fail(E.CONNECTION_RESET, f"{where} {how} ({_exc(exc)})")

    async def _on_response(self, response: httpx.Response | UpstreamResponse) -> None:
        a, ev = self.a, self.ev
        now = anyio.current_time()
        self.headers_at = now
        ev.status_code = a.status_code = response.status_code
        ev.content_type = a.content_type = response.headers.get("content-type", "")
        ev.response_headers = a.response_headers = sanitize_headers(response.headers.multi_items())
        ev.request_id = a.request_id = find_request_id(a.response_headers)
        if 200 <= response.status_code < 300 and mime_of(a.content_type) == "text/event-stream":
            a.streamed = True
            self._rearm(now)
            await self._read_stream(response)
            return
        self._content_seen(now)  # a whole-body answer: its "first token" is the headers
        self._rearm(now)
        body = await self._read_body(response)
        status = response.status_code
        self.asm.take_body(body, auth_hint=self._auth_hint() if status in (401, 403) else None)

    async def _read_body(self, response: httpx.Response | UpstreamResponse) -> bytes:
        parts: list[bytes] = []
        async for chunk in response.aiter_bytes():
            now = anyio.current_time()
            self._on_read(now)
            parts.append(chunk)
            self._rearm(now)
        return b"".join(parts)

    # streams -----------------------------------------------------------

    async def _read_stream(self, response: httpx.Response | UpstreamResponse) -> None:
        a, asm, head = self.a, self.asm, self.ev.raw_head
        parser = SSEParser()
        sniffing = True
        html: list[bytes] | None = None
        try:
            async for chunk in response.aiter_bytes():
                now = anyio.current_time()
                self._on_read(now)
                if len(head) < RAW_HEAD_BYTES:
                    head += chunk[: RAW_HEAD_BYTES - len(head)]
                if html is not None:
                    html.append(chunk)
                    self._rearm(now)
                    continue
                if sniffing:
                    lead = chunk.lstrip()
                    if lead:
                        sniffing = False
                        if lead[:1] == b"<":  # an HTML page labelled as an event stream
                            html = [chunk]
                            self._rearm(now)
                            continue
                if asm.done:
                    self._rearm(now)  # drain to EOF so the connection can be reused
                    continue
                events = parser.feed(chunk)
                a.comments = parser.comments
                if events and self._apply(events, now):
                    return  # failed: leaving the block closes (and drops) the connection
                self._rearm(now)
            if html is not None:
                asm.html_page(b"".join(html))
                return
            if not asm.done:
                events = parser.close()
                a.comments = parser.comments
                if events and self._apply(events, anyio.current_time()):
                    return
                self.cut_line_bytes = parser.discarded_tail
        finally:
            a.events = parser.events
        self._finish_stream()

    def _apply(self, events: list[SSEEvent], now: float) -> bool:
        """Feed events to the assembler; True when the attempt has failed."""
        progressed = self.asm.feed(events)
        if self.asm.failure is not None:
            return True
        if progressed:
            self._content_seen(now)
            self.progress_on = True
        return False


def _exc(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def send_chat(
    client: UpstreamClient,
    endpoint: Endpoint,
    route: Route,
    request: ChatRequest,
    *,
    timeouts: Timeouts = Timeouts(),
    on_chunk: Callable[[str], None] | None = None,
) -> Attempt:
    """One attempt at `route`. Provider faults come back as `Attempt.failure`;
    cancellation propagates (the response is closed on the way out)."""
    body = build_body(route, request)
    payload = ENCODER.encode(body)
    headers = request_headers(endpoint, stream=request.stream)
    url = endpoint.base_url + "/chat/completions"
    attempt = Attempt(
        route=route.id,
        url=url,
        stream_requested=request.stream,
        request_headers=redact_request_headers(headers),
        body_excerpt=payload[: BODY_EXCERPT_CHARS * 4].decode("utf-8", "ignore")[:BODY_EXCERPT_CHARS],
        body_length=len(payload),
    )
    await _Run(attempt, route, endpoint, timeouts, on_chunk).execute(client, url, headers, payload)
    return attempt
