"""Where a world's actors go, and what a restarted budget actor grants (the cluster itself: tests/cluster)."""

from __future__ import annotations

import time

import pytest

from lodestore.sim import parse_scenario
from lodestore.storage import ConfigError, FaultConfig, ManualClock, RequestType, World
from lodestore.storage._shards import BUDGET_NAME, WorldInfo, namespace_of


def _info(storage: str, shards: int, backend: str = "sqlite", path: str | None = "/data/w.db") -> WorldInfo:
    return WorldInfo("w", backend, path, shards, ManualClock(), FaultConfig(), None, storage)


def test_spread_storage_gives_each_shard_its_own_file():
    spread = _info("spread", 3)
    assert [spread.shard_path(i) for i in range(3)] == ["/data/w-shard0.db", "/data/w-shard1.db", "/data/w-shard2.db"]
    assert not spread.shared_file
    driver = _info("driver", 3)
    assert {driver.shard_path(i) for i in range(3)} == {"/data/w.db"} and driver.shared_file
    assert _info("spread", 1).shard_path(0) == "/data/w.db" and _info("spread", 1).shared_file
    assert not _info("driver", 2, "memory", None).shared_file


def test_an_unknown_storage_placement_is_refused_before_anything_starts():
    with pytest.raises(ConfigError, match="storage must be one of 'driver', 'spread', got 'everywhere'"):
        World.start("never-started", storage="everywhere")
    with pytest.raises(ConfigError, match=r"world\.storage"):
        parse_scenario('[world]\nstorage = "everywhere"\n')
    assert parse_scenario('[world]\nstorage = "spread"\n').world.storage == "spread"


@pytest.mark.ray
def test_a_restarted_budget_actor_grants_no_fresh_burst(ray_session, tmp_path):
    ray = ray_session
    world = World.start("budget-restart", path=str(tmp_path / "w.db"), budget="current")
    try:
        server = world.server("job-1", players=10)
        burst = world._call(world._budget, "available", "job-1", RequestType.STANDARD_WRITE)
        assert burst >= 100                                            # a first start: the startup burst
        budget = ray.get_actor(BUDGET_NAME, namespace=namespace_of(world.name))
        ray.kill(budget, no_restart=False)                             # the process dies; Ray restarts it
        deadline = time.monotonic() + 60
        stats = None
        started = 0
        while stats is None or not stats.restarted:                    # the kill takes effect a moment later
            assert time.monotonic() < deadline, "the budget actor never came back as a restarted ledger"
            world.server(f"new-{started}", players=2)                  # a server starts while it restarts
            started += 1
            try:
                stats = ray.get(budget.statistics.remote())
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError):
                time.sleep(0.2)
        # It knows nothing of its previous life; a server that started just now may have registered already.
        assert set(stats.servers) <= {f"new-{i}" for i in range(started)}
        server.set_players(10)                                         # the server shows up again
        after = world._call(world._budget, "available", "job-1", RequestType.STANDARD_WRITE)
        assert after < 10                                              # only what refilled since: no new burst
    finally:
        world.shutdown()
