"""ProviderGateway: the single path for every LLM call the daemon makes.

It owns one warm `httpx.AsyncClient` per provider endpoint, shared by all
runs, and turns a (route, request) into a normalized response or a typed
`ProviderFailure` naming the route and the cause. Every attempt is handed to
the caller's listener so the run can record it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import httpx

from kcd.providers.endpoints import Endpoint, resolve_endpoint
from kcd.providers.errors import ProviderFailure
from kcd.providers.openai_compat import Attempt, Timeouts, send_chat
from kcd.providers.routes import Route
from kcd.providers.types import ChatRequest, ChatResponse

# Pool limits per endpoint. Large keep-alive pools make httpcore slow at high
# concurrency (httpx #3215); these keep reuse high without that cost.
POOL_LIMITS = httpx.Limits(max_connections=128, max_keepalive_connections=64, keepalive_expiry=30)


class AttemptListener(Protocol):
    async def __call__(self, route: Route, number: int, attempt: Attempt) -> None: ...


class ProviderGateway:
    def __init__(self, env: Mapping[str, str],
                 simulator_url: Callable[[], Awaitable[str]] | None = None):
        self._env = env
        self._simulator_url = simulator_url
        self._clients: dict[str, httpx.AsyncClient] = {}

    async def endpoint_for(self, route: Route, base_url: str | None = None) -> Endpoint:
        sim = None
        if route.provider == "mock" and base_url is None:
            if self._simulator_url is None:
                raise ProviderFailure(route=route.id, classification="config_error",
                                      message="no provider simulator is available in this daemon",
                                      retryable=False)
            sim = await self._simulator_url()
        return resolve_endpoint(route, self._env, base_url=base_url, simulator_url=sim)

    def client_for(self, endpoint: Endpoint) -> httpx.AsyncClient:
        client = self._clients.get(endpoint.key)
        if client is None:
            client = httpx.AsyncClient(
                limits=POOL_LIMITS,
                timeout=httpx.Timeout(30.0),
                # Loopback simulator traffic must never go through a proxy.
                trust_env=endpoint.provider != "mock",
            )
            self._clients[endpoint.key] = client
        return client

    async def complete(self, route: Route, request: ChatRequest, *, base_url: str | None = None,
                       timeouts: Timeouts | None = None,
                       listener: AttemptListener | None = None,
                       on_chunk: Callable[[str], None] | None = None) -> ChatResponse:
        endpoint = await self.endpoint_for(route, base_url)
        if endpoint.provider != "mock" and not endpoint.has_key:
            raise ProviderFailure(
                route=route.id, classification="missing_api_key", retryable=False,
                message=f"no API key: set {endpoint.key_env} in the daemon's environment")
        attempt = await send_chat(self.client_for(endpoint), endpoint, route, request,
                                  timeouts=timeouts or Timeouts(), on_chunk=on_chunk)
        if listener is not None:
            await listener(route, 1, attempt)
        if attempt.failure is not None:
            raise attempt.failure
        assert attempt.response is not None
        return attempt.response

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()
