"""The daemon's upstream client: `httpx.AsyncClient.stream` as `send_chat` uses it, on aiohttp.

Why: behind `AiohttpTransport`, httpx's client layer alone (URL parsing and merging,
header models, a cookie-jar pass through `urllib.request` per response, the
`httpx.Request`/`Response` objects) cost ~0.55 ms of CPU per call on these
machines, more than aiohttp's own ~0.45 ms (docs/benchmarks.md §5). `send_chat` needs
only `stream(...)`, a status, two header reads and `aiter_bytes()`, so this gives it
exactly that; failures are httpx's exception types (mapped in `aiohttp_transport`), so
the attempt code and its classification are the same for every client.

What the provider sees is what httpx sent: httpx's default headers (`Accept-Encoding:
gzip, deflate`, its `User-Agent`, `Connection: keep-alive`) under the caller's own,
and a gzip or deflate body is decoded (here by aiohttp) before the caller reads it.
Cookies a provider sets are kept by the session's jar, as httpx's client kept them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from types import TracebackType

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

from kcd.providers.aiohttp_transport import AiohttpSession, client_timeout, iter_body

__all__ = ["AiohttpClient", "UpstreamResponse"]

# httpx's defaults under the caller's headers (httpx.AsyncClient().headers), so moving off
# httpx's client changes nothing on the wire but the header order.
_DEFAULT_HEADERS = {"Accept": "*/*", "Accept-Encoding": "gzip, deflate", "Connection": "keep-alive",
                    "User-Agent": f"python-httpx/{httpx.__version__}"}


def _decode(raw: tuple[tuple[bytes, bytes], ...]) -> list[tuple[str, str]]:
    """Lower-cased names, values decoded as httpx does: ASCII, else UTF-8, else Latin-1."""
    for encoding in ("ascii", "utf-8"):
        try:
            return [(k.decode(encoding).lower(), v.decode(encoding)) for k, v in raw]
        except UnicodeDecodeError:
            pass
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]


class _Headers:
    """The two reads `send_chat` makes of httpx.Headers."""

    __slots__ = ("_items",)

    def __init__(self, raw: tuple[tuple[bytes, bytes], ...]):
        self._items = _decode(raw)

    def get(self, name: str, default: str | None = None) -> str | None:
        key = name.lower()
        for k, v in self._items:
            if k == key:
                return v
        return default

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._items)


class UpstreamResponse:
    __slots__ = ("status_code", "headers", "_response")

    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response
        self.status_code = response.status
        self.headers = _Headers(response.raw_headers)

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return iter_body(self._response)


class _Stream:
    """`async with client.stream(...) as response`: the response is released on the way out
    (to the pool when read to the end, else its connection is closed)."""

    __slots__ = ("_session", "_method", "_url", "_body", "_headers", "_timeout", "_response")

    def __init__(self, session: AiohttpSession, method: str, url: URL, body: bytes,
                 headers: CIMultiDict[str], timeout: aiohttp.ClientTimeout):
        self._session, self._method, self._url = session, method, url
        self._body, self._headers, self._timeout = body, headers, timeout
        self._response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> UpstreamResponse:
        self._response = await self._session.request(self._method, self._url, self._body, self._headers,
                                                     self._timeout)
        return UpstreamResponse(self._response)

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._response is not None:
            self._response.release()


class AiohttpClient:
    """One connection pool per upstream endpoint (`Dispatcher.client_for`)."""

    def __init__(self, limits: httpx.Limits, *, trust_env: bool = False):
        self._session = AiohttpSession(limits, trust_env=trust_env, decompress=True)
        self._urls: dict[str, URL] = {}  # parsed once: an endpoint has one or two URLs

    def stream(self, method: str, url: str, *, content: bytes, headers: Mapping[str, str],
               timeout: httpx.Timeout) -> _Stream:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = URL(url)
            if len(self._urls) > 64:  # callers' URLs are per endpoint, but stay bounded anyway
                self._urls.clear()
        merged = CIMultiDict(_DEFAULT_HEADERS)
        merged.update(headers)  # case-insensitive: the caller's value replaces the default
        return _Stream(self._session, method, parsed, content, merged, client_timeout(timeout.as_dict()))

    async def aclose(self) -> None:
        await self._session.aclose()
