"""MemoryStoreEngine on a manual clock: operations, compare-and-set, expiry, limits, quotas, batches."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings, strategies as st

from lodestore.storage._clock import ManualClock
from lodestore.storage._errors import ConfigError, MemoryStoreError
from lodestore.storage.memorystore import _engine as ms
from lodestore.storage.memorystore._structures import hash_partition
from lodestore.storage.memorystore import (
    ANY,
    Conflict,
    HashMapGet,
    HashMapList,
    HashMapPage,
    HashMapRemove,
    HashMapSet,
    Item,
    MemoryStoreEngine,
    QueueAdd,
    QueueBatch,
    QueueGetSize,
    QueueRead,
    QueueRemove,
    QueueRemoved,
    SortedMapGet,
    SortedMapGetRange,
    SortedMapGetSize,
    SortedMapRemove,
    SortedMapSet,
    Written,
)

T0 = 1_700_000_000_000


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def engine(clock: ManualClock) -> MemoryStoreEngine:
    """Quotas large enough to stay out of the way of tests that are not about them."""
    return MemoryStoreEngine(clock, users=10_000, ccu=10_000)


def run(engine: MemoryStoreEngine, op):
    """Run one op; raise its error like a client would."""
    [result] = engine.execute([op])
    if isinstance(result, MemoryStoreError):
        raise result
    return result


def refused(engine: MemoryStoreEngine, op) -> MemoryStoreError:
    [result] = engine.execute([op])
    assert isinstance(result, MemoryStoreError), result
    return result


def hset(key: str, value: bytes = b"v", expiration: float = 60, **kw) -> HashMapSet:
    return HashMapSet("m", key, value, len(value), expiration, **kw)


def sset(key: str, sort_key=None, expiration: float = 60, value: bytes = b"v", **kw) -> SortedMapSet:
    return SortedMapSet("s", key, value, len(value), expiration, sort_key=sort_key, **kw)


def keys(items) -> list[str]:
    return [item.key for item in items]


# ---------------------------------------------------------------------------------------------------------------------
# Hash maps


def test_hash_map_set_get_remove(engine: MemoryStoreEngine) -> None:
    assert run(engine, HashMapGet("m", "a")) is None
    written = run(engine, hset("a", b"one"))
    assert isinstance(written, Written)
    item = run(engine, HashMapGet("m", "a"))
    assert item == Item("a", b"one", written.version, None, T0 + 60_000)
    assert run(engine, HashMapRemove("m", "a")) is None
    assert run(engine, HashMapGet("m", "a")) is None
    assert run(engine, HashMapRemove("m", "a")) is None   # removing an absent item is fine


def test_versions_grow_and_are_never_reused(engine: MemoryStoreEngine) -> None:
    v1 = run(engine, hset("a")).version
    v2 = run(engine, hset("a")).version
    assert v2 > v1
    run(engine, HashMapRemove("m", "a"))
    v3 = run(engine, hset("a")).version
    assert v3 > v2
    # A writer holding the version from before the remove must not match the new item.
    assert isinstance(run(engine, hset("a", b"stale", if_version=v1)), Conflict)


def test_structures_of_different_kinds_with_one_name_are_separate(engine: MemoryStoreEngine) -> None:
    run(engine, HashMapSet("x", "k", b"h", 1, 60))
    run(engine, SortedMapSet("x", "k", b"s", 1, 60))
    assert run(engine, HashMapGet("x", "k")).value == b"h"
    assert run(engine, SortedMapGet("x", "k")).value == b"s"


def test_compare_and_set_two_interleaved_writers(engine: MemoryStoreEngine) -> None:
    run(engine, hset("coins", b"10"))
    seen_a = run(engine, HashMapGet("m", "coins"))
    seen_b = run(engine, HashMapGet("m", "coins"))
    won = run(engine, hset("coins", b"11", if_version=seen_a.version))
    lost = run(engine, hset("coins", b"15", if_version=seen_b.version))
    assert isinstance(won, Written)
    assert lost == Conflict(Item("coins", b"11", won.version, None, T0 + 60_000))
    # The loser re-runs its transform on the current item and succeeds.
    retried = run(engine, hset("coins", b"16", if_version=lost.current.version))
    assert isinstance(retried, Written)
    assert run(engine, HashMapGet("m", "coins")).value == b"16"


def test_if_version_none_writes_only_when_absent(engine: MemoryStoreEngine) -> None:
    assert isinstance(run(engine, hset("lock", b"srv1", if_version=None)), Written)
    conflict = run(engine, hset("lock", b"srv2", if_version=None))
    assert isinstance(conflict, Conflict) and conflict.current.value == b"srv1"
    assert isinstance(run(engine, hset("other", if_version=7)), Conflict)   # absent, but a version was expected
    assert run(engine, HashMapGet("m", "other")) is None


def test_lock_released_by_conditional_set_with_expiration_zero(engine: MemoryStoreEngine) -> None:
    mine = run(engine, hset("lock", b"srv1", expiration=30, if_version=None))
    assert isinstance(run(engine, hset("lock", b"srv1", expiration=0, if_version=mine.version)), Written)
    assert run(engine, HashMapGet("m", "lock")) is None
    assert engine.statistics().items == 0
    assert isinstance(run(engine, hset("lock", b"srv2", if_version=None)), Written)


def test_conditional_write_costs_two_units(engine: MemoryStoreEngine) -> None:
    run(engine, hset("a"))
    assert engine.statistics().units_last_minute == 1
    run(engine, hset("a", if_version=999))                 # a conflict is served, so it is charged
    assert engine.statistics().units_last_minute == 3
    run(engine, sset("a", if_version=None))
    assert engine.statistics().units_last_minute == 5


def partition_order(names) -> list[str]:
    """The order a hash map lists `names` in: partition by partition, key order within each."""
    return sorted(names, key=lambda k: (hash_partition(k, ms.HASH_MAP_PARTITIONS), k))


def test_list_items_pages_give_every_item_once_partition_by_partition(engine: MemoryStoreEngine) -> None:
    names = [f"k{i:03d}" for i in range(25)]
    for name in reversed(names):
        run(engine, hset(name))
    seen, cursor, pages = [], None, 0
    while True:
        page = run(engine, HashMapList("m", 10, cursor))
        assert isinstance(page, HashMapPage)
        seen += keys(page.items)
        pages += 1
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == partition_order(names) and sorted(seen) == names and pages == 3
    assert run(engine, HashMapList("m", 5, "")) == run(engine, HashMapList("m", 5))


def test_list_items_exact_fit_has_no_next_cursor_and_missing_map_is_empty(engine: MemoryStoreEngine) -> None:
    for name in "abc":
        run(engine, hset(name))
    page = run(engine, HashMapList("m", 3))
    assert keys(page.items) == partition_order("abc") and page.cursor is None
    assert run(engine, HashMapList("nothing", 200)) == HashMapPage((), None)


def test_list_items_cursor_survives_removal_of_its_key(engine: MemoryStoreEngine) -> None:
    order = partition_order("abcd")
    for name in order:
        run(engine, hset(name))
    page = run(engine, HashMapList("m", 2))
    run(engine, HashMapRemove("m", order[1]))           # the key the cursor points after
    assert keys(run(engine, HashMapList("m", 2, page.cursor)).items) == order[2:]


def test_list_items_refuses_bad_counts_and_cursors(engine: MemoryStoreEngine) -> None:
    for count in (0, 201, 1.5, True):
        assert refused(engine, HashMapList("m", count)).name == "InvalidRequest"
    assert run(engine, HashMapList("m", 200)).items == ()
    assert refused(engine, HashMapList("m", 10, "not a cursor!")).name == "InvalidRequest"
    assert refused(engine, HashMapList("m", 10, 42)).name == "InvalidRequest"


def test_list_items_charges_the_partitions_scanned_plus_the_items(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=10_000, ccu=10_000, hash_map_partitions=4)
    run(engine, HashMapList("m", 10))                  # an empty map: every partition scanned, nothing returned
    assert engine.statistics().units_last_minute == 4
    by_partition = {p: [k for k in (f"k{i}" for i in range(40)) if hash_partition(k, 4) == p][:2] for p in range(4)}
    for p in (0, 2):                                   # partitions 1 and 3 stay empty
        for key in by_partition[p]:
            run(engine, hset(key))
    spent = engine.statistics().units_last_minute
    page = run(engine, HashMapList("m", 3))            # 2 items of partition 0, 1 of partition 2, over empty 1
    assert keys(page.items) == by_partition[0] + by_partition[2][:1] and page.cursor is not None
    assert engine.statistics().units_last_minute == spent + 3 + 3
    page = run(engine, HashMapList("m", 3, page.cursor))   # the rest of partition 2, then 3 (empty): the end
    assert keys(page.items) == by_partition[2][1:] and page.cursor is None
    assert engine.statistics().units_last_minute == spent + 6 + 2 + 1


# ---------------------------------------------------------------------------------------------------------------------
# Expiry


def test_item_vanishes_exactly_at_expiry(engine: MemoryStoreEngine, clock: ManualClock) -> None:
    run(engine, hset("a", expiration=10))
    clock.set(T0 + 10_000 - 1)
    assert run(engine, HashMapGet("m", "a")) is not None
    clock.advance(ms=1)
    assert run(engine, HashMapGet("m", "a")) is None
    assert engine.statistics().items == 0 and engine.statistics().bytes_used == 0


def test_expired_items_are_invisible_to_every_operation(engine: MemoryStoreEngine, clock: ManualClock) -> None:
    run(engine, hset("a", expiration=5))
    run(engine, hset("b", expiration=50))
    run(engine, sset("x", 1, expiration=5))
    run(engine, sset("y", 2, expiration=50))
    run(engine, QueueAdd("q", b"gone", 4, 5))
    run(engine, QueueAdd("q", b"kept", 4, 50))
    clock.advance(seconds=5)
    assert keys(run(engine, HashMapList("m", 10)).items) == ["b"]
    assert keys(run(engine, SortedMapGetRange("s", "Ascending", 10))) == ["y"]
    assert run(engine, SortedMapGetSize("s")) == 1
    assert run(engine, QueueGetSize("q")) == 1
    assert run(engine, QueueRead("q", 10)).values == (b"kept",)
    # An expired item counts as absent for compare-and-set.
    assert isinstance(run(engine, hset("a", if_version=None)), Written)
    stats = engine.statistics()
    assert stats.items == 4 and stats.structures == 3


def test_overwrite_restarts_expiry(engine: MemoryStoreEngine, clock: ManualClock) -> None:
    run(engine, hset("lock", expiration=10))
    clock.advance(seconds=8)
    run(engine, hset("lock", expiration=10))
    clock.advance(seconds=8)                  # 16 s after the first write, 8 s after the refresh
    assert run(engine, HashMapGet("m", "lock")) is not None
    clock.advance(seconds=2)
    assert run(engine, HashMapGet("m", "lock")) is None


@pytest.mark.parametrize("expiration", [0, 1, 0.5, 3_888_000])
def test_expiration_in_range_is_accepted(engine: MemoryStoreEngine, expiration: float) -> None:
    assert isinstance(run(engine, hset("a", expiration=expiration)), Written)
    assert run(engine, QueueAdd("q", b"v", 1, expiration)) is None


def test_longest_expiration_lasts_45_days(engine: MemoryStoreEngine, clock: ManualClock) -> None:
    run(engine, hset("a", expiration=3_888_000))
    clock.advance(seconds=3_888_000 - 1)
    assert run(engine, HashMapGet("m", "a")) is not None
    clock.advance(seconds=1)
    assert run(engine, HashMapGet("m", "a")) is None


@pytest.mark.parametrize("expiration", [-1, 3_888_001, float("nan"), float("inf"), "60", None, True])
def test_expiration_out_of_range_is_refused(engine: MemoryStoreEngine, expiration: object) -> None:
    assert refused(engine, hset("a", expiration=expiration)).name == "InvalidExpirationTime"
    assert refused(engine, sset("a", expiration=expiration)).name == "InvalidExpirationTime"
    assert refused(engine, QueueAdd("q", b"v", 1, expiration)).name == "InvalidExpirationTime"
    assert engine.statistics().items == 0


# ---------------------------------------------------------------------------------------------------------------------
# Item limits


def test_key_length_limit(engine: MemoryStoreEngine) -> None:
    assert isinstance(run(engine, hset("k" * 128)), Written)
    assert isinstance(run(engine, sset("k" * 128)), Written)
    for bad in ("k" * 129, "", 12, None):
        assert refused(engine, hset(bad)).name == "InvalidRequest"
        assert refused(engine, HashMapGet("m", bad)).name == "InvalidRequest"
        assert refused(engine, sset(bad)).name == "InvalidRequest"


def test_value_size_limit(engine: MemoryStoreEngine) -> None:
    assert isinstance(run(engine, HashMapSet("m", "a", b"x", 32_768, 60)), Written)
    error = refused(engine, HashMapSet("m", "b", b"x", 32_769, 60))
    assert error.name == "ItemValueSizeTooLarge" and "32769" in error.message
    assert refused(engine, SortedMapSet("s", "b", b"x", 32_769, 60)).name == "ItemValueSizeTooLarge"
    assert refused(engine, QueueAdd("q", b"x", 32_769, 60)).name == "ItemValueSizeTooLarge"
    assert run(engine, QueueAdd("q", b"x", 32_768, 60)) is None


def test_values_must_be_bytes_with_an_int_size(engine: MemoryStoreEngine) -> None:
    assert refused(engine, HashMapSet("m", "a", "text", 4, 60)).name == "InvalidRequest"
    assert refused(engine, HashMapSet("m", "a", b"x", -1, 60)).name == "InvalidRequest"
    assert refused(engine, HashMapSet("m", "a", b"x", 1.0, 60)).name == "InvalidRequest"
    assert refused(engine, HashMapSet("", "a", b"x", 1, 60)).name == "InvalidRequest"
    assert refused(engine, hset("a", if_version="3")).name == "InvalidRequest"


def test_refused_op_changes_nothing_and_spends_no_units(engine: MemoryStoreEngine) -> None:
    before = run(engine, hset("a", b"old"))
    stats = engine.statistics()
    for op in (HashMapSet("m", "a", b"new", 40_000, 60),
               HashMapSet("m", "a", b"new", 3, -5),
               HashMapSet("m", "a", b"new", 3, 60, if_version=1.5),
               SortedMapSet("s", "a", b"new", 3, 60, sort_key=float("nan")),
               QueueRead("q", 0)):
        refused(engine, op)
    assert run(engine, HashMapGet("m", "a")) == Item("a", b"old", before.version, None, T0 + 60_000)
    assert engine.statistics().units_last_minute == stats.units_last_minute + 1   # only the Get above
    assert engine.statistics().bytes_used == stats.bytes_used


def test_structure_item_limit(engine: MemoryStoreEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "MS_MAX_ITEMS_PER_STRUCTURE", 3)
    for name in "abc":
        run(engine, sset(name))
    error = refused(engine, sset("d"))
    assert error.name == "DataStructureItemsOverLimit" and "3" in error.message
    assert isinstance(run(engine, sset("a", value=b"overwrite")), Written)     # replacing an item needs no new slot
    assert isinstance(run(engine, SortedMapSet("other", "d", b"v", 1, 60)), Written)   # the limit is per structure
    for i in range(3):
        run(engine, QueueAdd("q", b"v", 1, 60))
    assert refused(engine, QueueAdd("q", b"v", 1, 60)).name == "DataStructureItemsOverLimit"
    run(engine, SortedMapRemove("s", "b"))
    assert isinstance(run(engine, sset("d")), Written)


def test_structure_byte_limit(engine: MemoryStoreEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "MS_MAX_BYTES_PER_STRUCTURE", 100)
    run(engine, SortedMapSet("s", "a", b"v", 90, 60))                        # 90 + len("a") = 91 bytes
    assert refused(engine, SortedMapSet("s", "b", b"v", 9, 60)).name == "DataStructureMemoryOverLimit"
    assert isinstance(run(engine, SortedMapSet("s", "b", b"v", 8, 60)), Written)   # exactly 100
    assert isinstance(run(engine, SortedMapSet("s", "a", b"v", 10, 60)), Written)  # shrinking is always fine
    run(engine, QueueAdd("q", b"v", 100, 60))
    assert refused(engine, QueueAdd("q", b"v", 1, 60)).name == "DataStructureMemoryOverLimit"


def test_hash_maps_span_partitions_so_structure_size_limits_do_not_apply(
        engine: MemoryStoreEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "MS_MAX_ITEMS_PER_STRUCTURE", 2)
    monkeypatch.setattr(ms, "MS_MAX_BYTES_PER_STRUCTURE", 100)
    for name in "abcde":
        assert isinstance(run(engine, HashMapSet("m", name, b"v", 60, 60)), Written)
    assert engine.statistics().items == 5 and engine.statistics().bytes_used == 5 * 61


def test_structure_limits_stay_when_quotas_are_off(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "MS_MAX_ITEMS_PER_STRUCTURE", 1)
    engine = MemoryStoreEngine(clock, enforce_quotas=False)
    run(engine, sset("a"))
    assert refused(engine, sset("b")).name == "DataStructureItemsOverLimit"


# ---------------------------------------------------------------------------------------------------------------------
# Sorted maps


@pytest.fixture
def mixed(engine: MemoryStoreEngine) -> MemoryStoreEngine:
    """Numbers first (ascending, ties by key), then strings, then items without a sort key (by key)."""
    for key, sort_key in [("n2", None), ("s1", "apple"), ("x10", 10), ("a10", 10), ("neg", -2.5),
                          ("s2", "banana"), ("n1", None), ("f", 3.5), ("s0", "apple")]:
        run(engine, sset(key, sort_key))
    return engine


ORDER = ["neg", "f", "a10", "x10", "s0", "s1", "s2", "n1", "n2"]


def test_sorted_map_order_mixed_sort_keys(mixed: MemoryStoreEngine) -> None:
    assert keys(run(mixed, SortedMapGetRange("s", "Ascending", 200))) == ORDER
    assert keys(run(mixed, SortedMapGetRange("s", "Descending", 200))) == ORDER[::-1]
    assert keys(run(mixed, SortedMapGetRange("s", "Ascending", 3))) == ORDER[:3]
    assert keys(run(mixed, SortedMapGetRange("s", "Descending", 2))) == ["n2", "n1"]
    assert run(mixed, SortedMapGetSize("s")) == len(ORDER)


def test_sorted_map_get_returns_sort_key_and_version(engine: MemoryStoreEngine) -> None:
    written = run(engine, sset("p1", 42, value=b"score"))
    assert run(engine, SortedMapGet("s", "p1")) == Item("p1", b"score", written.version, 42, T0 + 60_000)
    run(engine, sset("p1", None))                     # a write without a sort key drops it
    assert run(engine, SortedMapGet("s", "p1")).sort_key is None


def test_sorted_map_rewrite_moves_item(engine: MemoryStoreEngine) -> None:
    run(engine, sset("a", 1))
    run(engine, sset("b", 2))
    run(engine, sset("a", 3))
    assert keys(run(engine, SortedMapGetRange("s", "Ascending", 10))) == ["b", "a"]
    run(engine, SortedMapRemove("s", "b"))
    assert keys(run(engine, SortedMapGetRange("s", "Ascending", 10))) == ["a"]
    assert run(engine, SortedMapGet("s", "b")) is None
    assert run(engine, SortedMapGetSize("s")) == 1


def test_sorted_map_exclusive_bounds_both_directions(mixed: MemoryStoreEngine) -> None:
    def rng(direction, lower=None, upper=None, count=200):
        return keys(run(mixed, SortedMapGetRange("s", direction, count, lower, upper)))

    # Full (sort_key, key) bounds are exclusive positions.
    assert rng("Ascending", (3.5, "f"), ("apple", "s1")) == ["a10", "x10", "s0"]
    assert rng("Descending", (3.5, "f"), ("apple", "s1")) == ["s0", "x10", "a10"]
    # A sort key alone: lower lies past every item with it, upper before every item with it.
    assert rng("Ascending", (10, None)) == ORDER[4:]
    assert rng("Ascending", None, (10, None)) == ["neg", "f"]
    assert rng("Descending", None, ("apple", None)) == ["x10", "a10", "f", "neg"]
    assert rng("Descending", ("apple", None), None) == ["n2", "n1", "s2"]
    # Numeric bounds compare ints and floats alike.
    assert rng("Ascending", (10.0, "a10"), (10, "zzz")) == ["x10"]
    # A key alone is a position among the items without a sort key.
    assert rng("Ascending", (None, "n1")) == ["n2"]
    assert rng("Descending", None, (None, "n1")) == ORDER[:7][::-1]
    # Count applies from the start of the direction.
    assert rng("Descending", (3.5, "f"), ("apple", "s1"), count=1) == ["s0"]
    # Crossed bounds give nothing.
    assert rng("Ascending", ("apple", "s1"), (3.5, "f")) == []


def test_sorted_map_get_range_costs_one_unit_per_item(mixed: MemoryStoreEngine) -> None:
    start = mixed.statistics().units_last_minute
    run(mixed, SortedMapGetRange("s", "Ascending", 4))
    run(mixed, SortedMapGetRange("s", "Ascending", 4, lower_bound=(None, "zzz")))   # empty: still 1
    assert mixed.statistics().units_last_minute == start + 4 + 1


@pytest.mark.parametrize("sort_key", [True, float("nan"), float("inf"), b"bytes", ("t",), "x" * 129])
def test_sorted_map_refuses_bad_sort_keys(engine: MemoryStoreEngine, sort_key: object) -> None:
    assert refused(engine, sset("a", sort_key)).name == "InvalidRequest"


def test_sorted_map_refuses_bad_range_arguments(mixed: MemoryStoreEngine) -> None:
    for op in (SortedMapGetRange("s", "Up", 10),
               SortedMapGetRange("s", "Ascending", 0),
               SortedMapGetRange("s", "Ascending", 201),
               SortedMapGetRange("s", "Ascending", 10, lower_bound=(None, None)),
               SortedMapGetRange("s", "Ascending", 10, lower_bound=(1, 2)),
               SortedMapGetRange("s", "Ascending", 10, upper_bound="key")):
        assert refused(mixed, op).name == "InvalidRequest"
    assert len(run(mixed, SortedMapGetRange("s", ms.SortDirection.DESCENDING, 200))) == len(ORDER)


# ---------------------------------------------------------------------------------------------------------------------
# Queues


def add(engine: MemoryStoreEngine, value: bytes, priority: float = 0, expiration: float = 600) -> None:
    run(engine, QueueAdd("q", value, len(value), expiration, priority))


def test_queue_priority_then_fifo(engine: MemoryStoreEngine) -> None:
    for value, priority in [(b"low1", 0), (b"high1", 5), (b"low2", 0), (b"mid", 1.5), (b"high2", 5), (b"neg", -1)]:
        add(engine, value, priority)
    batch = run(engine, QueueRead("q", 100))
    assert batch.values == (b"high1", b"high2", b"mid", b"low1", b"low2", b"neg")
    assert isinstance(batch.read_id, str)


def test_queue_read_hides_and_remove_deletes(engine: MemoryStoreEngine) -> None:
    for value in (b"a", b"b", b"c"):
        add(engine, value)
    first = run(engine, QueueRead("q", 2))
    assert first.values == (b"a", b"b")
    assert run(engine, QueueGetSize("q")) == 3
    assert run(engine, QueueGetSize("q", exclude_invisible=True)) == 1
    second = run(engine, QueueRead("q", 2))
    assert second.values == (b"c",) and second.read_id != first.read_id
    assert run(engine, QueueRead("q", 2)) == QueueBatch((), None)
    assert run(engine, QueueRemove("q", first.read_id)) == QueueRemoved(2)
    assert run(engine, QueueRemove("q", first.read_id)) == QueueRemoved(0)   # delivered twice: harmless
    assert run(engine, QueueRemove("q", "no-such-read")) == QueueRemoved(0)
    assert run(engine, QueueGetSize("q")) == 1
    assert run(engine, QueueRemove("q", second.read_id)) == QueueRemoved(1)
    assert run(engine, QueueGetSize("q")) == 0
    assert engine.statistics().structures == 0


def test_queue_invisibility_timeout_reappears_in_place(engine: MemoryStoreEngine, clock: ManualClock) -> None:
    for value in (b"a", b"b", b"c"):
        add(engine, value)
    batch = run(engine, QueueRead("q", 1, invisibility_s=10))
    assert batch.values == (b"a",)
    clock.advance(seconds=10, ms=-1)
    assert run(engine, QueueRead("q", 1, invisibility_s=100)).values == (b"b",)
    clock.advance(ms=1)                                           # a's invisibility ends exactly now
    assert run(engine, QueueGetSize("q", exclude_invisible=True)) == 2
    assert run(engine, QueueRead("q", 5)).values == (b"a", b"c")  # a kept its place ahead of c
    assert run(engine, QueueRemove("q", batch.read_id)) == QueueRemoved(0)   # timed out: nothing to remove


def test_queue_default_invisibility_is_30_seconds(engine: MemoryStoreEngine, clock: ManualClock) -> None:
    add(engine, b"a")
    run(engine, QueueRead("q", 1))
    clock.advance(seconds=29)
    assert run(engine, QueueRead("q", 1)).values == ()
    clock.advance(seconds=1)
    assert run(engine, QueueRead("q", 1)).values == (b"a",)


def test_queue_all_or_nothing(engine: MemoryStoreEngine) -> None:
    add(engine, b"a")
    add(engine, b"b")
    assert run(engine, QueueRead("q", 3, all_or_nothing=True)) == QueueBatch((), None)
    assert run(engine, QueueGetSize("q", exclude_invisible=True)) == 2     # nothing was hidden
    assert run(engine, QueueRead("q", 2, all_or_nothing=True)).values == (b"a", b"b")


def test_queue_item_expires_even_while_invisible(engine: MemoryStoreEngine, clock: ManualClock) -> None:
    add(engine, b"short", expiration=5)
    add(engine, b"long", expiration=600)
    batch = run(engine, QueueRead("q", 2, invisibility_s=60))
    clock.advance(seconds=5)
    assert run(engine, QueueGetSize("q")) == 1
    assert run(engine, QueueRemove("q", batch.read_id)) == QueueRemoved(1)
    assert engine.statistics().items == 0


def test_queue_read_charges_per_item_and_refuses_bad_arguments(engine: MemoryStoreEngine) -> None:
    for value in (b"a", b"b", b"c"):
        add(engine, value)
    start = engine.statistics().units_last_minute
    run(engine, QueueRead("q", 3))
    run(engine, QueueRead("q", 3))                              # empty read: 1 unit
    assert engine.statistics().units_last_minute == start + 3 + 1
    for op in (QueueRead("q", 0), QueueRead("q", 101), QueueRead("q", 1, invisibility_s=0),
               QueueRead("q", 1, all_or_nothing=1), QueueAdd("q", b"v", 1, 60, priority=float("nan")),
               QueueAdd("q", b"v", 1, 60, priority="high"), QueueRemove("q", 7), QueueGetSize("q", None)):
        assert refused(engine, op).name == "InvalidRequest"


# ---------------------------------------------------------------------------------------------------------------------
# Experience quotas


def test_memory_quota_follows_users(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=0, ccu=1000)
    assert engine.memory_quota_bytes == 64 * 1024
    # Fill to exactly 64 KB: two 32 KB-ish values plus keys.
    run(engine, HashMapSet("m", "a", b"v", 32_768 - 1, 600))
    run(engine, HashMapSet("m", "b", b"v", 32_768 - 1, 600))
    assert engine.statistics().bytes_used == 65_536
    error = refused(engine, QueueAdd("q", b"v", 1, 600))
    assert error.name == "TotalMemoryOverLimit" and "65536" in error.message
    engine.set_population(users=1, ccu=1000)
    assert engine.memory_quota_bytes == 65_536 + 1200
    run(engine, QueueAdd("q", b"v", 1200, 600))
    assert refused(engine, QueueAdd("q", b"v", 1, 600)).name == "TotalMemoryOverLimit"
    # Fewer users: the quota stays at its 8-day peak (see test_memory_quota_drops_only_8_days_after_players_leave).
    engine.set_population(users=0, ccu=1000)
    assert engine.memory_quota_bytes == 65_536 + 1200
    assert refused(engine, QueueAdd("q", b"v", 1, 600)).name == "TotalMemoryOverLimit"


def test_expired_items_free_memory_quota(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=0, ccu=1000)
    run(engine, HashMapSet("m", "a", b"v", 32_000, 10))
    run(engine, HashMapSet("m", "b", b"v", 32_000, 600))
    assert refused(engine, HashMapSet("m", "c", b"v", 32_000, 600)).name == "TotalMemoryOverLimit"
    clock.advance(seconds=10)
    assert isinstance(run(engine, HashMapSet("m", "c", b"v", 32_000, 600)), Written)


def test_request_units_quota_with_sliding_window(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=1000, ccu=0)
    assert engine.units_quota_per_minute == 1000
    results = engine.execute([HashMapGet("m", "a")] * 600)
    assert all(result is None for result in results)
    clock.advance(seconds=30)
    results = engine.execute([HashMapGet("m", "a")] * 401)
    assert results[:400] == [None] * 400
    assert isinstance(results[400], MemoryStoreError) and results[400].name == "TotalRequestsOverLimit"
    assert engine.statistics().units_last_minute == 1000
    # The first 600 units leave the window 60 s after they were spent, not before.
    clock.advance(seconds=30, ms=-1)
    assert refused(engine, HashMapGet("m", "a")).name == "TotalRequestsOverLimit"
    clock.advance(ms=1)
    assert engine.statistics().units_last_minute == 400
    assert engine.execute([HashMapGet("m", "a")] * 600) == [None] * 600
    assert refused(engine, HashMapGet("m", "a")).name == "TotalRequestsOverLimit"
    # More players online, more units at once.
    engine.set_population(users=1000, ccu=10)
    assert engine.units_quota_per_minute == 2200
    assert engine.execute([HashMapGet("m", "a")] * 1200) == [None] * 1200
    assert refused(engine, HashMapGet("m", "a")).name == "TotalRequestsOverLimit"


def test_multi_unit_call_needs_all_its_units(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, users=1000, ccu=0)
    for i in range(5):
        run(engine, SortedMapSet("s", f"k{i}", b"v", 1, 600, sort_key=i))
    engine.execute([HashMapGet("m", "a")] * (1000 - 5 - 4))
    assert engine.statistics().units_last_minute == 996
    assert refused(engine, SortedMapGetRange("s", "Ascending", 5)).name == "TotalRequestsOverLimit"
    assert len(run(engine, SortedMapGetRange("s", "Ascending", 4))) == 4
    assert engine.statistics().units_last_minute == 1000


def test_structure_unit_limit(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "MS_MAX_UNITS_PER_STRUCTURE_MINUTE", 10)
    engine = MemoryStoreEngine(clock, users=1000, ccu=1000)
    assert engine.execute([SortedMapGet("hot", "a")] * 10) == [None] * 10
    assert refused(engine, SortedMapGet("hot", "b")).name == "DataStructureRequestsOverLimit"
    assert run(engine, SortedMapGet("cold", "a")) is None          # other structures are not throttled
    assert engine.execute([QueueGetSize("q")] * 10) == [0] * 10
    assert refused(engine, QueueGetSize("q")).name == "DataStructureRequestsOverLimit"
    assert engine.execute([HashMapGet("hash", f"k{i}") for i in range(20)]) == [None] * 20   # hash maps: no limit
    clock.advance(seconds=60)
    assert run(engine, SortedMapGet("hot", "a")) is None


def test_quotas_off(clock: ManualClock) -> None:
    engine = MemoryStoreEngine(clock, enforce_quotas=False)
    for i in range(3):
        run(engine, HashMapSet("m", f"k{i}", b"v", 32_768, 600))      # past the 64 KB quota
    assert engine.execute([HashMapGet("m", "k0")] * 1200)[-1].value == b"v"
    stats = engine.statistics()
    assert stats.enforce_quotas is False and stats.units_last_minute == 1203
    assert stats.bytes_used > stats.memory_quota_bytes
    # Item limits still hold.
    assert refused(engine, HashMapSet("m", "k", b"v", 32_769, 600)).name == "ItemValueSizeTooLarge"


def test_population_must_be_non_negative_ints(clock: ManualClock) -> None:
    with pytest.raises(ConfigError):
        MemoryStoreEngine(clock, users=-1)
    engine = MemoryStoreEngine(clock)
    with pytest.raises(ConfigError):
        engine.set_population(users=1.5, ccu=0)


# ---------------------------------------------------------------------------------------------------------------------
# Batches, statistics, messages


def test_batch_with_failing_op_in_the_middle_runs_the_others(engine: MemoryStoreEngine) -> None:
    results = engine.execute([
        hset("a", b"1"),
        HashMapSet("m", "b", b"2", 99_999, 60),
        "not an op",
        hset("c", b"3"),
        HashMapGet("m", "a"),
        HashMapGet("m", "b"),
    ])
    assert isinstance(results[0], Written)
    assert isinstance(results[1], MemoryStoreError) and results[1].name == "ItemValueSizeTooLarge"
    assert isinstance(results[2], MemoryStoreError) and results[2].name == "InvalidRequest"
    assert isinstance(results[3], Written)
    assert results[4].value == b"1" and results[5] is None


def test_execute_one_raises(engine: MemoryStoreEngine) -> None:
    with pytest.raises(MemoryStoreError) as caught:
        engine.execute_one(hset("k" * 129))
    assert caught.value.name == "InvalidRequest" and "129" in str(caught.value)


def test_statistics_snapshot(engine: MemoryStoreEngine) -> None:
    run(engine, HashMapSet("m", "ab", b"v", 10, 60))
    run(engine, SortedMapSet("s", "c", b"v", 5, 60))
    run(engine, QueueAdd("q", b"v", 7, 60))
    stats = engine.statistics()
    assert (stats.structures, stats.hash_maps, stats.sorted_maps, stats.queues) == (3, 1, 1, 1)
    assert stats.items == 3 and stats.bytes_used == 12 + 6 + 7
    assert stats.units_last_minute == 3
    assert stats.memory_quota_bytes == 65_536 + 1200 * 10_000
    assert stats.units_quota_per_minute == 1000 + 120 * 10_000
    with pytest.raises(AttributeError):
        stats.items = 0


def test_messages_and_results_survive_pickling(engine: MemoryStoreEngine) -> None:
    """Ray pickles messages and results; ANY must still be ANY on the other side."""
    op = pickle.loads(pickle.dumps(hset("a")))
    assert op.if_version is ANY
    result = pickle.loads(pickle.dumps(run(engine, op)))
    assert isinstance(result, Written)
    error = pickle.loads(pickle.dumps(refused(engine, hset("a", expiration=-1))))
    assert error.name == "InvalidExpirationTime"


def test_stale_timers_are_compacted(engine: MemoryStoreEngine, clock: ManualClock) -> None:
    for _ in range(1000):
        run(engine, hset("lock", expiration=3_888_000))
    assert len(engine._timers) < 200
    clock.advance(seconds=3_888_000)
    assert engine.statistics().items == 0 and engine._timers == []


# ---------------------------------------------------------------------------------------------------------------------
# Sorted map ranges against a brute-force model

_sort_keys = st.one_of(st.none(), st.integers(-3, 3), st.sampled_from([-1.5, 0.5, 2.0]), st.sampled_from("abc"))
_keys = st.sampled_from(["k1", "k2", "k3", "k4", "k5", "k6"])
_bounds = st.one_of(st.none(), st.tuples(_sort_keys, st.one_of(st.none(), _keys)).filter(lambda b: b != (None, None)))


def _model_position(sort_key, key):
    if sort_key is None:
        return (2, 0, key)
    return (1, sort_key, key) if isinstance(sort_key, str) else (0, sort_key, key)


@settings(max_examples=150, deadline=None)
@given(writes=st.lists(st.tuples(_keys, _sort_keys), max_size=12), lower=_bounds, upper=_bounds,
       descending=st.booleans(), count=st.integers(1, 8))
def test_sorted_map_range_matches_model(writes, lower, upper, descending, count) -> None:
    engine = MemoryStoreEngine(ManualClock(T0), enforce_quotas=False)
    model: dict[str, object] = {}
    for key, sort_key in writes:
        run(engine, SortedMapSet("s", key, b"v", 1, 60, sort_key=sort_key))
        model[key] = sort_key

    def inside(key):
        sort_key = model[key]
        cls = _model_position(sort_key, key)[0]
        if lower is not None:
            lo_sk, lo_key = lower
            lo_cls = _model_position(lo_sk, "")[0]
            if lo_key is None:      # past every item with the bound's sort key
                if (cls, sort_key if cls < 2 else 0) <= (lo_cls, lo_sk if lo_cls < 2 else 0):
                    return False
            elif _model_position(sort_key, key) <= _model_position(lo_sk, lo_key):
                return False
        if upper is not None:
            up_sk, up_key = upper
            up_cls = _model_position(up_sk, "")[0]
            if up_key is None:      # before every item with the bound's sort key
                if (cls, sort_key if cls < 2 else 0) >= (up_cls, up_sk if up_cls < 2 else 0):
                    return False
            elif _model_position(sort_key, key) >= _model_position(up_sk, up_key):
                return False
        return True

    expected = sorted((key for key in model if inside(key)), key=lambda k: _model_position(model[k], k),
                      reverse=descending)[:count]
    direction = "Descending" if descending else "Ascending"
    got = run(engine, SortedMapGetRange("s", direction, count, lower, upper))
    assert keys(got) == expected
    assert all(item.sort_key == model[item.key] for item in got)
