"""What several benchmarks share: starting Ray, and the raw 1:1 Ray call rate every ratio is taken against."""

from __future__ import annotations

import statistics
import time

import ray


def ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")


@ray.remote(num_cpus=0)
class _Echo:
    def echo(self, x):
        return x


def raw_call_rate(calls: int = 1000, rounds: int = 3) -> float:
    """Sequential 1:1 calls per second to a do-nothing actor (median of `rounds`)."""
    actor = _Echo.remote()
    ray.get(actor.echo.remote(0))
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(calls):
            ray.get(actor.echo.remote(i))
        rates.append(calls / (time.perf_counter() - start))
    ray.kill(actor)
    return statistics.median(rates)


def median_rate(fn, count: int, rounds: int = 3) -> float:
    """Median of `rounds` runs of fn(round) that each do `count` units of work, in units per second."""
    rates = []
    for r in range(rounds):
        start = time.perf_counter()
        fn(r)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)
