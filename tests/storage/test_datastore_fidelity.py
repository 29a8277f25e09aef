"""DataStore as Roblox documents it in 2025-2026: the throttle error names, SetRateLimitForRequestType,
OrderedDataStore:BatchGetAsync, the per-key and per-data-store throughput rules, and the Open Cloud client that
spends only the experience's budgets. In-process worlds and plain engines on a manual clock."""

from __future__ import annotations

import asyncio
import math
import pickle

import pytest

from lodestore.storage import (DATASTORE_DELETED, THROTTLE_NAMES, ConfigError, DataStoreError, DataStoreLimits,
                               ManualClock, Permit, RequestType, Scheduler, World, shard_of, throttled_name)
from lodestore.storage._budget import BudgetLedger, ExperienceCategory, Lease
from lodestore.storage._limits import HOUR_MS, KEY_THROTTLE_MAX_WAIT_MS
from lodestore.storage._throttle import BudgetGate
from lodestore.storage.datastore import _messages as m
from lodestore.storage.datastore._backends import MemoryBackend
from lodestore.storage.datastore._engine import DataStoreEngine
from tests.storage._threads import start, wait_until

RT = RequestType
START = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------- error names


class NeverGrants:
    """A budget link whose ledger has nothing to lease: every request queues."""

    def lease(self, server_id, request_type, want):
        return Lease("none", server_id, request_type, 0, 0, 60_000, "GameServer")

    def release(self, lease_id, unused):
        pass


@pytest.mark.parametrize("request_type, call, code, name", [
    (RT.STANDARD_READ, "get", 301, "GetAsyncThrottle"),
    (RT.STANDARD_WRITE, "set", 302, "SetAsyncThrottle"),
    (RT.STANDARD_WRITE, "increment", 303, "IncreAsyncThrottle"),
    (RT.STANDARD_WRITE, "update", 304, "TransformThrottle"),
    (RT.ORDERED_LIST, "get_sorted", 305, "GetSortedThrottle"),
    (RT.STANDARD_REMOVE, "remove", 306, "RemoveAsyncThrottle"),
])
def test_a_full_queue_drops_the_request_with_roblox_s_code_and_name(request_type, call, code, name):
    gate = BudgetGate(NeverGrants(), ManualClock(START), "s1")
    waiting = [start(gate.acquire, Permit(request_type, f"k{i}", 0, call)) for i in range(30)]
    wait_until(lambda: sum(gate.queue_sizes().values()) == 30)
    with pytest.raises(DataStoreError) as err:
        gate.acquire(Permit(request_type, "late", 0, call))
    assert (err.value.code, err.value.name) == (code, name) and err.value.retryable
    # requests the server drops from its queue (flush) carry the same code and name
    assert gate.emergency_flush_queue() == 30
    for t, result in waiting:
        t.join(10)
        assert (result["error"].code, result["error"].name) == (code, name)


def test_throttle_names_are_the_six_of_the_2026_docs():
    assert THROTTLE_NAMES == {301: "GetAsyncThrottle", 302: "SetAsyncThrottle", 303: "IncreAsyncThrottle",
                              304: "TransformThrottle", 305: "GetSortedThrottle", 306: "RemoveAsyncThrottle"}
    assert throttled_name(RT.ORDERED_WRITE, "GameServer") == "OrderedWriteGameServerThrottled"
    with pytest.raises(ValueError):
        throttled_name(RT.ORDERED_WRITE, "Server")


def test_datastore_deleted_is_a_typed_error_that_retrying_cannot_fix():
    err = DataStoreError(*DATASTORE_DELETED, "data store 'players' was deleted")
    assert (err.code, err.name) == (404, "DatastoreDeleted") and not err.retryable


def test_retry_after_survives_pickling():
    err = DataStoreError(429, "StandardReadExperienceThrottled", "spent", retry_after_ms=1500)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.code, copy.name, copy.message, copy.retry_after_ms) == (429, err.name, "spent", 1500)
    assert pickle.loads(pickle.dumps(DataStoreError(105, "ValueTooLarge", "big"))).retry_after_ms is None


def test_a_bad_cursor_is_an_invalid_exclusive_start_key():
    world = World.in_process(clock=ManualClock(START), budget=None)
    store = world.server("s1").datastores.get_data_store("d")
    with pytest.raises(DataStoreError) as err:
        store.list_keys(cursor="not-a-cursor")
    assert (err.value.code, err.value.name) == (400, "InvalidExclusiveStartKey")


def test_bad_user_ids_are_invalid_user_ids():
    world = World.in_process(clock=ManualClock(START), budget=None)
    store = world.server("s1").datastores.get_data_store("d")
    with pytest.raises(DataStoreError) as err:
        store.set("k", 1, user_ids=["x"])
    assert (err.value.code, err.value.name) == (513, "InvalidUserIds")
    assert store.get("k") == (None, None)


def test_a_closed_world_drops_requests_with_509():
    world = World.in_process(clock=ManualClock(START), budget=None)
    store = world.server("s1").datastores.get_data_store("d")
    world.shutdown()
    with pytest.raises(DataStoreError) as err:
        store.set("k", 1)
    assert (err.value.code, err.value.name) == (509, "RequestDropped") and err.value.retryable


def test_throttled_requests_are_counted_by_the_budget_that_was_spent():
    world = World.in_process(clock=ManualClock(START), budget="current")
    # three servers spend the experience's 300 writes a minute (CCU 0) with their bursts of 100
    for i in range(3):
        store = world.server(f"s{i}").datastores.get_data_store("d")
        for j in range(100):
            store.set(f"k{i}-{j}", j)
    fourth = world.server("s3")
    t, result = start(fourth.datastores.get_data_store("d").set, "late", 1)
    wait_until(lambda: fourth.datastores.queue_sizes()["Set"] == 1)
    assert fourth.datastores.gate_statistics().throttled_by == {"StandardWriteExperienceThrottled": 1}
    world.clock.advance(seconds=60)
    t.join(10)
    assert "value" in result


def test_a_server_whose_own_bucket_is_spent_is_game_server_throttled():
    world = World.in_process(clock=ManualClock(START), budget="current")
    server = world.server("s1")
    store = server.datastores.get_data_store("d")
    for j in range(100):                                     # its burst; the experience still has 200
        store.set(f"k{j}", j)
    t, result = start(store.set, "late", 1)
    wait_until(lambda: server.datastores.queue_sizes()["Set"] == 1)
    assert server.datastores.gate_statistics().throttled_by == {"StandardWriteGameServerThrottled": 1}
    world.clock.advance(seconds=1)
    t.join(10)
    assert "value" in result


# ---------------------------------------------------------------------------------------------- set_rate_limit


def ledger(profile="current"):
    led = BudgetLedger(ManualClock(START), profile)
    led.register_server("s1", players=5)
    return led


def test_set_rate_limit_lowers_a_server_s_own_rate_and_cap():
    led = ledger()
    assert led.set_rate_limit("s1", RT.STANDARD_WRITE, 10, 1) == 15          # 10 + 1 x 5 players
    stats = led.statistics().servers["s1"]
    assert stats.rates[RT.STANDARD_WRITE] == 15 and stats.caps[RT.STANDARD_WRITE] == 45
    assert led.available("s1", RT.STANDARD_WRITE) == 45                       # burst of 100 cut to the new cap
    assert stats.rates[RT.STANDARD_READ] == 260                               # other types keep Roblox's
    led.set_players("s1", 10)
    assert led.statistics().servers["s1"].rates[RT.STANDARD_WRITE] == 20      # follows the players
    assert led.statistics().experience[ExperienceCategory.WRITE].rate_per_minute == 300 + 20 * 10   # unchanged


def test_set_rate_limit_never_raises_a_limit_above_roblox_s():
    led = ledger()
    assert led.set_rate_limit("s1", RT.STANDARD_LIST, 10_000, 200) == 5 + 2 * 5
    led.set_rate_limit("s1", RT.STANDARD_WRITE, 10, 1)
    assert led.set_rate_limit("s1", RT.STANDARD_WRITE, 10_000, 200) == 60 + 40 * 5   # set again: replaced


def test_a_rate_of_zero_throttles_and_says_when_to_look_again():
    led = ledger()
    led.set_rate_limit("s1", RT.ORDERED_WRITE, 0, 0)
    lease = led.lease("s1", RT.ORDERED_WRITE, 1)
    assert lease.granted == 0 and lease.retry_after_ms == 60_000 and lease.limited_by == "GameServer"


def test_set_rate_limit_under_legacy_sets_the_shared_bucket():
    led = ledger("legacy")
    led.set_rate_limit("s1", RT.STANDARD_REMOVE, 20, 0)
    rates = led.statistics().servers["s1"].rates
    assert rates[RT.STANDARD_WRITE] == rates[RT.STANDARD_REMOVE] == 20


@pytest.mark.parametrize("args, field, words", [
    (("UpdateAsync", 10, 1), "request_type", "cannot be set"),
    (("OnUpdate", 10, 1), "request_type", "cannot be set"),
    (("GetAsync", 10, 1), None, "unknown request type 'GetAsync'"),
    ((RT.STANDARD_READ, 10_001, 1), "base", "from 0 to 10000, got 10001"),
    ((RT.STANDARD_READ, -1, 1), "base", "got -1"),
    ((RT.STANDARD_READ, 1.5, 1), "base", "got 1.5"),
    ((RT.STANDARD_READ, True, 1), "base", "got True"),
    ((RT.STANDARD_READ, 10, 201), "per_player", "from 0 to 200, got 201"),
    ((RT.STANDARD_READ, 10, math.nan), "per_player", "got nan"),
])
def test_set_rate_limit_refuses_bad_input_and_changes_nothing(args, field, words):
    world = World.in_process(clock=ManualClock(START), budget="current")
    server = world.server("s1", players=5)
    before = world.budget_statistics().servers["s1"].rates
    with pytest.raises(ConfigError) as err:
        server.datastores.set_rate_limit(*args)
    assert words in str(err.value) and err.value.field == field
    assert world.budget_statistics().servers["s1"].rates == before


def test_set_rate_limit_through_the_client_and_its_coroutine_twin():
    world = World.in_process(clock=ManualClock(START), budget="current")
    server = world.server("s1", players=2)
    server.datastores.set_rate_limit("StandardRead", 3, 0)
    assert world.budget_statistics().servers["s1"].rates[RT.STANDARD_READ] == 3
    asyncio.run(server.datastores.aio.set_rate_limit(RT.STANDARD_WRITE, 4, 1))
    assert world.budget_statistics().servers["s1"].rates[RT.STANDARD_WRITE] == 6
    assert server.datastores.get_request_budget(RT.STANDARD_WRITE) == 18    # 3 minutes' worth at 6 a minute
    unlimited = World.in_process(clock=ManualClock(START), budget=None).server("s1")
    unlimited.datastores.set_rate_limit("StandardRead", 3, 0)                # checked, nothing to lower
    with pytest.raises(ConfigError):
        unlimited.datastores.set_rate_limit("StandardRead", 3, 300)


# ---------------------------------------------------------------------------------------------------- batch_get


@pytest.mark.parametrize("shards", [1, 3])
def test_batch_get_returns_what_exists_and_spends_one_read_per_key(shards):
    world = World.in_process(clock=ManualClock(START), budget=None, shards=shards)
    ds = world.server("s1").datastores
    ranks = ds.get_ordered_data_store("ranks")
    for i in range(10):
        ranks.set(f"p{i}", i * 10)
    got = ranks.batch_get(["p3", "nobody", "p7", "p3", "p0"])
    assert got == {"p3": 30, "p7": 70, "p0": 0} and list(got) == ["p3", "p7", "p0"]
    assert ds.statistics().requests["OrderedRead"] == 4            # four distinct keys
    assert ranks.batch_get([]) == {}
    assert asyncio.run(ranks.aio.batch_get(["p9", "gone"])) == {"p9": 90}


def test_batch_get_spends_the_server_s_ordered_read_budget():
    world = World.in_process(clock=ManualClock(START), budget="current")
    ds = world.server("s1", players=0).datastores
    before = ds.get_request_budget(RT.ORDERED_READ)
    ds.get_ordered_data_store("ranks").batch_get([f"k{i}" for i in range(25)])
    assert ds.get_request_budget(RT.ORDERED_READ) == before - 25


@pytest.mark.parametrize("keys, code", [([f"k{i}" for i in range(101)], 106), ("k1", 106), (["ok", ""], 101),
                                        (["ok", "x" * 51], 102), (["ok", 5], 101)])
def test_batch_get_refuses_bad_keys_before_spending(keys, code):
    world = World.in_process(clock=ManualClock(START), budget=None)
    ds = world.server("s1").datastores
    with pytest.raises(DataStoreError) as err:
        ds.get_ordered_data_store("ranks").batch_get(keys)
    assert err.value.code == code
    assert ds.statistics().requests == {}


# ----------------------------------------------------------------------------------------- per-key throughput


@pytest.fixture
def engine():
    return DataStoreEngine(MemoryBackend(), ManualClock(START))


def run(engine, op):
    return engine.execute([op]).results[0]


def fill_writes(engine, key, megabytes=4):
    big = b"x" * (MB - 10)
    for _ in range(megabytes):
        assert isinstance(run(engine, m.Set("s", "global", key, big, len(big))), m.Written)


def test_remove_counts_as_a_write_against_the_key(engine):
    fill_writes(engine, "hot")
    engine.clock.advance(seconds=10)
    refused = run(engine, m.Remove("s", "global", "hot"))
    assert (refused.code, refused.name) == (429, "KeyThrottled")
    assert refused.retry_after_ms == 50_000                   # the first write leaves the window in 50 s
    assert run(engine, m.Get("s", "global", "hot")).value is not None    # not removed
    engine.clock.advance(seconds=50)
    assert run(engine, m.Remove("s", "global", "hot")).value is not None


def test_list_versions_counts_as_a_read_against_the_key(engine):
    big = b"x" * (MB - 10)
    run(engine, m.Set("s", "global", "hot", big, len(big)))
    for _ in range(25):
        assert run(engine, m.Get("s", "global", "hot")).value == big
    refused = run(engine, m.ListVersions("s", "global", "hot", True, None, None, None, 10))
    assert refused.name == "KeyThrottled" and refused.retry_after_ms == 60_000
    assert isinstance(run(engine, m.ListVersions("s", "global", "cold", True, None, None, None, 10)), list)
    assert engine.throughput.key_throttled == 1


def test_a_hot_data_store_as_a_whole_gets_datastore_throttled():
    engine = DataStoreEngine(MemoryBackend(), ManualClock(START), limits=DataStoreLimits(write_bytes_per_minute=4096))
    for i in range(4):
        assert isinstance(run(engine, m.Set("s", "global", f"k{i}", b"1", 1)), m.Written)
    refused = run(engine, m.Set("s", "global", "k9", b"1", 1))
    assert (refused.code, refused.name) == (429, "DatastoreThrottled") and refused.retryable
    assert refused.retry_after_ms == 60_000
    assert isinstance(run(engine, m.Set("other", "global", "k9", b"1", 1)), m.Written)   # another store goes on
    assert engine.throughput.datastore_throttled == 1 and engine.throughput.key_throttled == 0
    assert run(engine, m.Get("s", "global", "k9")).value is None                        # nothing was written


def test_datastore_limits_are_checked_and_default_to_100_times_a_key_s():
    assert DataStoreLimits() == DataStoreLimits(2500 * MB, 400 * MB)
    assert DataStoreLimits(3 * 4096, 3 * 4096).share(3) == DataStoreLimits(4096, 4096)
    for bad in (0, 1023, -5, 1.5e6, True, "big"):
        with pytest.raises(ConfigError, match="write_bytes_per_minute"):
            DataStoreLimits(write_bytes_per_minute=bad)


def test_world_datastore_limits_split_over_the_shards():
    world = World.in_process(clock=ManualClock(START), budget=None, shards=2)
    world.set_datastore_limits(DataStoreLimits(write_bytes_per_minute=4 * 4096))
    store = world.server("s1").datastores.get_data_store("d")
    refusals, written = 0, [0, 0]
    for i in range(40):
        try:
            store.set(f"k{i}", i)
        except DataStoreError as exc:
            assert exc.name == "DatastoreThrottled"
            refusals += 1
        else:
            written[shard_of(("d", "global", f"k{i}"), 2)] += 1
    assert written == [8, 8] and refusals == 24            # 8 KB a minute on each of the two shards
    assert sum(s.datastore_throttled for s in world.statistics()) == refusals
    with pytest.raises(ConfigError):
        world.set_datastore_limits({"write_bytes_per_minute": 1})
    asyncio.run(world.aio.set_datastore_limits(DataStoreLimits()))            # back to the default: room again
    store.set("k0", "again")


def test_a_throttled_key_s_request_waits_in_the_queue_on_the_simulated_clock():
    async def main():
        clock = ManualClock(START)
        scheduler = Scheduler.for_loop(clock)
        world = World.in_process(clock=clock, budget=None)
        ds = world.server("s1").datastores
        store = ds.get_data_store("d")
        big = "x" * (MB - 10)
        for _ in range(4):
            await store.aio.set("hot", big)
        await scheduler.advance(20)
        waiting = asyncio.ensure_future(store.aio.set("hot", "small"))
        assert await store.aio.set("cold", big)                     # other keys are not held up
        await scheduler.settle()
        assert not waiting.done()
        assert ds.statistics().key_throttle_waits == 1 and ds.statistics().key_throttle_wait_ms == 40_000
        assert sum(s.key_throttled for s in world.statistics()) == 1
        await scheduler.advance(39.999)
        assert not waiting.done()
        await scheduler.advance(0.001)                              # the first write leaves the key's window
        assert waiting.done() and waiting.result()
        assert (await store.aio.get("hot", use_cache=False))[0] == "small"
        assert ds.statistics().requests["StandardWrite"] == 6       # the wait spent no second token
        assert ds.statistics().errors == {}

    asyncio.run(main())


def test_a_throttled_key_s_request_gives_up_after_at_most_a_minute_of_waiting():
    clock = ManualClock(START)   # a blocking client on a manual clock: the waits pass at once, time stands still
    world = World.in_process(clock=clock, budget=None)
    ds = world.server("s1").datastores
    store = ds.get_data_store("d")
    for _ in range(4):
        store.set("hot", "x" * (MB - 10))
    with pytest.raises(DataStoreError) as err:
        store.set("hot", 1)
    assert err.value.name == "KeyThrottled" and err.value.retry_after_ms == 60_000
    assert ds.statistics().key_throttle_wait_ms <= KEY_THROTTLE_MAX_WAIT_MS
    assert ds.statistics().key_throttle_waits == 1


# -------------------------------------------------------------------------------------------------- open_cloud


def test_open_cloud_spends_only_the_experience_budget_shared_with_game_servers():
    world = World.in_process(clock=ManualClock(START), budget="current")
    game = world.server("s1", players=0)
    cloud = world.open_cloud()
    store = cloud.datastores.get_data_store("players")
    for i in range(250):
        store.set(f"k{i}", i)                                 # over any server's burst of 100, never queued
    assert cloud.datastores.queue_sizes() == {"Get": 0, "OrderedGet": 0, "OrderedSet": 0, "Set": 0}
    budget = world.budget_statistics()
    assert "open-cloud" not in budget.servers and budget.ccu == 0
    assert budget.servers["s1"].tokens[RT.STANDARD_WRITE] == 100          # the game server's own bucket: untouched
    assert budget.experience[ExperienceCategory.WRITE].tokens == 50
    game_store = game.datastores.get_data_store("players")
    for i in range(50):
        game_store.set(f"g{i}", i)                            # the game server takes the rest of the experience's
    assert store.get("k1", use_cache=False)[0] == 1          # reads have their own experience bucket
    with pytest.raises(DataStoreError) as err:
        store.set("k1", 2)
    assert (err.value.code, err.value.name) == (429, "StandardWriteExperienceThrottled") and err.value.retryable
    assert err.value.retry_after_ms == 200                    # 300 a minute: one token every 200 ms
    assert pickle.loads(pickle.dumps(err.value)).retry_after_ms == 200
    assert store.get("k1", use_cache=False)[0] == 1          # nothing written
    world.clock.advance(ms=200)
    store.set("k1", 2)
    stats = cloud.datastores.gate_statistics()
    assert stats.throttled_by == {"StandardWriteExperienceThrottled": 1} and stats.throttled == 1


def test_open_cloud_coroutines_are_refused_the_same_way():
    async def main():
        world = World.in_process(clock=ManualClock(START), budget="current")
        store = world.open_cloud().datastores.get_data_store("players")
        for i in range(300):
            await store.aio.get(f"k{i}", use_cache=False)
        with pytest.raises(DataStoreError) as err:
            await store.aio.get("k0", use_cache=False)
        assert err.value.name == "StandardReadExperienceThrottled" and err.value.retry_after_ms == 200

    asyncio.run(main())


def test_open_cloud_without_budgets_lets_everything_go():
    world = World.in_process(clock=ManualClock(START), budget=None)
    store = world.open_cloud().datastores.get_data_store("players")
    for i in range(400):
        store.set(f"k{i}", i)
    assert store.get("k399") == (399, store.get("k399")[1])

