"""Data stores' lifecycle: ListDataStoresAsync, Open Cloud's delete / undelete (30 days, then purged) and daily
snapshots, on in-process worlds with a manual clock."""

from __future__ import annotations

import asyncio

import pytest

from lodestore.storage import (DATASTORE_DELETED, HOUR_MS, DataStoreError, DataStoreInfo, DataStoreState, ManualClock,
                               RequestType, SnapshotResult, World, shard_of)

T0 = 1_700_000_000_000 - 1_700_000_000_000 % (24 * HOUR_MS) + 10 * HOUR_MS   # 10:00 UTC on some day
DAY_MS = 24 * HOUR_MS
THIRTY_DAYS_MS = 30 * DAY_MS


def make_world(shards: int = 1, tmp_path=None, **kw) -> tuple[World, ManualClock]:
    """An in-process world: in memory, or on a SQLite file in `tmp_path` when given."""
    clock = ManualClock(T0)
    if tmp_path is not None:
        kw.update(backend="sqlite", path=str(tmp_path / "w.db"))
    return World.in_process(clock=clock, shards=shards, **kw), clock


@pytest.fixture(params=["memory", "sqlite"])
def where(request, tmp_path):
    """Where a test's world keeps its entries: None (memory) or a directory for its SQLite file."""
    return None if request.param == "memory" else tmp_path


def names(page) -> list[str]:
    return [info.name for info in page.items]


# ---------------------------------------------------------------------------------------------------- listing


@pytest.mark.parametrize("shards", [1, 3])
def test_list_data_stores_pages_in_name_order_over_every_shard(shards, where):
    world, clock = make_world(shards, where)
    ds = world.server("s").datastores
    wanted = [f"store{i:02d}" for i in range(40)]
    for i, name in enumerate(reversed(wanted)):
        ds.get_data_store(name).set(f"k{i}", i)
    first = ds.list_data_stores()
    assert names(first) == wanted[:32]                   # ListDataStoresAsync's default page: 32
    second = ds.list_data_stores(cursor=first.cursor)
    assert names(second) == wanted[32:] and second.is_finished
    assert names(ds.list_data_stores("store3", page_size=5)) == wanted[30:35]


def test_only_stores_that_hold_something_are_listed_with_their_times(where):
    world, clock = make_world(1, where)
    ds = world.server("s").datastores
    ds.get_data_store("emptied").set("k", 1)
    ds.get_data_store("emptied").remove("k")
    ds.get_data_store("kept").set("a", 1)
    clock.advance(seconds=10)
    ds.get_data_store("kept").set("b", 2)
    ds.get_ordered_data_store("scores").set("u", 5)       # an ordered data store is not a standard one
    (info,) = ds.list_data_stores().items
    assert info == DataStoreInfo("kept", T0, T0 + 10_000, DataStoreState.ACTIVE, None)


def test_listing_spends_one_standard_list_request_and_checks_its_arguments():
    world, _ = make_world()
    ds = world.server("s", players=1).datastores
    ds.get_data_store("a").set("k", 1)
    before = ds.get_request_budget(RequestType.STANDARD_LIST)
    ds.list_data_stores()
    assert ds.get_request_budget(RequestType.STANDARD_LIST) == before - 1
    assert ds.statistics().requests[RequestType.STANDARD_LIST.value] == 1
    for bad in ({"page_size": -1}, {"page_size": 1.5}, {"page_size": 1025}):
        with pytest.raises(DataStoreError) as err:
            ds.list_data_stores(**bad)
        assert err.value.name == "InvalidPageSize"
    with pytest.raises(DataStoreError, match="prefix"):
        ds.list_data_stores(7)
    with pytest.raises(DataStoreError, match="cursor"):
        ds.list_data_stores(cursor="bogus")
    assert ds.get_request_budget(RequestType.STANDARD_LIST) == before - 1     # refused calls spent nothing


def test_the_coroutine_twin_lists_the_same():
    world, _ = make_world(2)
    ds = world.server("s").datastores
    for name in ("b", "a", "c"):
        ds.get_data_store(name).set("k", 1)
    page = asyncio.run(ds.aio.list_data_stores(page_size=2))
    assert names(page) == ["a", "b"] and page.cursor is not None
    rest = asyncio.run(ds.aio.list_data_stores(cursor=page.cursor))
    assert rest.items == ds.list_data_stores(cursor=page.cursor).items and names(rest) == ["c"]


# ------------------------------------------------------------------------------------------ delete, undelete


@pytest.mark.parametrize("shards", [1, 4])
def test_a_deleted_store_is_refused_at_once_to_every_server_and_listed_only_with_show_deleted(shards, where):
    world, clock = make_world(shards, where)
    one, two = world.server("one").datastores, world.server("two").datastores
    for key in ("a", "b", "c", "d", "e"):
        one.get_data_store("players").set(key, key)
    one.get_data_store("other").set("k", 1)
    reader = two.get_data_store("players")
    assert reader.get("a") == ("a", reader.get("a")[1])           # now in that object's 4 s cache
    info = world.delete_data_store("players")
    assert info.state is DataStoreState.DELETED and info.expire_time == T0 + THIRTY_DAYS_MS
    calls = [lambda s: s.get("a", use_cache=False), lambda s: s.set("new", 1), lambda s: s.remove("b"),
             lambda s: s.increment("n"), lambda s: s.list_keys(), lambda s: s.list_versions("a"),
             lambda s: s.update("c", lambda old, _: old)]
    for ds in (one, two):
        store = ds.get_data_store("players")
        for call in calls:
            with pytest.raises(DataStoreError) as err:
                call(store)
            assert (err.value.code, err.value.name) == DATASTORE_DELETED == (404, "DatastoreDeleted")
    assert names(one.list_data_stores()) == ["other"]
    listed = one.list_data_stores(show_deleted=True).items
    assert listed[1] == info and listed[0].state is DataStoreState.ACTIVE
    assert world.delete_data_store("players") == info                   # deleting again changes nothing


def test_undelete_within_30_days_gives_the_store_back_as_it_was_versions_included():
    world, clock = make_world(3)
    store = world.server("s").datastores.get_data_store("players")
    store.set("k", 1)
    clock.advance(seconds=3600)
    store.set("k", 2)
    versions = store.list_versions("k").items
    world.delete_data_store("players")
    clock.advance(ms=THIRTY_DAYS_MS - 1)
    info = world.undelete_data_store("players")
    assert info.state is DataStoreState.ACTIVE and info.expire_time is None
    assert store.get("k", use_cache=False)[0] == 2
    assert store.list_versions("k").items == versions
    with pytest.raises(DataStoreError) as err:
        world.undelete_data_store("players")
    assert err.value.name == "DatastoreNotDeleted"


@pytest.mark.parametrize("touch", ["request", "sweep", "undelete"])
def test_after_30_days_the_store_is_purged_and_cannot_be_undeleted(touch, where):
    world, clock = make_world(2, where)
    ds = world.server("s").datastores
    store = ds.get_data_store("players")
    for key in ("a", "b"):
        store.set(key, key)
        clock.advance(seconds=3600)
        store.set(key, key + "2")
    world.delete_data_store("players")
    clock.advance(ms=THIRTY_DAYS_MS)
    if touch == "request":
        assert store.get("a", use_cache=False) == (None, None)          # purged on first touch: an empty store
    elif touch == "sweep":
        for i in range(8):                                              # a batch on each shard runs its sweep
            ds.get_data_store("other").set(f"x{i}", 1)
        for shard in world._transport.shards["datastore"]:              # nothing touched "players" itself
            assert shard.engine.lifecycle.deleted == {}
            assert all(shard.engine.backend.versions(("players", "global", k)) == [] for k in ("a", "b"))
    else:
        with pytest.raises(DataStoreError) as err:
            world.undelete_data_store("players")
        assert err.value.name == "DatastoreNotFound"
    for key in ("a", "b"):
        assert store.list_versions(key).items == []                     # every version gone
    assert store.list_keys().items == []
    store.set("a", "fresh")                                             # the name is free again
    assert store.get("a")[0] == "fresh"


def test_a_shard_that_purges_late_keeps_what_another_shard_wrote_to_the_new_store(tmp_path):
    """The shards of one SQLite file each purge on their own first touch: a late purge must not take the versions
    of the new store of that name another shard wrote after its own purge."""
    world, clock = make_world(2, tmp_path)
    store = world.server("s").datastores.get_data_store("players")
    key_of = {}
    for i in range(20):
        key_of.setdefault(shard_of(("players", "global", f"k{i}"), 2), f"k{i}")
    first, second = key_of[0], key_of[1]
    store.set(first, "old")
    store.set(second, "old")
    world.delete_data_store("players")
    clock.advance(ms=THIRTY_DAYS_MS)
    store.set(first, "new")                    # shard 0 purges the old store, then writes the new one
    assert store.get(second, use_cache=False) == (None, None)   # shard 1 purges now, late
    assert store.get(first, use_cache=False)[0] == "new"
    assert len(store.list_versions(first).items) == 1


def test_delete_refuses_a_store_that_holds_nothing_and_bad_names():
    world, _ = make_world()
    with pytest.raises(DataStoreError) as err:
        world.delete_data_store("nothing")
    assert err.value.name == "DatastoreNotFound"
    with pytest.raises(DataStoreError):
        world.delete_data_store("x" * 51)
    with pytest.raises(DataStoreError) as err:
        world.undelete_data_store("nothing")
    assert err.value.name == "DatastoreNotDeleted"


def test_deletion_survives_a_restart_on_the_same_sqlite_file(tmp_path):
    path = str(tmp_path / "w.db")
    clock = ManualClock(T0)
    world = World.in_process("w", backend="sqlite", path=path, clock=clock, shards=2)
    world.server("s").datastores.get_data_store("players").set("k", 1)
    world.delete_data_store("players")
    world.snapshot_data_stores()
    world.shutdown()
    again = World.in_process("w", backend="sqlite", path=path, clock=clock, shards=2)
    store = again.server("s").datastores.get_data_store("players")
    with pytest.raises(DataStoreError, match="DatastoreDeleted"):
        store.get("k")
    assert again.snapshot_data_stores() == SnapshotResult(False, T0)
    again.undelete_data_store("players")
    assert store.get("k")[0] == 1
    again.shutdown()


def test_the_coroutine_twins_delete_and_undelete():
    world, _ = make_world()
    world.server("s").datastores.get_data_store("players").set("k", 1)

    async def go():
        deleted = await world.aio.delete_data_store("players")
        restored = await world.aio.undelete_data_store("players")
        return deleted.state, restored.state

    assert asyncio.run(go()) == (DataStoreState.DELETED, DataStoreState.ACTIVE)


# -------------------------------------------------------------------------------------------------- snapshots


def test_a_snapshot_once_per_utc_day():
    world, clock = make_world()
    assert world.snapshot_data_stores() == SnapshotResult(True, T0)
    clock.advance(ms=DAY_MS - 10 * HOUR_MS - 1)                          # 23:59:59.999 the same day
    assert world.snapshot_data_stores() == SnapshotResult(False, T0)
    clock.advance(ms=1)                                                  # midnight UTC: a new day
    assert world.snapshot_data_stores() == SnapshotResult(True, T0 + DAY_MS - 10 * HOUR_MS)
    assert asyncio.run(world.aio.snapshot_data_stores()).new_snapshot_taken is False


@pytest.mark.parametrize("shards", [1, 3])
def test_after_a_snapshot_the_next_write_of_each_key_keeps_a_backup_within_the_hour(shards):
    world, clock = make_world(shards)
    store = world.server("s").datastores.get_data_store("players")
    for key in ("a", "b"):
        store.set(key, 1)
    clock.advance(seconds=1)
    store.set("a", 2)                                   # same hour, no snapshot yet: replaces version 1
    assert len(store.list_versions("a").items) == 1
    world.snapshot_data_stores()
    clock.advance(seconds=1)
    for key in ("a", "b"):
        store.set(key, 3)                               # the first write after the snapshot keeps the previous
        clock.advance(seconds=1)
        store.set(key, 4)                               # a later write of the same hour replaces its own
    for key, kept in (("a", 2), ("b", 1)):
        versions = store.list_versions(key).items
        assert len(versions) == 2
        assert store.get_version(key, versions[0].version)[0] == kept
        assert store.get(key, use_cache=False)[0] == 4


# ------------------------------------------------------------------------------------------------------- on Ray


def test_on_ray_a_deleted_store_is_refused_everywhere_and_a_user_is_erased(ray_world):
    """One world on Ray: the operator calls reach its shard actors (their answers and errors travel back typed)."""
    writer = ray_world.server("one").datastores.get_data_store("players")
    writer.set("user_7", 1)
    writer.set("user_8", 2)
    assert ray_world.delete_data_store("players").state is DataStoreState.DELETED
    with pytest.raises(DataStoreError) as err:
        ray_world.server("two").datastores.get_data_store("players").get("user_8")
    assert err.value.name == "DatastoreDeleted"
    assert ray_world.undelete_data_store("players").state is DataStoreState.ACTIVE
    ray_world.set_deletion_templates([("players", "global", "user_{UserId}")])
    assert ray_world.erase_user(7).complete
    assert writer.list_keys().items == ["user_8"]
