"""The DataStore engine's rules, on both backends, driven by a manual clock."""

from __future__ import annotations

import msgpack
import pytest

from lodestore.storage._clock import ManualClock
from lodestore.storage._errors import ConfigError, DataStoreError
from lodestore.storage._faults import FaultConfig, Outage
from lodestore.storage._latency import Latency
from lodestore.storage._limits import BACKUP_RETENTION_MS, HOUR_MS, RequestType
from lodestore.storage.datastore import _messages as m
from lodestore.storage.datastore._backends import MemoryBackend, SqliteBackend
from lodestore.storage.datastore._engine import DataStoreEngine

START = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS  # on an hour boundary


@pytest.fixture(params=["memory", "sqlite"])
def engine(request, tmp_path):
    clock = ManualClock(START)
    backend = MemoryBackend() if request.param == "memory" else SqliteBackend(str(tmp_path / "w.db"))
    yield DataStoreEngine(backend, clock)
    backend.close()


def one(engine, op):
    result = engine.execute([op]).results[0]
    if isinstance(result, Exception):
        raise result
    return result


def put(engine, key, value, **kw):
    data = msgpack.packb(value)
    return one(engine, m.Set("s", "global", key, data, len(repr(value)), **kw))


def get(engine, key):
    entry = one(engine, m.Get("s", "global", key))
    return None if entry.value is None else msgpack.unpackb(entry.value), entry.info


def versions(engine, key, ascending=True):
    return [v for _, v in one(engine, m.ListVersions("s", "global", key, ascending, None, None, None, 1024))]


def test_missing_key_reads_none(engine):
    assert get(engine, "nobody") == (None, None)


def test_write_then_read_gives_value_and_key_info(engine):
    w = put(engine, "k", {"coins": 5}, user_ids=(7,), metadata={"tag": "a"})
    value, info = get(engine, "k")
    assert value == {"coins": 5}
    assert info == w.info
    assert info.user_ids == (7,) and info.metadata == {"tag": "a"}
    assert info.created_time == info.updated_time == START


def test_every_write_has_a_new_version_and_created_time_stays(engine):
    first = put(engine, "k", 1).info
    engine.clock.advance(seconds=5)
    second = put(engine, "k", 2).info
    assert first.version != second.version
    assert second.created_time == START and second.updated_time == START + 5000


def test_writes_within_one_hour_keep_only_the_latest(engine):
    for i in range(5):
        put(engine, "k", i)
        engine.clock.advance(seconds=60)
    listed = versions(engine, "k")
    assert len(listed) == 1 and get(engine, "k")[0] == 4


def test_first_write_of_each_hour_keeps_a_backup(engine):
    v1 = put(engine, "k", "hour0").info.version
    engine.clock.advance(ms=HOUR_MS)
    put(engine, "k", "hour1-a")
    v3 = put(engine, "k", "hour1-b").info.version
    listed = versions(engine, "k")
    assert [v.version for v in listed] == [v1, v3]
    assert one(engine, m.GetVersion("s", "global", "k", v1)).value == msgpack.packb("hour0")
    assert [v.version for v in versions(engine, "k", ascending=False)] == [v3, v1]


def test_backups_expire_30_days_after_they_stop_being_current(engine):
    v1 = put(engine, "k", "old").info.version
    engine.clock.advance(ms=HOUR_MS)
    put(engine, "k", "new")  # v1 superseded now
    superseded_at = engine.clock.now()
    engine.clock.set(superseded_at + BACKUP_RETENTION_MS - 1)
    assert one(engine, m.GetVersion("s", "global", "k", v1)).value is not None
    engine.clock.set(superseded_at + BACKUP_RETENTION_MS)
    assert one(engine, m.GetVersion("s", "global", "k", v1)) == m.MISSING
    # The latest never expires.
    engine.clock.advance(ms=10 * BACKUP_RETENTION_MS)
    assert get(engine, "k")[0] == "new"
    assert len(versions(engine, "k")) == 1


def test_remove_writes_a_tombstone_and_returns_the_previous_value(engine):
    put(engine, "k", {"a": 1})
    engine.clock.advance(ms=HOUR_MS)
    previous = one(engine, m.Remove("s", "global", "k"))
    assert msgpack.unpackb(previous.value) == {"a": 1}
    assert get(engine, "k") == (None, None)
    listed = versions(engine, "k")
    assert [v.is_deleted for v in listed] == [False, True]
    assert one(engine, m.Remove("s", "global", "k")) == m.MISSING  # nothing more to remove
    assert len(versions(engine, "k")) == 2


def test_key_recreated_after_remove_gets_a_new_created_time(engine):
    put(engine, "k", 1)
    one(engine, m.Remove("s", "global", "k"))
    engine.clock.advance(seconds=10)
    info = put(engine, "k", 2).info
    assert info.created_time == START + 10_000


def test_compare_and_set_conflict_returns_the_current_entry(engine):
    base = put(engine, "k", 1).info.version
    won = put(engine, "k", 2, if_version=base)
    assert isinstance(won, m.Written)
    lost = put(engine, "k", 3, if_version=base)
    assert isinstance(lost, m.Conflict)
    assert msgpack.unpackb(lost.current.value) == 2 and lost.current.info == won.info
    assert engine.conflicts == 1
    assert isinstance(put(engine, "new", 1, if_version=None), m.Written)
    assert isinstance(put(engine, "new", 1, if_version=None), m.Conflict)


def test_increment_counts_from_zero_and_refuses_non_integers(engine):
    assert msgpack.unpackb(one(engine, m.Increment("s", "global", "n", 5)).value) == 5
    assert msgpack.unpackb(one(engine, m.Increment("s", "global", "n", -2)).value) == 3
    put(engine, "text", "hello")
    with pytest.raises(DataStoreError) as err:
        one(engine, m.Increment("s", "global", "text", 1))
    assert err.value.code == 103 and "'text'" in err.value.message
    put(engine, "big", 2**63 - 1)
    with pytest.raises(DataStoreError) as err:
        one(engine, m.Increment("s", "global", "big", 1))
    assert err.value.code == 104
    assert get(engine, "big")[0] == 2**63 - 1


def test_list_keys_pages_in_order_and_can_exclude_deleted(engine):
    for key in ["b", "a", "c", "ab", "d"]:
        put(engine, key, 1)
    one(engine, m.Remove("s", "global", "c"))
    page = one(engine, m.ListKeys("s", "global", "", None, 2, False))
    assert page == ["a", "ab"]
    assert one(engine, m.ListKeys("s", "global", "", "ab", 10, False)) == ["b", "c", "d"]
    assert one(engine, m.ListKeys("s", "global", "", None, 10, True)) == ["a", "ab", "b", "d"]
    assert one(engine, m.ListKeys("s", "global", "a", None, 10, False)) == ["a", "ab"]
    assert one(engine, m.ListKeys("s", "other", "", None, 10, False)) == []


def test_list_keys_across_all_scopes_names_them_scope_slash_key(engine):
    one(engine, m.Set("s", "x", "k1", msgpack.packb(1), 1))
    one(engine, m.Set("s", "global", "k2", msgpack.packb(1), 1))
    assert one(engine, m.ListKeys("s", None, "", None, 10, False)) == ["global/k2", "x/k1"]
    assert one(engine, m.ListKeys("s", None, "x/", None, 10, False)) == ["x/k1"]


def test_get_version_at_time(engine):
    v1 = put(engine, "k", "first").info
    engine.clock.advance(ms=HOUR_MS)
    put(engine, "k", "second")
    at = lambda ms: one(engine, m.GetVersionAtTime("s", "global", "k", ms))
    assert at(START - 1) == m.MISSING
    assert at(START).info.version == v1.version
    assert msgpack.unpackb(at(START + HOUR_MS).value) == "second"
    now = engine.clock.now()
    assert at(now + 10 * 60 * 1000).value is not None
    for bad in (0, -5, now + 10 * 60 * 1000 + 1):
        with pytest.raises(DataStoreError):
            at(bad)


def test_remove_version_deletes_a_backup_but_not_the_current(engine):
    v1 = put(engine, "k", 1).info.version
    engine.clock.advance(ms=HOUR_MS)
    v2 = put(engine, "k", 2).info.version
    one(engine, m.RemoveVersion("s", "global", "k", v1))
    assert [v.version for v in versions(engine, "k")] == [v2]
    with pytest.raises(DataStoreError):
        one(engine, m.RemoveVersion("s", "global", "k", v2))
    assert get(engine, "k")[0] == 2


def test_ordered_store_ranges_both_ways_with_bounds_and_cursor(engine):
    for key, value in {"a": 5, "b": 1, "c": 5, "d": 9, "e": -3}.items():
        one(engine, m.OrderedSet("o", "global", key, value))
    rng = lambda asc, lo=None, hi=None, after=None, n=10: one(engine, m.OrderedRange("o", "global", asc, n, lo, hi, after))
    assert rng(True) == [("e", -3), ("b", 1), ("a", 5), ("c", 5), ("d", 9)]
    assert rng(False) == [("d", 9), ("c", 5), ("a", 5), ("b", 1), ("e", -3)]
    assert rng(True, lo=1, hi=5) == [("b", 1), ("a", 5), ("c", 5)]
    assert rng(True, after=(5, "a"), n=2) == [("c", 5), ("d", 9)]
    assert rng(False, after=(5, "c"), n=2) == [("a", 5), ("b", 1)]
    one(engine, m.OrderedSet("o", "global", "d", 0))
    assert rng(False, n=1) == [("c", 5)]
    assert one(engine, m.OrderedRemove("o", "global", "a")).value == 5
    assert one(engine, m.OrderedGet("o", "global", "a")).value is None


def test_ordered_compare_and_set(engine):
    first = one(engine, m.OrderedSet("o", "global", "k", 1, if_revision=None))
    assert isinstance(one(engine, m.OrderedSet("o", "global", "k", 2, if_revision=first.revision)), m.OrderedValue)
    lost = one(engine, m.OrderedSet("o", "global", "k", 3, if_revision=first.revision))
    assert isinstance(lost, m.OrderedConflict) and lost.current.value == 2


def test_a_failing_request_in_a_batch_leaves_the_others_running(engine):
    put(engine, "text", "x")
    results = engine.execute([m.Increment("s", "global", "text", 1), m.Set("s", "global", "ok", msgpack.packb(1), 1),
                              m.Get("s", "global", "ok")]).results
    assert isinstance(results[0], DataStoreError)
    assert isinstance(results[1], m.Written) and results[2].value == msgpack.packb(1)


# ------------------------------------------------------------------------------------------------------ faults


def test_error_rate_one_fails_every_request_of_that_type_and_writes_nothing(engine):
    engine.set_faults(FaultConfig(error_rate={"StandardWrite": 1.0}))
    with pytest.raises(DataStoreError) as err:
        put(engine, "k", 1)
    assert err.value.code == 502 and err.value.retryable
    assert get(engine, "k") == (None, None)  # reads are not affected


def test_outage_window_fails_everything_inside_it_only(engine):
    engine.set_faults(FaultConfig(outages=(Outage(START + 1000, START + 2000),)))
    put(engine, "k", 1)
    engine.clock.set(START + 1000)
    with pytest.raises(DataStoreError) as err:
        get(engine, "k")
    assert err.value.code == 502
    engine.clock.set(START + 2000)
    assert get(engine, "k")[0] == 1


def test_ambiguous_write_lands_but_reports_failure(engine):
    engine.set_faults(FaultConfig(ambiguous_write_rate=1.0))
    with pytest.raises(DataStoreError) as err:
        put(engine, "k", "landed")
    assert err.value.code == 502
    assert get(engine, "k")[0] == "landed"
    assert engine.faults.ambiguous_writes == 1


def test_latency_is_reported_per_request_in_simulated_ms(engine):
    engine.set_faults(FaultConfig(latency={"StandardRead": Latency.uniform(200, 500)}))
    reply = engine.execute([m.Get("s", "global", "k"), m.Set("s", "global", "k", msgpack.packb(1), 1)])
    assert 200 <= reply.delays_ms[0] <= 500 and reply.delays_ms[1] == 0


def test_base_latency_is_every_request_s_service_time_and_injects_no_errors(engine):
    base = FaultConfig(base_latency={"StandardRead": Latency.fixed(60), "StandardWrite": Latency.fixed(120)})
    assert base.active
    engine.set_faults(base)
    reply = engine.execute([m.Get("s", "global", "k"), m.Set("s", "global", "k", msgpack.packb(1), 1),
                            m.Get("s", "global", "k"), m.OrderedGet("o", "global", "k")])
    assert reply.delays_ms == [60, 120, 60, 0]          # a type without a base latency takes none
    assert not any(isinstance(r, DataStoreError) for r in reply.results)
    assert engine.faults.injected_errors == 0 and engine.faults.ambiguous_writes == 0


def test_fault_latency_adds_to_the_base_latency(engine):
    engine.set_faults(FaultConfig(base_latency={"StandardRead": Latency.fixed(60)},
                                  latency={"StandardRead": Latency.fixed(200)}))
    assert engine.execute([m.Get("s", "global", "k")]).delays_ms == [260]


def test_a_failed_request_takes_its_base_latency_too(engine):
    engine.set_faults(FaultConfig(base_latency={"StandardWrite": Latency.fixed(80)}, error_rate={"StandardWrite": 1.0}))
    reply = engine.execute([m.Set("s", "global", "k", msgpack.packb(1), 1)])
    assert isinstance(reply.results[0], DataStoreError) and reply.delays_ms == [80]
    engine.set_faults(FaultConfig(base_latency={"StandardRead": Latency.fixed(60)},
                                  outages=(Outage(START, START + 1000),)))
    reply = engine.execute([m.Get("s", "global", "k")])
    assert isinstance(reply.results[0], DataStoreError) and reply.delays_ms == [60]
    engine.set_faults(FaultConfig(base_latency={"StandardWrite": Latency.fixed(80)}, ambiguous_write_rate=1.0))
    reply = engine.execute([m.Set("s", "global", "k", msgpack.packb(1), 1)])
    assert isinstance(reply.results[0], DataStoreError) and reply.delays_ms == [80]


def test_base_latency_is_deterministic_per_key_whatever_the_interleaving_between_keys():
    def delays(seed, keys):
        base = {"StandardRead": Latency.lognormal(60, 0.5), "StandardWrite": Latency.uniform(50, 200)}
        e = DataStoreEngine(MemoryBackend(), ManualClock(START), FaultConfig(seed=seed, base_latency=base))
        ops = [op for k in keys for op in (m.Get("s", "global", k), m.Set("s", "global", k, b"\x01", 1))]
        per_key: dict[str, list[float]] = {}
        for op, ms in zip(ops, e.execute(ops).delays_ms):
            per_key.setdefault(op.key, []).append(ms)
        return per_key

    interleaved = delays(1, ["a", "b", "a", "b", "a"])
    assert delays(1, ["a", "a", "a", "b", "b"]) == interleaved     # same per-key order, same delays
    assert delays(2, ["a", "b", "a", "b", "a"]) != interleaved     # another seed, other delays
    assert len(set(interleaved["a"])) == 6                         # each request draws anew


def test_base_latency_is_checked_like_fault_latency():
    config = FaultConfig(base_latency={"OrderedRead": Latency.fixed(5)})
    assert config.base_latency == {RequestType.ORDERED_READ: Latency.fixed(5)}
    with pytest.raises(ConfigError, match=r"base_latency\['StandardRead'\] must be a Latency, got 5") as bad:
        FaultConfig(base_latency={"StandardRead": 5})
    assert bad.value.field == "base_latency"
    with pytest.raises(ConfigError, match="base_latency: unknown request type 'GetAsync'"):
        FaultConfig(base_latency={"GetAsync": Latency.fixed(5)})
    with pytest.raises(ConfigError, match="base_latency must be a mapping"):
        FaultConfig(base_latency=[Latency.fixed(5)])


def test_faults_are_deterministic_under_a_seed(tmp_path):
    def run(seed):
        e = DataStoreEngine(MemoryBackend(), ManualClock(START), FaultConfig(seed=seed, error_rate={"StandardRead": 0.5}))
        return [isinstance(r, DataStoreError)
                for r in e.execute([m.Get("s", "global", f"k{i % 7}") for i in range(200)]).results]

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert 60 < sum(run(1)) < 140


def test_per_key_write_throughput_throttles_a_hot_key_while_others_go_on(engine):
    big = b"x" * (1024 * 1024 - 10)  # rounds up to exactly 1 MB
    write = lambda key: engine.execute([m.Set("s", "global", key, big, len(big))]).results[0]
    for _ in range(4):
        assert isinstance(write("hot"), m.Written)
    throttled = write("hot")
    assert isinstance(throttled, DataStoreError) and throttled.name == "KeyThrottled" and throttled.retryable
    assert isinstance(write("cold"), m.Written)  # other keys go on
    engine.clock.advance(seconds=59.999)
    assert isinstance(write("hot"), DataStoreError)
    engine.clock.advance(ms=1)  # the first write leaves the 60 s window
    assert isinstance(write("hot"), m.Written)


def test_per_key_throughput_rounds_each_request_up_to_a_kilobyte(engine):
    from lodestore.storage.datastore._engine import KeyThroughput

    assert KeyThroughput.charge(0) == 1024 and KeyThroughput.charge(1024) == 1024
    assert KeyThroughput.charge(1025) == 2048
    for i in range(4096):  # 4096 tiny writes = 4 MB charged
        assert isinstance(engine.execute([m.Set("s", "global", "tiny", b"\x01", 1)]).results[0], m.Written)
    assert isinstance(engine.execute([m.Set("s", "global", "tiny", b"\x01", 1)]).results[0], DataStoreError)


def test_a_closed_engine_refuses_every_request_saying_it_was_not_applied_and_closes_again_harmlessly(engine):
    put(engine, "k", 1)
    engine.close()
    engine.close()
    reply = engine.execute([m.Get("s", "global", "k"), m.Set("s", "global", "k", msgpack.packb(2), 1)])
    assert [(e.code, e.name) for e in reply.results] == [(509, "RequestDropped")] * 2   # dropped, never applied
    assert "closed" in reply.results[1].message and "Set was not applied" in reply.results[1].message


def test_closing_a_sqlite_backend_moves_its_wal_into_the_file(tmp_path):
    path = tmp_path / "w.db"
    engine = DataStoreEngine(SqliteBackend(str(path)), ManualClock(START))
    for i in range(50):
        put(engine, f"k{i}", i)
    assert path.with_name("w.db-wal").stat().st_size > 0   # committed, but only in the WAL so far
    engine.close()
    assert not path.with_name("w.db-wal").exists()
    again = DataStoreEngine(SqliteBackend(str(path)), ManualClock(START))
    try:
        assert [get(again, f"k{i}")[0] for i in range(50)] == list(range(50))
    finally:
        again.close()
