"""Redaction by value, not only by key name.

What is scrubbed, wherever text leaves the daemon (run files, events,
telemetry, error payloads, log lines, API responses):
- the exact values of secrets the daemon knows (provider keys and tokens from
  its environment and config), and their encoded forms: base64 (standard and
  URL-safe, at any alignment inside a longer base64 text), URL-encoded, and
  spelled out with separators between the characters (`s k - a b c`,
  `s.k.-.a.b.c`), as a provider's error body may echo them;
- `Authorization`/`Proxy-Authorization` values and `Bearer …` tokens;
- `sk-…`-style keys (OpenAI, OpenRouter, Anthropic formats), known or not;
- `?key=` / `api_key=` / `token=` query parameters.
Mappings additionally lose the values under the original's secret key names.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, AnyStr

MASK = "***REDACTED***"
_MASK_B = MASK.encode()
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


_SEPARATOR = r"[\s.,_:;|/\\-]{1,3}"  # between spelled-out characters
_MIN_ENCODED = 12  # shorter base64 cores would match ordinary text


def base64_cores(raw: bytes, min_length: int = _MIN_ENCODED) -> set[str]:
    """Substrings that any base64 text (standard or URL-safe) containing `raw` contains,
    whatever the alignment: with `offset` bytes before it, the characters that depend on
    `raw` alone run from ceil(8*offset/6) to floor(8*(offset+n)/6)."""
    cores = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            text = encode(b"\0" * offset + raw).decode()
            core = text[-(-8 * offset // 6) : 8 * (offset + len(raw)) // 6]
            if len(core) >= min_length:
                cores.add(core)
    return cores


def encoded_forms(value: str) -> set[str]:
    """Literal encodings of `value` a body might carry: base64 cores at each alignment, URL-encoding."""
    forms = {urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), *base64_cores(value.encode())}
    forms.discard(value)
    return forms


def _spelled_out(value: str) -> str:
    """`value` with one or more separators between every two characters."""
    return _SEPARATOR.join(re.escape(c) for c in value)


def _replace_known(data: AnyStr, literals: tuple[AnyStr, ...], spelled: tuple[re.Pattern[AnyStr], ...],
                   mask: AnyStr) -> AnyStr:
    for literal in literals:
        if literal in data:
            data = data.replace(literal, mask)
    for pattern in spelled:
        data = pattern.sub(mask, data)
    return data


class Redactor:
    """Immutable after construction; safe to share across tasks and threads."""

    def __init__(self, secrets: Iterable[str] = ()):
        values = sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
        self._values = tuple(values)
        # Literal forms are found with substring search (C speed, one pass each); one regex
        # alternation over two dozen literals ran at a third of the speed.
        literals = sorted({f for v in values for f in (v, *encoded_forms(v))}, key=len, reverse=True)
        self._literals = tuple(literals)
        self._literals_b = tuple(v.encode() for v in literals)
        self._spelled = tuple(re.compile(_spelled_out(v)) for v in values)
        self._spelled_b = tuple(re.compile(_spelled_out(v).encode()) for v in values)

    @classmethod
    def from_env(cls, env: Mapping[str, str], extra: Iterable[str] = ()) -> Redactor:
        return cls([v for k, v in env.items() if _SECRET_ENV.search(k)] + list(extra))

    @property
    def known_values(self) -> tuple[str, ...]:
        return self._values

    def text(self, text: str) -> str:
        text = _replace_known(text, self._literals, self._spelled, MASK)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def bytes(self, data: bytes) -> bytes:
        data = _replace_known(data, self._literals_b, self._spelled_b, _MASK_B)
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
        return any(literal in data for literal in self._literals_b) or any(
            p.search(data) for p in self._spelled_b)
