"""A world's DataStore storage as Roblox counts it (2025): the compressed size of the latest versions only, against
500 MB + 1 MB per lifetime user, and the estimated monthly cost of going over; `World.statistics()` still reads as
the list of shard statistics it used to be. In-process worlds on a manual clock."""

from __future__ import annotations

import asyncio
import zlib

import msgpack
import pytest

from lodestore.storage import (ConfigError, ManualClock, ShardStatistics, StorageUsage, World, WorldStatistics,
                               encode)
from lodestore.storage._limits import HOUR_MS

START = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS
MB = 1024 * 1024


def compressed(*values) -> int:
    return sum(len(zlib.compress(encode(v))) for v in values)


def fill(world: World) -> int:
    """Write a little of everything; return the compressed size Roblox would count for it."""
    ds = world.server("s1").datastores
    store = ds.get_data_store("players")
    store.set("u1", {"coins": 1, "items": ["hat"] * 50})
    world.clock.advance(seconds=3600)
    store.set("u1", {"coins": 2})                       # a new hour: the first version stays as a backup
    store.set("u2", "x" * 5000)
    store.set("gone", [1, 2, 3])
    store.remove("gone")                                # a tombstone counts nothing
    ds.get_ordered_data_store("ranks").set("u1", 42)
    return compressed({"coins": 2}, "x" * 5000) + len(zlib.compress(msgpack.packb(42)))


@pytest.mark.parametrize("backend, shards", [("memory", 1), ("memory", 3), ("sqlite", 1), ("sqlite", 2)])
def test_storage_counts_the_compressed_latest_versions_once(tmp_path, backend, shards):
    path = str(tmp_path / "w.db") if backend == "sqlite" else None
    world = World.in_process(backend=backend, path=path, clock=ManualClock(START), budget=None, shards=shards)
    expected = fill(world)
    stats = world.statistics()
    assert stats.storage_bytes == expected
    assert len(world.server("s1").datastores.get_data_store("players").list_versions("u1").items) == 2
    world.shutdown()


def test_world_statistics_still_reads_as_the_list_of_shards():
    world = World.in_process(clock=ManualClock(START), budget=None, shards=3)
    fill(world)
    stats = world.statistics()
    assert isinstance(stats, WorldStatistics) and len(stats) == 3
    assert [s.shard for s in stats] == [0, 1, 2] and stats[-1].shard == 2 and stats[0:2] == stats.shards[0:2]
    assert all(isinstance(s, ShardStatistics) for s in stats)
    assert sum(s.requests for s in stats) == 6
    assert list(stats) == list(stats.shards)


def test_the_limit_grows_with_lifetime_users_and_the_peak_of_players_is_a_floor():
    world = World.in_process(clock=ManualClock(START), budget=None)
    assert world.statistics().storage_limit_bytes == 500 * MB
    server = world.server("s1", players=30)
    world.server("s2", players=20)
    server.set_players(0)
    assert world.statistics().lifetime_users == 50               # 50 online at once, at least
    world.set_lifetime_users(1000)
    stats = world.statistics()
    assert (stats.lifetime_users, stats.storage_limit_bytes, stats.over_limit) == (1000, 1500 * MB, False)
    assert stats.estimated_monthly_cost_usd == 0.0
    assert asyncio.run(world.aio.statistics()).storage_limit_bytes == 1500 * MB
    asyncio.run(world.aio.set_lifetime_users(10))
    assert world.statistics().lifetime_users == 50
    for bad in (-1, 1.5, True, "many"):
        with pytest.raises(ConfigError, match="users must be an int >= 0"):
            world.set_lifetime_users(bad)
    assert world.statistics().lifetime_users == 50


def test_going_over_is_priced_on_the_excess_only():
    within = StorageUsage.of(500 * MB, 0)
    assert not within.over_limit and within.estimated_monthly_cost_usd == 0.0
    over = StorageUsage.of(500 * MB + 1024 * MB, 0)                # 1 GB over
    assert over.over_limit and over.estimated_monthly_cost_usd == pytest.approx(0.12)
    users = StorageUsage.of(600 * MB, 100)                         # 600 MB limit: exactly at it
    assert (users.storage_limit_bytes, users.over_limit, users.estimated_monthly_cost_usd) == (600 * MB, False, 0.0)
