"""The lock lease (acquire, refresh, deadline, steal, release, lost) on plain asyncio with a manual clock: first a
`LockLease` on its own, as a session holds it, then through sessions on key hosts, then the same lease with its lock
kept in a DataStore (`lock_store="datastore"`, Lyra PR #17).

Time moves only through `Rig.advance`; a lease's MemoryStore and DataStore are the in-process world's.
"""

from __future__ import annotations

import asyncio

import pytest

from lodestore.actors import (Get, IsLoaded, KeyNotLoadedError, Load, LockLostError, LockTimeoutError, ProbeLockActive,
                              Save, StoreConfig, Unload, Update, lock_map_name)
from lodestore.actors._lease import LockLease, acquire_wait, lock_active, lock_datastore_name
from lodestore.storage import ConfigError, FaultConfig, MemoryStoreError
from tests.actors._rig import Rig, run, until_done


def recorder(events: list):
    """A lock_callback keeping (kind, key, lease id, at ms, until ms)."""
    return lambda kind, key, session, at, until: events.append((kind, key, session, at, until))


# -------------------------------------------------------------------------------------------- one lease

def test_a_lease_refreshes_before_its_ttl_and_its_deadline_follows_the_refreshes_that_landed():
    async def main():
        rig = Rig()
        events = []
        rt = rig.host("a", lock_ttl=30, lock_refresh=10, lock_callback=recorder(events)).runtime()
        lease = LockLease(rt, "u1")
        start = rig.clock.now()
        await lease.acquire()
        assert lease.held and lease.deadline == start + 30_000
        assert events == [("acquired", "u1", lease.id, start, start + 30_000)]
        await rig.advance(10)                                  # the first refresh, 20 s before the TTL runs out
        assert events[-1] == ("refreshed", "u1", lease.id, start + 10_000, start + 40_000)
        await rig.advance(300)                                 # ten TTLs later, still held
        assert lease.held and rig.clock.now() + 20_000 <= lease.deadline <= rig.clock.now() + 30_000
        assert rt.counters.refreshes == 31 and rt.counters.refresh_failures == 0
        item = await rt.locks("u1").aio.get("u1")
        assert item["session"] == lease.id and item["job"] == "a"
    run(main())


def test_a_lease_whose_refreshes_fail_is_lost_exactly_once_when_its_deadline_passes():
    async def main():
        rig = Rig()
        events, lost = [], []
        rt = rig.host("a", lock_ttl=30, lock_refresh=10, lock_callback=recorder(events)).runtime()
        lease = LockLease(rt, "u1", on_lost=lost.append)
        await lease.acquire()
        deadline = lease.deadline

        async def refuse(*args, **kwargs):
            raise MemoryStoreError("InternalError", "the MemoryStore is down")

        rt.locks("u1").aio.update = refuse
        await rig.advance(29)
        assert lost == [] and lease.held                       # refreshes fail, but the TTL has not run out
        assert rt.counters.refresh_failures == 2               # at 10 s, then retried 10 s later
        await rig.advance(1)
        assert lost == ["no refresh landed before the lock's TTL ran out"] and not lease.held
        await rig.advance(600)
        assert len(lost) == 1
        assert [e for e in events if e[0] == "lost"] == [("lost", "u1", lease.id, deadline, deadline)]
        assert [e[0] for e in events] == ["acquired", "lost"]   # and nothing after it: upkeep stopped
    run(main())


def test_a_refresh_that_finds_the_item_taken_reports_lost():
    async def main():
        rig = Rig()
        lost = []
        rt = rig.host("a", lock_ttl=30, lock_refresh=10).runtime()
        lease = LockLease(rt, "u1", on_lost=lost.append)
        await lease.acquire()
        await rt.locks("u1").aio.set("u1", {"session": "someone else", "job": "b", "at": 0}, 30)
        await rig.advance(10)
        assert lost == ["the lock item is gone or names another session"] and not lease.held
        await rig.advance(60)
        assert len(lost) == 1
    run(main())


def test_a_holder_that_stopped_refreshing_is_taken_over_after_lock_steal_after_and_not_before():
    async def main():
        rig = Rig()
        a, b = rig.host("a"), rig.host("b", lock_steal_after=45)
        holder = LockLease(a.runtime(), "u1")
        await holder.acquire()
        start = rig.clock.now()
        a.host.stall_locks(3600)                               # the holder stops refreshing its lock
        taker = LockLease(b.runtime(), "u1")
        taking = asyncio.create_task(taker.acquire())
        await rig.advance(44)
        assert not taking.done()                               # 44 s without a refresh: not stolen yet
        await until_done(rig, taking)
        assert rig.clock.now() - start >= 45_000
        assert taker.held and b.runtime().counters.lock_steals == 1
        item = await b.runtime().locks("u1").aio.get("u1")
        assert item["session"] == taker.id and item["job"] == "b"
    run(main())


def test_release_frees_the_key_for_another_server_and_ends_the_upkeep():
    async def main():
        rig = Rig()
        events = []
        a, b = rig.host("a", lock_callback=recorder(events)), rig.host("b")
        first = LockLease(a.runtime(), "u1")
        await first.acquire()
        start = rig.clock.now()
        second = LockLease(b.runtime(), "u1")
        waiting = asyncio.create_task(second.acquire())
        await rig.advance(20)
        assert not waiting.done() and b.runtime().counters.lock_waits == 1
        await first.release()
        assert not first.held
        await until_done(rig, waiting)
        assert second.held and rig.clock.now() - start < 90_000   # its next attempt, not the TTL, freed it
        await first.release()                                  # a second release is a no-op
        await rig.advance(600)
        assert [e[0] for e in events] == ["acquired", "released"]   # no refresh after the release
        assert (await b.runtime().locks("u1").aio.get("u1"))["session"] == second.id
    run(main())


def test_abandon_reports_crashed_once_and_leaves_the_item_to_its_ttl_and_lost_does_not_call_on_lost():
    async def main():
        rig = Rig()
        events, lost = [], []
        rt = rig.host("a", lock_callback=recorder(events)).runtime()
        crashed = LockLease(rt, "u1", on_lost=lost.append)
        await crashed.acquire()
        crashed.abandon()
        crashed.abandon()
        assert [e[0] for e in events] == ["acquired", "crashed"] and not crashed.held
        assert await rt.locks("u1").aio.get("u1") is not None   # nobody removed it ...
        await rig.advance(91)
        assert await rt.locks("u1").aio.get("u1") is None       # ... it expired by its TTL
        fenced = LockLease(rt, "u2", on_lost=lost.append)
        await fenced.acquire()
        fenced.lost()                                          # the owner found out (a fenced write was refused)
        fenced.lost()
        assert [e[0] for e in events if e[1] == "u2"] == ["acquired", "lost"]
        assert lost == []
    run(main())


def test_the_acquire_backoff_doubles_up_to_30_s_and_never_waits_past_lock_wait():
    assert [acquire_wait(n, 10**9) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert acquire_wait(5, 2_500) == 2.5


# ----------------------------------------------------------------------------------------- through sessions

def test_lock_refresh_keeps_the_session_alive_far_past_the_ttl():
    async def main():
        rig = Rig()
        a = rig.host("a")
        await a(Load, "u1")
        await rig.advance(600)
        assert await a(IsLoaded, "u1") and await a(ProbeLockActive, "u1")
    run(main())


def test_load_gives_up_after_lock_wait_with_a_clear_error_and_writes_nothing():
    async def main():
        rig = Rig()
        a, b = rig.host("a"), rig.host("b", lock_wait=30)
        await a(Load, "u1")
        version = rig.version("u1")
        waiting = asyncio.create_task(b(Load, "u1"))
        with pytest.raises(LockTimeoutError, match="Failed to acquire lock"):
            await until_done(rig, waiting)
        assert rig.version("u1") == version
        assert await a(IsLoaded, "u1") and not await b(IsLoaded, "u1")
    run(main())


def test_a_lock_that_runs_out_closes_the_session_without_writing():
    async def main():
        rig = Rig()
        lost = []
        a = rig.host("a", on_lock_lost=lost.append)
        await a(Load, "u1")
        session = a.runtime().sessions["u1"]
        session.lease._refresh_timer.cancel()                # refreshes stop landing
        await a(Update, "u1", lambda d: d.update(coins=1) or True)
        version = rig.version("u1")
        await rig.advance(91)
        assert lost == ["u1"]
        with pytest.raises(KeyNotLoadedError):
            await a(Save, "u1")
        await rig.advance(600)                                # no autosave either
        assert rig.version("u1") == version
    run(main())


def test_a_load_that_retries_longer_than_the_lock_ttl_keeps_its_lock():
    async def main():
        from lodestore.storage import FaultConfig
        rig = Rig()
        a = rig.host("a", retry_attempts=10)
        rig.world.set_faults(FaultConfig(seed=1, error_rate={"StandardWrite": 1.0}))
        loading = asyncio.create_task(a(Load, "u1"))
        await rig.advance(100)                                # retries back off 1, 2, 4 ... 30 s: past the TTL
        assert not loading.done()
        rig.world.set_faults(FaultConfig())
        await until_done(rig, loading)
        assert await a(IsLoaded, "u1") and await a(ProbeLockActive, "u1")
        await a(Update, "u1", lambda d: d.update(coins=1) or True)
        assert await a(Save, "u1") is True
    run(main())


def test_lock_callback_reports_each_hold_and_stall_locks_freezes_upkeep_until_the_lock_is_lost():
    async def main():
        rig = Rig()
        seen = []
        a = rig.host("a", lock_ttl=30, lock_refresh=10,
                     lock_callback=lambda kind, key, session, at, until: seen.append((kind, key, at, until)))
        start = rig.clock.now()
        await a(Load, "u1")
        await a(Load, "u2")
        await rig.advance(25)
        kinds = [(k, key) for k, key, _, _ in seen]
        assert kinds[:2] == [("acquired", "u1"), ("acquired", "u2")]
        assert ("refreshed", "u1") in kinds
        assert all(until - at == 30_000 for k, _, at, until in seen if k == "acquired")
        await a(Unload, "u2")
        assert seen[-1][:2] == ("released", "u2")
        last_refresh = max(at for k, key, at, _ in seen if k == "refreshed" and key == "u1")
        a.host.stall_locks(60)                           # no refresh, no deadline check, for a minute
        refreshes = len([s for s in seen if s[0] == "refreshed"])
        await rig.advance(50)
        assert len([s for s in seen if s[0] == "refreshed"]) == refreshes
        assert (await a(Get, "u1")) is not None       # the game goes on meanwhile
        await rig.advance(15)                            # the stall ends: the lock ran out during it
        kind, key, at, until = seen[-1]
        assert (kind, key) == ("lost", "u1")
        assert at == until == last_refresh + 30_000      # reported when the hold really ended, not when noticed
        assert at - start < 85_000
        with pytest.raises(KeyNotLoadedError):
            await a(Get, "u1")
    run(main())


# ------------------------------------------------------------------------------- the lock kept in a DataStore

def lock_value(rig: Rig, key: str):
    """The stored lock value of `key` in the players store's lock DataStore, read past the cache (None: no key)."""
    store = rig.world.server("inspector").datastores.get_data_store(lock_datastore_name("players"))
    return store.get(key, use_cache=False)[0]


def memorystore_locks(rig: Rig, partitions: int = 16) -> list:
    """Every item in the players store's lock hash maps."""
    maps = rig.world.server("inspector").memorystores
    return [item for i in range(partitions)
            for item in maps.get_hash_map(lock_map_name("players", i, partitions)).list_items(100)[0]]


def test_lock_store_takes_memorystore_or_datastore_and_refuses_anything_else_naming_the_field():
    assert StoreConfig("players", {}).lock_store == "memorystore"
    assert StoreConfig("players", {}, lock_store="datastore").lock_store == "datastore"
    for bad in ("DataStore", "redis", "", None, 1, ["datastore"]):
        with pytest.raises(ConfigError, match="lock_store must be one of 'memorystore', 'datastore'") as caught:
            StoreConfig("players", {}, lock_store=bad)
        assert caught.value.field == "lock_store"


def test_datastore_lock_makes_a_second_session_wait_and_its_release_lets_it_in_at_once():
    async def main():
        rig = Rig()
        events = []
        a = rig.host("a", lock_store="datastore", lock_callback=recorder(events))
        b = rig.host("b", lock_store="datastore")
        first = LockLease(a.runtime(), "u1")
        await first.acquire()
        start = rig.clock.now()
        assert lock_value(rig, "u1") == {"session": first.id, "job": "a", "at": start}   # the lock is in the DataStore
        assert memorystore_locks(rig) == []                                             # ... and not in the MemoryStore
        assert await lock_active(b.runtime(), "u1")
        second = LockLease(b.runtime(), "u1")
        waiting = asyncio.create_task(second.acquire())
        await rig.advance(20)
        assert not waiting.done() and b.runtime().counters.lock_waits == 1
        await first.release()
        released = rig.clock.now()
        assert lock_value(rig, "u1")["session"] is None and not await lock_active(b.runtime(), "u1")
        await until_done(rig, waiting)
        assert second.held and rig.clock.now() - released <= 30_000   # its next attempt, not lock_ttl, let it in
        assert lock_value(rig, "u1")["session"] == second.id
        await first.release()                                          # a second release is a no-op
        assert lock_value(rig, "u1")["session"] == second.id
        await rig.advance(600)
        assert [e[0] for e in events] == ["acquired", "released"]
        assert memorystore_locks(rig) == []
    run(main())


def test_datastore_lock_of_a_crashed_holder_is_taken_over_once_its_ttl_has_passed_and_not_before():
    async def main():
        rig = Rig()
        a = rig.host("a", lock_store="datastore", lock_ttl=30, lock_refresh=10)
        b = rig.host("b", lock_store="datastore", lock_ttl=30, lock_refresh=10)
        crashed = LockLease(a.runtime(), "u1")
        await crashed.acquire()
        start = rig.clock.now()
        crashed.abandon()                                      # nothing removes the value: a DataStore has no TTL
        taker = LockLease(b.runtime(), "u1")
        taking = asyncio.create_task(taker.acquire())
        await rig.advance(29)
        assert not taking.done() and lock_value(rig, "u1")["session"] == crashed.id
        await until_done(rig, taking)
        assert 30_000 <= rig.clock.now() - start <= 31_000     # the first attempt after `at` + lock_ttl
        assert taker.held and lock_value(rig, "u1") == {"session": taker.id, "job": "b", "at": rig.clock.now()}
        assert b.runtime().counters.lock_steals == 0          # an expired lock is free, as a MemoryStore item would be
    run(main())


def test_datastore_lock_a_stalled_holders_late_release_does_not_free_the_lock_it_lost():
    # Lyra PR #17 releases with RemoveAsync, which would remove whatever the key holds by then, even the lock
    # another server took over after this one stalled; here the release only frees a value that still names it.
    async def main():
        rig = Rig()
        a = rig.host("a", lock_store="datastore", lock_ttl=30, lock_refresh=10)
        b = rig.host("b", lock_store="datastore", lock_ttl=30, lock_refresh=10)
        holder = LockLease(a.runtime(), "u1")
        await holder.acquire()
        a.host.stall_locks(120)                                # no refresh, no deadline check: it has not noticed
        taker = LockLease(b.runtime(), "u1")
        await until_done(rig, asyncio.create_task(taker.acquire()))
        assert holder.held and taker.held
        await holder.release()
        assert lock_value(rig, "u1")["session"] == taker.id and await lock_active(a.runtime(), "u1")
        await rig.advance(600)                                 # the taker keeps refreshing it
        assert taker.held and lock_value(rig, "u1")["session"] == taker.id
    run(main())


def test_datastore_lock_refreshes_keep_it_far_past_its_ttl_each_a_read_and_a_write_of_the_budget():
    async def main():
        rig = Rig()
        rt = rig.host("a", lock_store="datastore", lock_ttl=30, lock_refresh=10).runtime()
        lease = LockLease(rt, "u1")
        await lease.acquire()
        before = dict(rt.datastores.statistics().requests)
        await rig.advance(300)                                 # ten TTLs
        assert lease.held and rt.counters.refreshes == 30 and rt.counters.refresh_failures == 0
        after = rt.datastores.statistics().requests
        assert after["StandardRead"] - before.get("StandardRead", 0) == 30      # UpdateAsync: a read ...
        assert after["StandardWrite"] - before.get("StandardWrite", 0) == 30    # ... and a write, per refresh
        assert lock_value(rig, "u1") == {"session": lease.id, "job": "a", "at": rig.clock.now()}
        other = LockLease(rig.host("b", lock_store="datastore", lock_ttl=30, lock_refresh=10, lock_wait=20).runtime(),
                          "u1")
        trying = asyncio.create_task(other.acquire())
        with pytest.raises(LockTimeoutError, match="another session held it for 20 s"):
            await until_done(rig, trying)
        assert lease.held and lock_value(rig, "u1")["session"] == lease.id
    run(main())


def test_datastore_lock_whose_writes_fail_is_lost_at_its_deadline_and_a_load_says_the_datastore_refused():
    async def main():
        rig = Rig()
        lost = []
        rt = rig.host("a", lock_store="datastore", lock_ttl=30, lock_refresh=10).runtime()
        lease = LockLease(rt, "u1", on_lost=lost.append)
        await lease.acquire()
        rig.world.set_faults(FaultConfig(seed=1, error_rate={"StandardWrite": 1.0}))
        await rig.advance(29)
        assert lease.held and rt.counters.refresh_failures == 2   # DataStore errors are refresh failures, retried
        await rig.advance(1)
        assert lost == ["no refresh landed before the lock's TTL ran out"] and not lease.held
        other = LockLease(rig.host("b", lock_store="datastore", lock_wait=5).runtime(), "u2")
        with pytest.raises(LockTimeoutError, match="the DataStore kept refusing"):
            await until_done(rig, asyncio.create_task(other.acquire()))
        assert lock_value(rig, "u2") is None
    run(main())


def test_datastore_lock_fencing_refuses_the_write_of_a_session_whose_lock_expired_and_was_taken():
    async def main():
        rig = Rig()
        lost = []
        a = rig.host("a", lock_store="datastore", on_lock_lost=lost.append)
        b = rig.host("b", lock_store="datastore")
        await a(Load, "u1")
        await a(Update, "u1", lambda d: d.update(coins=5) or True)
        await a(Save, "u1")
        stale = a.runtime().sessions["u1"]
        stale.lease._refresh_timer.cancel()                    # A keeps running but its lock is no longer refreshed
        stale.lease._deadline_timer.cancel()                   # ... and its local deadline check is stuck too
        await a(Update, "u1", lambda d: d.update(coins=500) or True)
        await until_done(rig, asyncio.create_task(b(Load, "u1")))   # after lock_ttl (90 s) the lock is free
        fresh = b.runtime().sessions["u1"]
        assert (await b(Get, "u1"))["coins"] == 5
        assert lock_value(rig, "u1")["session"] == fresh.lock_id
        stale.lease.deadline = rig.clock.now() + 60_000        # even believing its lock is fine ...
        with pytest.raises(LockLostError):
            await a(Save, "u1")                                # ... the fencing token refuses A's write
        assert lost == ["u1"]
        assert rig.record("u1")["session"] == fresh.lock_id
        assert lock_value(rig, "u1")["session"] == fresh.lock_id   # and A's end did not free B's lock
        await b(Unload, "u1")
        assert lock_value(rig, "u1")["session"] is None and memorystore_locks(rig) == []
    run(main())


def test_probe_lock_active_asks_the_datastore_when_the_locks_live_there():
    async def main():
        rig = Rig()
        a = rig.host("a", lock_store="datastore")
        b = rig.host("b", lock_store="datastore")
        assert await b(ProbeLockActive, "u1") is False
        await a(Load, "u1")
        assert await b(ProbeLockActive, "u1") is True     # another server sees the hold
        await a(Unload, "u1")
        assert await b(ProbeLockActive, "u1") is False
    run(main())


def test_an_unload_of_a_key_waiting_for_its_lock_ends_the_wait_at_once_not_at_the_next_attempt():
    """A player who leaves while the new server still waits for the old one's lock (a teleport storm): the wait
    ends when the unload arrives, so the lock is not taken later for a player who is gone."""
    async def main():
        rig = Rig()
        a, b = rig.host("a"), rig.host("b")
        await a(Load, "u1")
        loading = asyncio.create_task(b(Load, "u1"))
        await rig.advance(20)              # b has failed a few attempts: its next one is up to 16 s away
        assert not loading.done()
        asked = rig.clock.now()
        unloading = asyncio.create_task(b(Unload, "u1"))
        await rig.advance(1)
        assert loading.done() and unloading.done()
        with pytest.raises(Exception, match="unloaded while it was loading"):
            loading.result()
        assert rig.clock.now() - asked <= 1000
        assert b.runtime().counters.loads == 0 and await b(ProbeLockActive, "u1") is True   # a still holds it
    run(main())
