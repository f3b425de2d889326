"""Turn a response body, or a stream's SSE events, into a `ChatResponse` or a `ProviderFailure`.

Pure: no I/O and no clocks, so every rule here is unit-testable. One
`Assembler` per attempt; the caller feeds it and reads `response`, `failure`,
`partial` and `raw_excerpt` at the end. The first failure wins.

Rules (an attempt succeeds only if nothing below fires; a truncated answer must
never reach the agent loop as a success):
- whole bodies: HTML (by type or by a leading `<`), non-JSON, error statuses
  and error objects in a 2xx body are typed failures, the provider's own
  message kept;
- streams: the error envelope is checked on every event before its delta, a
  `finish_reason` of "error" is an in-band error, a data line that is not a
  chunk is `stream_malformed`, and the end of the stream without a finish
  reason is `stream_truncated` (a finish reason without `[DONE]` is a success
  flagged `no_terminator`);
- any answer: `finish_reason: tool_calls` with arguments that are not JSON is
  `stream_truncated`; no content and no tool calls is `empty_response`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from kcd.providers import errors as E
from kcd.providers.envelope import (
    RAW_HEAD_BYTES,
    Evidence,
    code_retryable,
    decode_or_wrap,
    error_fields,
    mime_of,
)
from kcd.providers.errors import ProviderFailure, looks_like_html
from kcd.providers.openai_wire import (
    CHUNK_DECODER,
    JSON_DECODER,
    Completion,
    ToolCallIn,
    arguments_text,
    completion_object,
    content_text,
    to_usage,
)
from kcd.providers.sse import SSEEvent
from kcd.providers.types import ChatResponse, ToolCall, Usage

__all__ = ["Assembler"]

_JSON_MIMES = ("application/json", "application/problem+json")


class _ToolSlot:
    __slots__ = ("id", "name", "args")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name = ""
        self.args: list[str] = []


class Assembler:
    """The answer of one attempt, built from a whole body (`take_body`) or SSE
    events (`feed`, then `finish_stream`). `on_chunk` gets each text delta."""

    def __init__(self, evidence: Evidence, on_chunk: Callable[[str], None] | None = None) -> None:
        self.ev = evidence
        self.on_chunk = on_chunk
        self.content: list[str] = []
        self.tools: dict[int, _ToolSlot] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.completion_id: str | None = None
        self.done = False  # [DONE] seen: the answer is complete
        self.no_terminator = False  # finished with a finish reason but no [DONE]
        self.response: ChatResponse | None = None
        self.failure: ProviderFailure | None = None
        self.partial: ChatResponse | None = None  # content so far, when it failed
        self.raw_excerpt: str | None = None

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
        """Record a failure (ignored if one is already recorded)."""
        if self.failure is not None:
            return
        failure = self.ev.failure(classification, message, body=body, hint=hint,
                                  retryable=retryable, extra=extra)
        self.failure = failure
        excerpt = failure.details.get("raw_excerpt")
        if self.raw_excerpt is None and excerpt:
            self.raw_excerpt = excerpt[:RAW_HEAD_BYTES]
        if self.content or self.tools:
            self.partial = self._assemble()

    # whole bodies ------------------------------------------------------

    def take_body(self, body: bytes, *, auth_hint: str | None = None) -> None:
        """Classify a whole (non-SSE) body; `auth_hint` explains a 401/403."""
        status = self.ev.status_code or 0
        ok = 200 <= status < 300
        mime = mime_of(self.ev.content_type)
        if looks_like_html(body, mime):
            self.html_page(body)
            return
        is_json = mime in _JSON_MIMES or mime.endswith("+json")
        if not is_json and not ok and body.lstrip()[:1] in (b"{", b"["):
            is_json = True  # mislabelled error bodies still carry the provider's message
        if not is_json:
            self.raw_excerpt = body[:RAW_HEAD_BYTES].decode("utf-8", "replace")
            if status in (401, 403):
                self.fail(E.AUTH_ERROR, f"HTTP {status} from the provider", body=body, hint=auth_hint)
            elif not ok and not body.strip():
                self.fail(E.HTTP_ERROR, f"HTTP {status} with an empty body", body=body)
            else:
                self.fail(E.NON_JSON, f"unexpected content type {mime or '(none)'!r}", body=body)
            return
        try:
            obj = JSON_DECODER.decode(body)
        except msgspec.DecodeError as exc:
            self.raw_excerpt = body[:RAW_HEAD_BYTES].decode("utf-8", "replace")
            self.fail(E.NON_JSON, f"body is not valid JSON ({exc})", body=body)
            return
        if not ok:
            message, _code, record = error_fields(obj)
            extra = {"provider_error": record} if record else None
            if status in (401, 403):
                self.fail(E.AUTH_ERROR, message or f"HTTP {status}", body=body, hint=auth_hint, extra=extra)
            else:
                self.fail(E.HTTP_ERROR, message or f"HTTP {status}", body=body, extra=extra)
            return
        if isinstance(obj, dict) and obj.get("error"):
            message, code, record = error_fields(obj)
            self.fail(E.JSON_ERROR_BODY, message or "error object in a successful response",
                      body=body, retryable=code_retryable(code), extra={"provider_error": record})
            return
        try:
            completion = msgspec.convert(obj, Completion)
        except msgspec.ValidationError as exc:
            self.fail(E.EMPTY_RESPONSE, f"response is not a chat completion ({exc})", body=body)
            return
        choice = completion.choices[0] if completion.choices else None
        if choice is None or choice.message is None:
            self.fail(E.EMPTY_RESPONSE, "response has no choices[0].message", body=body)
            return
        self.model, self.completion_id = completion.model, completion.id
        self.usage = to_usage(completion.usage)
        self.finish_reason = choice.finish_reason
        msg = choice.message
        self.content = [content_text(msg.content)]
        for i, tc in enumerate(msg.tool_calls or ()):
            self._merge_tool(tc, default_index=i)
        self._finalize(raw=obj if isinstance(obj, dict) else None)

    def html_page(self, body: bytes) -> None:
        """An HTML page where the API's answer should be (`upstream_html`)."""
        status = self.ev.status_code or 0
        if 200 <= status < 300:
            hint = ("a successful HTML page usually means the base URL points at a web page, "
                    "login or captive portal instead of the API; check the route's base_url")
        else:
            hint = "the provider or a gateway in front of it answered with an error page"
        self.raw_excerpt = body[:RAW_HEAD_BYTES].decode("utf-8", "replace")
        self.fail(E.UPSTREAM_HTML, E.HTML_MESSAGE, body=body, hint=hint)

    # streams -----------------------------------------------------------

    def feed(self, events: Sequence[SSEEvent]) -> bool:
        """Apply SSE events; True if any carried content, tool calls, reasoning or a
        finish reason. On a failure `failure` is set and the caller stops reading."""
        progressed = False
        for ev in events:
            if self.done:
                break
            data = ev.data
            if ev.event == "error":
                self._stream_error(decode_or_wrap(data))
                return False
            if data[:1] == "[" and data.strip() == "[DONE]":
                self.done = True
                break
            if not data.strip():
                continue  # an empty data event carries nothing; not worth failing over
            try:
                chunk = CHUNK_DECODER.decode(data)
            except msgspec.ValidationError as exc:
                obj = decode_or_wrap(data)
                if isinstance(obj, dict) and obj.get("error"):
                    self._stream_error(obj)
                else:
                    self.fail(E.STREAM_MALFORMED, f"chunk is not a chat.completion.chunk ({exc})",
                              extra={"data": data[:E.SNIPPET_CHARS]})
                return False
            except msgspec.DecodeError as exc:
                self.fail(E.STREAM_MALFORMED, f"data line is not JSON ({exc})",
                          extra={"data": data[:E.SNIPPET_CHARS]})
                return False
            if chunk.error is not None:  # checked before the delta, as OpenRouter sends both
                self._stream_error({"error": chunk.error})
                return False
            if self.completion_id is None:
                self.completion_id = chunk.id
            if chunk.model and self.model is None:
                self.model = chunk.model
            if chunk.usage is not None:
                self.usage = to_usage(chunk.usage)
            for choice in chunk.choices or ():
                if choice.index not in (0, None):
                    continue  # n > 1 is never requested
                delta = choice.delta
                if delta is not None:
                    text = delta.content
                    if text:
                        if not isinstance(text, str):
                            text = content_text(text)
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
                        return False
                    self.finish_reason = choice.finish_reason
                    progressed = True
        return progressed

    def finish_stream(self, *, events: int, cut_line_bytes: int = 0) -> None:
        """The stream ended (EOF, or `[DONE]` and the body was let go): judge it."""
        if self.failure is not None:
            return
        if self.finish_reason is None:
            how = "[DONE] without" if self.done else "end of stream without"
            extra: dict[str, Any] = {"events": events, "content_chars": sum(map(len, self.content))}
            if cut_line_bytes:
                extra["cut_line_bytes"] = cut_line_bytes
            self.fail(E.STREAM_TRUNCATED, f"{how} a finish reason", extra=extra)
            return
        self.no_terminator = not self.done
        self._finalize(raw=None)

    def _stream_error(self, obj: Any) -> None:
        message, code, record = error_fields(obj)
        after = bool(self.content or self.tools)
        where = "after tokens" if after else "before any token"
        self.fail(E.STREAM_ERROR, f"in-band error {where}: {message or 'unknown error'}",
                  retryable=code_retryable(code), extra={"provider_error": record, "after_tokens": after})

    def _merge_tool(self, tc: ToolCallIn, *, default_index: int | None) -> None:
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
                slot.args.append(arguments_text(fn.arguments))

    # the answer --------------------------------------------------------

    def _assemble(self, raw: dict[str, Any] | None = None) -> ChatResponse:
        return ChatResponse(
            content="".join(self.content),
            tool_calls=[
                ToolCall(id=s.id or f"call_{i}", name=s.name, arguments="".join(s.args) or "{}")
                for i, s in sorted(self.tools.items())
            ],
            finish_reason=self.finish_reason,
            usage=self.usage,
            model=self.model,
            request_id=self.ev.request_id or self.completion_id,
            raw=raw,
        )

    def _finalize(self, raw: dict[str, Any] | None) -> None:
        resp = self._assemble(raw)
        if self.finish_reason == "tool_calls":
            for call in resp.tool_calls:
                try:
                    JSON_DECODER.decode(call.arguments)
                except msgspec.DecodeError:
                    # OpenRouter may rewrite a `length` stop to `tool_calls`, leaving the
                    # arguments cut off: that is a truncated stream, never a tool call to run.
                    self.fail(E.STREAM_TRUNCATED,
                              f"tool call {call.name!r} has arguments that are not valid JSON",
                              extra={"tool_call_id": call.id,
                                     "arguments_excerpt": call.arguments[:E.SNIPPET_CHARS]})
                    return
        if not resp.content and not resp.tool_calls:
            self.fail(E.EMPTY_RESPONSE, "no content and no tool calls",
                      extra={"finish_reason": self.finish_reason})
            return
        if raw is None:  # a stream: keep the completion object it stands for
            resp = msgspec.structs.replace(resp, raw=completion_object(resp, self.completion_id))
        self.response = resp
