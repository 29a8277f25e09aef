"""Modelled request latency: `Latency`, a distribution of simulated milliseconds, and `ServiceTimes`, its draws.

Owns the shape of a latency (fixed, uniform, lognormal, capped) and the one way lodestore turns a request into a
quantile of it: a hash of (seed, what the request is, its key, how many requests that key has seen), so the same
per-key request order gives the same latencies whatever the interleaving between keys, in every process. The
DataStore's fault injector (`storage._faults`) draws its base and fault latency this way; the MemoryStore shard draws
one `ServiceTimes` value per operation.

Never does: wait, read a clock, or touch a request; it only says how long a request takes, and the client waits it
(`storage._transport`).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable

from lodestore.storage._errors import ConfigError

__all__ = ["Latency", "ServiceTimes", "quantile"]

_SCALE = 2.0 ** -64


@dataclass(frozen=True)
class Latency:
    """A latency distribution in simulated milliseconds: `fixed`, `uniform` (low..high) or `lognormal`
    (median, sigma), capped at `max_ms`.

    >>> Latency.lognormal(60, 0.5).sample(0.5)
    60.0
    """

    kind: str = "fixed"
    a: float = 0.0
    b: float = 0.0
    max_ms: float = 60_000.0

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ConfigError(f"latency kind must be 'fixed', 'uniform' or 'lognormal', got {self.kind!r}")
        for name in ("a", "b", "max_ms"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"latency {name} must be a finite number >= 0, got {v!r}")
        if self.kind == "uniform" and self.b < self.a:
            raise ConfigError(f"uniform latency needs low <= high, got {self.a} > {self.b}")

    @classmethod
    def fixed(cls, ms: float, max_ms: float = 60_000.0) -> "Latency":
        return cls("fixed", ms, 0.0, max_ms)

    @classmethod
    def uniform(cls, low_ms: float, high_ms: float, max_ms: float = 60_000.0) -> "Latency":
        return cls("uniform", low_ms, high_ms, max_ms)

    @classmethod
    def lognormal(cls, median_ms: float, sigma: float = 0.5, max_ms: float = 60_000.0) -> "Latency":
        return cls("lognormal", median_ms, sigma, max_ms)

    def sample(self, u: float) -> float:
        """The latency at quantile `u` in [0, 1)."""
        if self.kind == "fixed":
            ms = self.a
        elif self.kind == "uniform":
            ms = self.a + (self.b - self.a) * u
        else:
            z = NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12))
            ms = self.a * math.exp(self.b * z)
        return min(ms, self.max_ms)


def quantile(*parts: Any) -> float:
    """A number in [0, 1) drawn from a hash of `parts` (their repr): the same parts give the same number in every
    process and on every node."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return struct.unpack("<Q", digest)[0] * _SCALE


class ServiceTimes:
    """One `Latency` drawn request by request: the n-th request of `key` takes `latency.sample(quantile(seed, kind,
    key, n))` ms. No latency (None) draws nothing and counts nothing.

    >>> times = ServiceTimes(Latency.uniform(0, 10), seed=3)
    >>> times.draw("HashMapGet", ("HashMap", "m", "k")), times.draw("HashMapGet", ("HashMap", "m", "k"))
    (9.89..., ...)                      # the key's first draw, then its second: the same in every run
    """

    def __init__(self, latency: Latency | None = None, seed: int = 0) -> None:
        self._counters: dict[tuple, int] = {}
        self.latency: Latency | None = None
        self.seed = 0
        self.configure(latency, seed)

    def configure(self, latency: Latency | None, seed: int = 0) -> None:
        """Draw from `latency` under `seed` from now on (None: no latency). The per-key counters carry on, as the
        fault injector's do when a world's faults change; configuring the same twice is configuring it once."""
        if latency is not None and not isinstance(latency, Latency):
            raise ConfigError(f"latency must be a Latency or None, got {latency!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"latency seed must be an integer, got {seed!r}")
        self.latency, self.seed = latency, seed

    def draw(self, kind: str, key: tuple) -> float:
        """The next latency of `key` for a request of `kind`, in simulated ms (0.0 without a latency)."""
        if self.latency is None:
            return 0.0
        n = self._counters.get(key, 0)
        self._counters[key] = n + 1
        return self.latency.sample(quantile(self.seed, kind, key, n))

    def delays(self, ops: list, key_of: Callable[[Any], tuple]) -> list[float] | None:
        """One draw per operation of a batch, in order (its kind is its type's name, its key `key_of(op)`); None
        without a latency, as a `BatchReply` carries it."""
        if self.latency is None:
            return None
        return [self.draw(type(op).__name__, key_of(op)) for op in ops]
