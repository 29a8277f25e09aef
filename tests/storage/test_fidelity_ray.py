"""The 2026 DataStore additions through Ray: the budget actor's set_rate_limit and experience-only spending (Open
Cloud), the shards' storage measure, and batch_get across shards."""

from __future__ import annotations

import zlib

import pytest

from lodestore.storage import DataStoreError, RequestType, World, encode


@pytest.mark.ray
def test_rate_limits_open_cloud_storage_and_batch_get_on_ray(ray_session, tmp_path):
    world = World.start(f"fidelity{zlib.crc32(str(tmp_path).encode()):08x}", path=str(tmp_path / "w.db"), shards=2,
                        budget="current", time_scale=0.001)    # time nearly stands still: budgets do not refill
    try:
        server = world.server("s1", players=1)
        server.datastores.set_rate_limit("StandardList", 2, 1)
        assert world.budget_statistics().servers["s1"].rates[RequestType.STANDARD_LIST] == 3
        ranks = server.datastores.get_ordered_data_store("ranks")
        for i in range(6):
            ranks.set(f"p{i}", i)
        assert ranks.batch_get(["p1", "p4", "nope"]) == {"p1": 1, "p4": 4}     # 3 reads
        server.datastores.release_leases()          # what the server leased and did not spend goes back
        store = world.open_cloud().datastores.get_data_store("players")
        store.set("u1", {"coins": 3})
        for i in range(297):                        # the rest of the experience's 300 reads a minute
            store.get(f"k{i}", use_cache=False)
        with pytest.raises(DataStoreError) as err:
            store.get("one-more", use_cache=False)
        assert err.value.name == "StandardReadExperienceThrottled" and err.value.retry_after_ms > 0
        stats = world.statistics()
        assert len(stats) == 2 and stats.storage_bytes == len(zlib.compress(encode({"coins": 3}))) + sum(
            len(zlib.compress(encode(i))) for i in range(6))
        assert stats.lifetime_users == 1
    finally:
        world.shutdown()
