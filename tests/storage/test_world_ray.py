"""The world through Ray: named actors per world, connect from other processes, SQLite durability across a killed
storage actor and across a world restart, and a world file that holds everything alone once the world is shut down."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from lodestore.storage import ConfigError, DataStoreError, World

pytestmark = pytest.mark.ray


@pytest.fixture
def world(ray_session, tmp_path, request):
    w = World.start(f"t-{request.node.name[:40]}", backend="sqlite", path=str(tmp_path / "world.db"))
    yield w
    w.shutdown()


def test_values_written_through_ray_are_read_back_from_another_process(world, ray_session):
    ray = ray_session
    store = world.server("job-a", players=3).datastores.get_data_store("players")
    version = store.set("user_1", {"coins": 5}, user_ids=[1])

    @ray.remote(num_cpus=0)
    def read_elsewhere(name):
        other = World.connect(name).server("job-b").datastores.get_data_store("players")
        value, info = other.get("user_1")
        return value, info.version, list(info.user_ids)

    assert ray.get(read_elsewhere.remote(world.name)) == ({"coins": 5}, version, [1])


def test_a_world_travels_to_an_actor_by_name(world, ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class GameServer:
        def __init__(self, w):
            self.store = w.server("job-c").datastores.get_data_store("players")

        def add(self, key, n):
            return self.store.update(key, lambda old, info: (old or 0) + n)[0]

    actor = GameServer.remote(world)
    assert ray.get(actor.add.remote("counter", 2)) == 2
    assert ray.get(actor.add.remote("counter", 3)) == 5
    ray.kill(actor)


def test_starting_a_running_world_again_is_refused_and_worlds_do_not_collide(world, tmp_path):
    with pytest.raises(ConfigError, match="already running"):
        World.start(world.name, backend="memory")
    other = World.start(world.name + "-other", backend="memory")
    try:
        world.server("a").datastores.get_data_store("s").set("k", "mine")
        assert other.server("b").datastores.get_data_store("s").get("k") == (None, None)
    finally:
        other.shutdown()


def test_acknowledged_writes_survive_a_killed_storage_actor(world, ray_session):
    ray = ray_session
    store = world.server("job-d").datastores.get_data_store("players")
    for i in range(50):
        store.set(f"user_{i}", {"n": i})
    store.remove("user_0")
    ray.kill(world._shards("datastore")[0], no_restart=False)  # the actor process dies; Ray restarts it
    reader = world.server("job-e").datastores.get_data_store("players")
    for attempt in range(100):  # while Ray restarts the actor, a call fails as ambiguous (500), never silently
        try:
            reader.get("user_1", use_cache=False)
            break
        except DataStoreError as exc:
            assert exc.code == 500 and "may or may not" in exc.message
            try:
                ray.get(world._shards("datastore")[0].describe.remote())  # blocks until it is back
            except ray.exceptions.ActorUnavailableError:  # or says, at once, that it is restarting
                time.sleep(0.1)   # waits for Ray to bring the actor's process back, not for a timer
    assert [reader.get(f"user_{i}", use_cache=False)[0] for i in range(1, 50)] == [{"n": i} for i in range(1, 50)]
    assert reader.get("user_0", use_cache=False) == (None, None)
    assert [v.is_deleted for v in reader.list_versions("user_0").items] == [True]


def test_a_world_restarted_on_its_file_sees_everything(ray_session, tmp_path):
    path = str(tmp_path / "persist.db")
    first = World.start("t-persist", backend="sqlite", path=path)
    store = first.server("s1").datastores.get_data_store("players")
    versions = [store.set("k", i) for i in range(3)]
    store.set("gone", 1)
    store.remove("gone")
    first.server("s1").datastores.get_ordered_data_store("wins").set("ana", 7)
    first.shutdown()

    second = World.start("t-persist", backend="sqlite", path=path)
    try:
        again = second.server("s2").datastores.get_data_store("players")
        value, info = again.get("k")
        assert value == 2 and info.version == versions[-1]
        assert again.get("gone") == (None, None)
        assert again.list_keys().items == ["gone", "k"]
        assert again.list_keys(exclude_deleted=True).items == ["k"]
        assert second.server("s2").datastores.get_ordered_data_store("wins").get("ana") == 7
    finally:
        second.shutdown()


@pytest.mark.parametrize("shards", [1, 3])
def test_after_shutdown_the_world_file_copied_alone_holds_every_acknowledged_write(ray_session, tmp_path, shards):
    # 3 shards on one node share the file: each closes its own connection, the file must still end up whole
    path = tmp_path / "run" / "world.db"
    world = World.start(f"t-copy-alone-{shards}", backend="sqlite", path=str(path), shards=shards, budget=None)
    try:
        datastores = world.server("job-w").datastores
        store = datastores.get_data_store("players")
        acknowledged = {f"user_{i}": (store.set(f"user_{i}", {"n": i}), {"n": i}) for i in range(200)}
        datastores.get_ordered_data_store("wins").set("ana", 7)
    finally:
        world.shutdown()
    assert not path.with_name("world.db-wal").exists() and not path.with_name("world.db-shm").exists()
    assert path.read_bytes()[18:20] == b"\x01\x01"   # the header says a rollback journal: the file needs no -wal

    copy = tmp_path / "copy" / "world.db"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)  # what a user does: the .db file, without its -wal and -shm
    reopened = World.in_process("copy", backend="sqlite", path=str(copy), budget=None)
    try:
        reader = reopened.server("reader").datastores
        players = reader.get_data_store("players")
        found = {key: (info.version, value) for key in acknowledged for value, info in [players.get(key)]
                 if info is not None}
        assert found == acknowledged
        assert reader.get_ordered_data_store("wins").get("ana") == 7
    finally:
        reopened.shutdown()


def test_a_world_file_in_use_is_refused_to_a_second_world_until_the_first_shuts_down(ray_session, tmp_path):
    ray = ray_session
    path = tmp_path / "world.db"
    first = World.start("t-holder", backend="sqlite", path=str(path), shards=2, budget=None)
    try:
        first.server("job-h").datastores.get_data_store("players").set("user_1", {"coins": 3})
        with pytest.raises(ConfigError, match="is in use by another world") as refused:
            World.start("t-intruder", backend="sqlite", path=str(path), budget=None)
        assert str(path) in str(refused.value)
        assert not [e for e in ray.util.list_named_actors(all_namespaces=True)   # nothing of it stays behind
                    if e["namespace"] == "lodestore-t-intruder"]
        with pytest.raises(ConfigError, match="is in use by another world"):   # as `lodestore inspect` opens it
            World.in_process("t-reader", backend="sqlite", path=str(path), budget=None)
        assert first.server("job-h").datastores.get_data_store("players").get("user_1")[0] == {"coins": 3}
    finally:
        first.shutdown()
    second = World.start("t-intruder", backend="sqlite", path=str(path), budget=None)
    try:
        assert second.server("job-i").datastores.get_data_store("players").get("user_1")[0] == {"coins": 3}
    finally:
        second.shutdown()


def test_a_world_with_a_dead_shard_still_shuts_down_at_once_and_the_others_close(ray_session, tmp_path):
    ray = ray_session
    path = tmp_path / "world.db"
    world = World.start("t-dead-shard", backend="sqlite", path=str(path), shards=2, budget=None)
    store = world.server("job-y").datastores.get_data_store("players")
    for i in range(20):
        store.set(f"user_{i}", i)
    ray.kill(world._shards("datastore")[0], no_restart=True)
    world.shutdown()                                   # the dead shard is skipped (its close fails at once)
    with pytest.raises(ValueError):
        ray.get_actor("datastore-1", namespace=f"lodestore-{world.name}")   # killed after it closed
    # the shards share the file: the one alive checkpointed the WAL, the dead one's writes included
    wal = path.with_name("world.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_shutting_a_world_down_twice_is_harmless(ray_world):
    ray_world.server("job-x").datastores.get_data_store("players").set("k", 1)
    ray_world.shutdown()
    ray_world.shutdown()   # the fixture shuts it down a third time


def test_async_flavour_and_memorystore_through_ray(world):
    server = world.server("job-f", players=1)
    store = server.datastores.get_data_store("players")

    async def go():
        await store.aio.set("k", [1, 2])
        return await store.aio.update("k", lambda old, info: old + [3])

    value, _ = asyncio.run(go())
    assert value == [1, 2, 3]
    locks = server.memorystores.get_hash_map("locks")
    assert locks.update("k", lambda old: old or "session-1", expiration=90) == "session-1"
    assert locks.update("k", lambda old: old or "session-2", expiration=90) == "session-1"


def test_budgets_through_the_budget_actor(ray_session, tmp_path):
    w = World.start("t-budget", backend="memory", time_scale=0.001)  # budgets barely refill during the test
    try:
        server = w.server("b1", players=0)
        store = server.datastores.get_data_store("players")
        assert server.datastores.get_request_budget("StandardWrite") == 100  # the startup burst
        for i in range(10):
            store.set(f"k{i}", i)
        assert server.datastores.get_request_budget("StandardWrite") == 90
        server.begin_shutdown()  # BindToClose: max(current, 150 x 60 / 60)
        assert server.datastores.get_request_budget("StandardWrite") == 150
        stats = w.budget_statistics()
        assert stats.ccu == 0 and stats.granted >= 10 and "b1" in stats.servers
        server.close()
        assert "b1" not in w.budget_statistics().servers
    finally:
        w.shutdown()


def test_coroutines_calling_one_shard_together_share_one_ray_message(ray_session):
    w = World.start("t-coalesce", backend="memory", budget=None)
    try:
        store = w.server("c1").datastores.get_data_store("players")
        transport = w._transport
        before = transport.messages_sent

        async def save_all():
            return await asyncio.gather(*(store.aio.set(f"user_{i}", {"n": i}) for i in range(300)))

        versions = asyncio.run(save_all())
        assert len(versions) == 300 and all(isinstance(v, str) for v in versions)
        assert transport.messages_sent - before <= 3  # one message for all 300 (allowing stragglers)
        async def read_all():
            return await asyncio.gather(*(store.aio.get(f"user_{i}", use_cache=False) for i in range(300)))

        got = asyncio.run(read_all())
        assert [value for value, _ in got] == [{"n": i} for i in range(300)]
    finally:
        w.shutdown()


def test_a_restarted_budget_actor_serves_again(ray_session):
    ray = ray_session
    w = World.start("t-budget-restart", backend="memory")
    try:
        server = w.server("r1", players=5)
        store = server.datastores.get_data_store("players")
        store.set("before", 1)
        server.datastores.release_leases()  # hold no tokens: the next request must lease
        ray.kill(w._budget, no_restart=False)  # asynchronous: the next requests may meet it dying or restarting

        def eventually(call):
            for _ in range(100):
                try:
                    return call()
                except DataStoreError as exc:  # a typed, retryable error, never a raw Ray one
                    assert exc.code == 500 and exc.retryable and "budget actor" in exc.message
                    time.sleep(0.1)  # waits for Ray to bring the actor's process back, not for a timer
            raise AssertionError("the budget actor did not come back")

        eventually(lambda: store.set("after", 2))
        assert eventually(lambda: store.get("after", use_cache=False))[0] == 2
        assert "r1" in w.budget_statistics().servers  # registered again by its lease
    finally:
        w.shutdown()
