"""Delivery (`--http-endpoint`): POSTs with retries, and event lines batched into bodies.

`summary`/`jsonl` formats POST the filtered events, byte for byte as read (the decoder sees
only some fields, so re-encoding would lose the rest), as JSON array bodies of at most
`batch_size` events / 4 MiB, sent *during* the pass, so memory stays flat. `otlp-json` and
`prom` POST their one document after the pass. Each POST has a 10 s timeout and is retried
with exponential backoff and full jitter (Retry-After honoured, capped at `backoff_max`) on
transport errors (connect, timeouts, resets) and on 408, 429 and 5xx except 501; any other
non-2xx is permanent. A batch is never re-sent after a 2xx. A batch whose 2xx was lost in
transit may arrive twice: each carries an `Idempotency-Key` (`<export id>-<batch no>`) so a
receiver can drop the repeat.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from kcd.api.backoff import full_jitter, retry_after_from_headers, retryable_status

BATCH_MAX_BYTES = 4 << 20


class DeliveryFailed(Exception):
    def __init__(self, attempts: int, cause: str):
        super().__init__(f"delivery failed after {attempts} attempt{'s' if attempts != 1 else ''}: {cause}")
        self.attempts = attempts


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # after the first attempt
    backoff: float = 0.5  # seconds: the first retry waits up to this, doubling each time
    backoff_max: float = 30.0  # cap on any wait, Retry-After included
    timeout: float = 10.0


class Poster:
    """POSTs bodies to one URL with retries; raises DeliveryFailed when it gives up."""

    def __init__(self, url: str, policy: RetryPolicy):
        import httpx  # only when delivering: it is the slowest import kcctl has

        self._httpx = httpx
        self.url = url
        self.policy = policy
        self._http = httpx.Client(timeout=policy.timeout)
        self._rng = random.Random()
        self._export_id = "%016x" % random.getrandbits(64)
        self.posts = 0

    def close(self) -> None:
        self._http.close()

    def post(self, body: bytes, content_type: str) -> None:
        self.posts += 1
        headers = {"content-type": content_type, "idempotency-key": f"{self._export_id}-{self.posts}"}
        p = self.policy
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                resp = self._http.post(self.url, content=body, headers=headers)
            except (self._httpx.UnsupportedProtocol, self._httpx.InvalidURL) as exc:
                raise DeliveryFailed(attempt, f"invalid URL {self.url!r}: {exc}") from None
            except self._httpx.TransportError as exc:  # connect errors, timeouts, resets
                cause = f"{type(exc).__name__}: {exc or 'no detail'}"
            else:
                if 200 <= resp.status_code < 300:
                    return
                cause = f"HTTP {resp.status_code} {resp.reason_phrase}".rstrip()
                excerpt = " ".join(resp.text[:200].split())
                if excerpt:
                    cause += f": {excerpt}"
                if not retryable_status(resp.status_code):
                    raise DeliveryFailed(attempt, cause + " (permanent, not retried)")
                wait = retry_after_from_headers(resp.headers)
            if attempt > p.retries:
                raise DeliveryFailed(attempt, cause)
            if wait is None:
                wait = full_jitter(p.backoff, p.backoff_max, attempt - 1, self._rng.random)
            time.sleep(min(wait, p.backoff_max))


class Batcher:
    """Collects event lines into JSON-array bodies and posts each one when it is full."""

    def __init__(self, poster: Poster, batch_size: int, max_bytes: int = BATCH_MAX_BYTES):
        self.poster = poster
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self._lines: list[bytes] = []
        self._bytes = 0
        self.events = self.batches = 0

    def add(self, line: bytes) -> None:
        if self._lines and self._bytes + len(line) > self.max_bytes:
            self.flush()
        self._lines.append(line)
        self._bytes += len(line) + 1
        if len(self._lines) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        self.poster.post(b"[" + b",".join(self._lines) + b"]", "application/json")
        self.events += len(self._lines)
        self.batches += 1
        self._lines, self._bytes = [], 0
