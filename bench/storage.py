"""Storage throughput: batched DataStore writes through Ray to SQLite, against the raw 1:1 Ray call rate.

Figures: `raw_call_rate` (sequential do-nothing Ray calls/s, the baseline), `ray_batched_writes_per_s` (Set requests
in batches of `batch` to one storage actor on SQLite, synchronous=FULL), `direct_writes_per_s` (the same batches to the
engine in this process: what Ray costs on top), `client_async_sets_per_s` (the public client: `store.aio.set` from
many coroutines at once, coalesced by the transport into one Ray message per loop turn). Target: batched writes
through Ray >= 10x the raw call rate.
"""

from __future__ import annotations

import asyncio
import os
import tempfile

import ray

from lodestore.bench._common import ensure_ray, median_rate, raw_call_rate
from lodestore.storage import DataStoreEngine, SimClock, SqliteBackend, World, datastore_name, encode, namespace_of
from lodestore.storage import datastore as m

TARGET = 10.0


def _batches(count: int, batch: int, round_: int) -> list[list]:
    value = {"coins": 100, "inventory": ["sword", "shield"], "level": 7}
    data, size = encode(value), 60
    return [[m.Set("bench", "global", f"r{round_}-k{i + j}", data, size) for j in range(batch)]
            for i in range(0, count, batch)]


def run(quick: bool = False) -> dict:
    count, batch = (5_000, 500) if quick else (50_000, 1_000)
    ensure_ray()
    raw = raw_call_rate(300 if quick else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        world = World.start("bench-storage", backend="sqlite", path=os.path.join(tmp, "ray.db"), budget=None)
        try:
            shard = ray.get_actor(datastore_name(0), namespace=namespace_of(world.name))   # raw calls, no client

            def through_ray(r: int) -> None:
                refs = [shard.execute.remote(b) for b in _batches(count, batch, r)]
                for reply in ray.get(refs):
                    assert not any(isinstance(x, Exception) for x in reply.results)

            ray_rate = median_rate(through_ray, count)
            store = world.server("bench").datastores.get_data_store("bench")
            value = {"coins": 100, "inventory": ["sword", "shield"], "level": 7}

            def client_async(r: int) -> None:
                async def burst(lo: int) -> None:
                    await asyncio.gather(*(store.aio.set(f"c{r}-{lo + i}", value) for i in range(batch)))

                async def all_bursts() -> None:
                    for lo in range(0, count, batch):
                        await burst(lo)

                asyncio.run(all_bursts())

            client_rate = median_rate(client_async, count)
        finally:
            world.shutdown()
        engine = DataStoreEngine(SqliteBackend(os.path.join(tmp, "direct.db")), SimClock.starting_now())

        def direct(r: int) -> None:
            for b in _batches(count, batch, r):
                engine.execute(b)

        direct_rate = median_rate(direct, count)
        engine.backend.close()
    return {
        "benchmark": "storage",
        "quick": quick,
        "writes": count,
        "batch": batch,
        "raw_call_rate": round(raw, 1),
        "ray_batched_writes_per_s": round(ray_rate, 1),
        "direct_writes_per_s": round(direct_rate, 1),
        "client_async_sets_per_s": round(client_rate, 1),
        "baseline": "raw_call_rate",
        "ratio": round(ray_rate / raw, 2),
        "target": TARGET,
        "meets_target": ray_rate / raw >= TARGET,
    }
