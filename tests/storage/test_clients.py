"""The clients a game-server programmer calls (storage/datastore/_client.py, storage/memorystore/_client.py), end to end
through an in-process world: argument checks, the read cache, UpdateAsync's optimistic loop, listings, versions,
ordered stores, the asyncio flavour, injected faults, MemoryStore structures and a SQLite world that is re-opened.

Every test drives a `ManualClock`; nothing sleeps and nothing starts Ray.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import sys
import threading

import pytest

from lodestore import storage
from lodestore.storage import (DataStoreError, FaultConfig, KeyInfo, ManualClock, MemoryStoreError, Outage, SortDirection,
                     TransformError, UpdateResult, World)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
START = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS  # on a UTC hour boundary
MAX_VALUE_CHARS = 4_194_304

# Request budgets are not what these tests are about (tests/storage/test_throttle.py is), and on a manual clock a
# spent budget never refills: the worlds here have none.
NO_BUDGETS = {"budget": None}


# ------------------------------------------------------------------------------------------------------ helpers


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request) -> str:
    return request.param


def make_world(clock: ManualClock, tmp_path, backend: str = "memory", shards: int = 1,
               faults: FaultConfig | None = None, name: str = "w") -> World:
    path = tmp_path / f"{name}.db" if backend == "sqlite" else None
    return World.in_process(name=name, backend=backend, path=path, clock=clock, shards=shards, faults=faults,
                            **NO_BUDGETS)


@pytest.fixture
def world(clock, tmp_path, backend):
    w = make_world(clock, tmp_path, backend)
    yield w
    w.shutdown()


@pytest.fixture
def mem_world(clock, tmp_path):
    w = make_world(clock, tmp_path)
    yield w
    w.shutdown()


@pytest.fixture
def sharded(clock, tmp_path, backend):
    """Three shards: listings have to merge what every shard owns."""
    w = make_world(clock, tmp_path, backend, shards=3)
    yield w
    w.shutdown()


def refused(code: int, fn, *args, **kwargs) -> DataStoreError:
    """Call fn, expect DataStoreError with `code`; return it."""
    with pytest.raises(DataStoreError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, str(info.value)
    return info.value


def fresh(store, key):
    return store.get(key, use_cache=False)


def all_pages(fetch, **kwargs) -> list:
    """Follow cursors to the end; every page but the last has a cursor."""
    items, cursor, pages = [], None, 0
    while True:
        page = fetch(cursor=cursor, **kwargs)
        items.extend(page.items)
        pages += 1
        assert pages < 1000
        if page.is_finished:
            return items
        cursor = page.cursor


def writes(service) -> int:
    return service.statistics().requests.get("StandardWrite", 0)


# ------------------------------------------------------------------------------- 1. round trips and KeyInfo


def test_set_then_get_gives_value_and_key_info(world, clock):
    store = world.server("a").datastores.get_data_store("players")
    version = store.set("user_1", {"coins": 10, "items": ["sword"]}, user_ids=[1, 2], metadata={"tag": "x"})
    value, info = fresh(store, "user_1")
    assert value == {"coins": 10, "items": ["sword"]}
    assert isinstance(info, KeyInfo)
    assert info.version == version
    assert info.created_time == info.updated_time == START
    assert info.get_user_ids() == [1, 2] and info.get_metadata() == {"tag": "x"}


def test_missing_key_reads_none_none(world):
    store = world.server("a").datastores.get_data_store("players")
    assert store.get("nobody") == (None, None)
    assert fresh(store, "nobody") == (None, None)


def test_every_write_has_a_new_version_created_time_stays_updated_time_moves(world, clock):
    store = world.server("a").datastores.get_data_store("players")
    v1 = store.set("k", 1)
    clock.advance(seconds=5)
    v2 = store.set("k", 2)
    clock.advance(seconds=5)
    value, info = store.update("k", lambda old, info: old + 1)
    clock.advance(seconds=5)
    n, info2 = store.increment("k", 10)
    assert value == 3 and n == 13
    versions = [v1, v2, info.version, info2.version]
    assert len(set(versions)) == 4
    assert info.created_time == info2.created_time == START
    assert info.updated_time == START + 10_000 and info2.updated_time == START + 15_000
    assert fresh(store, "k") == (13, info2)


def test_set_replaces_user_ids_and_metadata(world):
    store = world.server("a").datastores.get_data_store("players")
    store.set("k", 1, user_ids=[1, 2], metadata={"a": 1})
    store.set("k", 2, user_ids=[3], metadata={"b": "two"})
    _, info = fresh(store, "k")
    assert info.get_user_ids() == [3] and info.get_metadata() == {"b": "two"}
    store.set("k", 3)
    _, info = fresh(store, "k")
    assert info.get_user_ids() == [] and info.get_metadata() == {}


def test_update_with_a_plain_value_keeps_user_ids_and_metadata(world):
    store = world.server("a").datastores.get_data_store("players")
    store.set("k", {"coins": 1}, user_ids=[7, 8], metadata={"class": "mage"})
    value, info = store.update("k", lambda old, info: {**old, "coins": old["coins"] + 1})
    assert value == {"coins": 2}
    assert info.get_user_ids() == [7, 8] and info.get_metadata() == {"class": "mage"}
    assert fresh(store, "k") == (value, info)


def test_update_with_update_result_replaces_user_ids_and_metadata(world):
    store = world.server("a").datastores.get_data_store("players")
    store.set("k", 1, user_ids=[7, 8], metadata={"class": "mage"})
    value, info = store.update("k", lambda old, info: UpdateResult(old + 1, [9], {"class": "rogue"}))
    assert value == 2 and info.get_user_ids() == [9] and info.get_metadata() == {"class": "rogue"}
    value, info = store.update("k", lambda old, info: UpdateResult(old + 1))
    assert value == 3 and info.get_user_ids() == [] and info.get_metadata() == {}
    assert fresh(store, "k") == (3, info)


def test_update_transform_sees_old_value_and_key_info(world):
    store = world.server("a").datastores.get_data_store("players")
    seen = []
    store.update("k", lambda old, info: seen.append((old, info)) or "first")
    version = store.set("k", "second", user_ids=[5])
    store.update("k", lambda old, info: seen.append((old, info)) or "third")
    assert seen[0] == (None, None)
    assert seen[1][0] == "second" and seen[1][1].version == version and seen[1][1].user_ids == (5,)


def test_update_returning_none_cancels_and_writes_nothing(world, clock):
    server = world.server("a")
    store = server.datastores.get_data_store("players")
    version = store.set("k", {"coins": 1})
    before = writes(server.datastores)
    clock.advance(seconds=1)
    assert store.update("k", lambda old, info: None) == (None, None)
    assert store.update("absent", lambda old, info: None) == (None, None)
    value, info = fresh(store, "k")
    assert value == {"coins": 1} and info.version == version and info.updated_time == START
    assert fresh(store, "absent") == (None, None)
    assert writes(server.datastores) == before
    assert [v.version for v in store.list_versions("k").items] == [version]


def test_increment_counts_from_zero_replaces_user_ids_and_refuses_non_integers(world):
    store = world.server("a").datastores.get_data_store("counters")
    value, info = store.increment("visits", 5, user_ids=[1])
    assert value == 5 and info.get_user_ids() == [1]
    value, info = store.increment("visits")
    assert value == 6 and info.get_user_ids() == []
    assert fresh(store, "visits")[0] == 6
    store.set("name", "bob")
    refused(103, store.increment, "name", 1)
    refused(103, store.increment, "visits", 1.5)
    refused(103, store.increment, "visits", True)
    store.set("big", 2**63 - 1)
    refused(104, store.increment, "big", 1)
    assert fresh(store, "name")[0] == "bob" and fresh(store, "visits")[0] == 6 and fresh(store, "big")[0] == 2**63 - 1


def test_remove_returns_previous_value_and_then_the_key_reads_none(world, clock):
    store = world.server("a").datastores.get_data_store("players")
    version = store.set("k", [1, 2], user_ids=[3])
    clock.advance(seconds=1)
    value, info = store.remove("k")
    assert value == [1, 2] and info.version == version and info.get_user_ids() == [3]
    assert store.get("k") == (None, None) and fresh(store, "k") == (None, None)
    assert store.remove("k") == (None, None)
    assert store.remove("never") == (None, None)
    assert store.list_keys().items == ["k"]  # "never" left no tombstone


def test_values_come_back_as_json_would_give_them(world):
    store = world.server("a").datastores.get_data_store("players")
    value = {"t": (1, (2, "x")), "f": 1.5, "b": True, "n": None, "u": "金币 😀", "i": -(2**63)}
    store.set("k", value)
    expected = {"t": [1, [2, "x"]], "f": 1.5, "b": True, "n": None, "u": "金币 😀", "i": -(2**63)}
    assert store.get("k")[0] == expected  # through the cache
    assert fresh(store, "k")[0] == expected


def test_mutating_a_returned_value_does_not_change_what_the_cache_returns(mem_world):
    store = mem_world.server("a").datastores.get_data_store("players")
    original = {"coins": 1, "items": ["sword"]}
    store.set("k", original)
    original["coins"] = 99  # the caller's own object, after the write
    got, _ = store.get("k")
    got["items"].append("shield")
    assert store.get("k")[0] == {"coins": 1, "items": ["sword"]}


def test_stores_names_and_scopes_are_separate(mem_world):
    ds = mem_world.server("a").datastores
    ds.get_data_store("a").set("k", "a/global")
    ds.get_data_store("a", "other").set("k", "a/other")
    ds.get_data_store("b").set("k", "b/global")
    assert fresh(ds.get_data_store("a"), "k")[0] == "a/global"
    assert fresh(ds.get_data_store("a", "other"), "k")[0] == "a/other"
    assert fresh(ds.get_data_store("b"), "k")[0] == "b/global"
    assert fresh(ds.get_data_store("b", "other"), "k") == (None, None)


# ----------------------------------------------------------------------------------------------- 2. read cache


@pytest.mark.parametrize("writer", ["other object", "other server"])
def test_cached_get_does_not_see_another_write_until_4_seconds_pass(mem_world, clock, writer):
    a = mem_world.server("a")
    store = a.datastores.get_data_store("players")
    other = (a if writer == "other object" else mem_world.server("b")).datastores.get_data_store("players")
    assert other is not store
    other.set("k", "old")
    clock.advance(seconds=1)
    assert store.get("k")[0] == "old"  # read from the server and cached from here, for 4 s
    other.set("k", "new")
    assert other.get("k")[0] == "new"
    clock.advance(ms=3999)
    assert store.get("k")[0] == "old"
    assert store.get("k", use_cache=False)[0] == "new"
    clock.advance(ms=1)
    assert store.get("k")[0] == "new"


def test_the_cache_runs_4_seconds_from_the_last_write_or_read(mem_world, clock):
    store = mem_world.server("a").datastores.get_data_store("players")
    other = mem_world.server("b").datastores.get_data_store("players")
    store.set("k", "mine")  # the write fills the cache
    other.set("k", "theirs")
    clock.advance(ms=3999)
    assert store.get("k")[0] == "mine"
    clock.advance(ms=1)
    assert store.get("k")[0] == "theirs"


def test_a_missing_key_is_cached_too(mem_world, clock):
    store = mem_world.server("a").datastores.get_data_store("players")
    other = mem_world.server("b").datastores.get_data_store("players")
    assert store.get("k") == (None, None)
    other.set("k", 1)
    assert store.get("k") == (None, None)
    clock.advance(seconds=4)
    assert store.get("k")[0] == 1


def test_a_write_through_the_same_object_refreshes_its_cache(mem_world, clock):
    store = mem_world.server("a").datastores.get_data_store("players")
    other = mem_world.server("b").datastores.get_data_store("players")
    other.set("k", 1)
    assert store.get("k")[0] == 1  # cached
    version = store.set("k", 2)
    value, info = store.get("k")
    assert value == 2 and info.version == version
    store.update("k", lambda old, info: old + 10)
    assert store.get("k")[0] == 12
    store.increment("k", 3)
    assert store.get("k")[0] == 15
    store.remove("k")
    assert store.get("k") == (None, None)
    other.set("k", "back")  # within 4 s of the remove: this object still remembers it gone
    assert store.get("k") == (None, None)


def test_cache_hits_are_counted_and_spend_no_read_request(mem_world, clock):
    ds = mem_world.server("a").datastores
    store = ds.get_data_store("players")
    store.set("k", 1)
    for _ in range(3):
        store.get("k")
    store.get("k", use_cache=False)
    stats = ds.statistics()
    assert stats.cache_hits == 3
    assert stats.requests.get("StandardRead", 0) == 1
    clock.advance(seconds=4)
    store.get("k")
    assert ds.statistics().cache_hits == 3 and ds.statistics().requests["StandardRead"] == 2


def test_versions_and_listings_are_never_cached(mem_world):
    store = mem_world.server("a").datastores.get_data_store("players")
    other = mem_world.server("b").datastores.get_data_store("players")
    store.get("k")
    store.list_keys()
    other.set("k", 1)
    assert store.list_keys().items == ["k"]
    assert len(store.list_versions("k").items) == 1


# ------------------------------------------------------------------------------------- 3. update conflicts


def test_update_reruns_the_transform_on_the_value_another_server_wrote(world):
    a = world.server("a")
    b = world.server("b")
    store_a = a.datastores.get_data_store("players")
    store_b = b.datastores.get_data_store("players")
    store_a.set("k", {"a": 0, "b": 0})
    seen = []

    def add_a(old, info):
        seen.append(old)
        if len(seen) == 1:  # server B gets in between A's read and A's write
            store_b.update("k", lambda o, i: {**o, "b": o["b"] + 1})
        return {**old, "a": old["a"] + 1}

    value, info = store_a.update("k", add_a)
    assert seen == [{"a": 0, "b": 0}, {"a": 0, "b": 1}]
    assert value == {"a": 1, "b": 1}
    assert fresh(store_a, "k") == (value, info)
    assert a.datastores.statistics().update_conflicts == 1
    assert b.datastores.statistics().update_conflicts == 0


def test_update_of_a_missing_key_conflicts_when_another_server_creates_it(world):
    store_a = world.server("a").datastores.get_data_store("players")
    store_b = world.server("b").datastores.get_data_store("players")
    seen = []

    def create(old, info):
        seen.append(old)
        if len(seen) == 1:
            store_b.set("k", ["b"])
        return (old or []) + ["a"]

    value, _ = store_a.update("k", create)
    assert seen == [None, ["b"]] and value == ["b", "a"]
    assert fresh(store_b, "k")[0] == ["b", "a"]


def test_update_conflicts_with_a_remove_and_reruns_on_nothing(mem_world):
    store_a = mem_world.server("a").datastores.get_data_store("players")
    store_b = mem_world.server("b").datastores.get_data_store("players")
    store_a.set("k", 5)
    seen = []

    def fn(old, info):
        seen.append(old)
        if len(seen) == 1:
            store_b.remove("k")
        return (old or 0) + 1

    assert store_a.update("k", fn)[0] == 1
    assert seen == [5, None]


def run_interleaved(stores, body) -> None:
    """Run `body(store)` for every store on its own thread, all starting together and switching threads as often
    as Python allows, so their requests interleave; re-raise the first error any thread met."""
    barrier = threading.Barrier(len(stores))
    errors = []

    def work(store):
        try:
            barrier.wait()
            body(store)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(store,)) for store in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert errors == []


def test_two_servers_incrementing_through_update_in_threads_lose_nothing(clock, tmp_path, backend):
    world = make_world(clock, tmp_path, backend, shards=2)
    servers = [world.server("a"), world.server("b")]
    stores = [s.datastores.get_data_store("counters") for s in servers]

    def add_fifty(store):
        for _ in range(50):
            store.update("hits", lambda old, info: (old or 0) + 1)

    try:
        run_interleaved(stores, add_fifty)
        assert fresh(stores[0], "hits")[0] == 100
        conflicts = sum(s.datastores.statistics().update_conflicts for s in servers)
        assert sum(s.datastores.statistics().requests["StandardWrite"] for s in servers) == 100 + conflicts
    finally:
        world.shutdown()


def test_servers_on_threads_incrementing_one_key_lose_nothing(clock, tmp_path, backend):
    """An in-process world serves one batch at a time per shard, as a Ray actor does."""
    world = make_world(clock, tmp_path, backend)
    stores = [world.server(f"s{i}").datastores.get_data_store("counters") for i in range(4)]

    def add_hundred(store):
        for _ in range(100):
            store.increment("hits")

    try:
        run_interleaved(stores, add_hundred)
        assert fresh(stores[0], "hits")[0] == 400
    finally:
        world.shutdown()


# ------------------------------------------------------------------------------------------------- 4. limits


def test_value_of_exactly_the_limit_is_stored_and_one_character_more_is_refused(mem_world):
    ds = mem_world.server("a").datastores
    store = ds.get_data_store("big")
    at_limit = "x" * (MAX_VALUE_CHARS - 2)  # the JSON text adds two quotes
    version = store.set("k", at_limit)
    err = refused(105, store.set, "k", at_limit + "y")
    assert str(MAX_VALUE_CHARS + 1) in err.message
    refused(105, store.update, "k", lambda old, info: old + "y")
    value, info = fresh(store, "k")
    assert value == at_limit and info.version == version
    assert ds.statistics().requests["StandardWrite"] == 1


def test_key_names_are_1_to_50_characters(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    store.set("k" * 50, 1)
    assert fresh(store, "k" * 50)[0] == 1
    refused(102, store.set, "k" * 51, 1)
    refused(102, store.get, "k" * 51)
    refused(101, store.set, "", 1)
    refused(101, store.get, "")
    refused(101, store.set, None, 1)
    assert store.list_keys().items == ["k" * 50]


def test_metadata_limits(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    at_limits = {"m" * 45: "v" * 248}  # value 250 characters as JSON, the whole dict 300
    store.set("k", 1, metadata=at_limits)
    store.set("k50", 1, metadata={"m" * 50: 1})
    for bad in ({"m" * 51: 1},                        # key over 50
                {"m": "v" * 249},                     # value 251 characters as JSON
                {"m" * 46: "v" * 248},                # the whole dict 301 characters as JSON
                {"m": None}, {"m": [1]}, {"m": math.inf}, ["not a dict"]):
        refused(511, store.set, "k", 2, metadata=bad)
        refused(511, store.update, "k", lambda old, info, bad=bad: UpdateResult(2, None, bad))
    value, info = fresh(store, "k")
    assert value == 1 and info.get_metadata() == at_limits


def test_user_id_limits(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    store.set("k", 1, user_ids=[1, 2, 3, 4])
    refused(512, store.set, "k", 2, user_ids=[1, 2, 3, 4, 5])
    refused(512, store.increment, "k", 1, user_ids=[1, 2, 3, 4, 5])
    refused(512, store.update, "k", lambda old, info: UpdateResult(2, [1, 2, 3, 4, 5]))
    for bad in (["1"], [1.5], [True], "1", [2**63]):
        refused(513, store.set, "k", 2, user_ids=bad)
    value, info = fresh(store, "k")
    assert value == 1 and info.get_user_ids() == [1, 2, 3, 4]


def test_nan_inside_a_dict_is_refused_and_the_message_says_where(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    err = refused(103, store.set, "k", {"stats": {"ratio": math.nan}})
    assert '["stats"]["ratio"]' in err.message
    refused(103, store.set, "k", {1: "int key"})
    assert fresh(store, "k") == (None, None)


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", {"inventory": [object()]}, {"data": bytearray(b"x")}])
def test_unstorable_types_are_refused_with_104(mem_world, bad):
    store = mem_world.server("a").datastores.get_data_store("s")
    refused(104, store.set, "k", bad)
    assert fresh(store, "k") == (None, None)
    assert store.list_keys().items == []


def test_store_names_and_scopes_are_1_to_50_characters(mem_world):
    ds = mem_world.server("a").datastores
    ds.get_data_store("n" * 50, "s" * 50).set("k", 1)
    ds.get_ordered_data_store("n" * 50, "s" * 50).set("k", 1)
    for name, scope in (("n" * 51, "global"), ("", "global"), ("n", "s" * 51), ("n", ""), ("n", "a/b")):
        refused(0, ds.get_data_store, name, scope)
        refused(0, ds.get_ordered_data_store, name, scope)


def test_a_refused_write_leaves_the_old_value_version_and_cache(mem_world, clock):
    ds = mem_world.server("a").datastores
    store = ds.get_data_store("s")
    version = store.set("k", {"coins": 1}, user_ids=[1], metadata={"a": 1})
    clock.advance(seconds=1)
    refused(103, store.set, "k", {"coins": math.inf})
    refused(104, store.set, "k", {"coins": {1, 2}})
    refused(512, store.set, "k", 2, user_ids=[1, 2, 3, 4, 5])
    refused(511, store.set, "k", 2, metadata={"x" * 51: 1})
    for value, info in (store.get("k"), fresh(store, "k")):
        assert value == {"coins": 1} and info.version == version and info.updated_time == START
        assert info.get_user_ids() == [1] and info.get_metadata() == {"a": 1}
    assert [v.version for v in store.list_versions("k").items] == [version]
    assert ds.statistics().requests == {"StandardWrite": 1, "StandardRead": 1, "StandardList": 1}


# --------------------------------------------------------------------------------------------- 5. transforms


def test_a_transform_that_raises_becomes_transform_error_and_writes_nothing(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    version = store.set("k", 1)
    boom = KeyError("missing field")

    def fn(old, info):
        raise boom

    with pytest.raises(TransformError) as err:
        store.update("k", fn)
    assert err.value.__cause__ is boom
    assert "'k'" in str(err.value) and "KeyError" in str(err.value)
    value, info = fresh(store, "k")
    assert value == 1 and info.version == version


def test_a_transform_returning_an_unstorable_value_is_refused_and_writes_nothing(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    version = store.set("k", 1)
    refused(104, store.update, "k", lambda old, info: {"set": {old}})
    refused(103, store.update, "k", lambda old, info: [math.nan])
    value, info = fresh(store, "k")
    assert value == 1 and info.version == version


def test_update_needs_a_callable(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    store.set("k", 1)
    with pytest.raises(TypeError):
        store.update("k", 5)
    with pytest.raises(TypeError):
        store.update("k", None)
    assert fresh(store, "k")[0] == 1


# ---------------------------------------------------------------------------------------------- 6. list_keys


KEYS = sorted(f"key{i:02d}" for i in range(17))


def test_list_keys_pages_collect_every_key_once_in_order_across_shards(sharded):
    store = sharded.server("a").datastores.get_data_store("s")
    for key in reversed(KEYS):
        store.set(key, key)
    sharded.server("a").datastores.get_data_store("s", "other").set("zzz", 1)  # another scope: not listed
    assert all(s.requests > 0 for s in sharded.statistics())  # the keys really are spread over every shard
    assert all_pages(store.list_keys, page_size=2) == KEYS
    page = store.list_keys(page_size=2)
    assert page.items == KEYS[:2] and not page.is_finished
    assert all_pages(store.list_keys, page_size=5) == KEYS
    assert all_pages(store.list_keys, page_size=17) == KEYS


def test_list_keys_prefix_and_exclude_deleted(sharded):
    store = sharded.server("a").datastores.get_data_store("s")
    for key in KEYS + ["other", "ke"]:
        store.set(key, 1)
    store.remove("key03")
    store.remove("key15")
    assert all_pages(store.list_keys, prefix="key1", page_size=2) == [k for k in KEYS if k.startswith("key1")]
    assert all_pages(store.list_keys, page_size=3, exclude_deleted=True) == sorted(
        set(KEYS + ["other", "ke"]) - {"key03", "key15"})
    assert all_pages(store.list_keys, page_size=3) == sorted(KEYS + ["other", "ke"])
    assert all_pages(store.list_keys, prefix="key0", page_size=2, exclude_deleted=True) == [
        k for k in KEYS if k.startswith("key0") and k != "key03"]
    assert store.list_keys(prefix="nothing").items == []


def test_list_keys_page_size_0_means_50_and_bad_sizes_are_refused(sharded):
    store = sharded.server("a").datastores.get_data_store("s")
    keys = sorted(f"k{i:03d}" for i in range(120))
    for key in keys:
        store.set(key, 1)
    page = store.list_keys()
    assert page.items == keys[:50] and page.cursor is not None
    assert store.list_keys(page_size=0, cursor=page.cursor).items == keys[50:100]
    refused(106, store.list_keys, page_size=-1)
    refused(106, store.list_keys, page_size=1025)
    refused(106, store.list_keys, page_size=2.0)


def test_list_keys_refuses_a_cursor_it_did_not_make(sharded, clock):
    store = sharded.server("a").datastores.get_data_store("s")
    for key in KEYS:
        store.set(key, 1)
    clock.advance(ms=HOUR_MS)
    store.set("key00", 2)
    versions_cursor = store.list_versions("key00", page_size=1).cursor
    assert versions_cursor is not None
    for bad in ("garbage!", "Zm9v", versions_cursor):
        refused(400, store.list_keys, cursor=bad)


def test_all_scopes_store_lists_and_addresses_scope_slash_key(sharded):
    ds = sharded.server("a").datastores
    ds.get_data_store("s", "alpha").set("k1", "a1")
    ds.get_data_store("s", "alpha").set("k2", "a2")
    ds.get_data_store("s", "beta").set("k1", "b1")
    ds.get_data_store("s").set("k9", "g9")
    ds.get_data_store("t", "alpha").set("k1", "other store")
    every = ds.get_data_store("s", all_scopes=True)
    assert all_pages(every.list_keys, page_size=1) == ["alpha/k1", "alpha/k2", "beta/k1", "global/k9"]
    assert every.list_keys(prefix="alpha/").items == ["alpha/k1", "alpha/k2"]
    assert fresh(every, "beta/k1")[0] == "b1"
    every.set("gamma/new", "g")
    assert fresh(ds.get_data_store("s", "gamma"), "new")[0] == "g"
    assert every.update("alpha/k1", lambda old, info: old + "!")[0] == "a1!"
    assert fresh(ds.get_data_store("s", "alpha"), "k1")[0] == "a1!"
    refused(102, every.get, "no-slash")
    refused(101, every.get, "")
    refused(101, every.get, "alpha/")
    refused(0, every.get, "/k1")
    refused(0, every.get, "s" * 51 + "/k1")
    refused(102, every.get, "alpha/" + "k" * 51)


# ------------------------------------------------------------------------------------------ 7. list_versions


@pytest.fixture
def history(world, clock):
    """One key written across three hours, then removed:

    hour 0: "a" (replaced in the hour), "b";  hour 1: "c" (replaced in the hour), "d";  hour 2: removed.
    Kept: b (a backup from hour 0), d (a backup from hour 1) and the tombstone.
    """
    store = world.server("a").datastores.get_data_store("s")
    at = {}
    store.set("k", "a", user_ids=[1])
    clock.set(START + 10 * 60_000)
    at["b"] = (store.set("k", "b", user_ids=[2]), clock.now())
    clock.set(START + 65 * 60_000)
    store.set("k", "c")
    clock.set(START + 70 * 60_000)
    at["d"] = (store.set("k", "d"), clock.now())
    clock.set(START + 120 * 60_000)
    store.remove("k")
    at["removed"] = (store.list_versions("k", SortDirection.DESCENDING, page_size=1).items[0].version, clock.now())
    return store, at


def test_hourly_backups_keep_the_last_value_of_each_hour_and_the_tombstone(history):
    store, at = history
    listed = store.list_versions("k").items
    assert [(v.version, v.created_time) for v in listed] == [at["b"], at["d"], at["removed"]]
    assert [v.is_deleted for v in listed] == [False, False, True]
    assert store.list_versions("k", SortDirection.DESCENDING).items == listed[::-1]
    assert store.list_versions("k", "Descending").items == listed[::-1]
    refused(400, store.list_versions, "k", "sideways")


def test_list_versions_date_filters_are_inclusive_and_min_after_max_is_107(history):
    store, at = history
    d = at["d"][1]
    assert [v.version for v in store.list_versions("k", min_date=d).items] == [at["d"][0], at["removed"][0]]
    assert [v.version for v in store.list_versions("k", max_date=d).items] == [at["b"][0], at["d"][0]]
    assert [v.version for v in store.list_versions("k", min_date=d, max_date=d).items] == [at["d"][0]]
    assert store.list_versions("k", min_date=d + 1, max_date=at["removed"][1] - 1).items == []
    refused(107, store.list_versions, "k", min_date=d + 1, max_date=d)
    refused(106, store.list_versions, "k", min_date=1.5)


def test_list_versions_pages_with_a_cursor_both_ways(history):
    store, at = history
    order = [at["b"][0], at["d"][0], at["removed"][0]]
    assert [v.version for v in all_pages(store.list_versions, key="k", page_size=1)] == order
    assert [v.version for v in all_pages(store.list_versions, key="k", page_size=2)] == order
    assert [v.version for v in all_pages(store.list_versions, key="k", direction="Descending",
                                         page_size=2)] == order[::-1]
    first = store.list_versions("k", page_size=2)
    assert len(first.items) == 2 and first.cursor is not None
    refused(106, store.list_versions, "k", page_size=-1)
    refused(400, store.list_versions, "k", cursor=store.list_keys(page_size=1).cursor or "garbage!")


def test_get_version_and_tombstone(history):
    store, at = history
    value, info = store.get_version("k", at["b"][0])
    assert value == "b" and info.version == at["b"][0] and info.updated_time == at["b"][1]
    assert info.get_user_ids() == [2]
    assert store.get_version("k", at["d"][0])[0] == "d"
    assert store.get_version("k", at["removed"][0]) == (None, None)
    assert store.get_version("k", "0000.nothing") == (None, None)
    refused(400, store.get_version, "k", "")


def test_get_version_at_time(history, clock):
    store, at = history
    b_ms, d_ms, removed_ms = at["b"][1], at["d"][1], at["removed"][1]
    assert store.get_version_at_time("k", b_ms - 1) == (None, None)
    assert store.get_version_at_time("k", b_ms)[0] == "b"
    assert store.get_version_at_time("k", d_ms - 1)[0] == "b"
    assert store.get_version_at_time("k", d_ms)[0] == "d"
    assert store.get_version_at_time("k", removed_ms - 1)[0] == "d"
    assert store.get_version_at_time("k", removed_ms) == (None, None)
    assert store.get_version_at_time("k", clock.now() + 600_000) == (None, None)
    refused(400, store.get_version_at_time, "k", clock.now() + 600_001)
    refused(400, store.get_version_at_time, "k", 0)
    refused(400, store.get_version_at_time, "k", 1.5)


def test_remove_version_deletes_a_backup_but_never_the_current_one(history):
    store, at = history
    assert store.remove_version("k", at["b"][0]) is None
    assert [v.version for v in store.list_versions("k").items] == [at["d"][0], at["removed"][0]]
    assert store.get_version("k", at["b"][0]) == (None, None)
    refused(400, store.remove_version, "k", at["removed"][0])
    assert [v.version for v in store.list_versions("k").items] == [at["d"][0], at["removed"][0]]


def test_backups_are_gone_30_days_after_they_stop_being_current(history, clock):
    store, at = history
    b_superseded = START + 65 * 60_000  # "c" was written
    d_superseded = at["removed"][1]
    clock.set(b_superseded + 30 * DAY_MS - 1)
    assert [v.version for v in store.list_versions("k").items] == [at["b"][0], at["d"][0], at["removed"][0]]
    clock.set(b_superseded + 30 * DAY_MS)
    assert [v.version for v in store.list_versions("k").items] == [at["d"][0], at["removed"][0]]
    assert store.get_version("k", at["b"][0]) == (None, None)
    clock.set(d_superseded + 30 * DAY_MS)
    assert [v.version for v in store.list_versions("k").items] == [at["removed"][0]]
    clock.advance(ms=365 * DAY_MS)
    assert [v.version for v in store.list_versions("k").items] == [at["removed"][0]]  # the latest never expires


def test_the_current_value_never_expires(world, clock):
    store = world.server("a").datastores.get_data_store("s")
    version = store.set("k", "old")
    clock.advance(ms=400 * DAY_MS)
    assert store.get("k") == ("old", fresh(store, "k")[1])
    assert [v.version for v in store.list_versions("k").items] == [version]


# --------------------------------------------------------------------------------------------- 8. ordered


SCORES = {"ann": 5, "bob": 3, "cat": 5, "dan": 1, "eve": 9, "fay": 3, "gus": 7, "hal": 5, "ivy": 0, "jon": -2}
ASCENDING = sorted(SCORES.items(), key=lambda kv: (kv[1], kv[0]))


@pytest.fixture
def board(sharded):
    store = sharded.server("a").datastores.get_ordered_data_store("scores")
    for key, value in SCORES.items():
        store.set(key, value)
    sharded.server("a").datastores.get_ordered_data_store("scores", "other").set("zed", 4)
    return store


def test_get_sorted_pages_in_value_order_both_ways_across_shards(board):
    assert [tuple(p) for p in all_pages(board.get_sorted, page_size=3)] == ASCENDING
    assert [tuple(p) for p in all_pages(board.get_sorted, ascending=False, page_size=3)] == ASCENDING[::-1]
    assert [tuple(p) for p in all_pages(board.get_sorted, page_size=1)] == ASCENDING
    top = board.get_sorted(ascending=False, page_size=2)
    assert [tuple(p) for p in top.items] == [("eve", 9), ("gus", 7)] and top.cursor is not None


def test_get_sorted_bounds_are_inclusive(board):
    within = [kv for kv in ASCENDING if 3 <= kv[1] <= 5]
    assert [tuple(p) for p in all_pages(board.get_sorted, page_size=2, min_value=3, max_value=5)] == within
    assert [tuple(p) for p in all_pages(board.get_sorted, ascending=False, page_size=2, min_value=3,
                                        max_value=5)] == within[::-1]
    assert [tuple(p) for p in all_pages(board.get_sorted, page_size=4, min_value=7)] == [("gus", 7), ("eve", 9)]
    assert [tuple(p) for p in all_pages(board.get_sorted, ascending=False, page_size=4, max_value=0)] == [
        ("ivy", 0), ("jon", -2)]
    assert board.get_sorted(min_value=10).items == []


def test_get_sorted_refuses_bad_arguments(board):
    refused(106, board.get_sorted, page_size=0)
    refused(106, board.get_sorted, page_size=101)
    assert len(board.get_sorted(page_size=100).items) == len(SCORES)
    refused(107, board.get_sorted, min_value=5, max_value=4)
    refused(106, board.get_sorted, min_value=1.5)
    refused(400, board.get_sorted, cursor="garbage!")


def test_ordered_values_must_be_64_bit_integers(board):
    for bad in (1.5, "5", True, None, 2**63, [1]):
        refused(103, board.set, "ann", bad)
    refused(103, board.increment, "ann", 0.5)
    refused(103, board.update, "ann", lambda old: 1.5)
    assert board.get("ann") == 5


def test_ordered_get_set_increment_remove(board):
    assert board.get("nobody") is None
    assert board.increment("new", 4) == 4
    assert board.increment("new") == 5
    assert board.get("new") == 5
    board.set("ann", 2**63 - 1)
    refused(104, board.increment, "ann", 1)
    assert board.get("ann") == 2**63 - 1
    assert board.remove("ann") == 2**63 - 1
    assert board.get("ann") is None and board.remove("ann") is None
    assert "ann" not in [k for k, _ in all_pages(board.get_sorted, page_size=100)]


def test_ordered_update_reruns_on_conflict_and_none_cancels(sharded):
    a = sharded.server("a").datastores
    b = sharded.server("b").datastores
    store_a = a.get_ordered_data_store("scores")
    store_b = b.get_ordered_data_store("scores")
    store_a.set("k", 10)
    seen = []

    def add_one(old):
        seen.append(old)
        if len(seen) == 1:
            store_b.set("k", 100)
        return old + 1

    assert store_a.update("k", add_one) == 101
    assert seen == [10, 100] and store_b.get("k") == 101
    assert a.statistics().update_conflicts == 1
    assert store_a.update("k", lambda old: None) is None
    assert store_a.update("missing", lambda old: 7 if old is None else old) == 7
    assert store_a.get("k") == 101
    with pytest.raises(TransformError):
        store_a.update("k", lambda old: 1 // 0)
    with pytest.raises(TypeError):
        store_a.update("k", 3)
    assert store_a.get("k") == 101


# ---------------------------------------------------------------------------------------------- 9. asyncio


def test_the_async_flavour_gives_the_same_results(world, clock):
    store = world.server("a").datastores.get_data_store("s")

    async def scenario():
        version = await store.aio.set("k", {"coins": 1}, [5], {"m": 1})
        got = await store.aio.get("k", use_cache=False)
        updated = await store.aio.update("k", lambda old, info: {**old, "coins": old["coins"] + 1})
        counted = await store.aio.increment("n", 3)
        keys = await store.aio.list_keys()
        versions = await store.aio.list_versions("k")
        by_version = await store.aio.get_version("k", updated[1].version)
        at_time = await store.aio.get_version_at_time("k", clock.now())
        removed = await store.aio.remove("k")
        after = await store.aio.get("k")
        return version, got, updated, counted, keys, versions, by_version, at_time, removed, after

    version, got, updated, counted, keys, versions, by_version, at_time, removed, after = asyncio.run(scenario())
    assert got[0] == {"coins": 1} and got[1].version == version and got[1].get_user_ids() == [5]
    assert updated[0] == {"coins": 2} and updated[1].get_metadata() == {"m": 1}
    assert counted[0] == 3
    assert keys.items == ["k", "n"]
    assert [v.version for v in versions.items] == [updated[1].version]
    assert by_version == updated and at_time == updated
    assert removed == updated and after == (None, None)
    assert store.get("k") == (None, None) and fresh(store, "n")[0] == 3


def test_async_errors_are_the_same_errors(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    ordered = mem_world.server("a").datastores.get_ordered_data_store("o")

    async def scenario():
        with pytest.raises(DataStoreError) as err:
            await store.aio.set("k" * 51, 1)
        assert err.value.code == 102
        with pytest.raises(TransformError):
            await store.aio.update("k", lambda old, info: 1 / 0)
        await ordered.aio.set("a", 2)
        await ordered.aio.set("b", 1)
        page = await ordered.aio.get_sorted(page_size=10)
        assert [tuple(p) for p in page.items] == [("b", 1), ("a", 2)]
        assert await ordered.aio.update("a", lambda old: old * 10) == 20

    asyncio.run(scenario())
    assert fresh(store, "k") == (None, None)


def test_async_hash_map_update(mem_world):
    hmap = mem_world.server("a").memorystores.get_hash_map("locks")

    async def scenario():
        first = await hmap.aio.update("lock", lambda old: old or "server-a", 60)
        second = await hmap.aio.update("lock", lambda old: old or "server-b", 60)
        return first, second, await hmap.aio.get("lock")

    assert asyncio.run(scenario()) == ("server-a", "server-a", "server-a")


# ------------------------------------------------------------------------------------------------- 10. faults


def test_write_error_rate_one_refuses_every_write_and_writes_nothing(clock, tmp_path):
    world = make_world(clock, tmp_path, faults=FaultConfig(error_rate={"StandardWrite": 1.0}))
    ds = world.server("a").datastores
    store = ds.get_data_store("s")
    err = refused(502, store.set, "k", 1)
    assert err.retryable
    refused(502, store.increment, "n", 1)
    refused(502, store.update, "k", lambda old, info: 1)
    assert fresh(store, "k") == (None, None) and fresh(store, "n") == (None, None)
    assert store.list_keys().items == []
    assert ds.statistics().errors[502] == 3
    world.set_faults(FaultConfig())  # off while running
    store.set("k", 2)
    assert fresh(store, "k")[0] == 2


def test_faults_can_be_turned_on_while_running(mem_world):
    store = mem_world.server("a").datastores.get_data_store("s")
    store.set("k", 1)
    mem_world.set_faults(FaultConfig(error_rate={"StandardRead": 1.0}))
    refused(502, fresh, store, "k")
    assert store.get("k")[0] == 1  # the cached read asks nobody
    store.set("k", 2)  # writes still work
    mem_world.set_faults(FaultConfig())
    assert fresh(store, "k")[0] == 2


def test_an_outage_fails_every_request_inside_its_window_only(clock, tmp_path):
    outage = Outage(START + 10_000, START + 20_000, code=503)
    world = make_world(clock, tmp_path, shards=2, faults=FaultConfig(outages=(outage,)))
    store = world.server("a").datastores.get_data_store("s")
    ordered = world.server("a").datastores.get_ordered_data_store("o")
    clock.set(START + 9_999)
    store.set("k", "before")
    for at in (START + 10_000, START + 19_999):
        clock.set(at)
        refused(503, fresh, store, "k")
        refused(503, store.set, "k", "during")
        refused(503, store.list_keys)
        refused(503, ordered.set, "k", 1)
    clock.set(START + 20_000)
    assert fresh(store, "k")[0] == "before"
    store.set("k", "after")
    assert fresh(store, "k")[0] == "after"


def test_an_ambiguous_write_raises_but_took_effect(clock, tmp_path):
    world = make_world(clock, tmp_path, faults=FaultConfig(ambiguous_write_rate=1.0))
    ds = world.server("a").datastores
    store = ds.get_data_store("s")
    err = refused(502, store.set, "k", "landed")
    assert err.retryable
    assert fresh(store, "k")[0] == "landed"
    refused(502, store.remove, "k")
    assert fresh(store, "k") == (None, None)
    assert store.list_versions("k").items[-1].is_deleted
    world.set_faults(FaultConfig())
    store.set("k", "clean")
    assert fresh(store, "k")[0] == "clean"


def test_datastore_faults_leave_memorystore_alone(clock, tmp_path):
    world = make_world(clock, tmp_path, faults=FaultConfig(error_rate={"StandardWrite": 1.0, "StandardRead": 1.0}))
    hmap = world.server("a", players=10).memorystores.get_hash_map("m")
    hmap.set("k", "v", 60)
    assert hmap.get("k") == "v"


# ---------------------------------------------------------------------------------------------- 11. MemoryStore


@pytest.fixture
def ms(mem_world):
    return mem_world.server("a", players=10).memorystores


def test_hash_map_set_get_update_remove_and_expiry(ms, clock):
    hmap = ms.get_hash_map("sessions")
    assert hmap.get("k") is None
    assert hmap.set("k", {"server": "a"}, 90) is True
    assert hmap.get("k") == {"server": "a"}
    assert hmap.update("k", lambda old: {**old, "n": 1}, 90) == {"server": "a", "n": 1}
    clock.advance(seconds=89.999)
    assert hmap.get("k") == {"server": "a", "n": 1}
    clock.advance(ms=1)
    assert hmap.get("k") is None
    hmap.set("k", 1, 60)
    hmap.remove("k")
    assert hmap.get("k") is None
    hmap.set("gone", 1, 0)  # expiration 0 stores nothing
    assert hmap.get("gone") is None


def test_hash_map_update_restarts_the_expiry_and_none_cancels(ms, clock):
    hmap = ms.get_hash_map("m")
    hmap.set("k", 1, 10)
    clock.advance(seconds=5)
    assert hmap.update("k", lambda old: old + 1, 10) == 2
    clock.advance(seconds=9)
    assert hmap.get("k") == 2
    assert hmap.update("k", lambda old: None, 10) is None
    clock.advance(seconds=1)
    assert hmap.get("k") is None  # the cancelled update did not extend it


def test_hash_map_update_reruns_when_another_server_writes_in_between(mem_world):
    a = mem_world.server("a", players=10).memorystores.get_hash_map("m")
    b = mem_world.server("b", players=10).memorystores.get_hash_map("m")
    a.set("k", [0], 60)
    seen = []

    def append_a(old):
        seen.append(old)
        if len(seen) == 1:
            b.set("k", old + ["b"], 60)
        return old + ["a"]

    assert a.update("k", append_a, 60) == [0, "b", "a"]
    assert seen == [[0], [0, "b"]]
    assert b.get("k") == [0, "b", "a"]


def test_hash_map_update_errors(ms):
    hmap = ms.get_hash_map("m")
    hmap.set("k", 1, 60)
    boom = ValueError("no")

    def fail(old):
        raise boom

    with pytest.raises(MemoryStoreError) as err:        # Roblox's status for a transform that errors
        hmap.update("k", fail, 60)
    assert err.value.name == "TransformCallbackFailed" and err.value.__cause__ is boom
    with pytest.raises(TypeError):
        hmap.update("k", "not callable", 60)
    with pytest.raises(MemoryStoreError) as err:
        hmap.update("k", lambda old: math.nan, 60)
    assert err.value.name == "InvalidRequest"
    with pytest.raises(MemoryStoreError) as err:
        hmap.update("k", lambda old: 2, 3_888_001)
    assert err.value.name == "InvalidExpirationTime"
    assert hmap.get("k") == 1


def test_hash_map_list_items_pages(ms):
    hmap = ms.get_hash_map("m")
    for i in range(5):
        hmap.set(f"k{i}", i, 60)
    items, cursor = hmap.list_items(2)
    assert len(items) == 2 and cursor is not None
    seen = list(items)
    while cursor is not None:
        items, cursor = hmap.list_items(2, cursor)
        seen.extend(items)
    assert sorted(seen) == [(f"k{i}", i) for i in range(5)] and len(seen) == 5   # each once, partition by partition


def test_sorted_map_get_range_order_and_update(ms):
    smap = ms.get_sorted_map("board")
    smap.set("no-sort", "n", 60)
    smap.set("str-b", "sb", 60, sort_key="b")
    smap.set("num-10", 10, 60, sort_key=10)
    smap.set("num-2b", 2, 60, sort_key=2)
    smap.set("num-2a", 2, 60, sort_key=2)
    smap.set("str-a", "sa", 60, sort_key="a")
    order = ["num-2a", "num-2b", "num-10", "str-a", "str-b", "no-sort"]
    assert [k for k, _, _ in smap.get_range("Ascending", 10)] == order
    assert [k for k, _, _ in smap.get_range("Descending", 10)] == order[::-1]
    assert smap.get_range("Ascending", 2) == [("num-2a", 2, 2), ("num-2b", 2, 2)]
    assert [k for k, _, _ in smap.get_range("Ascending", 10, lower_bound=(2, "num-2a"))] == order[1:]
    assert smap.get("num-10") == (10, 10) and smap.get("missing") == (None, None)
    assert smap.get_size() == 6
    assert smap.update("num-10", lambda value, sort_key: (value + 1, -1), 60) == (11, -1)
    assert smap.get_range("Ascending", 1) == [("num-10", 11, -1)]
    with pytest.raises(MemoryStoreError):
        smap.update("num-10", lambda value, sort_key: value, 60)  # not a (value, sort_key) pair
    smap.remove("num-10")
    assert smap.get_size() == 5


def test_queue_add_read_remove_and_invisible_items_come_back(mem_world, clock):
    ms_a = mem_world.server("a", players=10).memorystores
    queue = ms_a.get_queue("jobs", invisibility_timeout=10)
    queue.add("low", 60, priority=0)
    queue.add("high", 60, priority=5)
    queue.add("low-2", 60, priority=0)
    assert queue.get_size() == 3
    values, read_id = queue.read(2)
    assert values == ["high", "low"] and read_id is not None
    assert queue.get_size() == 3 and queue.get_size(exclude_invisible=True) == 1
    queue.remove(read_id)
    assert queue.get_size() == 1
    values, read_id = queue.read(1)
    assert values == ["low-2"]
    assert queue.read(1) == ([], None)  # hidden while invisible
    clock.advance(seconds=9.999)
    assert queue.read(1) == ([], None)
    clock.advance(ms=1)
    values, second_id = queue.read(1)
    assert values == ["low-2"] and second_id != read_id  # back, readable again
    queue.remove(read_id)  # a timed-out read removes nothing
    assert queue.get_size() == 1
    queue.remove(second_id)
    assert queue.get_size() == 0
    queue.add("a", 60)
    assert queue.read(2, all_or_nothing=True) == ([], None)
    assert queue.read(2)[0] == ["a"]
    assert queue.read(1, wait_timeout=5) == ([], None)  # on a manual clock an empty read answers at once


def test_queue_default_invisibility_is_30_seconds(ms, clock):
    queue = ms.get_queue("jobs")
    queue.add({"job": 1}, 600)
    assert queue.read()[0] == [{"job": 1}]
    clock.advance(seconds=29.999)
    assert queue.read() == ([], None)
    clock.advance(ms=1)
    assert queue.read()[0] == [{"job": 1}]


def test_memorystore_value_limit_is_32_kb(ms):
    hmap = ms.get_hash_map("m")
    at_limit = "x" * (32 * 1024 - 2)  # 32 KB as JSON
    hmap.set("k", at_limit, 60)
    for write in (lambda v: hmap.set("k", v, 60),
                  lambda v: ms.get_sorted_map("s").set("k", v, 60),
                  lambda v: ms.get_queue("q").add(v, 60),
                  lambda v: hmap.update("k", lambda old: v, 60)):
        with pytest.raises(MemoryStoreError) as err:
            write(at_limit + "y")
        assert err.value.name == "ItemValueSizeTooLarge"
    assert hmap.get("k") == at_limit
    assert ms.get_sorted_map("s").get("k") == (None, None) and ms.get_queue("q").get_size() == 0


def test_memorystore_value_limit_counts_bytes_not_characters(ms):
    hmap = ms.get_hash_map("m")
    value = "é" * 20_000  # 20,002 characters of JSON, 40,002 bytes of UTF-8
    with pytest.raises(MemoryStoreError) as err:
        hmap.set("k", value, 60)
    assert err.value.name == "ItemValueSizeTooLarge"


def test_memorystore_refuses_bad_arguments(ms):
    hmap = ms.get_hash_map("m")
    for call, name in ((lambda: hmap.set("k" * 129, 1, 60), "InvalidRequest"),
                       (lambda: hmap.set("k", 1, -1), "InvalidExpirationTime"),
                       (lambda: hmap.set("k", {1, 2}, 60), "InvalidRequest"),
                       (lambda: ms.get_hash_map(""), "InvalidRequest"),
                       (lambda: ms.get_sorted_map("s").get_range("Sideways", 1), "InvalidRequest"),
                       (lambda: ms.get_queue("q").read(101), "InvalidRequest")):
        with pytest.raises(MemoryStoreError) as err:
            call()
        assert err.value.name == name
    hmap.set("k" * 128, 1, 60)
    assert hmap.get("k" * 128) == 1


# -------------------------------------------------------------------------------------------- 12. sqlite file


def test_a_sqlite_world_reopened_on_the_same_file_sees_everything(clock, tmp_path):
    world = make_world(clock, tmp_path, "sqlite", shards=3, name="kept")
    ds = world.server("a").datastores
    store = ds.get_data_store("players")
    other_scope = ds.get_data_store("players", "beta")
    board = ds.get_ordered_data_store("board")
    for i in range(10):
        store.set(f"user_{i}", {"coins": i}, user_ids=[i], metadata={"n": i})
        board.set(f"user_{i}", i * 10)
    other_scope.set("user_0", "beta")
    clock.advance(ms=HOUR_MS)
    for i in range(0, 10, 2):
        store.update(f"user_{i}", lambda old, info: {**old, "coins": old["coins"] + 100})
    clock.advance(ms=HOUR_MS)
    store.remove("user_3")
    before_values = {k: fresh(store, k) for k in all_pages(store.list_keys, page_size=3)}
    before_versions = {k: store.list_versions(k).items for k in before_values}
    before_board = all_pages(board.get_sorted, page_size=4)
    world.shutdown()

    again = make_world(clock, tmp_path, "sqlite", shards=3, name="kept")
    try:
        ds = again.server("b").datastores
        store = ds.get_data_store("players")
        keys = all_pages(store.list_keys, page_size=3)
        assert keys == sorted(f"user_{i}" for i in range(10))
        assert {k: fresh(store, k) for k in keys} == before_values
        assert {k: store.list_versions(k).items for k in keys} == before_versions
        assert fresh(store, "user_3") == (None, None)
        assert store.list_keys(exclude_deleted=True).items == [k for k in keys if k != "user_3"]
        tombstone = store.list_versions("user_3").items
        assert [v.is_deleted for v in tombstone] == [False, True]
        assert store.get_version("user_3", tombstone[0].version)[0] == {"coins": 3}
        assert fresh(store, "user_2")[0] == {"coins": 102}
        assert len(before_versions["user_2"]) == 2
        assert store.get_version("user_2", before_versions["user_2"][0].version)[0] == {"coins": 2}
        assert fresh(ds.get_data_store("players", "beta"), "user_0")[0] == "beta"
        assert all_pages(ds.get_ordered_data_store("board").get_sorted, page_size=4) == before_board
        assert len(before_board) == 10
        # and it keeps working: versions continue after the reopened ones
        version = store.set("user_2", "new")
        assert version not in {v.version for v in before_versions["user_2"]}
    finally:
        again.shutdown()


def test_after_shutdown_the_world_file_copied_alone_holds_every_acknowledged_write(clock, tmp_path):
    world = make_world(clock, tmp_path, "sqlite", shards=3, name="alone")
    store = world.server("a").datastores.get_data_store("players")
    acknowledged = {f"user_{i}": (store.set(f"user_{i}", {"n": i}), {"n": i}) for i in range(100)}
    world.shutdown()
    wal = tmp_path / "alone.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, f"{wal} left with {wal.stat().st_size} bytes"
    (tmp_path / "copy").mkdir()
    shutil.copyfile(tmp_path / "alone.db", tmp_path / "copy" / "alone.db")   # the .db alone, no -wal, no -shm

    copy = make_world(clock, tmp_path / "copy", "sqlite", name="alone")
    try:
        players = copy.server("b").datastores.get_data_store("players")
        found = {key: (info.version, value) for key in acknowledged for value, info in [fresh(players, key)]
                 if info is not None}
        assert found == acknowledged
    finally:
        copy.shutdown()


def test_a_world_shut_down_answers_with_a_typed_error_and_shuts_down_again_harmlessly(clock, tmp_path, backend):
    world = make_world(clock, tmp_path, backend, name="closed")
    store = world.server("a").datastores.get_data_store("players")
    store.set("k", 1)
    world.shutdown()
    world.shutdown()
    err = refused(509, store.set, "k", 2)
    assert "shut down" in err.message and "not applied" in err.message
    refused(509, fresh, store, "k")


# ------------------------------------------------------------------------------------------------- public face


def test_everything_a_client_needs_is_exported_from_storage():
    for name in ("World", "ManualClock", "DataStoreError", "MemoryStoreError", "TransformError", "UpdateResult",
                 "SortDirection", "FaultConfig", "Outage", "KeyInfo", "VersionInfo", "Page", "DataStoreStatistics"):
        assert name in storage.__all__ and hasattr(storage, name)


def test_world_statistics_are_one_frozen_snapshot_per_shard(clock, tmp_path):
    now = clock.now()
    world = make_world(clock, tmp_path, shards=2, faults=FaultConfig(outages=(Outage(now, now + 1),)))
    try:
        store = world.server("a").datastores.get_data_store("s")
        with pytest.raises(DataStoreError):
            store.set("k", 1)                               # the outage fails the first write
        clock.advance(ms=1)
        store.set("k", 2)
        store.update("k", lambda old, _info: old + 1, current=(1, None))   # a stale guess: one lost compare-and-set
        stats = world.statistics()
        assert [s.shard for s in stats] == [0, 1]
        assert all(isinstance(s, storage.ShardStatistics) for s in stats)
        assert sum(s.injected_errors for s in stats) == 1 and sum(s.ambiguous_writes for s in stats) == 0
        assert sum(s.conflicts for s in stats) == 1
        assert sum(s.requests for s in stats) == 4           # failed set, set, the update's two compare-and-sets
        with pytest.raises(AttributeError):
            stats[0].requests = 0
    finally:
        world.shutdown()


def test_update_from_a_known_entry_skips_the_read_and_re_runs_when_the_guess_is_stale(mem_world):
    server = mem_world.server("job-known")
    store = server.datastores.get_data_store("players")
    store.set("k", {"coins": 1})
    value, info = store.get("k", use_cache=False)
    seen = []

    def add(old, _info):
        seen.append(old["coins"])
        return {"coins": old["coins"] + 10}

    new, new_info = store.update("k", add, current=(value, info))       # the guess is right: one attempt
    assert new == {"coins": 11} and seen == [1]
    seen.clear()
    new, _ = store.update("k", add, current=(value, info))              # stale: re-runs on the stored value
    assert new == {"coins": 21} and seen == [1, 11]
    seen.clear()
    store.update("k", add, current=({"coins": 0}, None))                 # "absent" guess on an existing key
    assert seen == [0, 21] and fresh(store, "k")[0] == {"coins": 31}
    with pytest.raises(TypeError, match="current must be"):
        store.update("k", add, current=("just a value",))
    assert fresh(store, "k")[0] == {"coins": 31}
