"""Typed provider failures and the evidence attached to them.

Every way an attempt can fail becomes one `ProviderFailure` with a
classification from `CLASSIFICATIONS`, a retryable flag and a `details` dict
whose keys are the original KyleCode's error-detail names (`status_code`,
`body_snippet`, `raw_excerpt`, `request_id`, `html_detected`, ...), so bundles,
the matrix and tools written for the original can read them. Secrets never enter `details`:
credential headers are dropped before anything is stored.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from typing import Any

from kcd.api.backoff import parse_retry_after

__all__ = [
    "CLASSIFICATIONS",
    "ProviderFailure",
    "body_details",
    "classify_html",
    "default_retryable",
    "find_request_id",
    "looks_like_html",
    "parse_retry_after",
    "redact_request_headers",
    "sanitize_headers",
]

CONNECT_ERROR = "connect_error"  # no connection: refused, DNS, TLS
# Connected and the request went out, then the connection was reset or closed
# before any response header (the request may or may not have been processed).
CONNECTION_RESET = "connection_reset"
TIMEOUT_CONNECT = "timeout.connect"
TIMEOUT_WRITE = "timeout.write"
TIMEOUT_TTFT = "timeout.ttft"
TIMEOUT_IDLE = "timeout.idle"  # no bytes at all for `idle` seconds
TIMEOUT_IDLE_PROGRESS = "timeout.idle_progress"  # bytes (keep-alives) but no content
TIMEOUT_TOTAL = "timeout.total"
HTTP_ERROR = "http_error"
AUTH_ERROR = "auth_error"
UPSTREAM_HTML = "upstream_html"
NON_JSON = "non_json"
JSON_ERROR_BODY = "json_error_body"
STREAM_ERROR = "stream_error"
STREAM_TRUNCATED = "stream_truncated"
STREAM_MALFORMED = "stream_malformed"
EMPTY_RESPONSE = "empty_response"
# Raised by the dispatcher before any request is made.
CONFIG_ERROR = "config_error"
MISSING_API_KEY = "missing_api_key"

CLASSIFICATIONS = frozenset(
    {
        CONNECT_ERROR,
        CONNECTION_RESET,
        TIMEOUT_CONNECT,
        TIMEOUT_WRITE,
        TIMEOUT_TTFT,
        TIMEOUT_IDLE,
        TIMEOUT_IDLE_PROGRESS,
        TIMEOUT_TOTAL,
        HTTP_ERROR,
        AUTH_ERROR,
        UPSTREAM_HTML,
        NON_JSON,
        JSON_ERROR_BODY,
        STREAM_ERROR,
        STREAM_TRUNCATED,
        STREAM_MALFORMED,
        EMPTY_RESPONSE,
        CONFIG_ERROR,
        MISSING_API_KEY,
    }
)

# Request faults: the same request will fail the same way on this route.
_NON_RETRYABLE_STATUS = frozenset({400, 401, 403, 404, 422})
_RETRYABLE_HTTP_STATUS = frozenset({408, 409, 429})

SNIPPET_CHARS = 400
RAW_EXCERPT_CHARS = 2000
RAW_B64_BYTES = 64 * 1024

_SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "x-api-key", "api-key", "proxy-authorization"}
)
_REQUEST_ID_HEADERS = ("openrouter-request-id", "x-request-id", "request-id", "x-generation-id")

HTML_MESSAGE = "HTML error page from the provider"


class ProviderFailure(Exception):
    """One failed attempt on one route, typed.

    `str()` names the route and the cause, e.g.
    ``openrouter/x-ai/grok-4-fast: upstream_html (HTTP 502): HTML error page from the provider``.
    """

    def __init__(
        self,
        route: object,
        classification: str,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        # `classification` should be one of CLASSIFICATIONS; not enforced, so that an
        # error path can never fail on its own bookkeeping.
        self.route = str(route)
        self.classification = classification
        self.message = message
        self.status_code = status_code
        self.retryable = (
            default_retryable(classification, status_code) if retryable is None else retryable
        )
        self.details: dict[str, Any] = dict(details or {})
        self.details.setdefault("classification", classification)
        self.details.setdefault("status_code", status_code)
        super().__init__(str(self))

    def __str__(self) -> str:
        status = f" (HTTP {self.status_code})" if self.status_code is not None else ""
        return f"{self.route}: {self.classification}{status}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"ProviderFailure(route={self.route!r}, classification={self.classification!r}, "
            f"status_code={self.status_code!r}, retryable={self.retryable!r})"
        )

    def __reduce__(self):  # keyword-only fields: rebuild from the record
        return (_restore, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready record for attempt files, telemetry and bundles."""
        return {
            "route": self.route,
            "classification": self.classification,
            "message": self.message,
            "retryable": self.retryable,
            "status_code": self.status_code,
            "details": self.details,
        }


def _restore(record: dict[str, Any]) -> ProviderFailure:
    return ProviderFailure(
        record["route"],
        record["classification"],
        record["message"],
        status_code=record["status_code"],
        retryable=record["retryable"],
        details=record["details"],
    )


def default_retryable(classification: str, status_code: int | None) -> bool:
    """Whether another attempt (same route after backoff, or a fallback) can help."""
    if classification in (AUTH_ERROR, CONFIG_ERROR, MISSING_API_KEY):
        return False
    if status_code is not None:
        if status_code in _NON_RETRYABLE_STATUS:
            return False
        if classification == HTTP_ERROR:
            return status_code in _RETRYABLE_HTTP_STATUS or status_code >= 500
        if classification == UPSTREAM_HTML and 200 <= status_code < 300:
            # A 200 HTML page is a login/portal page or a base URL pointing at a web
            # UI: the route is misconfigured, retrying it gives the same page.
            return False
    return True


def sanitize_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Lower-cased response headers with credential headers removed."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key not in _SECRET_HEADERS:
            out[key] = value
    return out


def redact_request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers as recorded: keys visible as present, values masked."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key == "authorization":
            scheme = value.split(" ", 1)[0] if " " in value else "Bearer"
            out[name] = f"{scheme} ***REDACTED***"
        elif key in _SECRET_HEADERS:
            out[name] = "***REDACTED***"
        else:
            out[name] = value
    return out


def find_request_id(headers: Mapping[str, str]) -> str | None:
    """First upstream request id header present (expects lower-cased keys or httpx.Headers)."""
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def looks_like_html(body: bytes, content_type: str) -> bool:
    """HTML by Content-Type, or by sniffing: the first non-blank byte is ``<``."""
    if "html" in content_type.lower():
        return True
    stripped = body[:512].lstrip()
    if stripped.startswith(b"\xef\xbb\xbf"):
        stripped = stripped[3:].lstrip()
    return stripped[:1] == b"<"


def classify_html(text: str) -> str:
    """Sub-class of an HTML page, by the phrases gateways put in them."""
    low = text.lower()
    if "rate limit" in low or "too many requests" in low:
        return "rate_limited"
    if "cloudflare" in low or "cf-ray" in low:
        return "gateway_protection"
    if "maintenance" in low:
        return "maintenance"
    return "upstream_html"


_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)
_SPACE = re.compile(r"\s+")


def html_excerpt(text: str, limit: int = SNIPPET_CHARS) -> str:
    """Visible text of an HTML page, collapsed: what a person would read first."""
    return _SPACE.sub(" ", _TAG.sub(" ", text[:RAW_B64_BYTES])).strip()[:limit]


def body_details(
    body: bytes,
    *,
    status_code: int | None,
    content_type: str,
    headers: Mapping[str, str] | None,
    hint: str | None = None,
) -> dict[str, Any]:
    """The standard evidence for a response body: status, headers, snippets, HTML class."""
    text = body[:RAW_B64_BYTES].decode("utf-8", "replace")
    safe_headers = sanitize_headers(headers or {})
    details: dict[str, Any] = {
        "status_code": status_code,
        "content_type": content_type,
        "response_headers": safe_headers,
        "request_id": find_request_id(safe_headers),
        "body_snippet": text[:SNIPPET_CHARS],
        "raw_excerpt": text[:RAW_EXCERPT_CHARS],
        "raw_body_b64": base64.b64encode(body[:RAW_B64_BYTES]).decode("ascii"),
        "body_length": len(body),
        "html_detected": False,
    }
    if looks_like_html(body, content_type):
        details["html_detected"] = True
        details["html_class"] = classify_html(text)
        details["html_excerpt"] = html_excerpt(text)
    retry_after = parse_retry_after(safe_headers.get("retry-after"))
    if retry_after is not None:
        details["retry_after_s"] = retry_after
    if hint:
        details["hint"] = hint
    return details
