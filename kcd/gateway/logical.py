"""Which endpoint requests are one logical request, for the breaker's count.

Agent tools retry a failed request at once with the same body (aider: three kcd
requests in 1.2 s for one failed call). Counted as three failures, one client's
bad moment locks a route for every run and client. So the breaker's key for an
endpoint request is shared by a client's repeats: the `Idempotency-Key` header
when the client sends one, else the same body from the same client within
`window_s` of its last sighting. Different clients never share a key, and the
same body sent again after a quiet spell is a new request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

__all__ = ["LogicalRequests"]


class LogicalRequests:
    def __init__(self, *, window_s: float = 10.0, limit: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._limit = limit  # bounded: clients choose the bodies
        self._clock = clock
        self._seen: dict[tuple[str, bytes], tuple[str, float]] = {}  # oldest first

    def key(self, client: str, body: bytes, idempotency_key: str | None, fresh: str) -> str:
        """The breaker key of this request: `fresh` unless it repeats an earlier one."""
        if idempotency_key:
            return f"idem:{client}:{idempotency_key[:200]}"
        slot = (client, hashlib.blake2b(body, digest_size=16).digest())
        now = self._clock()
        hit = self._seen.pop(slot, None)
        key = hit[0] if hit is not None and now - hit[1] <= self.window_s else fresh
        self._seen[slot] = (key, now)
        while len(self._seen) > self._limit:
            del self._seen[next(iter(self._seen))]
        return key
