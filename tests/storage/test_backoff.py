"""The one backoff and retry helper every layer uses (storage/_backoff.py)."""

from __future__ import annotations

import asyncio
import random

import pytest

from lodestore.storage import Backoff, DataStoreError, retry


def test_waits_double_from_the_base_up_to_the_cap():
    backoff = Backoff(base=1.0, cap=8.0)
    assert [backoff.wait(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_jitter_shortens_each_wait_by_at_most_its_fraction():
    backoff = Backoff(base=2.0, cap=30.0, jitter=0.5)
    rng = random.Random(7)
    waits = [backoff.wait(3, rng) for _ in range(200)]
    assert all(4.0 <= w <= 8.0 for w in waits) and len(set(waits)) > 100


def _flaky(failures: list[BaseException]):
    calls = []

    async def call():
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "done"
    return call, calls


def test_retryable_failures_are_waited_out_through_the_given_sleep():
    slept, reported = [], []
    call, calls = _flaky([DataStoreError(503, "ServiceUnavailable", "x")] * 2)

    async def sleep(seconds):
        slept.append(seconds)

    result = asyncio.run(retry(call, attempts=5, backoff=Backoff(1.0, 30.0), retryable=lambda e: e.retryable,
                               sleep=sleep, on_retry=lambda exc, n, wait: reported.append((n, wait))))
    assert result == "done" and len(calls) == 3
    assert slept == [1.0, 2.0] and reported == [(1, 1.0), (2, 2.0)]


def test_a_failure_that_is_not_retryable_or_the_last_attempt_is_raised_at_once():
    async def no_sleep(seconds):
        raise AssertionError("must not wait")

    call, calls = _flaky([DataStoreError(104, "ValueNotAllowed", "x")])
    with pytest.raises(DataStoreError, match="ValueNotAllowed"):
        asyncio.run(retry(call, attempts=5, backoff=Backoff(), retryable=lambda e: e.retryable, sleep=no_sleep))
    assert len(calls) == 1

    slept = []

    async def sleep(seconds):
        slept.append(seconds)

    call, calls = _flaky([DataStoreError(503, "ServiceUnavailable", "x")] * 5)
    with pytest.raises(DataStoreError, match="ServiceUnavailable"):
        asyncio.run(retry(call, attempts=3, backoff=Backoff(), retryable=lambda e: e.retryable, sleep=sleep))
    assert len(calls) == 3 and slept == [1.0, 2.0]
