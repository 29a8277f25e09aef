"""The lyra design's options (`sim/designs/_lyra.py`): `lock_store` (Lyra PR #17) refused when bad, applied to the
StoreConfig, and played through the design's layer: with "datastore" the session lock lives in the DataStore
`lodestore/locks/<store>` and nothing in the MemoryStore; by default it is the MemoryStore item it always was.

Plain asyncio on an in-process world with a manual clock; time moves only through the scheduler.
"""

from __future__ import annotations

import asyncio

import pytest

from lodestore import GameServer
from lodestore.actors import StoreConfig, lock_map_name
from lodestore.sim.designs._base import check_options
from lodestore.sim.designs._lyra import LYRA, LyraOptions
from lodestore.storage import ConfigError, ManualClock, Scheduler, World

TEMPLATE = {"coins": 0, "items": [], "ledger": []}


def test_lock_store_defaults_to_the_memorystore_and_is_applied_to_the_store_config():
    config = StoreConfig("players", TEMPLATE)
    assert LyraOptions().lock_store == "memorystore"
    assert LyraOptions().apply(config).lock_store == "memorystore"
    applied = LyraOptions(lock_store="datastore", lock_partitions=4).apply(config)
    assert (applied.lock_store, applied.lock_partitions) == ("datastore", 4)
    assert check_options(LYRA, {"lock_store": "datastore"}, "store.lyra") == LyraOptions(lock_store="datastore")


@pytest.mark.parametrize("value", ["DataStore", "redis", ""])
def test_a_bad_lock_store_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match="must be one of 'memorystore', 'datastore'") as caught:
        LyraOptions(lock_store=value)
    assert caught.value.field == "lock_store"
    with pytest.raises(ConfigError) as caught:
        check_options(LYRA, {"lock_store": value}, "store.lyra")
    assert caught.value.field == "store.lyra.lock_store" and repr(value) in str(caught.value)


def test_a_lock_store_of_the_wrong_type_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="must be str") as caught:
        check_options(LYRA, {"lock_store": 1}, "store.lyra")
    assert caught.value.field == "store.lyra.lock_store"


class Cloud:
    """An in-process world on a manual clock, and what an inspector reads of the players store's locks."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.world = World.in_process("lyra", clock=self.clock, budget=None)
        self.scheduler = Scheduler.for_loop(self.clock)
        self.inspector = self.world.server("inspector")
        self.events: list = []

    def config(self) -> StoreConfig:
        return StoreConfig("players", TEMPLATE, lock_callback=lambda kind, key, *_: self.events.append((kind, key)))

    async def layer(self, job: str, options: LyraOptions):
        game = await GameServer.create(self.world, job, players=1)
        return await LYRA.open(game, self.scheduler, self.config(), options)

    def datastore_lock(self, key: str):
        return self.inspector.datastores.get_data_store("lodestore/locks/players").get(key, use_cache=False)[0]

    def memorystore_locks(self, partitions: int = 16) -> list:
        maps = self.inspector.memorystores
        return [item for i in range(partitions)
                for item in maps.get_hash_map(lock_map_name("players", i, partitions)).list_items(100)[0]]


def test_with_a_datastore_lock_a_second_server_waits_for_the_first_and_gets_its_saved_data():
    async def main():
        cloud = Cloud()
        options = LyraOptions(lock_store="datastore")
        first, second = await cloud.layer("job-1", options), await cloud.layer("job-2", options)
        await first.load("u1")
        assert cloud.datastore_lock("u1")["job"] == "job-1" and cloud.memorystore_locks() == []
        await first.update("u1", lambda d: d.update(coins=3) or True)
        joining = asyncio.create_task(second.load("u1"))
        await cloud.scheduler.advance(61)                       # the first refreshes its lock (every 60 s)
        assert not joining.done() and ("refreshed", "u1") in cloud.events
        assert await first.unload("u1") is True                # final save, then the lock is freed
        assert cloud.datastore_lock("u1")["session"] is None
        while not joining.done():
            await cloud.scheduler.advance(1)
        await joining
        seen = []
        await second.update("u1", lambda d: seen.append(d["coins"]) or False)
        assert seen == [3] and cloud.datastore_lock("u1")["job"] == "job-2"
        assert cloud.memorystore_locks() == []
        assert await LYRA.read(cloud.inspector, cloud.scheduler, cloud.config(), options, ["u1"]) == \
            {"u1": {**TEMPLATE, "coins": 3}}
    asyncio.run(main())


def test_by_default_the_lock_stays_a_memorystore_item_and_the_lock_datastore_is_untouched():
    async def main():
        cloud = Cloud()
        layer = await cloud.layer("job-1", LyraOptions())
        await layer.load("u1")
        assert [key for key, _ in cloud.memorystore_locks()] == ["u1"]
        assert cloud.datastore_lock("u1") is None
    asyncio.run(main())
