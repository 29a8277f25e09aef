"""The MemoryStore as Roblox's docs describe it in 2026: hash-map partitions and their request limits, the memory
quota on the 8-day peak of players, queue reads that pay for waiting, response statuses, MemoryStore faults, and
flushing every structure. Plain Python on a manual clock, through the engine and through an in-process world."""

from __future__ import annotations

import asyncio

import pytest

from lodestore.storage import ConfigError, FaultConfig, Latency, ManualClock, MemoryStoreError, Outage, World
from lodestore.storage._faults import MEMORYSTORE_FAULT_KEYS
from lodestore.storage._shards import MemoryStoreShardActor, WorldInfo
from lodestore.storage._transport import Call, Sleep
from lodestore.storage.memorystore import (HashMapGet, HashMapList, HashMapSet, MemoryStoreEngine, MemoryStoreFlushed,
                                           QueueAdd, QueueRead, QueueRemove, SortedMapGet, SortedMapSet, Written)
from lodestore.storage.memorystore import _engine as ms
from lodestore.storage.memorystore import _messages
from lodestore.storage.memorystore._structures import TrailingPeak, hash_partition
from tests.storage.test_memorystore import refused, run

T0 = 1_700_000_000_000
DAY_MS = 24 * 3600 * 1000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def same_partition_keys(partitions: int, n: int, partition: int = 0) -> list[str]:
    return [k for k in (f"k{i}" for i in range(1000)) if hash_partition(k, partitions) == partition][:n]


def hset(key: str, size: int = 1, expiration: float = 3_000_000, m: str = "m") -> HashMapSet:
    return HashMapSet(m, key, b"v", size, expiration)


# ---------------------------------------------------------------------------------------------------------------------
# Status names


def test_error_names_are_robloxs_2026_names() -> None:
    assert (_messages.TOTAL_MEMORY_OVER_LIMIT, _messages.DATA_STRUCTURE_MEMORY_OVER_LIMIT,
            _messages.DATA_STRUCTURE_ITEMS_OVER_LIMIT, _messages.DATA_STRUCTURE_REQUESTS_OVER_LIMIT,
            _messages.PARTITION_REQUESTS_OVER_LIMIT, _messages.NO_ITEM_FOUND,
            _messages.TRANSFORM_CALLBACK_FAILED) == (
        "TotalMemoryOverLimit", "DataStructureMemoryOverLimit", "DataStructureItemsOverLimit",
        "DataStructureRequestsOverLimit", "PartitionRequestsOverLimit", "NoItemFound", "TransformCallbackFailed")


def test_statuses_count_successes_items_not_found_and_each_error(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=0, ccu=1000)
    run(engine, hset("a"))
    assert run(engine, HashMapGet("m", "a")) is not None
    assert run(engine, HashMapGet("m", "absent")) is None
    assert run(engine, SortedMapGet("s", "absent")) is None
    assert run(engine, QueueRemove("q", "r404")).count == 0
    assert refused(engine, hset("big", 40_000)).name == "ItemValueSizeTooLarge"
    run(engine, hset("b", 32_000))
    run(engine, hset("c", 32_000))
    assert refused(engine, hset("d", 2000)).name == "TotalMemoryOverLimit"
    assert engine.statistics().statuses == {"Success": 4, "NoItemFound": 3, "ItemValueSizeTooLarge": 1,
                                            "TotalMemoryOverLimit": 1}


def test_a_transform_that_raises_fails_with_transform_callback_failed_and_writes_nothing(clock: ManualClock) -> None:
    world = World.in_process("transform", clock=clock, budget=None)
    hmap = world.server("a").memorystores.get_hash_map("m")
    sorted_map = world.server("a").memorystores.get_sorted_map("s")
    hmap.set("k", 1, 60)
    boom = KeyError("gone")

    def fail(*old):
        raise boom

    for structure in (hmap, sorted_map):
        with pytest.raises(MemoryStoreError) as err:
            structure.update("k", fail, 60)
        assert err.value.name == "TransformCallbackFailed" and err.value.__cause__ is boom and "'k'" in str(err.value)
    assert hmap.get("k") == 1 and sorted_map.get("k") == (None, None)


# ---------------------------------------------------------------------------------------------------------------------
# Hash-map partitions


def test_one_hot_hash_map_key_gets_partition_requests_over_limit(clock: ManualClock,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "PARTITION_UNITS_PER_MINUTE", 10)
    engine = MemoryStoreEngine(clock, users=1000, ccu=1000, hash_map_partitions=4)
    hot, neighbour = same_partition_keys(4, 2, partition=1)
    elsewhere = same_partition_keys(4, 1, partition=2)[0]
    assert engine.execute([HashMapGet("m", hot)] * 10) == [None] * 10
    error = refused(engine, HashMapGet("m", hot))
    assert error.name == "PartitionRequestsOverLimit" and "partition 1 of hash map 'm'" in error.message
    assert refused(engine, hset(neighbour)).name == "PartitionRequestsOverLimit"   # its partition is spent
    assert isinstance(run(engine, hset(elsewhere)), Written)                          # the rest of the map goes on
    assert run(engine, HashMapGet("other", hot)) is None                              # and other maps
    assert engine.statistics().items == 1                                             # the refused write did nothing
    clock.advance(seconds=60)
    assert run(engine, HashMapGet("m", hot)) is None


def test_a_listing_counts_against_each_partition_it_scanned(clock: ManualClock,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "PARTITION_UNITS_PER_MINUTE", 10)
    engine = MemoryStoreEngine(clock, users=1000, ccu=1000, hash_map_partitions=2)
    assert engine.execute([HashMapList("m", 10)] * 10)[-1].items == ()   # 2 units each, 1 per partition
    assert refused(engine, HashMapList("m", 10)).name == "PartitionRequestsOverLimit"
    assert refused(engine, HashMapGet("m", same_partition_keys(2, 1, partition=1)[0])).name == \
        "PartitionRequestsOverLimit"


def test_a_per_map_request_limit_is_a_setting_off_by_default(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=1000, ccu=1000)
    assert engine.execute([HashMapGet("m", f"k{i}") for i in range(200)]) == [None] * 200
    engine.set_hash_map_request_limit(205)
    assert engine.execute([HashMapGet("m", f"k{i}") for i in range(5)]) == [None] * 5
    error = refused(engine, HashMapGet("m", "k6"))
    assert error.name == "DataStructureRequestsOverLimit" and "hash map 'm'" in error.message and "205" in error.message
    assert run(engine, HashMapGet("n", "k6")) is None                 # per map
    engine.set_hash_map_request_limit(None)
    assert run(engine, HashMapGet("m", "k6")) is None
    for bad in (0, -1, 1.5, "100", True):
        with pytest.raises(ConfigError, match="hash_map_request_limit"):
            engine.set_hash_map_request_limit(bad)
        with pytest.raises(ConfigError, match="hash_map_request_limit"):
            MemoryStoreEngine(clock, hash_map_request_limit=bad)
    for bad in (0, 1025, 2.0, None):
        with pytest.raises(ConfigError, match="hash_map_partitions"):
            MemoryStoreEngine(clock, hash_map_partitions=bad)


def test_world_sets_the_per_map_request_limit_blocking_and_as_a_coroutine(clock: ManualClock) -> None:
    world = World.in_process("limits", clock=clock, budget=None)
    hmap = world.server("a", players=100).memorystores.get_hash_map("m")
    world.set_hash_map_request_limit(2)
    hmap.get("a")
    hmap.get("b")
    with pytest.raises(MemoryStoreError) as err:
        hmap.get("c")
    assert err.value.name == "DataStructureRequestsOverLimit"
    asyncio.run(world.aio.set_hash_map_request_limit(None))
    assert hmap.get("c") is None


def test_partitions_are_stable_and_spread_keys() -> None:
    assert hash_partition("user_1", 8) == hash_partition("user_1", 8)
    assert len({hash_partition(f"user_{i}", 8) for i in range(100)}) == 8


# ---------------------------------------------------------------------------------------------------------------------
# The memory quota


def test_memory_quota_drops_only_8_days_after_players_leave(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=10, ccu=10)
    assert engine.memory_quota_bytes == 64 * 1024 + 12_000
    engine.set_population(users=100, ccu=100)                    # joining raises it at once
    assert engine.memory_quota_bytes == 64 * 1024 + 120_000
    clock.advance(ms=DAY_MS)
    engine.set_population(users=20, ccu=20)                      # leaving does not lower it ...
    clock.advance(ms=3 * DAY_MS)
    engine.set_population(users=50, ccu=50)
    clock.advance(ms=8 * DAY_MS - 3 * DAY_MS - 1)
    assert engine.memory_quota_bytes == 64 * 1024 + 120_000 and engine.statistics().quota_users == 100
    clock.advance(ms=1)                                          # ... until 8 days after the count fell
    assert engine.quota_users == 50 and engine.statistics().users == 50
    clock.advance(ms=3 * DAY_MS)                                 # 50 since day 4, so the peak stays 50
    assert engine.quota_users == 50
    engine.set_population(users=0, ccu=0)
    clock.advance(ms=8 * DAY_MS)
    assert engine.memory_quota_bytes == 64 * 1024


def test_at_the_memory_limit_writes_that_grow_memory_fail_and_the_others_succeed(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=10, ccu=1000)        # 65,536 + 12,000 bytes
    run(engine, hset("a", 32_767))
    run(engine, hset("b", 32_767))
    run(engine, hset("c", 11_999))
    assert engine.statistics().bytes_used == engine.memory_quota_bytes
    for op in (hset("d"), hset("a", 32_768), QueueAdd("q", b"v", 1, 60), SortedMapSet("s", "x", b"v", 1, 60)):
        assert refused(engine, op).name == "TotalMemoryOverLimit"
    assert isinstance(run(engine, hset("a", 32_767)), Written)                  # same size: held, not grown
    assert isinstance(run(engine, hset("b", 100)), Written)                     # smaller
    assert isinstance(run(engine, hset("d", 32_000)), Written)                  # into the room it freed
    engine.set_population(users=0, ccu=1000)
    clock.advance(ms=8 * DAY_MS)                                  # the quota fell under what is held
    assert engine.statistics().bytes_used > engine.memory_quota_bytes
    assert refused(engine, hset("e")).name == "TotalMemoryOverLimit"
    assert isinstance(run(engine, hset("c", 11_999)), Written)                  # rewriting in place still works
    assert isinstance(run(engine, HashMapSet("m", "d", b"v", 1, 0)), Written)   # and removing


def test_trailing_peak_keeps_the_largest_value_of_the_window() -> None:
    peak = TrailingPeak(100, 5)
    peak.set(10, 3)
    peak.set(20, 7)
    peak.set(30, 1)
    assert [peak.peak(t) for t in (30, 119, 130, 200)] == [7, 7, 1, 1]
    peak.set(200, 4)
    assert peak.peak(200) == 4


# ---------------------------------------------------------------------------------------------------------------------
# Queue reads that wait


class WaitingClock(ManualClock):
    """A manual clock on which a read may wait (its simulated time is driven by the test, as the simulator does)."""

    def real_seconds(self, simulated_seconds: float) -> float:
        return simulated_seconds


def read_waiting(engine: MemoryStoreEngine, clock: ManualClock, wait_timeout: float, arrive_at_s: float | None = None):
    """Run `Queue.read` with `wait_timeout` against `engine`, moving the clock on each Sleep; a value is added at
    `arrive_at_s` seconds after the read began (None: nothing arrives). Answers (values, units spent)."""
    world = World.in_process("waits", clock=clock, budget=None)
    queue = world.server("a").memorystores.get_queue("q")
    start, spent = clock.now(), engine.statistics().units_last_minute
    steps = queue._op_read(1, False, wait_timeout)
    answer = None
    while True:
        try:
            step = steps.send(answer)
        except StopIteration as done:
            return done.value[0], engine.statistics().units_last_minute - spent
        if isinstance(step, Sleep):
            clock.advance(ms=int(step.seconds * 1000))
            if arrive_at_s is not None and clock.now() - start >= arrive_at_s * 1000:
                run(engine, QueueAdd("q", b"\xa1x", 2, 60))
                spent += 1
                arrive_at_s = None
            answer = None
        else:
            assert isinstance(step, Call)
            answer = engine.execute(step.ops)


def test_a_queue_read_pays_one_extra_unit_per_2_s_it_waited() -> None:
    clock = WaitingClock(T0)
    engine = MemoryStoreEngine(clock, users=100, ccu=100)
    assert read_waiting(engine, clock, 0) == ([], 1)               # no wait: one unit
    assert read_waiting(engine, clock, 5) == ([], 1 + 3)           # 5 s waited: 2 s, 2 s and a part
    assert read_waiting(engine, clock, 4) == ([], 1 + 2)
    assert read_waiting(engine, clock, 10, arrive_at_s=1) == (["x"], 1 + 1 + 1)   # a part of 2 s, then its item


def test_a_queue_read_refuses_bad_wait_accounting(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=100, ccu=100)
    for waited, last in ((-1, None), (1.5, None), (100, 200), (100, "0"), ("100", 0)):
        assert refused(engine, QueueRead("q", 1, waited_ms=waited, last_waited_ms=last)).name == "InvalidRequest"
    assert engine.statistics().units_last_minute == 0


# ---------------------------------------------------------------------------------------------------------------------
# Faults


def test_memorystore_fault_fields_are_validated() -> None:
    assert not FaultConfig().memorystore_active
    assert set(MEMORYSTORE_FAULT_KEYS) == {"HashMap", "SortedMap", "Queue"} | {
        op.__name__ for op in _messages.Operation.__args__}
    for bad, match in (({"memorystore_error_rate": {"Hashmap": 0.1}}, "unknown MemoryStore"),
                       ({"memorystore_error_rate": {"HashMap": 1.5}}, "from 0 to 1"),
                       ({"memorystore_error_rate": {"HashMap": float("nan")}}, "from 0 to 1"),
                       ({"memorystore_error_rate": [("HashMap", 0.1)]}, "mapping"),
                       ({"memorystore_latency": {"Queue": 5}}, "must be a Latency"),
                       ({"memorystore_latency": {"QueueAdd2": Latency.fixed(5)}}, "unknown MemoryStore"),
                       ({"memorystore_outages": 1}, "must be a bool")):
        with pytest.raises(ConfigError, match=match):
            FaultConfig(**bad)


def test_an_injected_error_is_internal_error_changes_nothing_and_spends_nothing(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=100, ccu=100,
                               faults=FaultConfig(memorystore_error_rate={"HashMap": 1.0, "HashMapGet": 0.0}))
    error = refused(engine, hset("a"))
    assert error.name == "InternalError" and "HashMapSet" in error.message
    assert run(engine, HashMapGet("m", "a")) is None                # the operation's own rate wins over its kind's
    assert isinstance(run(engine, SortedMapSet("s", "a", b"v", 1, 60)), Written)   # other kinds untouched
    stats = engine.statistics()
    assert stats.items == 1 and stats.units_last_minute == 2 and stats.injected_errors == 1
    assert stats.statuses["InternalError"] == 1 and stats.requests["HashMapSet"] == 1


def fault_pattern(seed: int) -> list[bool]:
    engine = MemoryStoreEngine(ManualClock(T0), users=100, ccu=100,
                               faults=FaultConfig(seed=seed, memorystore_error_rate={"Queue": 0.3}))
    return [isinstance(r, MemoryStoreError) for r in engine.execute([QueueAdd("q", b"v", 1, 60)] * 200)]


def test_memorystore_faults_are_deterministic_under_the_seed() -> None:
    first = fault_pattern(7)
    assert first == fault_pattern(7) and first != fault_pattern(8)
    assert 30 < sum(first) < 90                                       # about 30 % of 200


def test_outages_cover_the_memorystore_only_when_asked(clock: ManualClock) -> None:
    outage = (Outage(T0, T0 + 10_000),)
    engine = MemoryStoreEngine(clock, users=100, ccu=100, faults=FaultConfig(outages=outage))
    assert run(engine, HashMapGet("m", "a")) is None
    engine.set_faults(FaultConfig(outages=outage, memorystore_outages=True))
    assert "outage" in refused(engine, HashMapGet("m", "a")).message
    clock.advance(seconds=10)
    assert run(engine, HashMapGet("m", "a")) is None


def test_fault_latency_adds_to_the_memorystore_service_time(clock: ManualClock) -> None:
    info = WorldInfo("lat", "memory", None, 1, clock, FaultConfig(memorystore_latency={"SortedMap": Latency.fixed(40)}))
    actor = MemoryStoreShardActor(info)
    ops = [HashMapGet("m", "a"), SortedMapGet("s", "a")]
    assert actor.execute(ops).delays_ms == [0.0, 40.0]
    actor.set_latency(Latency.fixed(5))
    assert actor.execute(ops).delays_ms == [5.0, 45.0]
    actor.set_faults(FaultConfig())
    assert actor.execute(ops).delays_ms == [5.0, 5.0]


def test_world_set_faults_reaches_the_memorystore(clock: ManualClock) -> None:
    world = World.in_process("faulty", clock=clock, budget=None,
                             faults=FaultConfig(memorystore_error_rate={"Queue": 1.0}))
    queue = world.server("a").memorystores.get_queue("q")
    with pytest.raises(MemoryStoreError) as err:
        queue.add("x", 60)
    assert err.value.name == "InternalError"
    world.set_faults(FaultConfig())
    queue.add("x", 60)
    world.set_faults(FaultConfig(memorystore_error_rate={"QueueGetSize": 1.0}))
    with pytest.raises(MemoryStoreError):
        queue.get_size()
    assert world.server("b").datastores.get_data_store("d").set("k", 1)   # the DataStore is not touched


# ---------------------------------------------------------------------------------------------------------------------
# Flush


def test_flush_empties_every_structure_and_keeps_the_quotas(clock: ManualClock) -> None:
    world = World.in_process("flush", clock=clock, budget=None)
    server = world.server("a", players=10)
    stores = server.memorystores
    hmap, sorted_map, queue = stores.get_hash_map("m"), stores.get_sorted_map("s"), stores.get_queue("q")
    hmap.set("a", "x", 600)
    sorted_map.set("b", 1, 600, sort_key=3)
    queue.add("c", 600)
    queue.add("d", 600)
    values, read_id = queue.read(1)
    engine = world._shards("memorystore")[0].engine
    spent, quota = engine.statistics().units_last_minute, engine.memory_quota_bytes
    server.set_players(0)
    # keys plus values as JSON: "a" + '"x"', "b" + '1', '"c"', '"d"'
    assert world.flush_memory_store() == MemoryStoreFlushed(structures=3, items=4, bytes=4 + 2 + 3 + 3)
    stats = engine.statistics()
    assert (stats.structures, stats.items, stats.bytes_used) == (0, 0, 0)
    assert stats.units_last_minute == spent and engine.memory_quota_bytes == quota   # quotas stay
    assert hmap.get("a") is None and sorted_map.get("b") == (None, None) and queue.get_size() == 0
    queue.remove(read_id)                                          # a read from before the flush removes nothing
    assert asyncio.run(world.aio.flush_memory_store()) == MemoryStoreFlushed(0, 0, 0)
    hmap.set("a", "y", 600)
    clock.advance(seconds=600)                                     # old expiry timers are gone with the flush
    assert engine.statistics().items == 0



def test_on_ray_set_faults_and_flush_reach_the_memorystore_actor(ray_world) -> None:
    hmap = ray_world.server("a", players=5).memorystores.get_hash_map("m")
    hmap.set("k", 1, 600)
    ray_world.set_faults(FaultConfig(memorystore_error_rate={"HashMapGet": 1.0}))
    with pytest.raises(MemoryStoreError) as err:
        hmap.get("k")
    assert err.value.name == "InternalError"
    ray_world.set_faults(FaultConfig())
    assert ray_world.flush_memory_store() == MemoryStoreFlushed(structures=1, items=1, bytes=2)
    assert asyncio.run(ray_world.aio.flush_memory_store()) == MemoryStoreFlushed(0, 0, 0)
    assert hmap.get("k") is None
