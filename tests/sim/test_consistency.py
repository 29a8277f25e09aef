"""The consistency checker (sim/_consistency.py) and the raw request recording it reads (storage/_clients.py
`recorded`, the clients' `recorder`, `World.recorder`, `History.requests`): hand-made histories for each of Roblox's
weakenings, real clients on an in-process world with a `ManualClock`, stores broken on purpose (a longer read cache,
a compare-and-set that lets two updates of one version through), and small simulations that must pass.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest

from lodestore.sim import VIOLATION_KINDS, History, RunOptions, check_consistency, parse_scenario, simulate
from lodestore.sim._runner import history_digest
from lodestore.storage import REQUEST_FIELDS, DataStoreError, FaultConfig, ManualClock, World
from lodestore.storage.datastore import _client as ds_client
from lodestore.storage.datastore import _messages as m
from lodestore.storage.datastore._engine import DataStoreEngine
from tests.sim.test_simulate import QUICK

START = 1_700_000_000_000


def req(call, invoke, complete, *, read=None, written=None, outcome="ok", obj="s1#1", cache="off", key="k",
        service="ds"):
    """One request record; times in ms from START."""
    return (service, "players" if service == "ds" else "hash:locks", "global" if service == "ds" else "", key, obj,
            call, cache, START + invoke, START + complete, outcome, read, written)


def violations(records):
    result = check_consistency(records)
    return result, {k: n for k, n in result.details["violations"].items() if n}


# ------------------------------------------------------------------------------------------- hand-made histories

def test_a_register_read_after_its_write_is_consistent():
    result, found = violations([req("set", 0, 10, written=1), req("get", 20, 25, read=1, obj="s2#1"),
                                req("update", 30, 40, read=1, written=2), req("get", 50, 55, read=2)])
    assert result.ok and not found and result.details["requests"] == 4 and result.details["keys"] == 1


def test_a_cached_read_inside_4_s_is_fine_and_beyond_it_is_stale():
    # object s1#1 fetched version 1 at 5 ms (a miss); version 2 was acknowledged at 110 ms
    history = [req("set", -20, -10, written=1, obj="s0#1"), req("get", 0, 5, read=1, cache="miss"),
               req("set", 100, 110, written=2, obj="s2#1")]
    inside = history + [req("get", 3_000, 3_001, read=1, cache="hit"), req("get", 4_004, 4_004, read=1, cache="hit")]
    assert violations(inside)[0].ok
    # 4 s after the fetch the cache has expired: a hit then (even after hits that were fine) is stale
    beyond = inside[:4] + [req("get", 4_005, 4_006, read=1, cache="hit")]
    result, found = violations(beyond)
    assert found == {"stale_read": 1}
    assert "a cache hit, but its object had not fetched" in result.counterexample
    assert "returned version 1" in result.counterexample
    witness = result.details["first"][0]["witness"]
    assert [w["call"] for w in witness] == ["set", "set", "get"]   # who wrote 1, who wrote 2, the stale get
    assert witness[-1]["invoke"] == START + 4_005


def test_a_stale_read_without_the_cache_or_through_another_object_is_not_allowed():
    base = [req("set", -20, -10, written=1, obj="s0#1"), req("get", 0, 5, read=1, cache="miss"),
            req("set", 100, 110, written=2, obj="s2#1")]
    no_cache = violations(base + [req("get", 500, 505, read=1, cache="off")])[1]
    a_miss = violations(base + [req("get", 500, 505, read=1, cache="miss")])[1]
    other_object = violations(base + [req("get", 500, 505, read=1, obj="s1#2", cache="hit")])[1]
    assert no_cache == a_miss == other_object == {"stale_read": 1}
    # the object's own cache, within 4 s: allowed
    assert violations(base + [req("get", 500, 505, read=1, cache="hit")])[0].ok


def test_a_read_concurrent_with_a_write_may_see_either_version():
    history = [req("set", 0, 10, written=1), req("set", 100, 200, written=2, obj="s2#1")]
    assert violations(history + [req("get", 150, 160, read=1, cache="off")])[0].ok
    assert violations(history + [req("get", 150, 160, read=2, cache="off")])[0].ok


def test_an_ambiguous_write_that_landed_may_be_read_and_a_version_from_the_future_may_not():
    landed = [req("set", 0, 10, written=1), req("set", 20, 30, outcome="ambiguous", obj="s2#1"),
              req("get", 40, 45, read=2, cache="off")]
    assert violations(landed)[0].ok
    failed = [landed[0], req("set", 20, 30, outcome="failed", obj="s2#1"), landed[2]]
    assert violations(failed)[0].ok   # a failed write may have landed too
    # a version no recorded write made (the coordinator's recovery, Open Cloud): counted, not blamed on the store
    unrecorded = check_consistency([landed[0], landed[2]])
    assert unrecorded.ok and unrecorded.details["unattributed_reads"] == 1
    assert "version 2" in unrecorded.details["unattributed_first"][0]
    future = [landed[0], req("get", 40, 45, read=2, cache="off"), req("set", 50, 60, written=2, obj="s2#1")]
    assert violations(future)[1] == {"future_read": 1}


def test_two_updates_that_read_one_version_and_both_succeeded_lost_one():
    result, found = violations([req("set", 0, 10, written=1), req("update", 20, 40, read=1, written=2),
                                req("update", 25, 50, read=1, written=3, obj="s2#1")])
    assert found == {"lost_update": 1}
    assert "version 2" in result.counterexample and "not atomic" in result.counterexample
    witness = result.details["first"][0]["witness"]
    assert [(w["read"], w["written"]) for w in witness] == [(1, 2), (1, 3)]


def test_an_update_after_a_remove_reads_nothing_and_loses_nothing():
    history = [req("set", 0, 10, written=1), req("remove", 20, 30, read=1), req("get", 40, 45, read=None),
               req("update", 50, 60, read=None, written=3), req("get", 70, 75, read=3)]
    assert violations(history)[0].ok
    # reading nothing after version 1 was acknowledged, with no remove: stale
    assert violations([history[0], req("get", 40, 45, read=None, cache="off")])[1] == {"stale_read": 1}


def test_versions_must_increase_and_never_repeat():
    assert violations([req("set", 0, 10, written=2), req("set", 20, 30, written=1, obj="s2#1")])[1] == \
        {"version_regression": 1}
    assert violations([req("set", 0, 10, written=1), req("set", 5, 12, written=1, obj="s2#1")])[1] == \
        {"duplicate_version": 1}


def test_a_memorystore_item_has_no_cache_and_may_expire():
    history = [req("set", 0, 10, written=7, service="ms"), req("set", 20, 30, written=9, service="ms", obj="s2")]
    assert violations(history + [req("get", 40, 45, read=9, service="ms")])[0].ok
    assert violations(history + [req("get", 40, 45, read=None, service="ms")])[0].ok   # expired
    assert violations(history + [req("get", 40, 45, read=7, service="ms")])[1] == {"stale_read": 1}
    lost = history + [req("update", 40, 50, read=9, written=11, service="ms"),
                      req("update", 41, 52, read=9, written=12, service="ms", obj="s2")]
    assert violations(lost)[1] == {"lost_update": 1}


def test_keys_are_checked_apart():
    history = [req("set", 0, 10, written=5, key="a"), req("get", 20, 25, read=1, key="b", cache="off"),
               req("set", -10, -5, written=1, key="b")]
    assert violations(history)[0].ok


def test_the_history_round_trips_its_requests_and_its_digest_ignores_them():
    records = [req("set", 0, 10, written=1), req("get", 20, 25, read=1)]
    history = History(requests=records)
    data = json.loads(json.dumps(history.to_json()))
    assert History.from_json(data) == history and History.from_json(data).requests == records
    assert "requests" not in History().to_json()
    assert history_digest(data, {}, {}) == history_digest(History().to_json(), {}, {})
    with pytest.raises(ValueError, match="requests\\[0\\]"):
        History.from_json({**data, "requests": [[1, 2]]})


# ----------------------------------------------------------------------------------- real clients, broken stores

def recording_world():
    clock = ManualClock(START)
    world = World.in_process(clock=clock, budget=None)
    records: list[tuple] = []
    world.recorder = records.append
    return world, clock, records


def test_the_clients_record_what_they_did():
    world, clock, records = recording_world()
    server = world.server("s1")
    store = server.datastores.get_data_store("players")
    version = store.set("k", {"coins": 1})
    clock.advance(1)
    store.get("k")
    store.update("k", lambda old, info: {"coins": old["coins"] + 1})
    store.increment("n", 5)
    store.remove("k")
    locks = server.memorystores.get_hash_map("locks")
    locks.set("k", "a", 60)
    locks.update("k", lambda old: old + "b", 60)
    assert locks.get("k") == "ab"
    rows = [dict(zip(REQUEST_FIELDS, r)) for r in records]
    assert [(r["service"], r["call"], r["read"], r["written"], r["outcome"]) for r in rows] == [
        ("ds", "set", None, 1, "ok"), ("ds", "get", 1, None, "ok"), ("ds", "update", 1, 2, "ok"),
        ("ds", "increment", None, 1, "ok"), ("ds", "remove", 2, None, "ok"),
        ("ms", "set", None, rows[5]["written"], "ok"), ("ms", "update", rows[5]["written"], rows[6]["written"], "ok"),
        ("ms", "get", rows[6]["written"], None, "ok")]
    assert version.split(".")[1] == "0000000001"
    assert rows[0]["obj"] == rows[1]["obj"] == "s1#1" and rows[0]["store"] == "players"
    assert rows[1]["cache"] == "hit" and rows[0]["cache"] == "off"   # the set filled the object's cache
    assert rows[1]["invoke"] == START + 1000 and rows[5]["store"] == "hash:locks"
    assert check_consistency(records).ok


def test_an_ambiguous_write_is_recorded_as_ambiguous_and_a_refused_one_as_failed():
    world, clock, records = recording_world()
    store = world.server("s1").datastores.get_data_store("players")
    with pytest.raises(DataStoreError):
        store.set("k", float("nan"))   # refused before anything is sent
    landing = World.in_process(clock=clock, budget=None, faults=FaultConfig(seed=1, ambiguous_write_rate=1.0))
    landing.recorder = records.append
    with pytest.raises(DataStoreError):
        landing.server("s2").datastores.get_data_store("players").set("k", 1)   # applied, then reported failed
    assert [(r[5], r[9]) for r in records] == [("set", "failed"), ("set", "ambiguous")]
    assert landing.server("s3").datastores.get_data_store("players").get("k")[0] == 1
    assert records[-1][5] == "get" and records[-1][10] == 1   # the ambiguous write landed: fine
    assert check_consistency(records[1:]).ok


def test_it_catches_a_client_whose_read_cache_lasts_longer_than_4_s(monkeypatch):
    monkeypatch.setattr(ds_client, "READ_CACHE_MS", 10_000)   # broken: Roblox caches a key for 4 s
    world, clock, records = recording_world()
    reader = world.server("s1").datastores.get_data_store("players")
    writer = world.server("s2").datastores.get_data_store("players")
    writer.set("k", 1)
    assert reader.get("k")[0] == 1
    clock.advance(1)
    writer.set("k", 2)
    clock.advance(5)               # 6 s after the reader cached version 1
    assert reader.get("k")[0] == 1  # served stale from the too-long cache
    result = check_consistency(records)
    assert not result.ok and result.details["violations"]["stale_read"] == 1
    witness = result.details["first"][0]["witness"]
    assert [(w["obj"], w["call"]) for w in witness] == [("s2#1", "set"), ("s2#1", "set"), ("s1#1", "get")]


def test_the_4_s_cache_of_the_real_client_passes(monkeypatch):
    world, clock, records = recording_world()
    reader = world.server("s1").datastores.get_data_store("players")
    writer = world.server("s2").datastores.get_data_store("players")
    writer.set("k", 1)
    reader.get("k")
    clock.advance(1)
    writer.set("k", 2)
    clock.advance(2.9)
    assert reader.get("k")[0] == 1   # cached, 3.9 s old: Roblox allows it
    clock.advance(0.2)
    assert reader.get("k")[0] == 2
    assert check_consistency(records).ok


def broken_set(self, op, now):
    """A compare-and-set that forgets to compare: two updates of one version both succeed."""
    return DataStoreEngine._real_set(self, replace(op, if_version=m.ANY), now)


def test_it_catches_an_engine_that_loses_an_update(monkeypatch):
    monkeypatch.setattr(DataStoreEngine, "_real_set", DataStoreEngine._set, raising=False)
    monkeypatch.setattr(DataStoreEngine, "_set", broken_set)
    world, clock, records = recording_world()
    one = world.server("s1").datastores.get_data_store("players")
    two = world.server("s2").datastores.get_data_store("players")
    one.set("k", {"coins": 0})
    seen = one.get("k", use_cache=False)   # both servers start from this version (Roblox's `current` guess)
    one.update("k", lambda old, info: {"coins": old["coins"] + 1}, current=seen)
    two.update("k", lambda old, info: {"coins": old["coins"] + 10}, current=seen)
    assert two.get("k", use_cache=False)[0] == {"coins": 10}   # the +1 is gone
    result = check_consistency(records)
    assert not result.ok and result.details["violations"]["lost_update"] == 1
    witness = result.details["first"][0]["witness"]
    assert [(w["obj"], w["call"], w["read"], w["written"]) for w in witness] == [
        ("s1#1", "update", 1, 2), ("s2#1", "update", 1, 3)]
    assert "lost update on DataStore players/global/k" in result.counterexample
    first = result.details["first"][0]   # where a report or a timeline finds the key
    assert (first["service"], first["store"], first["scope"], first["key"]) == ("ds", "players", "global", "k")


def test_the_real_engine_keeps_those_updates():
    world, clock, records = recording_world()
    one = world.server("s1").datastores.get_data_store("players")
    two = world.server("s2").datastores.get_data_store("players")
    one.set("k", {"coins": 0})
    seen = one.get("k", use_cache=False)
    one.update("k", lambda old, info: {"coins": old["coins"] + 1}, current=seen)
    two.update("k", lambda old, info: {"coins": old["coins"] + 10}, current=seen)
    assert two.get("k", use_cache=False)[0] == {"coins": 11}
    assert check_consistency(records).ok


# ------------------------------------------------------------------------------------------------- simulations

# the simulator's quick scenario, with hot keys (plain updates from every server) and a window of ambiguous writes
SMALL = QUICK.replace("trade = 2\n", "trade = 2\nhot_key = 2\n") + """
[hot_keys]
count = 2
kinds = ["guild", "counter"]

[[faults]]
start = 60
end = 200
error_rate = { StandardWrite = 0.05, StandardRead = 0.05 }
ambiguous_write_rate = 0.05
"""


def run(design: str = "lyra", out=None):
    scenario = parse_scenario(SMALL + f'\n[store]\ndesign = "{design}"\n')
    scenario = replace(scenario, world=replace(scenario.world, duration=300))
    return simulate(scenario, RunOptions(engine="in-process", write_files=out is not None, out=out, progress=False,
                                         stream=io.StringIO()))


@pytest.mark.parametrize("design", ["lyra", "naive"])
def test_a_correct_store_passes_under_every_design(design):
    result = run(design)
    check = next(c for c in result.checks if c.name == "consistency")
    assert check.ok, check.counterexample
    assert check.details["requests"] == len(result.history.requests) > 300
    assert set(check.details["violations"]) == set(VIOLATION_KINDS)
    assert {r[9] for r in result.history.requests} >= {"ok", "ambiguous"}
    assert any(c["name"] == "consistency" for c in result.report["checks"])


def test_a_simulation_catches_an_engine_that_loses_updates(monkeypatch, tmp_path):
    monkeypatch.setattr(DataStoreEngine, "_real_set", DataStoreEngine._set, raising=False)
    monkeypatch.setattr(DataStoreEngine, "_set", broken_set)
    result = run("naive", out=tmp_path / "run")
    check = next(c for c in result.checks if c.name == "consistency")
    assert not check.ok and check.details["violations"]["lost_update"] > 0
    assert len(check.details["first"][0]["witness"]) == 2
    assert result.exit_status == 1
    # the report shows the witness; the saved history keeps the raw requests, and its digest ignores them
    assert "lost update on DataStore" in result.files["html"].read_text()
    saved = json.loads(result.files["history"].read_text())
    assert History.from_json(saved).requests == result.history.requests
    without = {k: v for k, v in saved.items() if k != "requests"}
    assert saved["requests"] and history_digest(saved, {}, {}) == history_digest(without, {}, {})


def test_a_simulation_catches_a_read_cache_longer_than_4_s(monkeypatch):
    monkeypatch.setattr(ds_client, "READ_CACHE_MS", 60_000)   # broken: Roblox caches a key for 4 s
    result = run("naive")   # naive reads its players with cached gets
    check = next(c for c in result.checks if c.name == "consistency")
    assert not check.ok and check.details["violations"]["stale_read"] > 0
    witness = check.details["first"][0]["witness"]
    assert witness[-1]["call"] == "get" and witness[-1]["cache"] == "hit" and len(witness) <= 3
    assert 0 <= witness[0]["invoke"] <= 300_000   # ms since the run began, as every event of the history
