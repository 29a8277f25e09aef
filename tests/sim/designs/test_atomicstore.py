"""The atomicstore design: AtomicStore's own API (safe lookups answering success instead of raising, the tracked
stores' version history, MultiStore's keys), and the session lock a game builds from it, with its weak spots."""

from __future__ import annotations

import asyncio
import math
import types

import pytest

from lodestore.actors import StoreConfig
from lodestore.storage import ConfigError, FaultConfig, ManualClock, Scheduler, World
from lodestore.sim.designs import DesignError, check_options
from lodestore.sim.designs import _atomicstore as am
from lodestore.sim.designs._atomicstore import (ATOMICSTORE, AtomicLayer, AtomicOptions, AtomicStore, MAX_RETRIES,
                                                 VersionEntry)

TEMPLATE = {"coins": 0, "items": []}
ALL_READS_WRITES_FAIL = FaultConfig(error_rate={"StandardRead": 1.0, "StandardWrite": 1.0, "OrderedList": 1.0,
                                                "OrderedWrite": 1.0})


class Rig:
    def __init__(self, budget=None) -> None:
        self.clock = ManualClock()
        self.world = World.in_process("atomic", clock=self.clock, budget=budget)
        self.scheduler = Scheduler(self.clock)
        self.locks: list[tuple] = []
        self.inspector = self.world.server("inspector")

    def atomic(self, job="job-1", players=1) -> AtomicStore:
        return AtomicStore(self.world.server(job, players=players), self.scheduler)

    def config(self, **kw) -> StoreConfig:
        kw.setdefault("lock_ttl", 90.0)
        kw.setdefault("lock_refresh", 60.0)
        kw.setdefault("autosave_interval", 60.0)
        kw.setdefault("lock_wait", 0.0)
        return StoreConfig(name="players", template=TEMPLATE, lock_callback=self._lock, **kw)

    def _lock(self, kind, key, session, at, until) -> None:
        self.locks.append((kind, key, session, at, until))

    async def layer(self, job, config=None, **options) -> AtomicLayer:
        game = types.SimpleNamespace(storage=self.world.server(job, players=1))
        return await ATOMICSTORE.open(game, self.scheduler, config or self.config(), AtomicOptions(**options))

    async def stored(self, key, config=None, **options):
        return (await ATOMICSTORE.read(self.inspector, self.scheduler, config or self.config(),
                                       AtomicOptions(**options), [key]))[key]

    async def finish(self, coro, step=1.0, limit=600.0):
        """Run `coro` while moving the clock `step` seconds at a time; its result (or its exception)."""
        task = self.scheduler.spawn(coro)
        waited = 0.0
        await asyncio.sleep(0)
        while not task.done() and waited < limit:
            await self.scheduler.advance(step)
            waited += step
        assert task.done(), f"still running after {limit} s"
        return task.result()


def run(fn):
    async def main():
        rig = Rig()
        try:
            return await fn(rig)
        finally:
            rig.world.shutdown()
    return asyncio.run(main())


def run_budget(fn):
    async def main():
        rig = Rig(budget="current")
        try:
            return await fn(rig)
        finally:
            rig.world.shutdown()
    return asyncio.run(main())


def add_coins(n):
    def fn(data):
        data["coins"] += n
        return True
    return fn


def add_item(item):
    def fn(data):
        data["items"].append(item)
        return True
    return fn


# ------------------------------------------------------------------------------------------------ the API itself


def test_general_store_pulls_pushes_and_updates_one_key_of_its_scope():
    async def body(rig: Rig):
        store = rig.atomic().retrieve_general_store("Settings")
        assert await store.pull_data() is None
        assert await store.push_data({"volume": 3}) is True
        assert await store.pull_data() == {"volume": 3}
        assert await store.update_data(lambda old: {"volume": old["volume"] + 1}) == {"volume": 4}
        assert await store.update_data(lambda old, info: None) is None          # cancelled: nil, not false
        raw = rig.inspector.datastores.get_data_store("Settings", "GeneralStoreglobal")
        assert raw.get("DataKey", use_cache=False)[0] == {"volume": 4}
    run(body)


def test_multi_store_keeps_each_save_key_apart():
    async def body(rig: Rig):
        store = rig.atomic().retrieve_multi_store("Items", "world2")
        assert await store.push_data("sword", {"owner": 1}) is True
        assert await store.push_data("shield", {"owner": 2}) is True
        assert await store.update_data("sword", lambda old: {**old, "owner": 3}) == {"owner": 3}
        assert await store.pull_data("shield") == {"owner": 2}
        assert await store.pull_data("bow") is None
        raw = rig.inspector.datastores.get_data_store("Items", "MultiStoreworld2")
        assert raw.get("sword", use_cache=False)[0] == {"owner": 3}
    run(body)


def test_failed_lookups_answer_false_after_31_tries_and_never_raise():
    async def body(rig: Rig):
        atomic = rig.atomic()
        store = atomic.retrieve_multi_store("Items")
        assert await store.push_data("sword", {"owner": 1}) is True
        assert await store.pull_data("sword") == {"owner": 1}
        rig.world.set_faults(ALL_READS_WRITES_FAIL)
        assert await store.pull_data("sword") == {"owner": 1}     # GetAsync's 4-second cache answers
        await rig.scheduler.advance(5)
        before = atomic.utility.statistics()
        assert await store.pull_data("sword") is False
        assert await store.push_data("sword", {"owner": 9}) is False
        assert await store.update_data("sword", lambda old: {"owner": 9}) is False
        after = atomic.utility.statistics()
        assert after.tries - before.tries == 3 * (MAX_RETRIES + 1)
        assert after.gave_up - before.gave_up == 3 and "502" in after.last_error
        tracked = atomic.retrieve_tracked_store("Profile", "u1")
        assert await tracked.get_save_keys(1) == (False, "VersionHistory couldn't be loaded")
        assert await tracked.push_data({"a": 1}) == (False, "Couldn't update MainDataStore")
        rig.world.set_faults(FaultConfig())
        assert await store.pull_data("sword") == {"owner": 1}     # nothing was changed by the failed calls
    run(body)


def test_an_intermittent_error_is_retried_at_once_and_succeeds():
    async def body(rig: Rig):
        atomic = rig.atomic()
        store = atomic.retrieve_multi_store("Items")
        rig.world.set_faults(FaultConfig(seed=3, error_rate={"StandardWrite": 0.5}))
        start = rig.clock.now()
        for i in range(6):
            assert await store.push_data(f"k{i}", i) is True
        stats = atomic.utility.statistics()
        assert stats.errors > 0 and stats.tries == 6 + stats.errors and stats.gave_up == 0
        assert rig.clock.now() == start                      # no pause between tries
    run(body)


def test_budget_aware_lookup_refuses_without_sending_when_the_budget_is_zero():
    async def body(rig: Rig):
        atomic = rig.atomic(players=0)
        service = atomic.utility.server.datastores
        tracked = atomic.retrieve_tracked_store("Profile", "u1")
        while service.get_request_budget("OrderedList") > 0:      # GetSortedAsync: a burst of 10, then 5 a minute
            await tracked.ordered_data_store.aio.get_sorted(False, 1)
        sent = service.statistics().requests.get("OrderedList", 0)
        answer = await rig.finish(tracked.get_save_keys(1), step=0.1, limit=10)
        assert answer == (False, "VersionHistory couldn't be loaded")
        assert atomic.utility.statistics().refused == MAX_RETRIES + 1
        assert service.statistics().requests.get("OrderedList", 0) == sent       # nothing sent, nothing queued
        assert all(waiting == 0 for waiting in service.queue_sizes().values())
    run_budget(body)


def test_tracked_store_keeps_a_version_history_newest_first():
    async def body(rig: Rig):
        store = rig.atomic().retrieve_tracked_store("Profile", "u1")
        ok1, first = await store.push_data({"coins": 1})
        await rig.scheduler.advance(1)
        ok2, second = await store.push_data({"coins": 2})
        assert ok1 and ok2 and first != second and first.startswith("{") and len(first) == 38
        entries, message = await store.get_save_keys(5)
        assert message is None and [e.key for e in entries] == [second, first]
        assert isinstance(entries[0], VersionEntry) and entries[0].value == entries[1].value + 1   # os.time()
        assert await store.get_save_key(2) == first
        assert await store.pull_data() == ({"coins": 2}, second)
        assert await store.pull_data(2) == ({"coins": 1}, first)
        assert await store.pull_data_from_key(first) == ({"coins": 1}, first)
        assert await store.get_save_key(3) is None
        assert await store.pull_data(3) == (False, None)         # GetAsync(nil) fails its 31 tries
        assert await store.get_save_key(0) is False              # a bad depth: GetSortedAsync refuses it
    run(body)


def test_tracked_store_update_data_always_fails_as_written():
    async def body(rig: Rig):
        atomic = rig.atomic()
        store = atomic.retrieve_tracked_store("Profile", "u1")
        ok, key = await store.push_data({"coins": 1})
        calls = []
        answer = await store.update_data(1, lambda old: calls.append(old) or {"coins": 5})
        assert answer == (False, "Couldn't update data") and calls == []
        assert await store.update_data_from_key(key, lambda old: {"coins": 5}) == (False, "Couldn't update data")
        assert await store.pull_data() == ({"coins": 1}, key)
    run(body)


def test_tracked_stores_of_one_scope_share_data_whatever_their_name():
    async def body(rig: Rig):
        atomic = rig.atomic()
        ok, key = await atomic.retrieve_tracked_store("Inventory", "u1").push_data({"sword": 1})
        assert await atomic.retrieve_tracked_store("Quests", "u1").pull_data() == ({"sword": 1}, key)
        assert await atomic.retrieve_tracked_store("Inventory", "u2").pull_data() == (False, None)
    run(body)


def test_two_pushes_in_one_second_cannot_be_ordered_and_the_older_may_read_as_newest(monkeypatch):
    async def body(rig: Rig):
        keys = iter(["{BBBB}", "{AAAA}"])
        monkeypatch.setattr(am, "_guid", lambda: next(keys))
        store = rig.atomic().retrieve_tracked_store("Profile", "u1")
        await store.push_data({"coins": 1})
        await store.push_data({"coins": 2})                       # newer, same os.time()
        entries, _ = await store.get_save_keys(2)
        assert entries[0].value == entries[1].value
        assert await store.pull_data() == ({"coins": 1}, "{BBBB}")  # the older save comes back as the newest
    run(body)


def test_a_failed_history_write_leaves_the_previous_version_current():
    async def body(rig: Rig):
        store = rig.atomic().retrieve_tracked_store("Profile", "u1")
        ok, first = await store.push_data({"coins": 1})
        rig.world.set_faults(FaultConfig(error_rate={"OrderedWrite": 1.0}))
        assert await store.push_data({"coins": 2}) == (False, "Couldn't update VersionHistory")
        rig.world.set_faults(FaultConfig())
        assert await store.pull_data() == ({"coins": 1}, first)
    run(body)


def test_tracked_multi_store_splits_data_over_sub_stores_under_one_history():
    async def body(rig: Rig):
        atomic = rig.atomic()
        store = atomic.retrieve_tracked_multi_store("House", "u1", ["furniture", "walls"])
        ok, key = await store.push_data({"furniture": [1, 2], "walls": "red"})
        assert ok is True
        assert await store.pull_data() == ({"furniture": [1, 2], "walls": "red"}, key)
        seen = []

        def paint(name, old):
            seen.append(name)
            return "blue" if name == "walls" else None
        assert await store.update_data(1, paint) == ({"furniture": None, "walls": "blue"}, key)
        assert seen == ["furniture", "walls"]
        assert await store.pull_data_from_key(key) == ({"furniture": [1, 2], "walls": "blue"}, key)
        raw = rig.inspector.datastores.get_data_store("MainDatawalls", "TrackedMultiStoreu1")
        assert raw.get(key, use_cache=False)[0] == "blue"
    run(body)


def test_tracked_multi_store_records_a_version_whose_sub_store_writes_failed():
    async def body(rig: Rig):
        atomic = rig.atomic()
        store = atomic.retrieve_tracked_multi_store("House", "u1", ["furniture", "walls"])
        await store.push_data({"furniture": [1], "walls": "red"})
        await rig.scheduler.advance(1)
        rig.world.set_faults(FaultConfig(error_rate={"StandardWrite": 1.0}))
        ok, key = await store.push_data({"furniture": [1, 2], "walls": "blue"})
        rig.world.set_faults(FaultConfig())
        assert ok is True                                            # only warned
        assert len(atomic.utility.warnings) == 2 and "furniture" in atomic.utility.warnings[0]
        assert await store.pull_data() == ({"furniture": None, "walls": None}, key)   # the newest version is empty
    run(body)


def test_the_module_registers_stores_by_name():
    async def body(rig: Rig):
        atomic = rig.atomic()
        a = atomic.retrieve_general_store("A")
        b = atomic.retrieve_multi_store("B")
        assert atomic.find_first_store_by_name("A") is a and set(map(id, atomic.get_stores())) == {id(a), id(b)}
        a2 = atomic.retrieve_tracked_store("A")
        assert atomic.find_first_store_by_name("A") is a2 and len(atomic.get_stores()) == 2
        assert atomic.find_first_store_by_name("C") is None
    run(body)


def test_bad_constructor_arguments_raise_a_typed_error():
    async def body(rig: Rig):
        atomic = rig.atomic()
        for call, words in ((lambda: atomic.retrieve_general_store(None), "expected arg <name>"),
                            (lambda: atomic.retrieve_multi_store(5), "<name> of type int"),
                            (lambda: atomic.retrieve_tracked_store("P", 7), "<scope> of type int"),
                            (lambda: atomic.retrieve_tracked_multi_store("H", "u", None), "<data_store_names>"),
                            (lambda: atomic.retrieve_tracked_multi_store("H", "u", "walls"), "of type str")):
            with pytest.raises(DesignError, match=words) as err:
                call()
            assert err.value.reason == "BadArgument"
        assert atomic.get_stores() == []                                   # nothing registered
    run(body)


def test_options_refuse_bad_values_with_the_field_named():
    with pytest.raises(ConfigError, match="store_kind") as err:
        check_options(ATOMICSTORE, {"store_kind": "library"}, "store.atomicstore")
    assert err.value.field == "store.atomicstore.store_kind"
    with pytest.raises(ConfigError, match="unknown option"):
        check_options(ATOMICSTORE, {"lock": True}, "store.atomicstore")
    with pytest.raises(ConfigError, match="must be bool"):
        check_options(ATOMICSTORE, {"session_lock": "yes"}, "store.atomicstore")
    with pytest.raises(ConfigError, match="lock_retry"):
        check_options(ATOMICSTORE, {"lock_retry": math.nan}, "store.atomicstore")
    assert check_options(ATOMICSTORE, {"store_kind": "tracked", "lock_retry": 2}, "s") == \
        AtomicOptions("tracked", True, 2.0)


# ------------------------------------------------------------------------------------- the game-built session lock


@pytest.mark.parametrize("kind", ["general", "multi", "tracked"])
def test_the_lock_keeps_a_second_server_out_until_the_first_releases(kind):
    async def body(rig: Rig):
        a = await rig.layer("job-a", store_kind=kind)
        b = await rig.layer("job-b", config=rig.config(lock_wait=20.0), store_kind=kind)
        await a.load("p1")
        assert rig.locks[-1][0] == "acquired" and rig.locks[-1][4] == rig.clock.now() + 90_000
        await a.update("p1", add_coins(5))
        with pytest.raises(DesignError) as err:
            await rig.finish(b.load("p1"))
        assert err.value.reason == "LockHeld" and b.counters.lock_waits == 1 and b.counters.load_failures == 1
        assert not await b.is_loaded("p1")
        assert await a.unload("p1") is True
        await rig.finish(b.load("p1"))
        assert b.sessions["p1"].data["coins"] == 5 and b.counters.lock_steals == 0
        assert await rig.stored("p1", store_kind=kind) == {"coins": 5, "items": []}
        assert [k for k, *_ in rig.locks] == ["acquired", "released", "acquired"]
    run(body)


@pytest.mark.parametrize("kind", ["general", "tracked"])
def test_a_crashed_servers_lock_expires_and_the_next_server_takes_it(kind):
    async def body(rig: Rig):
        a = await rig.layer("job-a", store_kind=kind)
        await a.load("p1")
        await a.update("p1", add_coins(7))
        await rig.scheduler.advance(1)                    # tracked: a version in a later second than the first
        await a.save("p1")
        await a.update("p1", add_coins(100))              # never saved: lost with the crash
        a.crash()
        assert rig.locks[-1][0] == "crashed"
        b = await rig.layer("job-b", config=rig.config(lock_wait=120.0), store_kind=kind)
        start = rig.clock.now()
        await rig.finish(b.load("p1"))
        assert 90_000 <= rig.clock.now() - start <= 96_000          # waited for the TTL, then took it
        assert b.counters.lock_waits == 1 and b.counters.lock_steals == 1
        assert b.sessions["p1"].data["coins"] == 7
    run(body)


def test_refreshes_keep_the_lock_alive_past_its_ttl():
    async def body(rig: Rig):
        a = await rig.layer("job-a")
        await a.load("p1")
        await rig.scheduler.advance(300)
        refreshes = [r for r in rig.locks if r[0] == "refreshed"]
        assert len(refreshes) == 5 and all(until == at + 90_000 for _, _, _, at, until in refreshes)
        b = await rig.layer("job-b")
        with pytest.raises(DesignError, match="locked by session"):
            await b.load("p1")
    run(body)


def test_without_the_lock_two_overlapping_servers_lose_a_write():
    async def body(rig: Rig):
        a = await rig.layer("job-a", session_lock=False)
        b = await rig.layer("job-b", session_lock=False)
        await a.load("p1")
        await b.load("p1")                                  # nothing keeps it out
        await a.update("p1", add_coins(10))
        await a.save("p1")
        await b.update("p1", add_item("sword"))
        await b.save("p1")                                  # last write wins: B's copy never had A's coins
        assert await rig.stored("p1", session_lock=False) == {"coins": 0, "items": ["sword"]}
        assert rig.locks[0][4] - rig.locks[0][3] > 10 ** 11       # holds without a lock: until released
    run(body)


@pytest.mark.parametrize("kind", ["general", "multi", "tracked"])
def test_a_stalled_server_whose_lock_expired_is_refused_at_its_next_save(kind):
    async def body(rig: Rig):
        a = await rig.layer("job-a", store_kind=kind)
        await a.load("p1")
        expiry = rig.locks[-1][4]
        a.stall(200)                                        # no refresh: the lock runs out at +90 s
        await rig.scheduler.advance(100)
        b = await rig.layer("job-b", store_kind=kind)
        await b.load("p1")
        assert b.counters.lock_steals == 1
        await b.update("p1", add_item("shield"))
        await b.save("p1")
        await a.update("p1", add_coins(50))                 # A still believes it holds the player
        with pytest.raises(DesignError) as err:
            await a.save("p1")
        assert err.value.reason == "LockLost" and not await a.is_loaded("p1")
        lost = [r for r in rig.locks if r[0] == "lost"]
        assert len(lost) == 1 and lost[0][3] == expiry      # the hold ended when the lock did
        assert await rig.stored("p1", store_kind=kind) == {"coins": 0, "items": ["shield"]}
    run(body)


def test_tracked_a_save_in_the_same_second_as_the_previous_version_may_read_back_as_older(monkeypatch):
    async def body(rig: Rig):
        keys = iter(["{BBBB}", "{AAAA}"])
        monkeypatch.setattr(am, "_guid", lambda: next(keys))
        a = await rig.layer("job-a", store_kind="tracked")
        await a.load("p1")                                   # a new player: version {BBBB}
        await a.update("p1", add_coins(9))
        await a.save("p1")                                   # version {AAAA}, same second: it sorts below
        assert await rig.stored("p1", store_kind="tracked") == {"coins": 0, "items": []}
    run(body)


def test_storage_errors_fail_a_load_with_a_typed_error_and_change_nothing():
    async def body(rig: Rig):
        a = await rig.layer("job-a")
        rig.world.set_faults(ALL_READS_WRITES_FAIL)
        with pytest.raises(DesignError) as err:
            await a.load("p1")
        assert err.value.reason == "LoadFailed" and a.counters.load_failures == 1 and rig.locks == []
        rig.world.set_faults(FaultConfig())
        await a.load("p1")
        await a.update("p1", add_coins(3))
        rig.world.set_faults(ALL_READS_WRITES_FAIL)
        with pytest.raises(DesignError) as err:
            await a.save("p1")
        assert err.value.reason == "SaveFailed" and a.counters.save_failures == 1 and await a.is_loaded("p1")
        rig.world.set_faults(FaultConfig())
        assert await rig.stored("p1") == {"coins": 0, "items": []}
    run(body)


def test_the_layer_refuses_bad_calls_with_typed_errors():
    async def body(rig: Rig):
        a = await rig.layer("job-a")
        with pytest.raises(DesignError) as err:
            await a.update("p1", add_coins(1))
        assert err.value.reason == "NotLoaded"
        await a.load("p1")
        for call in (lambda: a.update("p1", "not a function"), lambda: a.load(42)):
            with pytest.raises(DesignError) as err:
                await call()
            assert err.value.reason == "BadArgument"
        with pytest.raises(DesignError, match="stall needs seconds"):
            a.stall(-1)
        assert a.sessions["p1"].data == TEMPLATE and list(a.sessions) == ["p1"]
    run(body)


def test_a_player_who_leaves_while_the_load_waits_for_the_lock_gives_the_load_up_at_once():
    async def body(rig: Rig):
        a = await rig.layer("job-a")
        b = await rig.layer("job-b", config=rig.config(lock_wait=120.0))
        await a.load("p1")
        loading = rig.scheduler.spawn(b.load("p1"))
        await rig.scheduler.advance(3)                     # b tried, found a's lock, waits lock_retry (6 s)
        assert not loading.done() and b.counters.lock_waits == 1
        assert await b.unload("p1") is False              # the player left: nothing was loaded, nothing saved
        await rig.scheduler.advance(0)
        with pytest.raises(DesignError) as err:
            loading.result()
        assert err.value.reason == "LoadCancelled" and b.counters.load_failures == 0
        assert not await b.is_loaded("p1") and [k for k, *_ in rig.locks] == ["acquired"]   # b never took it
    run(body)
