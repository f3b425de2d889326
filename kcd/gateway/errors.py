"""OpenAI's error shape, and what each failed turn becomes for the client.

`{"error": {"message", "type", "param", "code"}}` with the status OpenAI clients
expect: 400 for a bad request (malformed or too large body, context length,
content policy, the upstream's own 4xx for a request fault), 401 for a bad
token, 404 for an unknown model, 502 when every route failed, 503 when every
route's circuit is open (with Retry-After at the earliest reopen), 504 when the
last failure was a timeout. An upstream auth or billing failure is never a 401
or 402 to the client: its credentials are fine, the daemon's are not.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from kcd.providers.errors import ProviderFailure
from kcd.providers.retry import decide

__all__ = ["OpenAIError", "from_failure"]

_ENCODER = msgspec.json.Encoder()


class _Detail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _Body(msgspec.Struct):
    error: _Detail


class OpenAIError(Exception):
    """A response in OpenAI's error shape; raise it from anywhere in a request."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def detail(self) -> dict[str, Any]:
        """The inner object, as an in-band stream error carries it."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}

    def body(self) -> bytes:
        return _ENCODER.encode(_Body(_Detail(self.message, self.type, self.param, self.code)))


def _retry_after(failure: ProviderFailure) -> dict[str, str]:
    waits = [r.get("reopens_in_s") for r in failure.details.get("routes") or ()]
    known = [w for w in waits if isinstance(w, (int, float))]
    return {"retry-after": str(max(1, math.ceil(min(known))))} if known else {}


def from_failure(failure: ProviderFailure) -> OpenAIError:
    """The client's view of a turn the dispatcher could not serve."""
    c = failure.classification
    if c == "all_routes_open":
        return OpenAIError(503, failure.message, type="service_unavailable", code=c,
                           headers=_retry_after(failure))
    if c == "no_route_available":
        return OpenAIError(503, failure.message, type="service_unavailable", code=c)
    if "attempts" not in failure.details:  # raised as is: a fault of the request itself
        decision = decide(failure)
        if decision.reason == "context_length":
            return OpenAIError(400, failure.message, code="context_length_exceeded", param="messages")
        if decision.reason == "content_policy":
            return OpenAIError(400, failure.message, code="content_policy_violation")
        status = failure.status_code
        if decision.ignored and status is not None and 400 <= status < 500:
            return OpenAIError(status, failure.message, code=decision.reason)
    status = 504 if c.startswith("timeout.") else 502
    return OpenAIError(status, str(failure), type="upstream_error", code=c)
