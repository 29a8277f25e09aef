"""The elite design: EliteDataStoreService's API as its README and source describe it (answers instead of errors, its
queue in front of Roblox's, priority, key read/write locks, argument checks, WaitForAllRequests, GuardCall), the two
defects of its released processors, and the game played on it (`EliteLayer`): a single server's saves are durable,
two servers on one key lose a write (no session lock).

Every test runs an in-process world on a manual clock: time moves only through `scheduler.advance`.
"""

from __future__ import annotations

import asyncio
import math
import types

import pytest

from lodestore.actors import StoreConfig
from lodestore.storage import (ConfigError, DataStoreError, FaultConfig, Latency, ManualClock, RequestType, Scheduler,
                               Server, SortDirection, TransformError, World, emergency)
from lodestore.sim.designs import DesignError, FOREVER_MS, check_options
from lodestore.sim.designs._elite import (ELITE, EliteArgumentError, EliteDataStorePages, EliteDataStoreService,
                                          EliteLayer, EliteOptions, EliteResult, GetOptions, IncrementOptions,
                                          SetOptions)

TEMPLATE = {"coins": 0, "items": [], "ledger": []}


def run(coro_fn):
    """Run `coro_fn(rig)` on a fresh rig inside a new event loop."""
    async def main():
        rig = Rig()
        try:
            return await coro_fn(rig)
        finally:
            rig.world.shutdown()
    return asyncio.run(main())


class Rig:
    def __init__(self, budget: str | None = "current") -> None:
        self.clock = ManualClock()
        self.world = World.in_process("elite", clock=self.clock, budget=budget)
        self.scheduler = Scheduler(self.clock)
        self._servers = 0
        self.inspector = Server(self.world, "inspector", budgeted=False)   # outside every budget

    def server(self, players: int = 1, job: str | None = None):
        self._servers += 1
        return self.world.server(job or f"job-{self._servers}", players=players)

    def elite(self, release: str = "1.6.0", players: int = 1, **kw) -> EliteDataStoreService:
        return EliteDataStoreService(self.server(players), self.scheduler, release=release, **kw)

    def spawn(self, coro):
        return self.scheduler.spawn(coro)

    async def advance(self, seconds: float) -> None:
        await self.scheduler.advance(seconds)

    def stored(self, name: str, key: str):
        return self.inspector.datastores.get_data_store(name).get(key, use_cache=False)[0]

    def slow(self, ms: float = 1000, kinds=("StandardWrite", "StandardRead")) -> None:
        """Every request of `kinds` takes `ms` of simulated time."""
        self.world.set_faults(FaultConfig(base_latency={k: Latency.fixed(ms) for k in kinds}))


# ------------------------------------------------------------------------------------------ the mirrored API


def test_each_call_answers_value_and_success():
    async def body(rig: Rig):
        elite = rig.elite(release="patched")
        store = elite.get_data_store("things")
        assert elite.get_data_store("things") is store     # DatastoresCache
        assert await store.get("a") == EliteResult(None, True)
        version, ok = await store.set("a", {"coins": 1}, [7], SetOptions({"tag": "x"}))
        assert ok and isinstance(version, str)
        assert await store.get("a", GetOptions(use_cache=False)) == ({"coins": 1}, True)
        value, ok = await store.update("a", lambda old, info: {**old, "coins": old["coins"] + 4})
        assert (value, ok) == ({"coins": 5}, True)
        assert await store.increment("n") == (1, True)
        assert await store.increment("n", 5, None, IncrementOptions()) == (6, True)
        assert await store.remove("n") == (6, True)
        assert await store.get("n") == (None, True)
        version, ok = await store.set("v", "one")
        assert await store.get_version("v", version) == ("one", True)
        assert await store.get_version_at_time("v", rig.clock.now()) == ("one", True)
        pages, ok = await store.list_versions("v", SortDirection.ASCENDING)
        assert ok and isinstance(pages, EliteDataStorePages)
        assert [v.version for v in pages.get_current_page()] == [version]
        for i in range(3):
            await store.set(f"k{i}", i)
        pages, ok = await store.list_keys("k", 2)
        assert ok and [k for k in pages.get_current_page()] == ["k0", "k1"] and not pages.is_finished()
        assert await pages.advance_to_next_page() == (None, True)
        assert pages.get_current_page() == ["k2"] and pages.is_finished()
        board = elite.get_ordered_data_store("board")
        await board.set("p1", 30)
        await board.set("p2", 10)
        pages, ok = await board.get_sorted(False, 10)
        assert ok and pages.get_current_page() == [("p1", 30), ("p2", 10)]
        assert rig.stored("things", "a") == {"coins": 5}
    run(body)


def test_storage_errors_come_back_as_false_and_never_raise():
    async def body(rig: Rig):
        store = rig.elite(release="patched").get_data_store("things")
        await store.set("a", {"coins": 1})
        rig.world.set_faults(FaultConfig(error_rate={t.value: 1.0 for t in RequestType}, error_code=503))
        for call in (store.get("a", GetOptions(False)), store.set("a", 2), store.update("a", lambda o, i: o),
                     store.increment("n"), store.remove("a"), store.list_keys(), store.list_versions("a")):
            value, ok = await call
            assert ok is False and isinstance(value, DataStoreError) and value.code == 503
        rig.world.set_faults(FaultConfig())
        value, ok = await store.update("a", lambda old, info: 1 / 0)    # a transform that raises: pcall catches it
        assert ok is False and isinstance(value, TransformError)
        value, ok = await store.set("a" * 51, 1)                        # the DataStore refuses the key
        assert ok is False and isinstance(value, DataStoreError)
        assert rig.stored("things", "a") == {"coins": 1}
    run(body)


# ---------------------------------------------------------------------------- the queue in front of Roblox's


async def _many_sets(rig: Rig, release: str, n: int = 200):
    elite = rig.elite(release=release)
    store = elite.get_data_store("spam")
    tasks = [rig.spawn(store.set(f"k{i}", i)) for i in range(n)]
    await rig.advance(0)
    return elite, store, tasks


def test_roblox_refuses_a_burst_beyond_its_queue_that_elite_delivers():
    async def body(rig: Rig):
        service = rig.server().datastores
        raw = service.get_data_store("raw")
        budget = await service.aio.get_request_budget(RequestType.STANDARD_WRITE)
        assert budget == 100

        async def burst():
            return await asyncio.gather(*[raw.aio.set(f"k{i}", i) for i in range(200)], return_exceptions=True)
        raw_run = rig.spawn(burst())
        await rig.advance(120)
        refused = [r for r in await raw_run if isinstance(r, DataStoreError)]
        assert len(refused) == 200 - budget - 30 and {r.code for r in refused} == {302}   # 30-deep queue full

        rig2 = Rig()    # a world of its own: the same budgets, untouched
        try:
            elite, _, tasks = await _many_sets(rig2, "patched")
            assert sum(t.done() for t in tasks) == 100 and elite.get_queue_size() == 100
            await rig2.advance(300)
            assert all(t.done() and t.result().success for t in tasks)
            assert elite.get_queue_sizes() == (0, 0, 0) and elite.finished_all
            assert all(rig2.stored("spam", f"k{i}") == i for i in range(200))
            assert elite.server.datastores.statistics().budget.dropped == {}   # Roblox's queue never overflowed
        finally:
            rig2.world.shutdown()
    run(body)


def test_release_1_6_0_leaks_the_key_lock_of_a_call_that_found_the_budget_spent():
    """HEAD: every fast-path write beyond the budget queues holding its own write lock, and the processor stops after
    one cycle: those calls never run, and wait_for_all_requests says all is done."""
    async def body(rig: Rig):
        elite, store, tasks = await _many_sets(rig, "1.6.0")
        await rig.advance(600)
        assert sum(t.done() for t in tasks) == 100
        assert elite.get_queue_size() == 100 and elite.statistics().keys_locked == 100
        assert not store.can_write("k150") and not store.can_read("k150")
        waited = rig.spawn(elite.wait_for_all_requests())
        await rig.advance(1)
        assert waited.done()          # returns with 100 requests still queued
        assert rig.stored("spam", "k150") is None
    run(body)


def test_release_1_5_0_delivers_the_queue_but_not_the_call_that_leaked_its_lock():
    async def body(rig: Rig):
        elite, store, tasks = await _many_sets(rig, "1.5.0")
        await rig.advance(600)
        stuck = [i for i, t in enumerate(tasks) if not t.done()]
        assert stuck == [100]         # the first call past the budget took the fast path and kept its write lock
        assert elite.get_queue_size() == 1 and not elite.finished_all
        later = rig.spawn(store.set("k100", "again"))
        other = rig.spawn(store.set("k7", "again"))
        await rig.advance(60)
        assert not later.done() and other.result().success   # that key stays locked for good in this server
    run(body)


def test_release_1_6_0_stalls_a_request_whose_key_was_busy_at_its_cycle_until_another_is_queued():
    async def body(rig: Rig):
        rig.slow(1000)
        elite = rig.elite(release="1.6.0")
        store = elite.get_data_store("s")
        first = rig.spawn(store.set("a", 0))
        await rig.advance(0)
        second = rig.spawn(store.set("a", 1))     # the key is being written: queued
        await rig.advance(30)
        assert first.done() and not second.done()  # the cycle at 0.35 s found the key busy; none ran after
        assert elite.get_queue_size() == 1 and elite.finished_all
        blocker = rig.spawn(store.set("b", 0))    # the fast path: does not wake the processor
        await rig.advance(0.1)
        kick = rig.spawn(store.set("b", 1))       # queued behind the write of b: the processor runs again
        await rig.advance(10)
        assert blocker.done() and second.done() and second.result().success
        assert rig.stored("s", "a") == 1
        assert not kick.done()                    # b was still busy at that cycle: the kick stalls in its turn
    run(body)


def test_priority_requests_overtake_queued_normal_ones():
    async def body(rig: Rig):
        rig.slow(1000)
        elite = rig.elite(release="1.5.0")
        store = elite.get_data_store("s")
        done: list[str] = []

        async def write(value, prioritize=False):
            result = await store.set("a", value, None, None, prioritize)
            assert result.success
            done.append(value)
        rig.spawn(write("first"))
        await rig.advance(0)
        for name in ("n1", "n2", "n3"):
            rig.spawn(write(name))
        rig.spawn(write("urgent", True))
        await rig.advance(0)
        assert elite.get_queue_size() == 3 and elite.get_priority_queue_size() == 1
        await rig.advance(30)
        assert done == ["first", "urgent", "n1", "n2", "n3"]
        assert rig.stored("s", "a") == "n3"
    run(body)


def test_priority_requests_get_the_budget_first():
    async def body(rig: Rig):
        elite = rig.elite(release="patched")
        store = elite.get_data_store("s")
        reads = [rig.spawn(store.get(f"r{i}")) for i in range(100)]      # the whole read budget
        await rig.advance(0)
        assert all(t.done() for t in reads)
        normal = [rig.spawn(store.get(f"n{i}")) for i in range(5)]
        urgent = rig.spawn(store.get("u", None, True))
        await rig.advance(0)
        assert elite.get_queue_sizes() == (5, 1, 0)
        for _ in range(200):
            if urgent.done():
                break
            await rig.advance(0.35)
        assert not any(t.done() for t in normal)
        await rig.advance(120)
        assert all(t.result().success for t in normal)
    run(body)


def test_the_key_write_lock_serialises_two_writers_and_lets_readers_share():
    async def body(rig: Rig):
        elite = rig.elite(release="1.5.0")
        store = elite.get_data_store("s")
        await store.set("a", {"coins": 0})
        rig.slow(500)
        seen: list[int] = []

        def add(n):
            def fn(old, info):
                seen.append(old["coins"])
                return {"coins": old["coins"] + n}
            return fn
        one = rig.spawn(store.update("a", add(1)))
        two = rig.spawn(store.update("a", add(10)))
        await rig.advance(0.1)
        assert not store.can_write("a") and not store.can_read("a") and elite.get_queue_size() == 1
        await rig.advance(10)
        assert one.result() == ({"coins": 1}, True) and two.result() == ({"coins": 11}, True)
        assert seen == [0, 1]                                   # the second ran on the first's result: no race
        assert elite.server.datastores.statistics().update_conflicts == 0
        readers = [rig.spawn(store.get("a", GetOptions(False))) for _ in range(3)]
        await rig.advance(0.1)
        assert elite.statistics().in_flight == 3 and store.can_read("a") and not store.can_write("a")
        await rig.advance(10)
        assert all(r.result() == ({"coins": 11}, True) for r in readers)
    run(body)


def test_key_lock_rules_readers_share_writers_wait_and_a_pending_write_holds_back_new_reads():
    from lodestore.sim.designs._elite import AccessMode, _KeyLocks
    R, W = AccessMode.READ, AccessMode.WRITE

    async def main():
        locks = _KeyLocks()
        locks.take_nowait("k", R)
        locks.take_nowait("k", R)                      # readers share
        assert locks.can("k", R) and not locks.can("k", W)
        order = []

        async def take(mode, name):
            await locks.acquire("k", mode)
            order.append(name)
        writer = asyncio.ensure_future(take(W, "w"))
        await asyncio.sleep(0)
        assert not locks.can("k", R)                   # a write is pending: no new read may start
        reader = asyncio.ensure_future(take(R, "r"))
        await asyncio.sleep(0)
        locks.release("k", R)
        locks.release("k", R)                          # the last reader leaves: the write goes first
        await asyncio.sleep(0)
        assert order == ["w"] and not locks.can("k", R)
        locks.release("k", W)
        await asyncio.sleep(0)
        await asyncio.gather(writer, reader)
        assert order == ["w", "r"]
        locks.release("k", R)
        assert locks.locked() == 0 and locks.can("k", W)
    asyncio.run(main())


def test_a_queued_request_runs_in_its_callers_context():
    """A final save made under `storage.emergency()` keeps that marking when the processor sends it later."""
    from lodestore.storage._throttle import _emergency   # tests may look inside: is this request an emergency?

    async def body(rig: Rig):
        rig.slow(1000)
        elite = rig.elite(release="1.5.0")
        store = elite.get_data_store("s")
        rig.spawn(store.set("a", 0))
        await rig.advance(0)
        rig.spawn(store.set("a", 1))                # queued behind the write in flight: the queues are not empty
        await rig.advance(0)
        seen = []

        async def probe():
            seen.append(_emergency.get())
        with emergency():
            urgent = rig.spawn(elite._perform(elite._request("probe", probe, (RequestType.STANDARD_WRITE,), None,
                                                             None, None, True)))
        plain = rig.spawn(elite._perform(elite._request("probe", probe, (RequestType.STANDARD_WRITE,), None,
                                                        None, None, False)))
        await rig.advance(0)
        assert elite.get_queue_sizes() == (2, 1, 0)
        await rig.advance(10)
        assert urgent.result().success and plain.result().success and seen == [True, False]
    run(body)


# ------------------------------------------------------------------------------------------ argument checks


def test_wrong_argument_types_raise_a_typed_error_and_change_nothing():
    async def body(rig: Rig):
        elite = rig.elite(release="patched")
        store = elite.get_data_store("s")
        bad = [
            (store.get(["a"]), "#1 (key)"), (store.get("a", {"use_cache": False}), "#2 (options)"),
            (store.get("a", None, "yes"), "#3 (prioritize)"), (store.set(True, 1), "#1 (key)"),
            (store.update("a", 5), "#2 (transform)"), (store.increment("a", "1"), "#2 (delta)"),
            (store.increment("a", 1, 7), "#3 (user_ids)"), (store.increment("a", 1, None, {}), "#4 (options)"),
            (store.remove(None), "#1 (key)"), (store.get_version("a", 3), "#2 (version)"),
            (store.get_version_at_time("a", "now"), "#2 (timestamp)"), (store.remove_version("a", None), "#2"),
            (store.list_keys(3), "#1 (prefix)"), (store.list_keys("", "10"), "#2 (page_size)"),
            (store.list_keys("", 10, 5), "#3 (cursor)"), (store.list_keys("", 10, None, 1), "#4 (exclude_deleted)"),
            (store.list_versions("a", "up"), "#2 (sort_direction)"), (store.list_versions("a", None, "x"), "#3"),
            (store.get_sorted(True, 10), "non-ordered"),
            (elite.get_ordered_data_store("o").get_sorted("yes", 10), "#1 (ascending)"),
            (elite.get_ordered_data_store("o").get_sorted(True, None), "#2 (page_size)"),
        ]
        for call, named in bad:
            with pytest.raises(EliteArgumentError, match=named.replace("(", r"\(").replace(")", r"\)")) as info:
                await call
            assert isinstance(info.value, TypeError)
        with pytest.raises(EliteArgumentError, match="function expected, got int"):
            await store.update("a", 5)
        assert elite.statistics().queued == 0 and elite.statistics().fast_path == 0
        assert elite.server.datastores.statistics().requests == {}
        assert await store.get(12) == (None, True)          # a number is a key (tostring)
        with pytest.raises(EliteArgumentError, match="seconds"):
            elite.set_iteration_cycle(math.nan)
        with pytest.raises(ConfigError, match="release"):
            EliteDataStoreService(elite.server, rig.scheduler, release="2.0")
    run(body)


def test_options_refuse_unknown_keys_wrong_types_and_bad_values():
    assert check_options(ELITE, {"save_with": "update", "iteration_cycle": 1}, "store.elite") == \
        EliteOptions(save_with="update", iteration_cycle=1.0)
    for table, field in (({"lock": 1}, "store.elite.lock"), ({"save_with": 3}, "store.elite.save_with"),
                         ({"save_with": "patch"}, "store.elite.save_with"),
                         ({"prioritize": "some"}, "store.elite.prioritize"),
                         ({"release": "1.7.0"}, "store.elite.release"),
                         ({"iteration_cycle": math.nan}, "store.elite.iteration_cycle"),
                         ({"iteration_cycle": 0}, "store.elite.iteration_cycle")):
        with pytest.raises(ConfigError) as info:
            check_options(ELITE, table, "store.elite")
        assert info.value.field == field


# ---------------------------------------------------------------------------------- waiting and GuardCall


def test_wait_for_all_requests_waits_for_the_queue_to_drain():
    async def body(rig: Rig):
        elite, _, tasks = await _many_sets(rig, "patched")
        waited = rig.spawn(elite.wait_for_all_requests())
        await rig.advance(10)
        assert not waited.done() and elite.get_queue_size() > 0
        await rig.advance(300)
        assert waited.done() and all(t.done() for t in tasks)
        idle = rig.spawn(elite.wait_for_all_requests())     # nothing queued: one frame
        await rig.advance(0.02)
        assert idle.done()
    run(body)


def test_guard_call_retries_with_backoff_until_success_or_its_limit():
    async def body(rig: Rig):
        elite = rig.elite(release="patched")
        store = elite.get_data_store("s")
        rig.world.set_faults(FaultConfig(error_rate={"StandardWrite": 1.0}))
        started = rig.clock.now()
        failing = rig.spawn(elite.guard_call(store.set, None, None, None, "a", 1))
        await rig.advance(60)
        value, ok = failing.result()
        assert not ok and isinstance(value, DataStoreError)
        assert elite.statistics().failed == 5                              # DEFAULT_MAX_RETRIES
        assert rig.clock.now() - started >= (1 + 2 + 3 + 4 + 5) * 1000
        answers = iter([EliteResult("no", False), EliteResult("no", False), EliteResult("yes", True)])

        async def flaky():
            return next(answers)
        lucky = rig.spawn(elite.guard_call(flaky, 5, 0.5, False))
        await rig.advance(5)
        assert lucky.result() == ("yes", True)
    run(body)


# ---------------------------------------------------------------------------------------- the game on it


class Holds:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def __call__(self, kind, key, session, at_ms, until_ms):
        self.events.append((kind, key, session, at_ms, until_ms))


async def open_layer(rig: Rig, holds: Holds | None = None, players: int = 2, autosave: float = 60.0,
                     **options) -> EliteLayer:
    config = StoreConfig(name="players", template=TEMPLATE, autosave_interval=autosave, lock_callback=holds)
    game = types.SimpleNamespace(storage=rig.server(players))
    return await ELITE.open(game, rig.scheduler, config, EliteOptions(**options))


def mint(n):
    def fn(data):
        data["coins"] += n
        data["ledger"].append(f"mint{n}")
        return True
    return fn


def grant(item):
    def fn(data):
        data["items"].append(item)
        return True
    return fn


def test_a_single_servers_saves_are_all_durable():
    async def body(rig: Rig):
        holds = Holds()
        layer = await open_layer(rig, holds)
        await layer.load("u1")
        assert await layer.is_loaded("u1")
        for i in range(1, 6):
            assert await layer.update("u1", mint(i))
        await layer.save("u1")                                    # forced save: durable when it returns
        assert rig.stored("players", "u1")["coins"] == 15
        await layer.update("u1", grant("sword"))
        await rig.advance(61)                                     # the autosave
        assert rig.stored("players", "u1")["items"] == ["sword"]
        await layer.update("u1", mint(100))
        assert await layer.unload("u1") is True
        stored = rig.stored("players", "u1")
        assert stored["coins"] == 115 and stored["items"] == ["sword"] and len(stored["ledger"]) == 6
        assert layer.counters.saves == 3 and layer.counters.save_failures == 0
        assert layer.statistics().at_risk_ms > 0 and not layer._dirty
        kinds = [(k, until - at) for k, _, _, at, until in holds.events]
        assert kinds == [("acquired", FOREVER_MS), ("released", FOREVER_MS)]   # a hold with no lock behind it
        await layer.load("u1")
        assert layer.players["u1"].data == stored
        assert (await ELITE.read(rig.inspector, rig.scheduler, layer.config, layer.options,
                                 ["u1", "nobody"])) == {"u1": stored, "nobody": None}
        closing = rig.spawn(layer.close())         # BindToClose: the module's 2 s, then until the queues are done
        await rig.advance(1)
        assert not closing.done()
        await rig.advance(1.1)
        assert closing.done()
    run(body)


def test_two_servers_on_one_key_lose_a_write_with_no_session_lock():
    async def body(rig: Rig):
        holds = Holds()
        a = await open_layer(rig, holds)
        b = await open_layer(rig, holds)
        await a.load("u1")
        await b.load("u1")                         # nothing stops the second server
        acquired = [e for e in holds.events if e[0] == "acquired"]
        assert len(acquired) == 2 and all(until > rig.clock.now() for *_, until in acquired)   # overlapping holds
        await a.update("u1", mint(50))
        await a.save("u1")
        await b.update("u1", grant("shield"))
        await b.save("u1")                         # its copy never saw the 50 coins
        stored = rig.stored("players", "u1")
        assert stored["items"] == ["shield"] and stored["coins"] == 0        # last write wins: a's mint is lost
    run(body)


def test_saving_with_update_keeps_both_servers_changes():
    async def body(rig: Rig):
        a = await open_layer(rig, save_with="update")
        b = await open_layer(rig, save_with="update")
        await a.load("u1")
        await b.load("u1")
        await a.update("u1", mint(50))
        await a.save("u1")
        await b.update("u1", grant("shield"))
        await b.save("u1")
        stored = rig.stored("players", "u1")
        assert stored["coins"] == 50 and stored["items"] == ["shield"]
        assert b.players["u1"].data == stored
    run(body)


def test_a_failed_load_or_save_raises_design_errors():
    async def body(rig: Rig):
        layer = await open_layer(rig)
        rig.world.set_faults(FaultConfig(error_rate={"StandardRead": 1.0}))
        with pytest.raises(DesignError) as info:
            await layer.load("u1")
        assert info.value.reason == "LoadFailed" and layer.counters.load_failures == 1
        assert not await layer.is_loaded("u1")
        rig.world.set_faults(FaultConfig(error_rate={"StandardWrite": 1.0}))
        await layer.load("u2")
        await layer.update("u2", mint(5))
        with pytest.raises(DesignError) as info:
            await layer.save("u2")
        assert info.value.reason == "SaveFailed" and layer.counters.save_failures == 1
        assert await layer.unload("u2") is False
        with pytest.raises(DesignError) as info:
            await layer.update("u2", mint(1))
        assert info.value.reason == "NotLoaded"
    run(body)


def test_final_saves_are_prioritized_over_queued_autosaves():
    async def body(rig: Rig):
        rig.slow(1000, ("StandardWrite",))
        layer = await open_layer(rig, release="1.5.0", autosave=10)
        for key in ("u1", "u2"):
            await layer.load(key)
            await layer.update(key, mint(1))
        await rig.advance(10)                       # both autosaves in flight
        second = rig.spawn(layer.save("u1"))        # a forced save waits behind u1's autosave (normal queue)
        await rig.advance(0)
        final = rig.spawn(layer.unload("u1"))       # the final save: priority queue
        await rig.advance(0)
        assert layer.elite.get_queue_sizes()[:2] == (1, 1)
        for _ in range(20):
            if final.done():
                break
            await rig.advance(0.35)
        assert final.result() is True and not second.done()
        await rig.advance(5)
        assert second.done()
    run(body)


def test_crash_stops_everything_and_reports_the_holds_lost():
    async def body(rig: Rig):
        holds = Holds()
        rig.slow(1000, ("StandardWrite",))
        layer = await open_layer(rig, holds, release="1.5.0")
        await layer.load("u1")
        await layer.update("u1", mint(3))
        saving = rig.spawn(layer.save("u1"))
        await rig.advance(0)
        layer.crash()
        await rig.advance(120)
        assert saving.done() and [e[0] for e in holds.events] == ["acquired", "lost"]
        with pytest.raises(DesignError) as info:
            await layer.load("u2")
        assert info.value.reason == "ServerGone"
        assert layer.elite.statistics().in_flight == 0
    run(body)


def test_a_budget_question_the_budget_actor_does_not_answer_never_stops_the_processor(monkeypatch):
    """The budget actor is a message away: when it does not answer for a while, the processor keeps its last
    answer and goes on, and every queued call is delivered once it answers again."""
    from lodestore.storage import LodestoreError

    async def body(rig: Rig):
        elite, store, tasks = await _many_sets(rig, "patched", n=150)
        service = type(elite.server.datastores.aio)
        asked = service.get_request_budget
        silent = [True]

        async def no_answer(self, request_type):
            if silent[0]:
                raise LodestoreError("the budget service did not answer")
            return await asked(self, request_type)
        monkeypatch.setattr(service, "get_request_budget", no_answer)
        await rig.advance(30)
        silent[0] = False
        await rig.advance(120)
        results = [t.result() for t in tasks]
        assert all(ok for _, ok in results) and len(results) == 150
    run(body)
