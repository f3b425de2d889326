"""The retry rules kcd's dispatcher and kcctl's exporter share (kcd/api/backoff.py)."""

from __future__ import annotations

import random
from email.utils import format_datetime
from datetime import datetime, timezone

import pytest

from kcd.api import backoff
from kcd.api.backoff import full_jitter, parse_retry_after, retry_after_from_headers, retryable_status

NOW = 1_760_000_000.0


@pytest.mark.parametrize("value, seconds", [
    ("7", 7.0), (" 2.5 ", 2.5), ("0", 0.0), ("-3", 0.0),
    (format_datetime(datetime.fromtimestamp(NOW + 30, timezone.utc), usegmt=True), 30.0),
    (format_datetime(datetime.fromtimestamp(NOW - 30, timezone.utc), usegmt=True), 0.0),
    (None, None), ("", None), ("soon", None), ("Mon, 99 Foo 20x", None),
])
def test_retry_after_as_seconds(value, seconds) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_the_millisecond_headers_come_first_and_a_bad_one_is_skipped() -> None:
    assert retry_after_from_headers({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_from_headers({"x-ms-retry-after-ms": "250"}) == 0.25
    assert retry_after_from_headers({"retry-after-ms": "x", "retry-after": "9"}) == 9.0
    assert retry_after_from_headers({}) is None


def test_full_jitter_stays_under_the_doubling_ceiling_and_the_cap() -> None:
    assert [full_jitter(0.5, 8.0, i, lambda: 1.0) for i in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert full_jitter(0.5, 8.0, 10_000, lambda: 1.0) == 8.0  # no float overflow
    rng = random.Random(1)
    samples = [full_jitter(1.0, 30.0, 3, rng.random) for _ in range(500)]
    assert 0.0 <= min(samples) and max(samples) <= 8.0 and max(samples) > 6.0  # spread, not lockstep
    with pytest.raises(ValueError):
        full_jitter(1.0, 2.0, -1, rng.random)


@pytest.mark.parametrize("status, again", [(408, True), (429, True), (500, True), (502, True), (503, True),
                                           (501, False), (400, False), (401, False), (404, False), (200, False)])
def test_statuses_worth_another_attempt(status: int, again: bool) -> None:
    assert retryable_status(status) is again


def test_the_daemon_and_the_exporter_use_these_very_functions() -> None:
    from kcctl.export import deliver
    from kcd.providers import errors, retry

    assert deliver.full_jitter is retry.full_jitter is backoff.full_jitter
    assert deliver.retry_after_from_headers is retry.retry_after_from_headers is backoff.retry_after_from_headers
    assert errors.parse_retry_after is backoff.parse_retry_after
    assert deliver.retryable_status is backoff.retryable_status
