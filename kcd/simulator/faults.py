"""The fault catalogue, F01–F42: how a scripted reply is delivered badly.

The ids are the ones the matrix scenarios and tests cite ("simulator fault
F29"); the faults cover the failoverbench scenarios (docs/references.md) plus
HTML bodies, capability drift and OpenRouter's 402/429 conventions.

A fault is a function ``run(fault_run, exchange, reply)`` in `fault_actions`;
`FaultRun` binds it to one request (its parameters, how many times it already
hit this model, and the healthy `Delivery` to fall back on), which makes it a
`Delivery` itself. `FAULTS` below is the table: name, catalogue id, parameters
with defaults, and what a streamed / non-streamed request gets.

Selection (first match wins; the app does it per request):

1. request header ``x-kc-sim-fault: <name>[;key=value;...]``;
2. the model name with a ``+<name>[;key=value...]`` suffix (``dev+html_502``,
   ``x-ai/grok-4-fast+stream_cut;reset=1``): the suffix is stripped before the
   behaviour lookup and everywhere the model is reported;
3. a plan programmed over HTTP (``POST /_sim/faults``, see `control`).

Faults that hold a connection open (``no_response``, ``stream_stall``,
``keepalive_only``, ``slow_trickle``) end when the client leaves, or after
``hold`` seconds with a TCP reset, so nothing waits forever.

F42 (``scripted``) is not a failure mode but a recording: one response exactly as a run
saw it, with text parameters (``content_type``, ``body``) besides the numbers. A list of
``scripted`` plans with ``count: 1`` queued for one model is a per-request script (this
request a 503 with this body after 0.4 s, the next an HTML 502, the next a stream cut after
3 events, then healthy), which is how `kcd.matrix.from_run` replays an incident:

* ``status`` (200), ``content_type`` (""), ``body`` (""): a body, or any status but 200,
  is answered literally (an empty body gets a generic error for the status, an empty
  content type is JSON);
* a 200 without a body is the scripted reply: ``events`` (all) content chunks, then the
  finish chunk and ``[DONE]`` unless ``terminator`` is 0, closed cleanly unless ``reset``
  is 1 (a non-streamed request gets half the JSON completion and a reset instead);
* ``delay`` (0) seconds before anything is sent; ``retry_after`` sets ``Retry-After``.

F07 (``connect_refused`` / ``dns_fail``) cannot be served: nothing answers.
Tests point a route at a closed port (`unused_port()`) or at a host under the
reserved ``.invalid`` TLD (RFC 2606), e.g. ``http://sim.invalid/v1``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgspec

from kcd.simulator import fault_actions as act
from kcd.simulator.fault_actions import FaultFn
from kcd.simulator.behaviours import Reply
from kcd.simulator.delivery import Delivery, Exchange

__all__ = [
    "FAULTS",
    "FAULT_HEADER",
    "Fault",
    "FaultError",
    "FaultRun",
    "FaultSpec",
    "UnknownFault",
    "catalogue",
    "choose",
    "parse_spec",
    "resolve",
    "unused_port",
]

FAULT_HEADER = "x-kc-sim-fault"
MAX_TEXT_PARAM = 256 * 1024  # a recorded error body or page; larger ones are cut by the recorder

ParamValue = int | float | str | None  # str: text parameters (F42's body)


class FaultError(ValueError):
    """An unknown fault name or a bad parameter (the app answers 400)."""

    def body(self) -> dict[str, Any]:
        """The 400 body: an OpenAI-style error; `known_faults` lists every name."""
        code = "unknown_fault" if isinstance(self, UnknownFault) else "invalid_fault"
        return {"error": {"message": str(self), "type": "invalid_request_error", "code": code,
                          "known_faults": list(FAULTS)}}


class UnknownFault(FaultError):
    pass


@dataclass(frozen=True, slots=True)
class Fault:
    id: str  # catalogue id, F01..F33
    name: str
    run: FaultFn
    stream: str  # what a streamed request gets
    plain: str  # what a non-streamed request gets
    defaults: tuple[tuple[str, ParamValue], ...] = ()  # None: optional, off unless given
    check: Callable[[Mapping[str, ParamValue]], str | None] | None = None  # a problem with the values together


class FaultSpec(msgspec.Struct, frozen=True):
    """A chosen fault with its parameters (defaults filled in)."""

    name: str
    params: dict[str, ParamValue] = {}


@dataclass(frozen=True, slots=True)
class FaultRun:
    """One application of a fault to one request; a `Delivery`."""

    fault: Fault
    params: Mapping[str, ParamValue]
    nth: int  # earlier applications of this fault to this model since the last reset
    inner: Delivery  # the healthy delivery, for faults that let a request through

    def param(self, key: str) -> float:
        value = self.params[key]
        assert value is not None, f"{self.fault.name}: parameter {key} has no value"
        return value

    async def deliver(self, exchange: Exchange, reply: Reply) -> None:
        await self.fault.run(self, exchange, reply)


_HOLD = ("hold", 300.0)


def _check_scripted(params: Mapping[str, ParamValue]) -> str | None:
    status, events = params["status"], params["events"]
    if not (isinstance(status, int) and 100 <= status <= 599):
        return f"status={status} is not an HTTP status"
    if isinstance(events, float) and events != int(events):
        return f"events={events} must be a whole number"
    return None

_CATALOGUE = (
    Fault("F01", "rate_limit_retry_after", act.rate_limit_retry_after,
          "429 JSON error + Retry-After: <retry_after>", "same", (("retry_after", 2),)),
    Fault("F02", "rate_limit_no_header", act.rate_limit_no_header, "429 JSON error, no Retry-After", "same"),
    Fault("F03", "server_error_once", act.server_error_once,
          "500 JSON error on the first request per model, then healthy", "same"),
    Fault("F04", "unavailable_persistent", act.unavailable_persistent,
          "503 JSON error on every call", "same"),
    Fault("F05", "overloaded_529", act.overloaded_529, "529 Anthropic-style overloaded_error", "same"),
    Fault("F06", "tcp_reset", act.tcp_reset, "TCP reset before any header", "same"),
    Fault("F08", "no_response", act.no_response,
          "no byte until the client leaves; after <hold> s a TCP reset", "same", (_HOLD,)),
    Fault("F09", "slow_ttft", act.slow_ttft,
          "nothing (not even headers) for <delay> s, then a healthy stream",
          "healthy JSON after <delay> s", (("delay", 1.0),)),
    Fault("F10", "stream_cut", act.stream_cut,
          "200, the role chunk and the first half of the content chunks, then a clean end of body: "
          "no finish_reason, no [DONE] (reset=1: a TCP reset instead)",
          "200 with the full Content-Length, half the JSON body, then a TCP reset", (("reset", 0),)),
    Fault("F11", "stream_stall", act.stream_stall,
          "200, the role chunk and <tokens> chunks, then silence with the socket open until the client "
          "leaves (after <hold> s a TCP reset)",
          "200 with the full Content-Length, half the body, then the same silence", (("tokens", 3), _HOLD)),
    Fault("F12", "malformed_chunk", act.malformed_chunk,
          "a healthy stream in which the middle data: line is cut-off (invalid) JSON; [DONE] follows",
          "200 application/json whose body is the first half of the JSON"),
    Fault("F13", "no_done", act.no_done, "every chunk incl. finish_reason, no [DONE], clean close",
          "healthy (nothing to omit)"),
    Fault("F14", "context_length", act.context_length,
          "400 invalid_request_error, code context_length_exceeded", "same"),
    Fault("F15", "content_filter", act.content_filter,
          "403 OpenRouter moderation error; metadata: reasons, flagged_input, provider_name, model_slug",
          "same"),
    Fault("F16", "fallback_rejects_prefill", act.fallback_rejects_prefill,
          "400 if the last message is an assistant message, else healthy", "same"),
    Fault("F17", "flapping_primary", act.flapping_primary,
          "per model: <good> requests healthy, then <bad> requests 503, repeating", "same",
          (("good", 2), ("bad", 2))),
    Fault("F18", "failover_accounting", act.failover_accounting,
          "200, the role chunk and <tokens> chunks, then a TCP reset",
          "502 OpenRouter-style JSON error (metadata.provider_name, metadata.raw)", (("tokens", 3),)),
    Fault("F19", "html_502", act.html_502,
          "502 text/html Cloudflare page (cf-ray in body and header, server: cloudflare)", "same"),
    Fault("F20", "html_200", act.html_200, "200 text/html sign-in page", "same"),
    Fault("F21", "keepalive_only", act.keepalive_only,
          "200 event-stream, ': OPENROUTER PROCESSING' every <interval> s, never content; "
          "ends when the client leaves (after <hold> s a TCP reset)",
          "200 application/json (chunked) sending a newline every <interval> s, never the body",
          (("interval", 0.2), _HOLD)),
    Fault("F22", "inband_error_after_tokens", act.inband_error_after_tokens,
          "200, the role chunk and <tokens> chunks, then a data: event with an error object and "
          "choices[0].finish_reason 'error'; no [DONE]",
          "200 chat.completion with half the content, finish_reason 'error' and a top-level error",
          (("tokens", 3),)),
    Fault("F23", "finish_reason_rewrite", act.finish_reason_rewrite,
          "one tool call (the reply's first, or one made up) whose arguments stop mid-JSON, "
          "finish_reason tool_calls, [DONE]", "the same call in a 200 JSON completion"),
    Fault("F24", "tool_stripping", act.tool_stripping,
          "healthy, but tool calls are turned into prose; finish_reason stop", "same"),
    Fault("F25", "fake_streaming", act.fake_streaming,
          "200 headers at once, then after <delay> s every chunk and [DONE] in one write",
          "healthy JSON after <delay> s", (("delay", 1.0),)),
    Fault("F26", "missing_usage", act.missing_usage, "healthy, but no usage chunk even if requested",
          "healthy JSON without the usage key"),
    Fault("F27", "deferred_first_chunk_error", act.deferred_first_chunk_error,
          "200 event-stream whose first (and only) event is an OpenRouter error object; no [DONE]",
          "502 OpenRouter-style JSON error"),
    Fault("F28", "auth_401", act.auth_401,
          "401 OpenAI invalid_api_key error; echo_key=1 quotes the presented key in the message "
          "(2: base64-encoded, 3: spelled out, 4: URL-encoded)",
          "same", (("echo_key", 0),)),
    Fault("F29", "credits_402", act.credits_402,
          "402 OpenRouter insufficient-credits error; with retry_after a Retry-After header and "
          "metadata.limit_source openrouter_in_flight_budget", "same", (("retry_after", None),)),
    Fault("F30", "huge_retry_after", act.huge_retry_after, "429 + Retry-After: <retry_after>", "same",
          (("retry_after", 3600),)),
    Fault("F31", "slow_trickle", act.slow_trickle,
          "200, the role chunk, then one content chunk every <interval> s, never finishing "
          "(after <hold> s a TCP reset)",
          "200 with the full Content-Length, a few body bytes every <interval> s, never the last one",
          (("interval", 0.5), _HOLD)),
    Fault("F32", "all_routes_down", act.all_routes_down,
          "503 OpenRouter 'no allowed providers' error, whatever the model", "same"),
    Fault("F33", "json_error_in_200", act.json_error_in_200,
          "200 event-stream whose first event is an error object, then [DONE]",
          "200 application/json whose body is {'error': {...}}"),
    Fault("F40", "flapping_timed", act.flapping_timed,
          "per model: 503 for <down> s, then healthy for <up> s, repeating from wall-clock <epoch>",
          "same", (("down", 5.0), ("up", 5.0), ("epoch", 0.0))),
    Fault("F42", "scripted", act.scripted,
          "after <delay> s: <status> with <content_type> and <body> as given; a 200 without a body is the "
          "reply's role chunk and <events> content chunks, then finish and [DONE] unless terminator=0, "
          "then a TCP reset if reset=1", "the literal response; a cut 200: half the JSON body, then a reset",
          (("status", 200), ("content_type", ""), ("body", ""), ("delay", 0.0), ("retry_after", None),
           ("events", None), ("terminator", 1), ("reset", 0)), _check_scripted),
)

FAULTS: Mapping[str, Fault] = MappingProxyType({f.name: f for f in _CATALOGUE})


def catalogue() -> list[dict[str, Any]]:
    """The table as JSON-ready rows (served by ``GET /_sim/faults``)."""
    return [{"id": f.id, "name": f.name, "params": dict(f.defaults), "stream": f.stream,
             "non_stream": f.plain} for f in _CATALOGUE]


def _unknown(name: str) -> FaultError:
    return UnknownFault(f"unknown fault {name!r}; known faults: {', '.join(FAULTS)}")


def _coerce(fault: Fault, key: str, value: Any) -> ParamValue:
    default = dict(fault.defaults)[key]
    if isinstance(default, str):  # a text parameter takes any string, as given
        if not isinstance(value, str):
            raise FaultError(f"fault {fault.name}: {key} must be a string")
        if len(value) > MAX_TEXT_PARAM:
            raise FaultError(f"fault {fault.name}: {key} is longer than {MAX_TEXT_PARAM} characters")
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "null"):
            value = None
        else:
            try:
                value = float(text)
            except ValueError:
                raise FaultError(f"fault {fault.name}: {key}={value!r} is not a number") from None
    if value is None:
        if default is None:
            return None
        raise FaultError(f"fault {fault.name}: {key} needs a value")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != value:
        raise FaultError(f"fault {fault.name}: {key}={value!r} must be a number >= 0")
    if isinstance(default, int):
        if value != int(value):
            raise FaultError(f"fault {fault.name}: {key}={value!r} must be a whole number")
        return int(value)
    return float(value)


def resolve(name: str, params: Mapping[str, Any] | None = None) -> FaultSpec:
    """Validate a fault name and its parameters; fill in the defaults."""
    fault = FAULTS.get(name)
    if fault is None:
        raise _unknown(name)
    merged: dict[str, ParamValue] = dict(fault.defaults)
    for key, value in (params or {}).items():
        if key not in merged:
            known = ", ".join(merged) or "none"
            raise FaultError(f"fault {name}: unknown parameter {key!r} (parameters: {known})")
        merged[key] = _coerce(fault, key, value)
    problem = fault.check(merged) if fault.check else None
    if problem:
        raise FaultError(f"fault {name}: {problem}")
    return FaultSpec(name, merged)


def parse_spec(text: str) -> FaultSpec:
    """``name;key=value;...`` (header value or model suffix)."""
    name, *pairs = (part.strip() for part in text.split(";"))
    params: dict[str, str] = {}
    for pair in filter(None, pairs):
        key, sep, value = pair.partition("=")
        if not sep:
            raise FaultError(f"fault {name}: expected key=value, got {pair!r}")
        params[key.strip()] = value
    return resolve(name, params)


def choose(header: str | None, model: str) -> tuple[str, FaultSpec | None, str | None]:
    """The model without its ``+fault`` suffix, and the fault the request itself
    selects (header first, then suffix) with where it came from."""
    base, plus, suffix = model.rpartition("+")
    by_model = None
    if plus:
        if not base:
            raise FaultError(f"model {model!r}: nothing before the +fault suffix")
        by_model = parse_spec(suffix)  # validated even when the header wins
        model = base
    if header is not None and header.strip():
        return model, parse_spec(header), "header"
    return model, by_model, "model" if by_model else None


def unused_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for F07: point a route at it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
