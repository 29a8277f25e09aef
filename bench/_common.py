"""What several benchmarks share: starting Ray, the raw 1:1 Ray call rate every ratio is taken against, and Lyra's
chaos scenario at a chosen size."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import ray

LYRA_CHAOS = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "lyra_chaos.toml"


def lyra_chaos(players: int, duration_s: float) -> Any:
    """`examples/scenarios/lyra_chaos.toml` with `players` players for `duration_s` simulated seconds, unpaced, with
    enough servers for them all (the simulator loads only when a benchmark asks for it)."""
    from lodestore.sim import load_scenario
    scenario = load_scenario(LYRA_CHAOS)
    return dataclasses.replace(
        scenario, world=dataclasses.replace(scenario.world, duration=duration_s, time_scale=None),
        players=dataclasses.replace(scenario.players, population=players),
        servers=dataclasses.replace(scenario.servers, count=max(scenario.servers.count,
                                                                players // scenario.servers.max_players)))


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
