"""Pure response assembly (kcd.providers.assembly, envelope, openai_wire): bodies and
SSE events in, `ChatResponse` or typed `ProviderFailure` out, no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kcd.providers import errors as E
from kcd.providers.assembly import Assembler
from kcd.providers.envelope import (
    Evidence,
    code_retryable,
    decode_or_wrap,
    error_fields,
    mime_of,
)
from kcd.providers.openai_wire import UsageIn, arguments_text, content_text, to_usage
from kcd.providers.sse import SSEEvent

ROUTE = "openrouter/x-ai/grok-4-fast"
JSON = "application/json"
SSE = "text/event-stream"


def ev(status: int = 200, ctype: str = JSON, **headers: str) -> Evidence:
    return Evidence(ROUTE, status_code=status, content_type=ctype, response_headers=dict(headers),
                    request_id=headers.get("x-request-id"))


def body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def completion(message: dict[str, Any], finish: str | None = "stop", **extra: Any) -> dict[str, Any]:
    return {"id": "cmpl-1", "model": "m", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            **extra}


def events(*objs: Any, done: bool = True) -> list[SSEEvent]:
    out = [SSEEvent(data=o if isinstance(o, str) else json.dumps(o)) for o in objs]
    return out + ([SSEEvent(data="[DONE]")] if done else [])


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {"id": "gen-1", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def stream(*objs: Any, done: bool = True, on_chunk=None, evidence: Evidence | None = None) -> Assembler:
    asm = Assembler(evidence or ev(ctype=SSE), on_chunk)
    asm.feed(events(*objs, done=done))
    asm.finish_stream(events=len(objs) + done)  # no-op after a failure
    return asm


# -- helpers of the wire and the envelope ----------------------------------------


def test_wire_value_conversions():
    assert content_text([{"type": "text", "text": "a"}, {"type": "image"}, "x", {"text": "b"}]) == "ab"
    assert content_text(None) == "" and content_text(5) == ""
    assert arguments_text({"a": [1]}) == '{"a":[1]}' and arguments_text(None) == ""
    assert to_usage(UsageIn(prompt_tokens=3.0, completion_tokens=None)).prompt_tokens == 3
    assert to_usage(None) is None


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"error": {"message": "m", "code": 429}}, ("m", 429, {"message": "m", "code": 429})),
        ({"error": "plain"}, ("plain", None, {"message": "plain"})),
        ({"message": "top"}, ("top", None, {"message": "top"})),
        ({"detail": "fastapi"}, ("fastapi", None, {"message": "fastapi"})),
        ({"error": {"code": 1}}, (None, 1, {"code": 1})),
        ([1], (None, None, {})),
    ],
)
def test_error_fields_reads_every_envelope_shape(obj, expected):
    assert error_fields(obj) == expected


def test_code_retryable_and_helpers():
    assert code_retryable(429) is True and code_retryable("503") is True
    assert code_retryable(400) is False and code_retryable("invalid_request") is None
    assert code_retryable(7) is None
    assert mime_of("Text/Event-Stream; charset=utf-8") == "text/event-stream" and mime_of(None) == ""
    assert decode_or_wrap('{"a": 1}') == {"a": 1}
    assert decode_or_wrap("not json") == {"error": {"message": "not json"}}


def test_evidence_failure_details_without_a_body_quote_the_stream_head():
    e = ev(200, SSE, **{"x-request-id": "req-9"})
    e.raw_head += b"data: {\"x\""
    f = e.failure(E.STREAM_TRUNCATED, "cut", hint="h", extra={"events": 2})
    assert (f.route, f.classification, f.status_code, f.retryable) == (ROUTE, E.STREAM_TRUNCATED, 200, True)
    assert f.details["request_id"] == "req-9" and f.details["hint"] == "h" and f.details["events"] == 2
    assert f.details["raw_excerpt"] == 'data: {"x"'


# -- whole bodies ----------------------------------------------------------------


def test_body_completion_becomes_a_response_with_the_raw_object():
    obj = completion({"content": [{"type": "text", "text": "hi"}]},
                     usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    asm = Assembler(ev(**{"x-request-id": "req-1"}))
    asm.take_body(body(obj))
    resp = asm.response
    assert asm.failure is None and resp is not None
    assert (resp.content, resp.finish_reason, resp.model, resp.request_id) == ("hi", "stop", "m", "req-1")
    assert resp.usage is not None and resp.usage.total_tokens == 7
    assert resp.raw == obj


def test_body_tool_calls_without_index_keep_their_order_and_object_arguments():
    obj = completion({"content": None, "tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": {"x": 1}}},
        {"function": {"name": "g", "arguments": ""}},
    ]}, finish="tool_calls")
    asm = Assembler(ev())
    asm.take_body(body(obj))
    assert asm.response is not None
    calls = asm.response.tool_calls
    assert [(c.id, c.name, c.arguments) for c in calls] == [("a", "f", '{"x":1}'), ("call_1", "g", "{}")]
    assert asm.response.request_id == "cmpl-1"  # no header id: the completion id


@pytest.mark.parametrize(
    ("status", "payload", "ctype", "classification", "retryable"),
    [
        (502, b"<html>Bad gateway</html>", "text/html", E.UPSTREAM_HTML, True),
        (200, b"  <!doctype html><p>login</p>", "", E.UPSTREAM_HTML, False),
        (200, b"hello", "text/plain", E.NON_JSON, True),
        (200, b"{nope", JSON, E.NON_JSON, True),
        (500, b"", "text/plain", E.HTTP_ERROR, True),
        (500, b'{"message": "boom"}', "text/plain", E.HTTP_ERROR, True),  # mislabelled JSON
        (429, b'{"error": {"message": "slow down"}}', JSON, E.HTTP_ERROR, True),
        (400, b'{"error": {"message": "bad"}}', JSON, E.HTTP_ERROR, False),
        (200, b'{"error": {"message": "x", "code": 503}}', JSON, E.JSON_ERROR_BODY, True),
        (200, b'{"error": {"message": "x", "code": "400"}}', JSON, E.JSON_ERROR_BODY, False),
        (200, b'{"choices": []}', JSON, E.EMPTY_RESPONSE, True),
        (200, b'{"choices": "no"}', JSON, E.EMPTY_RESPONSE, True),
    ],
)
def test_body_failures_are_typed(status, payload, ctype, classification, retryable):
    asm = Assembler(ev(status, ctype))
    asm.take_body(payload)
    f = asm.failure
    assert asm.response is None and f is not None
    assert (f.classification, f.retryable, f.status_code) == (classification, retryable, status)
    assert f.details["body_length"] == len(payload)


def test_body_failure_keeps_the_provider_message_and_raw_excerpt():
    asm = Assembler(ev(429, JSON, **{"retry-after": "7"}))
    asm.take_body(b'{"error": {"message": "slow down", "code": 429}}')
    assert asm.failure is not None and asm.failure.message == "slow down"
    assert asm.failure.details["provider_error"] == {"message": "slow down", "code": 429}
    assert asm.failure.details["retry_after_s"] == 7.0
    assert asm.raw_excerpt is not None and "slow down" in asm.raw_excerpt
    html = Assembler(ev(502, "text/html"))
    html.take_body(b"<html>" + b"x" * 5000)
    assert html.raw_excerpt is not None and len(html.raw_excerpt) == 2048


def test_auth_failures_carry_the_hint_given():
    for payload, ctype in ((b"denied", "text/plain"), (b'{"error": {"message": "bad key"}}', JSON)):
        asm = Assembler(ev(401, ctype))
        asm.take_body(payload, auth_hint="check OPENROUTER_API_KEY")
        assert asm.failure is not None and asm.failure.classification == E.AUTH_ERROR
        assert asm.failure.retryable is False
        assert asm.failure.details["hint"] == "check OPENROUTER_API_KEY"


def test_body_completion_without_content_or_tool_calls_is_empty():
    asm = Assembler(ev())
    asm.take_body(body(completion({"content": ""})))
    assert asm.failure is not None and asm.failure.classification == E.EMPTY_RESPONSE
    assert asm.response is None


def test_body_tool_calls_with_cut_arguments_are_truncated_with_partial():
    asm = Assembler(ev())
    asm.take_body(body(completion({"content": "x", "tool_calls": [
        {"id": "c", "function": {"name": "f", "arguments": '{"a":'}}]}, finish="tool_calls")))
    assert asm.failure is not None and asm.failure.classification == E.STREAM_TRUNCATED
    assert asm.failure.details["tool_call_id"] == "c"
    assert asm.partial is not None and asm.partial.content == "x"


# -- streams ---------------------------------------------------------------------


def test_stream_assembles_content_tool_slots_usage_and_reports_chunks():
    seen: list[str] = []
    asm = stream(
        chunk(role="assistant"),
        chunk("Hel"),
        chunk([{"type": "text", "text": "lo"}]),
        chunk(tool_calls=[{"index": 0, "id": "a", "function": {"name": "list_", "arguments": '{"pa'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"name": "dir", "arguments": 'th":"."}'}}]),
        chunk(tool_calls=[{"index": 1, "id": "b", "function": {"name": "read", "arguments": {"p": 1}}}]),
        chunk(finish="tool_calls"),
        {"id": "gen-1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4.0}},
        on_chunk=seen.append,
    )
    resp = asm.response
    assert asm.failure is None and resp is not None and not asm.no_terminator
    assert seen == ["Hel", "lo"] and resp.content == "Hello"
    assert [(c.id, c.name, c.arguments) for c in resp.tool_calls] == [
        ("a", "list_dir", '{"path":"."}'), ("b", "read", '{"p":1}')]
    assert resp.usage is not None and (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 4)
    assert resp.request_id == "gen-1" and resp.model == "m"
    assert resp.raw is not None and resp.raw["object"] == "chat.completion"
    assert resp.raw["choices"][0]["message"]["tool_calls"][1]["function"]["arguments"] == '{"p":1}'


def test_stream_tool_calls_without_index_start_a_slot_per_new_id():
    asm = stream(
        chunk(tool_calls=[{"id": "a", "function": {"name": "f", "arguments": "{"}}]),
        chunk(tool_calls=[{"function": {"arguments": "}"}}]),
        chunk(tool_calls=[{"id": "b", "function": {"name": "g"}}]),
        chunk(finish="tool_calls"),
    )
    assert asm.response is not None
    assert [(c.id, c.name, c.arguments) for c in asm.response.tool_calls] == [("a", "f", "{}"), ("b", "g", "{}")]


def test_feed_reports_progress_only_for_content_bearing_events():
    asm = Assembler(ev(ctype=SSE))
    assert asm.feed(events(chunk(role="assistant"), done=False)) is False
    assert asm.feed(events(chunk(reasoning="thinking"), done=False)) is True
    assert asm.feed(events(chunk(), "", done=False)) is False
    assert asm.feed(events(chunk(finish="stop"), done=False)) is True


def test_missing_done_is_a_flagged_success_and_events_after_done_are_ignored():
    asm = stream(chunk("a", finish="stop"), done=False)
    assert asm.response is not None and asm.no_terminator
    asm = Assembler(ev(ctype=SSE))
    asm.feed(events(chunk("a", finish="stop")) + events(chunk("late"), done=False))
    asm.finish_stream(events=3)
    assert asm.done and asm.response is not None and asm.response.content == "a"
    assert not asm.no_terminator


def test_choices_other_than_the_first_are_ignored():
    asm = stream({"id": "g", "choices": [{"index": 1, "delta": {"content": "n2"}}]}, chunk("a", finish="stop"))
    assert asm.response is not None and asm.response.content == "a"


@pytest.mark.parametrize("after_tokens", [False, True])
def test_in_band_error_is_a_stream_error_with_partial(after_tokens):
    e = ev(ctype=SSE)
    e.raw_head += b"data: ..."
    objs = [chunk("tok")] if after_tokens else []
    objs.append({"error": {"message": "overloaded", "code": 502},
                 "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "error"}]})
    asm = stream(*objs, evidence=e)
    f = asm.failure
    assert f is not None and f.classification == E.STREAM_ERROR and f.retryable is True
    assert ("after tokens" in f.message) is after_tokens
    assert f.details["after_tokens"] is after_tokens and f.details["provider_error"]["code"] == 502
    assert asm.raw_excerpt == "data: ..."
    assert (asm.partial is not None) is after_tokens
    assert asm.response is None


@pytest.mark.parametrize(
    ("bad", "classification", "text"),
    [
        ("{not json", E.STREAM_MALFORMED, "not JSON"),
        ("[1, 2]", E.STREAM_MALFORMED, "not a chat.completion.chunk"),
        ('{"error": "quota", "choices": 5}', E.STREAM_ERROR, "quota"),
    ],
)
def test_bad_data_lines(bad, classification, text):
    asm = stream(chunk("a"), bad)
    assert asm.failure is not None and asm.failure.classification == classification
    assert text in asm.failure.message


def test_error_event_and_finish_reason_error():
    asm = Assembler(ev(ctype=SSE))
    asm.feed([SSEEvent(event="error", data="upstream went away")])
    assert asm.failure is not None and "upstream went away" in asm.failure.message
    asm = stream(chunk("a"), chunk(finish="error"))
    assert asm.failure is not None and asm.failure.classification == E.STREAM_ERROR


def test_end_without_finish_reason_is_truncated():
    asm = Assembler(ev(ctype=SSE))
    asm.feed(events(chunk("abc"), done=False))
    asm.finish_stream(events=1, cut_line_bytes=12)
    f = asm.failure
    assert f is not None and f.classification == E.STREAM_TRUNCATED
    assert f.message == "end of stream without a finish reason"
    assert (f.details["events"], f.details["content_chars"], f.details["cut_line_bytes"]) == (1, 3, 12)
    assert asm.partial is not None and asm.partial.content == "abc"
    asm = stream(chunk("abc"))
    assert asm.failure is not None and asm.failure.message == "[DONE] without a finish reason"


def test_stream_tool_calls_with_cut_arguments_and_empty_answers_fail():
    asm = stream(chunk(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a'}}]),
                 chunk(finish="tool_calls"))
    assert asm.failure is not None and asm.failure.classification == E.STREAM_TRUNCATED
    asm = stream(chunk(role="assistant"), chunk(finish="stop"))
    assert asm.failure is not None and asm.failure.classification == E.EMPTY_RESPONSE
    assert asm.failure.details["finish_reason"] == "stop"


def test_first_failure_wins():
    asm = Assembler(ev(ctype=SSE))
    asm.fail(E.TIMEOUT_IDLE, "no bytes")
    asm.fail(E.STREAM_TRUNCATED, "later")
    asm.finish_stream(events=0)
    assert asm.failure is not None and asm.failure.classification == E.TIMEOUT_IDLE
    assert asm.partial is None and asm.raw_excerpt is None


def test_html_page_in_place_of_a_stream():
    asm = Assembler(ev(200, SSE))
    asm.html_page(b"<!doctype html><title>Sign in</title>")
    f = asm.failure
    assert f is not None and f.classification == E.UPSTREAM_HTML and f.retryable is False
    assert "base_url" in f.details["hint"] and f.details["html_detected"] is True
