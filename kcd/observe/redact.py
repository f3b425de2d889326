"""Redaction by value, not only by key name.

What is scrubbed, wherever text leaves the daemon (run files, events,
telemetry, error payloads, log lines, API responses):
- the exact values of secrets the daemon knows (provider keys and tokens from
  its environment and config);
- `Authorization`/`Proxy-Authorization` values and `Bearer …` tokens;
- `sk-…`-style keys (OpenAI, OpenRouter, Anthropic formats), known or not;
- `?key=` / `api_key=` / `token=` query parameters.
Mappings additionally lose the values under the original's secret key names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***REDACTED***"
MIN_SECRET_LEN = 8  # shorter values (e.g. MOCK_API_KEY=mock) would mangle ordinary text

# Environment variables whose values are secrets.
_SECRET_ENV = re.compile(r"(_API_KEY|_TOKEN|_SECRET|SECRET_KEY|_PASSWORD|_AUTH_TOKEN)$|^(API_KEY|TOKEN)$",
                         re.IGNORECASE)
SECRET_KEYS = frozenset({"api_key", "authorization", "openai_api_key", "openrouter_api_key",
                         "proxy-authorization", "x-api-key", "api-key", "x-openai-api-key",
                         "anthropic_api_key", "x-goog-api-key", "cookie", "set-cookie", "token",
                         "access_token", "secret"})

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=:-]{6,}"), r"\1 " + MASK),
    (re.compile(r"(?i)(\"?(?:proxy-)?authorization\"?\s*[:=]\s*\"?)(?!(?:bearer|basic)\b)[^\s\",}]{6,}"),
     r"\1" + MASK),
    (re.compile(r"\b(?:sk|rk|pk)-(?:[A-Za-z0-9]+-)*[A-Za-z0-9_]{16,}"), MASK),
    (re.compile(r"(?i)([?&](?:key|api_key|apikey|api-key|access_token|token|auth)=)[^&\s\"'#]+"), r"\1" + MASK),
)


class Redactor:
    """Immutable after construction; safe to share across tasks and threads."""

    def __init__(self, secrets: Iterable[str] = ()):
        values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        self._values = tuple(values)
        self._exact = re.compile("|".join(re.escape(v) for v in values)) if values else None
        self._exact_b = re.compile(b"|".join(re.escape(v.encode()) for v in values)) if values else None

    @classmethod
    def from_env(cls, env: Mapping[str, str], extra: Iterable[str] = ()) -> Redactor:
        return cls([v for k, v in env.items() if _SECRET_ENV.search(k)] + list(extra))

    @property
    def known_values(self) -> tuple[str, ...]:
        return self._values

    def text(self, text: str) -> str:
        if self._exact is not None:
            text = self._exact.sub(MASK, text)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def bytes(self, data: bytes) -> bytes:
        if self._exact_b is not None:
            data = self._exact_b.sub(MASK.encode(), data)
        # Patterns run on text; only when something that could match is present.
        if any(marker in data for marker in (b"earer", b"asic", b"uthorization", b"sk-", b"rk-", b"pk-",
                                             b"key=", b"token=", b"auth=", b"KEY=", b"Key=")):
            return self.text(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        return data

    def obj(self, value: Any) -> Any:
        """A copy of a JSON-like value with secrets removed (by key name and by value)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: (MASK if isinstance(k, str) and k.lower() in SECRET_KEYS and v else self.obj(v))
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.obj(v) for v in value]
        return value

    def contains_secret(self, data: bytes) -> bool:
        """Whether a known secret value is still present (bundles refuse then)."""
        return bool(self._exact_b and self._exact_b.search(data))
