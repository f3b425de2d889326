"""OpenAI chat-completions shapes on the client side of the gateway.

Request: the body is decoded once to builtins; the fields the gateway owns
(model, messages, tools, stream, stream_options, n) are validated into Structs
and translated to `ChatMessage`/`ToolSchema`; every other key (temperature,
top_p, max_tokens, stop, seed, tool_choice, response_format, provider-specific
switches...) is passed upstream unchanged as a request parameter.

Response: a `chat.completion` Struct for whole answers, and `ChunkWriter`, which
renders `chat.completion.chunk` SSE events from byte templates (the per-chunk
cost of a passthrough stream is one string encode and a join).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from kcd.api.typeinfo import prepare_types
from kcd.gateway.errors import OpenAIError
from kcd.providers.openai_wire import arguments_text
from kcd.providers.types import ChatMessage, ChatResponse, ToolCall, ToolSchema, Usage

__all__ = ["ChatCompletion", "ChunkWriter", "ParsedRequest", "completion_body", "parse_request"]

_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()
_OWNED = frozenset({"model", "messages", "tools", "stream", "stream_options", "n"})
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
          "tool": "tool"}
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


# ---------------------------------------------------------------- request side


class _InFunction(msgspec.Struct):
    name: str
    arguments: Any = None  # a JSON string (OpenAI), or an object (some clients)


class _InToolCall(msgspec.Struct):
    id: str
    function: _InFunction
    type: str = "function"


class _InMessage(msgspec.Struct):
    role: str
    content: Any = None  # a string, a list of content parts, or null
    tool_calls: list[_InToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _InFunctionDef(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _InTool(msgspec.Struct):
    function: _InFunctionDef
    type: str = "function"


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _Owned(msgspec.Struct):
    model: str
    messages: list[_InMessage]
    tools: list[_InTool] | None = None
    stream: bool | None = False
    stream_options: _StreamOptions | None = None
    n: int | None = None


class ParsedRequest(msgspec.Struct, frozen=True):
    model: str
    messages: list[ChatMessage]
    tools: list[ToolSchema]
    stream: bool
    include_usage: bool
    params: dict[str, Any]


def _content(value: Any) -> Any:
    """Text parts become one string; anything else (images...) goes upstream as sent.
    (ChatMessage.content is typed `str`; `build_body` copies it verbatim, parts included.)"""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text") or "") for p in value)
    return value


def _message(i: int, m: _InMessage) -> ChatMessage:
    role = _ROLES.get(m.role)
    if role is None:
        raise OpenAIError(400, f"messages[{i}].role {m.role!r} is not supported "
                               f"(use one of {', '.join(_ROLES)})", param=f"messages[{i}].role")
    calls = None
    if m.tool_calls:
        calls = [ToolCall(id=c.id, name=c.function.name, arguments=arguments_text(c.function.arguments) or "{}")
                 for c in m.tool_calls]
    return ChatMessage(role=role, content=_content(m.content), tool_calls=calls,  # type: ignore[arg-type]
                       tool_call_id=m.tool_call_id, name=m.name if role == "tool" else None)


def parse_request(body: bytes) -> ParsedRequest:
    """Decode and check a chat-completions body; OpenAIError(400) names what is wrong."""
    if not body.strip():
        raise OpenAIError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        raw = _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise OpenAIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(raw, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        owned = msgspec.convert(raw, _Owned)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$.")
        raise OpenAIError(400, str(exc), param=where.rstrip("`") if message else None) from None
    if not owned.messages:
        raise OpenAIError(400, "messages must contain at least one message", param="messages")
    if owned.n not in (None, 1):
        raise OpenAIError(400, "n > 1 is not supported by this gateway", param="n")
    tools = [ToolSchema(name=t.function.name, description=t.function.description or "",
                        parameters=t.function.parameters or _EMPTY_SCHEMA)
             for t in owned.tools or () if t.type == "function"]
    params = {k: v for k, v in raw.items() if k not in _OWNED}
    return ParsedRequest(
        model=owned.model, messages=[_message(i, m) for i, m in enumerate(owned.messages)], tools=tools,
        stream=bool(owned.stream),
        include_usage=bool(owned.stream_options and owned.stream_options.include_usage), params=params)


# --------------------------------------------------------------- response side


class _OutFunction(msgspec.Struct):
    name: str
    arguments: str


class _OutToolCall(msgspec.Struct):
    id: str
    function: _OutFunction
    type: str = "function"


class _OutMessage(msgspec.Struct, omit_defaults=True):
    # omit_defaults drops only `tool_calls` when absent; fields without a default are
    # always sent (content as null next to tool calls, as OpenAI does).
    role: str
    content: str | None
    tool_calls: list[_OutToolCall] | None = None


class _OutChoice(msgspec.Struct):
    index: int
    message: _OutMessage
    finish_reason: str
    logprobs: None = None


class _OutUsage(msgspec.Struct, omit_defaults=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class ChatCompletion(msgspec.Struct, omit_defaults=True):
    id: str
    object: str
    created: int
    model: str
    choices: list[_OutChoice]
    usage: _OutUsage | None = None  # left out when the provider did not report it (never zeros)


def _usage(u: Usage | None) -> _OutUsage | None:
    if u is None:
        return None
    total = u.total_tokens
    if total is None and u.prompt_tokens is not None and u.completion_tokens is not None:
        total = u.prompt_tokens + u.completion_tokens
    return _OutUsage(u.prompt_tokens, u.completion_tokens, total)


def _tool_calls(resp: ChatResponse) -> list[_OutToolCall] | None:
    if not resp.tool_calls:
        return None
    return [_OutToolCall(c.id, _OutFunction(c.name, c.arguments)) for c in resp.tool_calls]


def finish_reason(resp: ChatResponse) -> str:
    """The provider's finish reason; a whole body that gave none ended normally."""
    if resp.finish_reason:
        return resp.finish_reason
    return "tool_calls" if resp.tool_calls else "stop"


def completion_body(resp: ChatResponse, *, completion_id: str, model: str) -> bytes:
    calls = _tool_calls(resp)
    message = _OutMessage("assistant", resp.content or (None if calls else ""), calls)
    return _ENCODER.encode(ChatCompletion(
        id=completion_id, object="chat.completion", created=int(time.time()), model=model,
        choices=[_OutChoice(0, message, finish_reason(resp))], usage=_usage(resp.usage)))


class ChunkWriter:
    """`chat.completion.chunk` SSE events for one response, from byte templates."""

    DONE = b"data: [DONE]\n\n"
    __slots__ = ("_head", "_choice", "_created", "_id")

    def __init__(self, completion_id: str, model: str, created: int | None = None):
        self._id = completion_id
        self._created = int(time.time()) if created is None else created
        self._head = (b'data: {"id":' + _ENCODER.encode(completion_id)
                      + b',"object":"chat.completion.chunk","created":' + str(self._created).encode()
                      + b',"model":' + _ENCODER.encode(model))
        self._choice = self._head + b',"choices":[{"index":0,"delta":'

    def with_model(self, model: str) -> ChunkWriter:
        """The same response's writer naming another model (the one the provider reported)."""
        return ChunkWriter(self._id, model, self._created)

    def role(self) -> bytes:
        return self._choice + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n'

    def content(self, text: str) -> bytes:
        return self._choice + b'{"content":' + _ENCODER.encode(text) + b'},"finish_reason":null}]}\n\n'

    def tool_calls(self, resp: ChatResponse) -> bytes:
        calls = [{"index": i, "id": c.id, "type": "function",
                  "function": {"name": c.name, "arguments": c.arguments}}
                 for i, c in enumerate(resp.tool_calls)]
        return self._choice + b'{"tool_calls":' + _ENCODER.encode(calls) + b'},"finish_reason":null}]}\n\n'

    def finish(self, reason: str) -> bytes:
        return self._choice + b'{},"finish_reason":' + _ENCODER.encode(reason) + b'}]}\n\n'

    def usage(self, usage: Usage | None) -> bytes:
        # OpenAI's include_usage chunk: no choices; usage null when the provider gave none.
        return self._head + b',"choices":[],"usage":' + _ENCODER.encode(_usage(usage)) + b'}\n\n'

    def error(self, error: dict[str, Any]) -> bytes:
        """The stream's last event after a failure (OpenRouter's in-band shape): an error
        object and `finish_reason: "error"` in one chunk; no `[DONE]` follows."""
        return (self._choice + b'{},"finish_reason":"error"}],"error":' + _ENCODER.encode(error)
                + b"}\n\n")

    def answer(self, resp: ChatResponse, *, include_usage: bool, role: bool = True,
               content: bool = True) -> bytes:
        """A whole answer as events: role, content, tool calls, finish, [usage], [DONE]."""
        parts = [self.role()] if role else []
        if content and resp.content:
            parts.append(self.content(resp.content))
        if resp.tool_calls:
            parts.append(self.tool_calls(resp))
        parts.append(self.finish(finish_reason(resp)))
        if include_usage:
            parts.append(self.usage(resp.usage))
        parts.append(self.DONE)
        return b"".join(parts)


prepare_types(_Owned)  # converted in worker threads: see kcd/api/typeinfo.py
