"""Modelled latency (storage/_latency.py): its draws, the MemoryStore shard's delays, and a request's wait in
simulated time."""

from __future__ import annotations

import asyncio

import pytest

from lodestore.storage import ConfigError, FaultConfig, Latency, ManualClock, MemoryStoreError, Scheduler, World
from lodestore.storage._latency import ServiceTimes
from lodestore.storage._shards import MemoryStoreShardActor, WorldInfo
from lodestore.storage._types import BatchReply
from lodestore.storage.memorystore import HashMapGet, HashMapSet, QueueAdd, QueueGetSize, SortedMapGet
from lodestore.storage.memorystore._engine import latency_key


def test_each_shape_samples_as_documented():
    assert Latency.fixed(80).sample(0.99) == 80
    assert Latency.uniform(50, 200).sample(0.0) == 50 and Latency.uniform(50, 200).sample(0.5) == 125
    assert Latency.lognormal(60, 0.5).sample(0.5) == pytest.approx(60)
    assert Latency.lognormal(60, 3, max_ms=10_000).sample(0.999999) == 10_000   # the cap holds the tail


def test_service_times_follow_each_key_s_own_count():
    def draws(seed, keys):
        times = ServiceTimes(Latency.uniform(0, 10), seed)
        per_key: dict[str, list[float]] = {}
        for k in keys:
            per_key.setdefault(k, []).append(times.draw("HashMapGet", ("HashMap", "m", k)))
        return per_key

    assert draws(3, "abab") == draws(3, "aabb")       # the interleaving between keys does not matter
    assert draws(3, "abab") != draws(4, "abab")
    assert ServiceTimes().draw("HashMapGet", ("HashMap", "m", "a")) == 0.0   # no latency: no delay


def test_service_times_refuse_what_is_not_a_latency_or_a_seed():
    with pytest.raises(ConfigError, match="must be a Latency or None, got 5"):
        ServiceTimes(5)
    with pytest.raises(ConfigError, match="seed must be an integer, got '1'"):
        ServiceTimes(Latency.fixed(1), "1")


def test_latency_key_names_the_structure_and_the_item():
    assert latency_key(HashMapGet("m", "k")) == ("HashMap", "m", "k")
    assert latency_key(SortedMapGet("m", "k")) == ("SortedMap", "m", "k")   # another structure of the same name
    assert latency_key(QueueAdd("q", b"", 0, 60)) == ("Queue", "q", None)
    assert latency_key(HashMapGet(["m"], 3)) == ("HashMap", "['m']", "3")  # refused by the engine, still timed


# ------------------------------------------------------------------------------------------- MemoryStore shard


def memorystore(clock: ManualClock) -> MemoryStoreShardActor:
    shard = MemoryStoreShardActor(WorldInfo("w", "memory", None, 1, clock, FaultConfig()))
    shard.set_players("job", 100)
    return shard


def test_memorystore_replies_carry_no_delays_until_a_latency_is_set():
    shard = memorystore(ManualClock())
    assert shard.execute([HashMapGet("m", "k")]) == BatchReply([None], None)
    shard.set_latency(Latency.fixed(7))
    reply = shard.execute([HashMapSet("m", "k", b"\x01", 1, 60), HashMapGet("m", "k"), QueueGetSize("q")])
    assert reply.delays_ms == [7, 7, 7]
    shard.set_latency(None)
    assert shard.execute([HashMapGet("m", "k")]).delays_ms is None


def test_memorystore_delays_are_one_deterministic_draw_per_operation():
    def run(seed, ops):
        shard = memorystore(ManualClock())
        shard.set_latency(Latency.uniform(0, 10), seed)
        shard.set_latency(Latency.uniform(0, 10), seed)   # delivered twice: set once
        return {op.key: ms for op, ms in zip(ops, shard.execute(ops).delays_ms)}

    ops = [HashMapGet("m", f"k{i}") for i in range(20)]
    assert run(1, ops) == run(1, list(reversed(ops)))   # each key's first request draws the same
    assert run(1, ops) != run(2, ops)
    assert all(0 <= ms <= 10 for ms in run(1, ops).values()) and len(set(run(1, ops).values())) == 20


def test_a_refused_memorystore_operation_takes_its_time_too():
    shard = memorystore(ManualClock())
    shard.set_latency(Latency.fixed(3))
    reply = shard.execute([HashMapGet("", "k")])
    assert isinstance(reply.results[0], MemoryStoreError) and reply.delays_ms == [3]


# ------------------------------------------------------------------------------------------------- end to end


def test_a_datastore_read_waits_its_base_latency_in_simulated_time():
    async def main():
        clock = ManualClock()
        world = World.in_process(name="lat", clock=clock,   # made on this loop: its waits are this loop's timers
                                 faults=FaultConfig(base_latency={"StandardRead": Latency.fixed(60)}))
        scheduler = Scheduler.for_loop(clock)
        store = world.server("a").datastores.get_data_store("s")
        start = clock.now()
        read = asyncio.ensure_future(store.aio.get("k", use_cache=False))
        await scheduler.advance(0.059)
        assert not read.done()
        await scheduler.advance(0.001)
        assert read.done() and read.result()[0] is None
        assert clock.now() - start == 60
        world.shutdown()

    asyncio.run(main())
