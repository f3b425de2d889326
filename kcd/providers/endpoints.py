"""Where a route's requests go: base URL, API key and fixed headers.

Resolved from the daemon environment each time a client is built (never frozen
at import), so a config reload picks up changes. The API key is wrapped in
`Secret` so it cannot leak through a repr, a log line or an accidental
msgspec encode (Secret is not an encodable type).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from kcd.providers.routes import Route

__all__ = ["Endpoint", "EndpointError", "Secret", "resolve_endpoint"]

OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_APP_TITLE = "KyleCode"


class EndpointError(ValueError):
    """A route whose endpoint cannot be resolved (e.g. mock without the simulator)."""


class Secret:
    """A string that never shows itself; call `reveal()` at the point of use."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    provider: str
    base_url: str  # no trailing slash; requests go to base_url + "/chat/completions"
    api_key: Secret | None = None
    key_env: str | None = None  # the variable the key comes from (named in auth hints)
    headers: dict[str, str] = {}  # extra fixed headers (OpenRouter attribution)

    @property
    def has_key(self) -> bool:
        return bool(self.api_key)

    @property
    def key(self) -> str:
        """Pool key: one warm client per provider endpoint."""
        return f"{self.provider}@{self.base_url}"


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _clean_url(url: str, source: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"{source}: base URL {url!r} must start with http:// or https://")
    return url


def resolve_endpoint(
    route: Route,
    env: Mapping[str, str],
    *,
    base_url: str | None = None,
    simulator_url: str | None = None,
) -> Endpoint:
    """The endpoint for `route`; a per-model `base_url` wins over everything."""
    provider = route.provider
    headers: dict[str, str] = {}
    if provider == "openai":
        key_env = "OPENAI_API_KEY"
        url, source = _env(env, "OPENAI_BASE_URL") or OPENAI_BASE_URL, "OPENAI_BASE_URL"
        key = _env(env, key_env)
    elif provider == "openrouter":
        key_env = "OPENROUTER_API_KEY"
        url, source = _env(env, "OPENROUTER_BASE_URL") or OPENROUTER_BASE_URL, "OPENROUTER_BASE_URL"
        key = _env(env, key_env)
        title = env.get("OPENROUTER_APP_TITLE", DEFAULT_APP_TITLE).strip()
        referer = env.get("OPENROUTER_HTTP_REFERER", "").strip()
        if title:  # empty headers are not sent
            headers["X-Title"] = title
        if referer:
            headers["HTTP-Referer"] = referer
    elif provider == "mock":
        key_env = "MOCK_API_KEY"
        key = _env(env, key_env) or "mock"
        if simulator_url is None and base_url is None:
            raise EndpointError(
                f"route {route.id} needs the built-in simulator: start kcd with the simulator "
                "enabled or give the model a base_url"
            )
        url, source = simulator_url or "", "simulator_url"
    else:  # parse_route already rejects these; keep the failure explicit anyway
        raise EndpointError(f"route {route.id}: no endpoint known for provider {provider!r}")
    if base_url is not None:
        url, source = base_url, f"{route.id} base_url"
    return Endpoint(
        provider=provider,
        base_url=_clean_url(url, source),
        api_key=Secret(key) if key else None,
        key_env=key_env,
        headers=headers,
    )
