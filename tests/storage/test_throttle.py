"""A server's budget gate: leased tokens, Roblox's throttle queues (30 deep, 301-306), emergency priority, queue
control, per-key lanes, retries, and the budget seen through the client. In-process world, manual clock."""

from __future__ import annotations

import threading

import pytest

from lodestore.storage import (ConfigError, DataStoreError, FaultConfig, ManualClock, Permit, RequestType, RetryPolicy,
                               World, emergency)
from lodestore.storage._throttle import KeyLanes
from tests.storage._threads import start, wait_until

W = RequestType.STANDARD_WRITE


@pytest.fixture
def world():
    return World.in_process(clock=ManualClock(), budget="current")


def drain(store, n):
    for i in range(n):
        store.set(f"drain{i}", i)


def test_a_server_starts_with_the_burst_and_then_waits_for_refill(world):
    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    assert server.datastores.get_request_budget(W) == 100
    drain(store, 100)
    assert server.datastores.get_request_budget("StandardWrite") == 0
    t, result = start(store.set, "late", 1)
    wait_until(lambda: server.datastores.queue_sizes()["Set"] == 1)
    world.clock.advance(seconds=1)  # 60 + 40 x 0 per minute: one token a second
    t.join(10)
    assert "value" in result and server.datastores.queue_sizes()["Set"] == 0
    assert server.datastores.statistics().budget.throttled == 1


def test_the_31st_queued_request_fails_at_once_with_its_code(world):
    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    drain(store, 100)
    waiting = [start(store.set, f"q{i}", i) for i in range(30)]
    wait_until(lambda: server.datastores.queue_sizes()["Set"] == 30)
    for call, code in ((lambda: store.set("x", 1), 302), (lambda: store.increment("x"), 303),
                       (lambda: store.update("x", lambda old, info: 1), 304), (lambda: store.remove("x"), 306)):
        with pytest.raises(DataStoreError) as err:
            call()
        assert err.value.code == code and "queue was full" in err.value.message
    # update's read went through the empty Get queue; its write found the Set queue full: 304.
    world.clock.advance(seconds=60)
    for t, _ in waiting:
        t.join(10)
    assert all("value" in r for _, r in waiting)
    assert server.datastores.wait_for_empty_queue(timeout=5)
    assert store.get("q29", use_cache=False)[0] == 29


def test_update_dropped_from_a_full_set_queue_names_update(world):
    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    store.set("x", 0)
    drain(store, 99)
    waiting = [start(store.set, f"q{i}", i) for i in range(30)]
    wait_until(lambda: server.datastores.queue_sizes()["Set"] == 30)
    with pytest.raises(DataStoreError) as err:
        store.update("x", lambda old, info: old + 1)
    assert err.value.code == 304
    assert server.datastores.statistics().budget.dropped == {304: 1}
    world.clock.advance(seconds=60)
    for t, _ in waiting:
        t.join(10)


def test_emergency_requests_overtake_routine_ones(world):
    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    drain(store, 100)
    order = []

    def save(key, urgent):
        if urgent:
            with emergency():
                store.set(key, 1)
        else:
            store.set(key, 1)
        order.append(key)

    threads = []
    for key in ("r1", "r2", "r3"):
        threads.append(start(save, key, False)[0])
        wait_until(lambda n=len(threads): server.datastores.queue_sizes()["Set"] == n)
    threads.append(start(save, "final", True)[0])
    wait_until(lambda: server.datastores.queue_sizes()["Set"] == 4)
    for step in range(4):
        world.clock.advance(seconds=1)  # one token at a time
        wait_until(lambda s=step: len(order) == s + 1)
    assert order == ["final", "r1", "r2", "r3"]


def test_flush_queue_drops_routine_and_keeps_emergency(world):
    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    drain(store, 100)
    routine = [start(store.set, f"r{i}", i) for i in range(3)]

    def final_save():
        with emergency():
            return store.set("final", 1)

    urgent = start(final_save)
    wait_until(lambda: server.datastores.queue_sizes()["Set"] == 4)
    assert server.datastores.flush_queue() == 3
    for t, r in routine:
        t.join(10)
        assert isinstance(r["error"], DataStoreError) and r["error"].code == 302
        assert "flush_queue" in r["error"].message
    assert server.datastores.queue_sizes()["Set"] == 1
    assert server.datastores.emergency_flush_queue() == 1
    urgent[0].join(10)
    assert isinstance(urgent[1]["error"], DataStoreError)
    assert [store.get(f"r{i}", use_cache=False) for i in range(3)] == [(None, None)] * 3


def test_shutdown_boost_lets_final_saves_through(world):
    server = world.server("s1", players=10)  # 460 writes a minute, boost to 150 x 460 / 60 = 1150
    store = server.datastores.get_data_store("d")
    while server.datastores.get_request_budget(W):
        store.set("k", 1)
    server.begin_shutdown()
    assert server.datastores.get_request_budget(W) == 1150


def test_tokens_are_leased_in_batches(world):
    server = world.server("s1", players=50)  # 2060 writes a minute
    store = server.datastores.get_data_store("d")
    for i in range(500):
        if i % 100 == 99:
            world.clock.advance(seconds=10)  # past the 100-token burst, refill keeps up
        store.set(f"k{i}", i)
    stats = server.datastores.statistics().budget
    assert stats.granted == 500 and stats.throttled == 0
    assert stats.leases <= 500 // 20 + 5


def test_released_leases_go_back_to_the_world_and_the_next_request_leases_afresh(world):
    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    store.set("k", 1)                                  # leases a batch, spends one token of it
    held = server.datastores.gate_statistics().tokens[W.value]
    assert held > 0 and server.datastores.gate_statistics() == server.datastores.statistics().budget
    budget = server.datastores.get_request_budget(W)
    server.datastores.release_leases()
    server.datastores.release_leases()                 # nothing left to give back
    assert server.datastores.gate_statistics().tokens[W.value] == 0
    assert server.datastores.get_request_budget(W) == budget   # the tokens are the world's again, none lost
    store.set("k", 2)
    assert server.datastores.gate_statistics().leases == 2


def test_waiting_for_budget_spends_a_token_and_sends_nothing(world):
    server = world.server("s1", players=0)
    before = server.datastores.get_request_budget(W)
    for _ in range(3):
        server.datastores.wait_for_budget(Permit(W, "k", 0, "set"))
    assert server.datastores.get_request_budget(W) == before - 3
    assert server.datastores.gate_statistics().granted == 3 and world.statistics()[0].requests == 0
    with pytest.raises(ConfigError, match="permit must be a storage.Permit, got str"):
        server.datastores.wait_for_budget("StandardWrite")


def test_a_refused_call_spends_no_budget(world):
    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    before = server.datastores.get_request_budget(W)
    with pytest.raises(DataStoreError):
        store.set("k", float("nan"))
    with pytest.raises(DataStoreError):
        store.set("", 1)
    assert server.datastores.get_request_budget(W) == before
    assert server.datastores.statistics().budget.granted == 0


def test_update_spends_a_read_and_a_write(world):
    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    reads, writes = (server.datastores.get_request_budget(t) for t in (RequestType.STANDARD_READ, W))
    store.update("k", lambda old, info: 1)
    assert server.datastores.get_request_budget(RequestType.STANDARD_READ) == reads - 1
    assert server.datastores.get_request_budget(W) == writes - 1


def test_servers_share_the_experience_write_limit():
    world = World.in_process(clock=ManualClock(), budget="current")
    servers = [world.server(f"s{i}", players=0) for i in range(5)]  # CCU 0: 300 writes a minute for everyone
    stores = [s.datastores.get_data_store("d") for s in servers]
    done = 0
    for store in stores[:3]:
        for i in range(100):
            store.set(f"k{i}", i)
            done += 1
    assert done == 300
    t, result = start(stores[3].set, "over", 1)  # server 4 has its own 100 but the experience has 0
    wait_until(lambda: servers[3].datastores.queue_sizes()["Set"] == 1)
    world.clock.advance(seconds=1)  # the experience bucket refills 5 a second
    t.join(10)
    assert "value" in result


def test_legacy_profile_shares_writes_and_removes():
    world = World.in_process(clock=ManualClock(), budget="legacy")
    server = world.server("s1", players=1)  # legacy: 60 + 10n shared by Set/Increment/Update/Remove
    store = server.datastores.get_data_store("d")
    before = server.datastores.get_request_budget(RequestType.STANDARD_REMOVE)
    store.set("k", 1)
    store.remove("k")
    assert server.datastores.get_request_budget(RequestType.STANDARD_REMOVE) == before - 2


def test_no_budget_world_grants_everything(world):
    free = World.in_process(clock=ManualClock(), budget=None)
    store = free.server("s").datastores.get_data_store("d")
    for i in range(300):
        store.set(f"k{i}", i)


def test_retries_with_backoff_are_bounded_and_counted():
    world = World.in_process(clock=ManualClock(), budget=None,
                             faults=FaultConfig(error_rate={"StandardWrite": 1.0}))
    server = world.server("s1")
    server.datastores.configure(retry=RetryPolicy(attempts=3, seed=1))
    store = server.datastores.get_data_store("d")
    with pytest.raises(DataStoreError) as err:
        store.set("k", 1)
    assert err.value.code == 502
    stats = server.datastores.statistics()
    assert stats.retried == 2 and stats.retried_writes == 2 and stats.requests["StandardWrite"] == 3
    server.datastores.configure(retry=None)
    with pytest.raises(DataStoreError):
        store.set("k", 1)
    assert server.datastores.statistics().retried == 2  # off by default: no more retries


def test_a_retried_ambiguous_write_is_visible_in_statistics():
    world = World.in_process(clock=ManualClock(), budget=None, faults=FaultConfig(seed=3, ambiguous_write_rate=0.3))
    server = world.server("s1")
    server.datastores.configure(retry=RetryPolicy(attempts=20, seed=1))
    store = server.datastores.get_data_store("d")
    for i in range(20):
        store.set(f"k{i}", i)
    stats = server.datastores.statistics()
    assert stats.retried_writes > 0
    assert all(store.get(f"k{i}", use_cache=False)[0] == i for i in range(20))


def test_retry_policy_delays_grow_and_are_capped():
    import random

    policy = RetryPolicy(attempts=5, base_delay=1, max_delay=8, jitter=0)
    assert [policy.delay(n, random.Random(0)) for n in range(1, 6)] == [1, 2, 4, 8, 8]
    with pytest.raises(Exception):
        RetryPolicy(attempts=0)


def test_key_lanes_run_operations_on_one_key_in_the_order_they_began():
    lanes = KeyLanes()
    order = []
    gate = threading.Event()

    def op(name):
        with lanes.hold("k"):
            if name == "first":
                gate.wait(5)
            order.append(name)

    first = start(op, "first")[0]
    wait_until(lambda: lanes._lanes.get("k") is not None)
    later = []
    for name in ("second", "third", "fourth"):
        later.append(start(op, name)[0])
        wait_until(lambda n=len(later): lanes._lanes["k"].users == n + 1)
    with lanes.hold("other"):
        order.append("other key goes on")
    gate.set()
    for t in [first, *later]:
        t.join(5)
    assert order == ["other key goes on", "first", "second", "third", "fourth"]
    assert lanes._lanes == {}


def test_many_coroutines_wait_for_budget_without_parking_threads(world):
    import asyncio

    server = world.server("s1", players=0)
    store = server.datastores.get_data_store("d")
    drain(store, 100)

    async def scenario():
        saves = [asyncio.ensure_future(store.aio.set(f"a{i}", i)) for i in range(25)]  # more than worker threads
        while server.datastores.queue_sizes()["Set"] < 25:
            await asyncio.sleep(0.005)
        world.clock.advance(seconds=30)  # 30 tokens refill
        return await asyncio.gather(*saves)

    versions = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(versions) == 25
    assert server.datastores.queue_sizes()["Set"] == 0


def test_coroutines_on_one_key_keep_their_order_whatever_their_number():
    import asyncio

    lanes = KeyLanes()
    order = []

    async def op(i):
        async with lanes.ahold("k"):
            await asyncio.sleep(0)  # let the others pile up behind
            order.append(i)

    async def scenario():
        await asyncio.wait_for(asyncio.gather(*(op(i) for i in range(50))), 10)

    asyncio.run(scenario())
    assert order == list(range(50))
    assert lanes._lanes == {}
