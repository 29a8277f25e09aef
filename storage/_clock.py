"""The one simulated clock every component reads.

`now()` is milliseconds since the Unix epoch in simulated time, the unit of Roblox timestamps. A `SimClock` is a frozen
value (epoch, real start, scale), so copies of it in different processes of one world agree. A `ManualClock` only
moves when a test moves it. Nothing here sleeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SimClock", "ManualClock"]


@runtime_checkable
class Clock(Protocol):
    def now(self) -> int:
        """Simulated milliseconds since the Unix epoch."""

    def real_seconds(self, simulated_seconds: float) -> float:
        """How many real seconds pass while `simulated_seconds` pass on this clock."""


@dataclass(frozen=True)
class SimClock:
    """now = epoch + real time elapsed since `real_start_ms`, times `time_scale`.

    >>> clock = SimClock.starting_now(time_scale=60)   # an hour runs in a minute
    """

    epoch_ms: int
    real_start_ms: float
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.time_scale, (int, float)) or isinstance(self.time_scale, bool):
            raise TypeError(f"time_scale must be a number, got {type(self.time_scale).__name__}")
        if not (self.time_scale > 0) or self.time_scale == float("inf"):
            raise ValueError(f"time_scale must be a finite number > 0, got {self.time_scale!r}")

    @classmethod
    def starting_now(cls, time_scale: float = 1.0, epoch_ms: int | None = None) -> "SimClock":
        real = time.time() * 1000.0
        return cls(epoch_ms=int(real) if epoch_ms is None else int(epoch_ms), real_start_ms=real,
                   time_scale=time_scale)

    def now(self) -> int:
        return int(self.epoch_ms + (time.time() * 1000.0 - self.real_start_ms) * self.time_scale)

    def real_seconds(self, simulated_seconds: float) -> float:
        return simulated_seconds / self.time_scale


@dataclass
class ManualClock:
    """A clock for tests: it stands still until `advance` or `set` moves it.

    >>> clock = ManualClock(1_700_000_000_000)
    >>> clock.advance(seconds=4); clock.now()
    1700000004000
    """

    ms: int = field(default=1_700_000_000_000)

    def now(self) -> int:
        return self.ms

    def advance(self, seconds: float = 0.0, ms: int = 0) -> int:
        step = int(round(seconds * 1000)) + int(ms)
        if step < 0:
            raise ValueError(f"a clock never goes back; advance got {step} ms")
        self.ms += step
        return self.ms

    def set(self, ms: int) -> None:
        if ms < self.ms:
            raise ValueError(f"a clock never goes back; set({ms}) is before {self.ms}")
        self.ms = int(ms)

    def real_seconds(self, simulated_seconds: float) -> float:
        return 0.0
