"""One backoff for every retry loop of lodestore: how long to wait before attempt n, and the loop that waits.

Owns the exponential schedule (base x 2^(n-1) simulated seconds, at most `cap`, each wait shortened by up to
`jitter` of itself) and `retry`, which runs a coroutine until it succeeds, the caller's `retryable` says no, or the
attempts run out. The storage client, the sessions and the coordinator each say only *what* is retryable and how to
sleep; they all wait through the world's clock (a scheduler's `sleep`, or `lodestore.storage.sleep`), never on the
wall clock directly. It never catches what `retryable` refuses, and it never decides that a write is safe to repeat:
callers retry only what they know to be idempotent or versioned.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

__all__ = ["Backoff", "retry"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits of `base` x 2^(n-1) simulated seconds before retry n (1-based), at most `cap`, each shortened by up to
    `jitter` (a fraction) of itself.

    >>> Backoff(base=1, cap=30).wait(3)
    4.0
    """

    base: float = 1.0
    cap: float = 30.0
    jitter: float = 0.0

    def wait(self, attempt: int, rng: random.Random | None = None) -> float:
        wait = min(self.base * 2.0 ** (attempt - 1), self.cap) if self.base else 0.0
        if self.jitter and rng is not None:
            wait *= 1 - self.jitter * rng.random()
        return wait if math.isfinite(wait) else self.cap


async def retry(call: Callable[[], Awaitable[Any]], *, attempts: int, backoff: Backoff,
                retryable: Callable[[BaseException], bool], sleep: Callable[[float], Awaitable[Any]],
                on_retry: Callable[[BaseException, int, float], Any] | None = None,
                rng: random.Random | None = None) -> Any:
    """`await call()` up to `attempts` times. A failure that `retryable` accepts, with attempts left, is reported to
    `on_retry(exc, attempt, wait)` and waited out with `sleep(wait)`; any other failure, or the last, is raised."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            if attempt >= attempts or not retryable(exc):
                raise
            wait = backoff.wait(attempt, rng)
            if on_retry is not None:
                on_retry(exc, attempt, wait)
        await sleep(wait)
