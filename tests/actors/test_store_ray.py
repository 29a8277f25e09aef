"""The Store API through Ray, in both placements: key actors, batching, two servers on one key, a crashed server."""

from __future__ import annotations

import asyncio
import time

import pytest

from lodestore import GameServer
from lodestore.actors import KeyNotLoadedError, LoadInProgressError, StoreClosedError

pytestmark = pytest.mark.ray

TEMPLATE = {"coins": 0, "items": []}


@pytest.fixture
def world(ray_world):
    return ray_world


def add_coins(n):
    def fn(data):
        data["coins"] += n
        return True
    return fn


@pytest.mark.parametrize("placement", ["per-server", "per-key"])
def test_two_servers_hand_a_key_over_and_nothing_is_lost(world, placement):
    a, b = GameServer(world, "job-a", players=2), GameServer(world, "job-b", players=2)
    store_a = a.create_store("players", TEMPLATE, placement=placement)
    store_b = b.create_store("players", TEMPLATE, placement=placement, lock_wait=30)
    store_a.load("u1")
    assert store_a.update("u1", add_coins(5)) is True
    assert store_a.loaded_keys() == ["u1"]
    assert store_b.probe_lock_active("u1") is True
    with pytest.raises(KeyNotLoadedError, match="Key not loaded"):
        store_b.get("u1")

    async def hand_over():
        waiting = asyncio.ensure_future(store_b.aio.load("u1"))
        await asyncio.sleep(1.0)
        assert not waiting.done()          # B waits while A holds the key
        await store_a.aio.unload("u1")
        await asyncio.wait_for(waiting, 30)

    asyncio.run(hand_over())
    assert store_b.get("u1") == {"coins": 5, "items": []}
    assert store_b.peek("u1")["coins"] == 5
    assert store_a.loaded_keys() == [] and store_b.loaded_keys() == ["u1"]
    b.shutdown()
    assert store_a.peek("u1") == {"coins": 5, "items": []}
    assert store_a.probe_lock_active("u1") is False
    with pytest.raises(StoreClosedError, match="Store is closed"):
        store_b.get("u1")
    a.shutdown()


def test_coroutines_share_messages_and_keep_per_key_order(world):
    server = GameServer(world, "job-batch", players=50)
    store = server.create_store("players", TEMPLATE)

    async def main():
        keys = [f"u{i}" for i in range(200)]
        await asyncio.gather(*(store.aio.load(k) for k in keys))
        results = await asyncio.gather(*(store.aio.update(k, add_coins(1)) for k in keys for _ in range(3)))
        assert all(results)
        again = await asyncio.gather(store.aio.load("u0"), store.aio.load("u0"))
        assert again == [None, None]   # loaded already: a no-op, not "in progress"
        data = await asyncio.gather(*(store.aio.get(k) for k in keys))
        assert all(d["coins"] == 3 for d in data)
        await asyncio.gather(*(store.aio.save(k) for k in keys))

    asyncio.run(main())
    assert store.peek("u199")["coins"] == 3
    server.shutdown()


def test_a_load_while_loading_is_refused_through_ray(world):
    a, b = GameServer(world, "job-h"), GameServer(world, "job-w")
    held = a.create_store("players", TEMPLATE)
    waiting = b.create_store("players", TEMPLATE, lock_wait=5)
    held.load("u1")

    async def main():
        first = asyncio.ensure_future(waiting.aio.load("u1"))
        await asyncio.sleep(0.5)
        with pytest.raises(LoadInProgressError):
            await waiting.aio.load("u1")
        first.cancel()

    asyncio.run(main())
    a.shutdown()
    b.crash()


def test_a_crashed_server_loses_unsaved_data_and_its_lock_expires(world):
    a, b = GameServer(world, "job-crash"), GameServer(world, "job-next")
    store_a = a.create_store("players", TEMPLATE, lock_ttl=3, lock_refresh=1)
    store_b = b.create_store("players", TEMPLATE, lock_ttl=3, lock_refresh=1, lock_wait=20)
    store_a.load("u1")
    store_a.update("u1", add_coins(10))
    store_a.save("u1")
    store_a.update("u1", add_coins(1000))      # never saved
    a.crash()
    with pytest.raises(StoreClosedError):
        store_a.get("u1")
    started = time.monotonic()
    store_b.load("u1")                          # waits for the dead server's lock to expire
    assert time.monotonic() - started > 1.0
    assert store_b.get("u1")["coins"] == 10
    b.shutdown()
