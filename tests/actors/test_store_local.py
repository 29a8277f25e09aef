"""The public Store API on an in-process world with a manual clock: both placements, lifecycle, config errors."""

from __future__ import annotations

import math

import pytest

from lodestore import GameServer, advance
from lodestore.actors import KeyNotLoadedError, LockLostError, StoreClosedError, StoreStatistics
from lodestore.storage import ConfigError, ManualClock, TransformError, World
from tests.actors._rig import nested

TEMPLATE = {"coins": 0, "items": []}


@pytest.fixture
def world():
    return World.in_process("local", clock=ManualClock(), budget=None)


def give(n):
    def fn(data):
        data["coins"] += n
        return True
    return fn


@pytest.mark.parametrize("placement", ["per-server", "per-key"])
def test_the_blocking_api_in_both_placements(world, placement):
    server = GameServer(world, "job-1", players=3)
    store = server.create_store("players", TEMPLATE, placement=placement)
    store.load("u1", user_ids=[1])
    store.load("u2")
    assert store.loaded_keys() == ["u1", "u2"]
    assert store.update("u1", give(3)) is True
    assert store.update_immutable("u2", lambda d: {**d, "items": [*d["items"], "hat"]}) is True
    with pytest.raises(TransformError):
        store.update("u1", lambda d: 1 / 0)
    assert store.get("u1") == {"coins": 3, "items": []}
    assert store.save("u1") is True
    assert store.unload("u1") is True and store.unload("u1") is False
    assert store.loaded_keys() == ["u2"]
    with pytest.raises(KeyNotLoadedError, match="Key not loaded"):
        store.get("u1")
    assert store.peek("u1") == {"coins": 3, "items": []}
    assert store.is_loaded("u2") and not store.is_loaded("u1")
    stats = store.statistics()
    assert all(isinstance(s, StoreStatistics) for s in stats)
    assert sum(s.counters.loads for s in stats) >= 1
    server.shutdown()
    with pytest.raises(StoreClosedError, match="Store is closed"):
        store.load("u3")
    other = GameServer(world, "job-2").create_store("players", TEMPLATE)
    assert other.peek("u2")["items"] == ["hat"]           # the shutdown saved it ...
    assert not other.probe_lock_active("u2")              # ... and released the lock


def test_create_store_refuses_unknown_options_and_duplicates(world):
    server = GameServer(world, "job-cfg")
    with pytest.raises(ConfigError, match="unknown store option 'autosave'"):
        server.create_store("players", TEMPLATE, autosave=5)
    server.create_store("players", TEMPLATE)
    with pytest.raises(ConfigError, match="already open"):
        server.create_store("players", TEMPLATE)
    with pytest.raises(ConfigError, match="storage.World"):
        GameServer("not a world")


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -1, "5", True, None])
def test_advance_refuses_a_time_that_is_not_a_finite_number_and_moves_nothing(world, seconds):
    # NaN raised an untyped ValueError and inf an OverflowError from deep in the scheduler
    before = world.clock.now()
    with pytest.raises(ConfigError, match="advance: seconds must be a finite number"):
        advance(world, seconds)
    assert world.clock.now() == before
    advance(world, 0)


def test_advance_fires_autosaves_and_expires_a_crashed_servers_locks(world):
    a, b = GameServer(world, "job-a"), GameServer(world, "job-b")
    store_a = a.create_store("players", TEMPLATE, autosave_interval=30)
    store_b = b.create_store("players", TEMPLATE, lock_wait=200)
    store_a.load("u1")
    store_a.update("u1", give(7))
    advance(world, 31)                                    # the autosave ran
    assert store_b.peek("u1")["coins"] == 7
    store_a.update("u1", give(100))                       # never saved: the server crashes
    a.crash()
    assert store_b.probe_lock_active("u1") is True
    advance(world, 91)                                    # nobody refreshes the lock: it expires
    assert store_b.probe_lock_active("u1") is False
    store_b.load("u1")
    assert store_b.get("u1")["coins"] == 7
    b.shutdown()


def test_store_close_saves_and_unlocks_every_key(world):
    server = GameServer(world, "job-close")
    store = server.create_store("players", TEMPLATE)
    for i in range(5):
        store.load(f"u{i}")
        store.update(f"u{i}", give(i))
    store.close()
    with pytest.raises(StoreClosedError):
        store.get("u0")
    other = GameServer(world, "job-other").create_store("players", TEMPLATE)
    assert [other.peek(f"u{i}")["coins"] for i in range(5)] == [0, 1, 2, 3, 4]
    assert not any(other.probe_lock_active(f"u{i}") for i in range(5))


def test_a_lost_lock_fires_on_lock_lost_and_later_calls_fail(world):
    lost = []
    a = GameServer(world, "job-lost")
    store = a.create_store("players", TEMPLATE, on_lock_lost=lost.append, lock_ttl=30, lock_refresh=10,
                           lock_partitions=1)
    store.load("u1")
    # Someone removes the lock item (an operator, or an expiry the holder missed): the next refresh finds it gone.
    world.server("ops").memorystores.get_hash_map("lodestore/locks/players").remove("u1")
    advance(world, 11)
    assert lost == ["u1"]
    with pytest.raises((KeyNotLoadedError, LockLostError)):
        store.update("u1", give(1))


@pytest.mark.parametrize("placement", ["per-server", "per-key"])
def test_the_async_game_server_api_on_the_running_loop(placement):
    import asyncio
    from lodestore import store_options
    from lodestore.actors import StoreConfig
    from lodestore.storage import LocalRuntime, Scheduler

    async def main():
        clock = ManualClock()
        world = World.in_process("aio", clock=clock, budget=None)
        scheduler = Scheduler(clock)
        runtime = LocalRuntime.here("aio-test")
        locks = []
        config = StoreConfig("players", TEMPLATE, placement=placement,
                             lock_callback=lambda *event: locks.append(event[0]))
        server = await GameServer.create(world, "job-a", players=2, runtime=runtime)
        store = await server.aio.create_store(config.name, config.template, **store_options(config))
        await store.aio.load("u1")
        await store.aio.load("u2")
        assert await store.aio.update("u1", give(4)) is True
        assert await store.aio.loaded_keys() == ["u1", "u2"]
        assert len(await store.aio.statistics()) == (2 if placement == "per-key" else 1)
        await server.aio.stall_locks(1)
        assert await store.aio.unload("u2") is True
        totals = await store.aio.totals()
        assert totals.counters.loads == 2 and totals.counters.unloads == 1   # the ended actor's count is kept
        assert totals.key_actors == (2 if placement == "per-key" else 1)
        assert locks                                                      # the lock_callback option arrived
        await server.aio.begin_shutdown()
        await server.aio.shutdown()
        assert (await store.aio.totals()).counters.unloads == 2          # figures outlive the key actors
        other = GameServer(world, "job-b", runtime=runtime)
        reader = await other.aio.create_store("players", TEMPLATE)
        assert await reader.aio.peek("u1") == {"coins": 4, "items": []}
        assert not await reader.aio.probe_lock_active("u1")
        del scheduler

    asyncio.run(main())


# ------------------------------------------------------------------------------------------- issue 18 "Hardening"


def test_data_storable_alone_but_not_inside_its_record_is_refused_at_update(world):
    # issue 18 (2): update took data 253-256 deep; its record nests it deeper still, so every save, autosave and
    # unload then failed with 104, the session kept its lock forever and shutdown raised
    from lodestore.actors import records
    from lodestore.storage import DataStoreError, check_value

    server = GameServer(world, "job-deep")
    store = server.create_store("players", TEMPLATE)
    store.load("u1")
    store.update("u1", give(2))
    too_deep = nested(254)
    check_value(too_deep)                                       # within Roblox's 256 as a value of its own
    attempts = {"update": lambda: store.update("u1", lambda d: d.__setitem__("items", too_deep) or True),
                "update_immutable": lambda: store.update_immutable("u1", lambda d: {**d, "items": too_deep}),
                "tx": lambda: store.tx(["u1"], lambda s: s["u1"].__setitem__("items", too_deep) or True),
                "tx_immutable": lambda: store.tx_immutable(["u1"], lambda s: {"u1": {**s["u1"], "items": too_deep}})}
    for name, attempt in attempts.items():
        with pytest.raises(DataStoreError, match="data for key 'u1'") as caught:
            attempt()
        assert caught.value.code == 104, name
        assert store.get("u1") == {"coins": 2, "items": []}, name      # nothing changed
    deepest = nested(records.MAX_DATA_DEPTH - 1)                         # {"items": ...} adds one level
    assert store.update("u1", lambda d: d.__setitem__("items", deepest) or True) is True
    assert store.save("u1") is True                                      # the deepest data accepted is saved
    server.shutdown()                                                    # final save and lock release work
    reader = GameServer(world, "job-reader").create_store("players", TEMPLATE)
    assert not reader.probe_lock_active("u1")
    assert reader.peek("u1")["items"] == deepest


def test_migrations_and_legacy_data_too_deep_for_the_record_fail_the_load(world):
    from lodestore.actors import MigrationError

    server = GameServer(world, "job-mig")
    migrated = server.create_store("migrated", TEMPLATE, migrations=[("deepen", lambda d: nested(254))],
                                   import_legacy_data=lambda key: {"coins": 1} if key == "old" else None)
    with pytest.raises(MigrationError, match="deepen"):
        migrated.load("old")
    imported = server.create_store("imported", TEMPLATE, import_legacy_data=lambda key: nested(254))
    with pytest.raises(MigrationError, match="import_legacy_data"):
        imported.load("u1")
    assert not migrated.probe_lock_active("old") and not imported.probe_lock_active("u1")   # nothing kept locked
    server.shutdown()


class _Opaque:
    pass


BAD_VALUES = [math.nan, math.inf, {1, 2}, b"raw", _Opaque()]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=["nan", "inf", "set", "bytes", "object"])
@pytest.mark.parametrize("immutable", [False, True], ids=["tx", "tx_immutable"])
def test_a_transaction_with_unstorable_data_raises_what_update_raises(world, bad, immutable):
    # issue 18 (13): the coordinator compared the results' encodings before checking them, so these raised a bare
    # ValueError or TypeError instead of the DataStoreError 103/104 naming the key
    from lodestore.storage import DataStoreError

    server = GameServer(world, "job-tx")
    store = server.create_store("players", TEMPLATE)
    for key in ("u1", "u2"):
        store.load(key)
    with pytest.raises(DataStoreError) as by_update:
        store.update("u2", lambda d: d.__setitem__("coins", bad) or True)

    def fn(state):
        state["u1"]["coins"] = 5
        state["u2"]["coins"] = bad
        return True

    def fn_immutable(state):
        return {"u1": {**state["u1"], "coins": 5}, "u2": {**state["u2"], "coins": bad}}

    with pytest.raises(DataStoreError) as by_tx:
        store.tx_immutable(["u1", "u2"], fn_immutable) if immutable else store.tx(["u1", "u2"], fn)
    assert (by_tx.value.code, by_tx.value.message) == (by_update.value.code, by_update.value.message)
    assert "key 'u2'" in by_tx.value.message
    assert [store.get(k) for k in ("u1", "u2")] == [TEMPLATE, TEMPLATE]        # no key changed
    assert store.tx(["u1", "u2"], lambda s: s["u1"].update(coins=3) or s["u2"].update(coins=4) or True) is True
    assert [store.get(k)["coins"] for k in ("u1", "u2")] == [3, 4]            # sessions and locks are fine
    server.shutdown()


@pytest.mark.parametrize("players", [0, None])
def test_a_server_that_never_loaded_anything_shuts_down_with_budgets_on(players):
    # issue 18 (4): a server the budget ledger never saw (no players, no lease) failed its final BindToClose with
    # "unknown game server ...: register_server first"
    world = World.in_process("budgeted", clock=ManualClock())              # budgets on ("current")
    server = GameServer(world, "server_0002", players=players)
    server.create_store("players", TEMPLATE)
    server.shutdown()
    assert "server_0002" not in world.budget_statistics().servers

    import asyncio

    async def main():
        other = GameServer(world, "server_0003", players=players)
        await other.aio.begin_shutdown()
        await other.aio.shutdown()
    asyncio.run(main())
    assert world.budget_statistics().servers == {}


def test_after_shutdown_a_server_refuses_everything_and_the_budget_ledger_is_unchanged():
    # issue 18 (15): set_players after shutdown put the dead server back into the ledger (CCU from 0 to 1000)
    import asyncio

    world = World.in_process("budgeted", clock=ManualClock())
    server = GameServer(world, "job-1", players=5)
    store = server.create_store("players", TEMPLATE)
    store.load("u1")
    server.shutdown()
    before = world.budget_statistics()
    assert before.ccu == 0 and "job-1" not in before.servers
    refused = [lambda: server.set_players(1000), lambda: server.create_store("other", TEMPLATE),
               lambda: server.stall_locks(5), lambda: store.get("u1"), lambda: store.load("u2"),
               lambda: asyncio.run(server.aio.set_players(1000)), lambda: asyncio.run(server.aio.stall_locks(5)),
               lambda: asyncio.run(server.aio.create_store("other", TEMPLATE))]
    for call in refused:
        with pytest.raises(StoreClosedError, match="Store is closed"):
            call()
    after = world.budget_statistics()
    assert after.ccu == 0 and after.servers == before.servers
    server.shutdown()                                                       # shutting down again does nothing


def test_stall_locks_refuses_a_length_that_is_not_a_bounded_number(world):
    from lodestore.actors import MAX_LOCK_TTL_S

    server = GameServer(world, "job-stall")
    server.create_store("players", TEMPLATE)
    for seconds in (math.nan, math.inf, -1, MAX_LOCK_TTL_S + 1, "5"):
        with pytest.raises(ConfigError, match="seconds"):
            server.stall_locks(seconds)
    server.stall_locks(0)
    server.shutdown()
