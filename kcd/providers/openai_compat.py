"""OpenAI-compatible chat adapter: one HTTP attempt, fully classified.

`send_chat` performs exactly one attempt and never raises for a provider
fault: the outcome, good or bad, is an `Attempt` carrying either a
`ChatResponse` or a typed `ProviderFailure`, plus the evidence the attempt
records need (status, sanitised headers, request id, timings, excerpts).
Retries, fallback, breakers and stream policy belong to the gateway.

Detection follows the resilience reference §4: the Content-Type gate runs on
every response whatever the status; a streamed answer is only a success with a
finish reason, no in-band error, every `data:` line parsed, and tool-call
arguments that parse when the finish reason is `tool_calls`.

Deadlines (all on one cancel scope, re-armed as bytes arrive):
- ttft (streamed requests only): from the start of the attempt until the first
  content-bearing event; comment lines and role-only deltas do not count. A
  non-streamed call sends nothing until the whole answer is generated, so its
  wait for the headers is bounded by `total` alone (reference §5: TTFT ≈ total);
- idle: no bytes at all for `idle` seconds once the headers have arrived;
- progress: bytes keep coming (keep-alives) but no content for `progress`
  seconds after the first token;
- total: the whole attempt.
httpx's own read timeout is off because it would also cover the wait for the
headers, which belongs to ttft (or total).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import msgspec

from kcd.providers import errors as E
from kcd.providers.endpoints import Endpoint
from kcd.providers.errors import (
    ProviderFailure,
    body_details,
    default_retryable,
    find_request_id,
    looks_like_html,
    redact_request_headers,
    sanitize_headers,
)
from kcd.providers.routes import Route
from kcd.providers.sse import SSEParser
from kcd.providers.types import ChatMessage, ChatRequest, ChatResponse, ToolCall, Usage

__all__ = ["Attempt", "Timeouts", "build_body", "request_headers", "send_chat"]

BODY_EXCERPT_CHARS = 2048
RAW_HEAD_BYTES = 2048
DRAIN_GRACE_S = 2.0  # after [DONE]: how long to wait for the body to end before dropping it
_RESERVED = frozenset({"model", "messages", "tools", "stream", "stream_options"})
_JSON_MIMES = ("application/json", "application/problem+json")


class Timeouts(msgspec.Struct, frozen=True, kw_only=True):
    connect: float = 10.0  # TCP/TLS connect and waiting for a pooled connection
    write: float = 30.0  # sending the request body
    ttft: float = 45.0  # streams: until the first content (see module docstring)
    idle: float = 30.0  # gap between any two reads once the headers are in
    progress: float | None = 60.0  # gap between content events after the first; None: off
    total: float = 600.0  # the whole attempt


class Attempt(msgspec.Struct, kw_only=True):
    """What one HTTP attempt did; `failure` is None exactly when `response` is set."""

    route: str
    url: str
    stream_requested: bool
    streamed: bool = False  # the body was read as an SSE stream
    request_headers: dict[str, str] = {}  # as sent, credentials masked
    body_excerpt: str = ""  # first 2048 chars of the JSON body sent
    body_length: int = 0
    response: ChatResponse | None = None
    partial: ChatResponse | None = None  # a failed stream's content so far (wasted tokens)
    failure: ProviderFailure | None = None
    status_code: int | None = None
    content_type: str | None = None
    response_headers: dict[str, str] = {}  # lower-cased, credential headers dropped
    request_id: str | None = None
    latency_s: float = 0.0
    ttft_s: float | None = None
    max_gap_s: float | None = None  # longest gap between reads of the body
    raw_excerpt: str | None = None  # non-JSON bodies; head of a failed stream
    events: int = 0  # SSE events dispatched
    comments: int = 0  # SSE comment lines (keep-alives)
    no_terminator: bool = False  # stream had a finish reason but no [DONE]

    @property
    def ok(self) -> bool:
        return self.failure is None and self.response is not None

    def to_record(self) -> dict[str, Any]:
        """JSON-ready record (the failure as its dict)."""
        out = {f: getattr(self, f) for f in self.__struct_fields__ if f != "failure"}
        out = msgspec.to_builtins(out)
        out["failure"] = self.failure.to_dict() if self.failure is not None else None
        return out


# ---------------------------------------------------------------- request side


def _message(m: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        # OpenAI wants content null (not absent) next to tool_calls when there is no text
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    elif m.content is None:
        out["content"] = ""
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None and m.role == "tool":
        out["name"] = m.name
    return out


def build_body(route: Route, request: ChatRequest) -> dict[str, Any]:
    """The chat/completions JSON body. Never mutates `request`.

    `params` are sent as given except the keys this function owns (model,
    messages, tools, stream, stream_options), which would otherwise silently
    change what the adapter believes it sent.
    """
    body: dict[str, Any] = {
        "model": route.model,
        "messages": [_message(m) for m in request.messages],
    }
    for key, value in request.params.items():
        if key not in _RESERVED:
            body[key] = value
    if request.tools:  # never `tools: null` or `[]`
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def request_headers(endpoint: Endpoint, *, stream: bool) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if stream else "application/json",
    }
    headers.update(endpoint.headers)
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key.reveal()}"
    return headers


# ------------------------------------------------------------ wire shapes (in)
# Loose where providers disagree (content parts, object arguments), typed elsewhere.


class _Fn(msgspec.Struct):
    name: str | None = None
    arguments: Any = None


class _ToolCallIn(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: _Fn | None = None


class _Delta(msgspec.Struct):
    content: Any = None
    reasoning: Any = None
    reasoning_content: Any = None
    tool_calls: list[_ToolCallIn] | None = None


class _Message(msgspec.Struct):
    content: Any = None
    tool_calls: list[_ToolCallIn] | None = None


class _Choice(msgspec.Struct):
    index: int | None = 0
    delta: _Delta | None = None
    message: _Message | None = None
    finish_reason: str | None = None


class _UsageIn(msgspec.Struct):
    prompt_tokens: int | float | None = None
    completion_tokens: int | float | None = None
    total_tokens: int | float | None = None


class _Completion(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _UsageIn | None = None
    error: Any = None


_ENCODER = msgspec.json.Encoder()
_CHUNK = msgspec.json.Decoder(_Completion)
_ANY = msgspec.json.Decoder()


def _text(value: Any) -> str:
    """Content as text: a string as is, content parts joined, anything else empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text") or "" for p in value if isinstance(p, dict))
    return ""


def _arguments(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return _ENCODER.encode(value).decode()  # some servers send an object, not a string


def _usage(u: _UsageIn | None) -> Usage | None:
    if u is None:
        return None

    def n(v: int | float | None) -> int | None:
        return None if v is None else int(v)

    return Usage(prompt_tokens=n(u.prompt_tokens), completion_tokens=n(u.completion_tokens),
                 total_tokens=n(u.total_tokens))


def _error_fields(obj: Any) -> tuple[str | None, Any, dict[str, Any]]:
    """(message, code, record) of a provider error envelope in any common shape."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        return (str(message) if message else None), err.get("code"), err
    if isinstance(err, str):
        return err, None, {"message": err}
    if isinstance(obj, dict):
        for key in ("message", "detail"):
            if isinstance(obj.get(key), str):
                return obj[key], None, {"message": obj[key]}
    return None, None, {}


def _code_retryable(code: Any) -> bool | None:
    """Error envelopes often carry an HTTP-like code; honour it when they do."""
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(code, int) and 100 <= code < 600:
        return default_retryable(E.HTTP_ERROR, code)
    return None


class _ToolSlot:
    __slots__ = ("id", "name", "args")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name = ""
        self.args: list[str] = []


# ------------------------------------------------------------------- attempt


class _Run:
    """State of one attempt while it is in flight."""

    def __init__(
        self,
        attempt: Attempt,
        route: Route,
        endpoint: Endpoint,
        timeouts: Timeouts,
        on_chunk: Callable[[str], None] | None,
    ) -> None:
        self.a = attempt
        self.route = route
        self.endpoint = endpoint
        self.t = timeouts
        self.on_chunk = on_chunk
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
        self.done = False  # [DONE] seen: the answer is complete, we are only draining
        self.raw_head = bytearray()  # first bytes of a stream, for failure evidence
        self.cut_line_bytes = 0  # a last SSE line cut off by EOF
        # stream assembly
        self.content: list[str] = []
        self.tools: dict[int, _ToolSlot] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.completion_id: str | None = None

    # deadlines ---------------------------------------------------------

    def _rearm(self, now: float) -> None:
        dl, kind = self.total_dl, "total"
        if self.done:
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

    def _base_details(self) -> dict[str, Any]:
        a = self.a
        return {
            "status_code": a.status_code,
            "content_type": a.content_type,
            "response_headers": a.response_headers,
            "request_id": a.request_id,
        }

    def fail(
        self,
        classification: str,
        message: str,
        *,
        body: bytes | None = None,
        hint: str | None = None,
        retryable: bool | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        a = self.a
        if a.failure is not None:  # the first cause wins
            return
        if body is not None:
            details = body_details(
                body,
                status_code=a.status_code,
                content_type=a.content_type or "",
                headers=a.response_headers,
                hint=hint,
            )
        else:
            details = self._base_details()
            if hint:
                details["hint"] = hint
            if self.raw_head:
                details["raw_excerpt"] = self.raw_head.decode("utf-8", "replace")
        if extra:
            details.update(extra)
        a.failure = ProviderFailure(
            self.route.id,
            classification,
            message,
            status_code=a.status_code,
            retryable=retryable,
            details=details,
        )
        if a.raw_excerpt is None and details.get("raw_excerpt"):
            a.raw_excerpt = details["raw_excerpt"][:RAW_HEAD_BYTES]
        if self.content or self.tools:
            a.partial = self._assemble()

    def _auth_hint(self) -> str:
        env = self.endpoint.key_env
        if self.endpoint.api_key is None:
            return f"no API key was sent: {env or 'the key variable'} is not set"
        return f"the provider rejected the credentials; check {env or 'the API key'}"

    # the request -------------------------------------------------------

    async def execute(self, client: httpx.AsyncClient, url: str, headers: dict[str, str],
                      payload: bytes) -> None:
        t = self.t
        timeout = httpx.Timeout(connect=t.connect, write=t.write, read=None, pool=t.connect)
        self._rearm(self.start)
        try:
            with self.scope:
                async with client.stream(
                    "POST", url, content=payload, headers=headers, timeout=timeout
                ) as response:
                    await self._on_response(response)
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            self.fail(E.TIMEOUT_CONNECT, f"connect timed out after {t.connect:g}s ({_exc(exc)})")
        except httpx.WriteTimeout as exc:
            self.fail(E.TIMEOUT_WRITE, f"sending the request timed out after {t.write:g}s ({_exc(exc)})")
        except httpx.ReadTimeout as exc:  # not armed by us; a transport may still raise it
            self.fail(E.TIMEOUT_IDLE, f"read timed out ({_exc(exc)})")
        except httpx.ConnectError as exc:
            self.fail(E.CONNECT_ERROR, f"cannot connect to {self.endpoint.base_url} ({_exc(exc)})")
        except httpx.DecodingError as exc:
            self.fail(E.NON_JSON, f"body could not be decoded ({_exc(exc)})")
        except httpx.TransportError as exc:
            if self.headers_at is None:
                self.fail(E.CONNECT_ERROR, f"connection failed before a response ({_exc(exc)})")
            elif self.done:
                self._finish_stream()  # the answer was complete; only the drain broke
            else:
                self.fail(E.STREAM_TRUNCATED, f"response body cut off ({_exc(exc)})")
        if self.scope.cancelled_caught and self.a.failure is None and self.a.response is None:
            self._timed_out()
        self.a.latency_s = anyio.current_time() - self.start

    def _timed_out(self) -> None:
        t, kind = self.t, self.kind
        if self.done:
            self._finish_stream()  # [DONE] arrived; the server just kept the body open
            return
        seconds = {"ttft": t.ttft, "idle": t.idle, "idle_progress": t.progress, "total": t.total}[kind]
        what = {
            "ttft": "no content",
            "idle": "no bytes",
            "idle_progress": "no new content",
            "total": "attempt not finished",
        }[kind]
        self.fail(f"timeout.{kind}", f"{what} within {seconds:g}s",
                  extra={"events": self.a.events, "comments": self.a.comments})

    async def _on_response(self, response: httpx.Response) -> None:
        a = self.a
        now = anyio.current_time()
        self.headers_at = now
        a.status_code = response.status_code
        ctype = response.headers.get("content-type", "")
        a.content_type = ctype
        a.response_headers = sanitize_headers(response.headers.multi_items())
        a.request_id = find_request_id(a.response_headers)
        mime = ctype.split(";", 1)[0].strip().lower()
        if 200 <= response.status_code < 300 and mime == "text/event-stream":
            a.streamed = True
            self._rearm(now)
            await self._read_stream(response)
            return
        self._content_seen(now)  # a whole-body answer: its "first token" is the headers
        self._rearm(now)
        body = await self._read_body(response)
        self._classify_body(body, mime)

    async def _read_body(self, response: httpx.Response) -> bytes:
        parts: list[bytes] = []
        async for chunk in response.aiter_bytes():
            now = anyio.current_time()
            self._on_read(now)
            parts.append(chunk)
            self._rearm(now)
        return b"".join(parts)

    # whole bodies ------------------------------------------------------

    def _classify_body(self, body: bytes, mime: str) -> None:
        a = self.a
        status = a.status_code or 0
        ok = 200 <= status < 300
        if looks_like_html(body, mime):
            self._html(body)
            return
        is_json = mime in _JSON_MIMES or mime.endswith("+json")
        if not is_json and not ok and body.lstrip()[:1] in (b"{", b"["):
            is_json = True  # mislabelled error bodies still carry the provider's message
        if not is_json:
            a.raw_excerpt = body[:RAW_HEAD_BYTES].decode("utf-8", "replace")
            if status in (401, 403):
                self.fail(E.AUTH_ERROR, f"HTTP {status} from the provider", body=body,
                          hint=self._auth_hint())
            elif not ok and not body.strip():
                self.fail(E.HTTP_ERROR, f"HTTP {status} with an empty body", body=body)
            else:
                self.fail(E.NON_JSON, f"unexpected content type {mime or '(none)'!r}", body=body)
            return
        try:
            obj = _ANY.decode(body)
        except msgspec.DecodeError as exc:
            a.raw_excerpt = body[:RAW_HEAD_BYTES].decode("utf-8", "replace")
            self.fail(E.NON_JSON, f"body is not valid JSON ({exc})", body=body)
            return
        if not ok:
            message, code, record = _error_fields(obj)
            extra = {"provider_error": record} if record else None
            if status in (401, 403):
                self.fail(E.AUTH_ERROR, message or f"HTTP {status}", body=body,
                          hint=self._auth_hint(), extra=extra)
            else:
                self.fail(E.HTTP_ERROR, message or f"HTTP {status}", body=body, extra=extra)
            return
        if isinstance(obj, dict) and obj.get("error"):
            message, code, record = _error_fields(obj)
            self.fail(E.JSON_ERROR_BODY, message or "error object in a successful response",
                      body=body, retryable=_code_retryable(code), extra={"provider_error": record})
            return
        try:
            completion = msgspec.convert(obj, _Completion)
        except msgspec.ValidationError as exc:
            self.fail(E.EMPTY_RESPONSE, f"response is not a chat completion ({exc})", body=body)
            return
        choice = completion.choices[0] if completion.choices else None
        if choice is None or choice.message is None:
            self.fail(E.EMPTY_RESPONSE, "response has no choices[0].message", body=body)
            return
        self.model, self.completion_id = completion.model, completion.id
        self.usage = _usage(completion.usage)
        self.finish_reason = choice.finish_reason
        msg = choice.message
        self.content = [_text(msg.content)]
        for i, tc in enumerate(msg.tool_calls or ()):
            self._merge_tool(tc, default_index=i)
        self._finalize(raw=obj if isinstance(obj, dict) else None)

    def _html(self, body: bytes) -> None:
        status = self.a.status_code or 0
        if 200 <= status < 300:
            hint = ("a successful HTML page usually means the base URL points at a web page, "
                    "login or captive portal instead of the API; check the route's base_url")
        else:
            hint = "the provider or a gateway in front of it answered with an error page"
        self.a.raw_excerpt = body[:RAW_HEAD_BYTES].decode("utf-8", "replace")
        self.fail(E.UPSTREAM_HTML, E.HTML_MESSAGE, body=body, hint=hint)

    # streams -----------------------------------------------------------

    async def _read_stream(self, response: httpx.Response) -> None:
        a = self.a
        parser = SSEParser()
        sniffing = True
        html: list[bytes] | None = None
        try:
            async for chunk in response.aiter_bytes():
                now = anyio.current_time()
                self._on_read(now)
                if len(self.raw_head) < RAW_HEAD_BYTES:
                    self.raw_head += chunk[: RAW_HEAD_BYTES - len(self.raw_head)]
                if html is not None:
                    html.append(chunk)
                    self._rearm(now)
                    continue
                if sniffing:
                    head = chunk.lstrip()
                    if head:
                        sniffing = False
                        if head[:1] == b"<":  # an HTML page labelled as an event stream
                            html = [chunk]
                            self._rearm(now)
                            continue
                if self.done:
                    self._rearm(now)  # drain to EOF so the connection can be reused
                    continue
                events = parser.feed(chunk)
                a.comments = parser.comments
                if events and self._on_events(events, now):
                    return  # failed: leaving the block closes (and drops) the connection
                self._rearm(now)
            if html is not None:
                self._html(b"".join(html))
                return
            if not self.done:
                events = parser.close()
                a.comments = parser.comments
                if events and self._on_events(events, anyio.current_time()):
                    return
                self.cut_line_bytes = parser.discarded_tail
        finally:
            a.events = parser.events
        self._finish_stream()

    def _on_events(self, events: list[Any], now: float) -> bool:
        """Apply events; True when the attempt has failed and reading should stop."""
        progressed = False
        for ev in events:
            if self.done:
                break
            data = ev.data
            if ev.event == "error":
                self._stream_error(_decode_or_wrap(data))
                return True
            if data[:1] == "[" and data.strip() == "[DONE]":
                self.done = True
                break
            if not data.strip():
                continue  # an empty data event carries nothing; not worth failing over
            try:
                chunk = _CHUNK.decode(data)
            except msgspec.ValidationError as exc:
                obj = _decode_or_wrap(data)
                if isinstance(obj, dict) and obj.get("error"):
                    self._stream_error(obj)
                else:
                    self.fail(E.STREAM_MALFORMED, f"chunk is not a chat.completion.chunk ({exc})",
                              extra={"data": data[:E.SNIPPET_CHARS]})
                return True
            except msgspec.DecodeError as exc:
                self.fail(E.STREAM_MALFORMED, f"data line is not JSON ({exc})",
                          extra={"data": data[:E.SNIPPET_CHARS]})
                return True
            if chunk.error is not None:  # checked before the delta, as OpenRouter sends both
                self._stream_error({"error": chunk.error})
                return True
            if self.completion_id is None:
                self.completion_id = chunk.id
            if chunk.model and self.model is None:
                self.model = chunk.model
            if chunk.usage is not None:
                self.usage = _usage(chunk.usage)
            for choice in chunk.choices or ():
                if choice.index not in (0, None):
                    continue  # n > 1 is never requested
                delta = choice.delta
                if delta is not None:
                    text = delta.content
                    if text:
                        if not isinstance(text, str):
                            text = _text(text)
                        self.content.append(text)
                        progressed = True
                        if self.on_chunk is not None:
                            self.on_chunk(text)
                    if delta.tool_calls:
                        for tc in delta.tool_calls:
                            self._merge_tool(tc, default_index=None)
                        progressed = True
                    if delta.reasoning or delta.reasoning_content:
                        progressed = True
                if choice.finish_reason:
                    if choice.finish_reason == "error":
                        self._stream_error({"error": {"message": "finish_reason \"error\""}})
                        return True
                    self.finish_reason = choice.finish_reason
                    progressed = True
        if progressed:
            self._content_seen(now)
            self.progress_on = True
        return False

    def _stream_error(self, obj: Any) -> None:
        message, code, record = _error_fields(obj)
        where = "after tokens" if (self.content or self.tools) else "before any token"
        self.fail(E.STREAM_ERROR, f"in-band error {where}: {message or 'unknown error'}",
                  retryable=_code_retryable(code),
                  extra={"provider_error": record, "after_tokens": bool(self.content or self.tools)})

    def _merge_tool(self, tc: _ToolCallIn, *, default_index: int | None) -> None:
        idx = tc.index if tc.index is not None else default_index
        if idx is None:  # no index: a new id starts a new call, otherwise continue the last
            known = {s.id for s in self.tools.values()}
            if tc.id and tc.id not in known:
                idx = len(self.tools)
            else:
                idx = max(self.tools) if self.tools else 0
        slot = self.tools.get(idx)
        if slot is None:
            slot = self.tools[idx] = _ToolSlot()
        if tc.id and slot.id is None:
            slot.id = tc.id
        fn = tc.function
        if fn is not None:
            if fn.name and fn.name != slot.name:
                slot.name = fn.name if not slot.name else slot.name + fn.name
            if fn.arguments is not None:
                slot.args.append(_arguments(fn.arguments))

    def _finish_stream(self) -> None:
        if self.a.failure is not None:
            return
        if self.finish_reason is None:
            how = "[DONE] without" if self.done else "end of stream without"
            extra = {"events": self.a.events, "content_chars": sum(map(len, self.content))}
            if self.cut_line_bytes:
                extra["cut_line_bytes"] = self.cut_line_bytes
            self.fail(E.STREAM_TRUNCATED, f"{how} a finish reason", extra=extra)
            return
        self.a.no_terminator = not self.done
        self._finalize(raw=None)

    # the answer --------------------------------------------------------

    def _tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=s.id or f"call_{i}", name=s.name, arguments="".join(s.args) or "{}")
            for i, s in sorted(self.tools.items())
        ]

    def _assemble(self, raw: dict[str, Any] | None = None) -> ChatResponse:
        return ChatResponse(
            content="".join(self.content),
            tool_calls=self._tool_calls(),
            finish_reason=self.finish_reason,
            usage=self.usage,
            model=self.model,
            request_id=self.a.request_id or self.completion_id,
            raw=raw,
        )

    def _finalize(self, raw: dict[str, Any] | None) -> None:
        resp = self._assemble(raw)
        if self.finish_reason == "tool_calls":
            for call in resp.tool_calls:
                try:
                    _ANY.decode(call.arguments)
                except msgspec.DecodeError:
                    # OpenRouter rewrites a `length` stop to `tool_calls` (reference §4.2)
                    self.fail(E.STREAM_TRUNCATED,
                              f"tool call {call.name!r} has arguments that are not valid JSON",
                              extra={"tool_call_id": call.id,
                                     "arguments_excerpt": call.arguments[:E.SNIPPET_CHARS]})
                    return
        if not resp.content and not resp.tool_calls:
            self.fail(E.EMPTY_RESPONSE, "no content and no tool calls",
                      extra={"finish_reason": self.finish_reason})
            return
        if raw is None:
            raw = {
                "id": self.completion_id,
                "object": "chat.completion",
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": resp.content or None,
                        "tool_calls": [
                            {"id": c.id, "type": "function",
                             "function": {"name": c.name, "arguments": c.arguments}}
                            for c in resp.tool_calls
                        ] or None,
                    },
                    "finish_reason": self.finish_reason,
                }],
                "usage": msgspec.to_builtins(self.usage) if self.usage is not None else None,
            }
            resp = msgspec.structs.replace(resp, raw=raw)
        self.a.response = resp


def _decode_or_wrap(data: str) -> Any:
    try:
        return _ANY.decode(data)
    except msgspec.DecodeError:
        return {"error": {"message": data[:E.SNIPPET_CHARS]}}


def _exc(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def send_chat(
    client: httpx.AsyncClient,
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
    payload = _ENCODER.encode(body)
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
