"""A world: one Roblox experience's emulated cloud, and the simulated game servers that use it.

`World.start` starts (or joins) Ray and the world's named actors in a Ray namespace of its own; `World.connect`
attaches to a running world from any process of the cluster; `World.in_process` builds the same world inside this
process, with no Ray, for tests and scripts (a manual clock fits there). `world.server(job_id, players=n)` is one
simulated game server's identity and its clients. This module wires things together and owns no Roblox rules.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import time
import uuid
from typing import Any, Callable, Iterator

import ray

from lodestore.storage._budget import bucket_map
from lodestore.storage._clock import Clock, SimClock
from lodestore.storage._erasure import (TEMPLATES_META, DeletionTemplate, ErasedKey, ErasureReport, Rewrite,
                                        check_templates, check_user_id, erase, remaining)
from lodestore.storage._errors import ConfigError, DataStoreError, ServerClosedError
from lodestore.storage._faults import FaultConfig
from lodestore.storage._ingress import INGRESS_NAME, ingress_world
from lodestore.storage._placement import STORAGE_PLACEMENTS, storage_nodes
from lodestore.storage._runtime import ACTOR_FAILURES, LocalRuntime, RayRuntime, Runtime
from lodestore.storage._shards import (BUDGET_NAME, MEMORYSTORE_NAME, BudgetServiceActor, DataStoreShardActor,
                                      MemoryStoreShardActor, ShardStatistics, WorldInfo, WorldStatistics, actor_options,
                                      datastore_name, namespace_of)
from lodestore.storage._throttle import BudgetGate, ExperienceGate, OpenGate
from lodestore.storage._transport import DATASTORE, MEMORYSTORE, Transport, shard_of
from lodestore.storage._values import check_store_name
from lodestore.storage.datastore._client import DataStoreService
from lodestore.storage.datastore._engine import DataStoreLimits
from lodestore.storage.datastore._lifecycle import (DataStoreInfo, DeleteStore, DescribeStore, GetMeta, ListAllKeys,
                                                    PutMeta, Snapshot, SnapshotResult, UndeleteStore, merge_infos,
                                                    same_utc_day)
from lodestore.storage.memorystore._client import MemoryStoreService
from lodestore.storage.memorystore._messages import MemoryStoreFlushed
from lodestore.storage.messaging._client import MessagingService
from lodestore.storage.messaging._engine import MAX_CONCURRENCY, MESSAGING, MESSAGING_NAME, MessagingActor
from lodestore.storage.messaging._messages import MessagingStatistics, check_topic, encode_message

__all__ = ["World", "AsyncWorld", "Server", "AsyncServer"]

_WORLD_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
BACKENDS = ("sqlite", "memory")


BUDGET_PROFILES = ("current", "legacy", None)
OPEN_CLOUD_JOB_ID = "open-cloud"
"""The job id of `World.open_cloud()`'s client (it is no game server: the budget ledger never registers it)."""


def _check_config(name: Any, backend: Any, shards: Any, faults: Any, budget: Any = "current",
                  storage: Any = "driver") -> FaultConfig:
    if not isinstance(name, str) or not _WORLD_NAME.match(name):
        raise ConfigError(f"world name must be 1-64 letters, digits, '_', '.' or '-', got {name!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= 256:
        raise ConfigError(f"shards must be an int from 1 to 256, got {shards!r}")
    if storage not in STORAGE_PLACEMENTS:
        raise ConfigError(f"storage must be one of {', '.join(map(repr, STORAGE_PLACEMENTS))}, got {storage!r}")
    if budget not in BUDGET_PROFILES:
        raise ConfigError(f"budget must be 'current', 'legacy' or None (no budgets), got {budget!r}")
    if faults is not None and not isinstance(faults, FaultConfig):
        raise ConfigError(f"faults must be a storage.FaultConfig or None, got {type(faults).__name__}")
    return faults or FaultConfig()


def _default_path(name: str, backend: str, path: Any) -> str | None:
    if backend != "sqlite":
        if path is not None:
            raise ConfigError(f"path is only for the sqlite backend, got path={path!r} with backend={backend!r}")
        return None
    if path is None:
        path = os.path.join("lodestore-data", f"{name}.db")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"path must be a file path, got {type(path).__name__}")
    return os.path.abspath(os.fspath(path))


class World:
    """One emulated Roblox experience.

    >>> world = World.start("demo", backend="sqlite", time_scale=60)
    >>> server = world.server("job-1", players=10)
    >>> server.datastores.get_data_store("players").set("user_1", {"coins": 0})
    >>> world.shutdown()
    """

    def __init__(self, info: WorldInfo, runtime: Runtime, shards: dict[str, list], budget: Any,
                 owned_handles: list | None) -> None:
        self.info = info
        self.runtime = runtime  # how this world's actors are reached: in this process, or on Ray
        self._transport = Transport(runtime, shards, info.clock)
        self._budget = budget  # the budget actor (a reference in the runtime), or None (no budgets)
        self._handles = owned_handles
        self._operator_server: Server | None = None
        # hears every keyed DataStore/MemoryStore request of the servers made from now on (`storage._clients`):
        # the simulator's hosts set it to record a run's raw requests for its consistency checker
        self.recorder: Any = None
        self.aio = AsyncWorld(self)

    # ----------------------------------------------------------------------------------------------- creation

    @classmethod
    def start(cls, name: str = "default", backend: str = "sqlite", path: str | None = None, time_scale: float = 1.0,
              faults: FaultConfig | None = None, address: str | None = None, shards: int = 1,
              budget: str | None = "current", storage: str = "driver") -> "World":
        """Start the world's actors, starting local Ray first when none is running (or joining `address`).
        `budget` is the request-budget profile ("current" or "legacy"), or None for unlimited requests.
        `storage` places the DataStore shards: "driver" pins all of them (and the MemoryStore) to this node, with
        one SQLite file; "spread" pins shard i to the i-th alive node, each with its own file `<path>-shard<i>`
        there (see `storage._placement`)."""
        faults = _check_config(name, backend, shards, faults, budget, storage)
        path = _default_path(name, backend, path)
        clock = SimClock.starting_now(time_scale)
        _ensure_ray(address)
        namespace = namespace_of(name)
        try:
            ray.get_actor(datastore_name(0), namespace=namespace)
        except ValueError:
            pass
        else:
            raise ConfigError(f"world {name!r} is already running; use World.connect({name!r}) or shut it down")
        nodes = storage_nodes(storage, shards)
        info = WorldInfo(name, backend, path, shards, clock, faults, budget, storage, nodes)
        runtime = RayRuntime()
        datastores = [runtime.spawn(DataStoreShardActor, info, i, **actor_options(datastore_name(i), name,
                                                                                  node=nodes[i]))
                      for i in range(shards)]
        memorystore = runtime.spawn(MemoryStoreShardActor, info, **actor_options(MEMORYSTORE_NAME, name, node=nodes[0]))
        messaging = runtime.spawn(MessagingActor, info, **actor_options(MESSAGING_NAME, name, node=nodes[0],
                                                                        max_concurrency=MAX_CONCURRENCY))
        owned = datastores + [memorystore, messaging]
        budget_actor = None
        if budget is not None:
            budget_actor = runtime.spawn(BudgetServiceActor, info, **actor_options(BUDGET_NAME, name))
            owned.append(budget_actor)
        try:
            ray.get([h.describe.remote() for h in datastores] + [memorystore.statistics.remote(),
                                                                 messaging.statistics.remote()]
                    + ([budget_actor.statistics.remote()] if budget_actor else []))
        except BaseException as exc:   # nothing of a world that did not start stays (its names would block a retry)
            _end_actors(owned, namespace)
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, ConfigError):
                raise exc.cause from None   # a shard's file is another world's
            raise
        return cls(info, runtime, {DATASTORE: datastores, MEMORYSTORE: [memorystore], MESSAGING: [messaging]},
                   budget_actor, owned)

    @classmethod
    def connect(cls, name: str, address: str | None = None) -> "World":
        """Attach to a running world (from a driver, a Ray task or an actor of the same cluster): one that
        `World.start` started, or the world of a paced simulation running on Ray under that world name, whose
        storage calls then go through the run's ingress (`storage._ingress`)."""
        _check_config(name, "memory", 1, None)
        _ensure_ray(address)
        namespace = namespace_of(name)
        try:
            first = ray.get_actor(datastore_name(0), namespace=namespace)
        except ValueError:
            try:   # a simulation in virtual time: its world is reached through its ingress (`storage._ingress`)
                ingress = ray.get_actor(INGRESS_NAME, namespace=namespace)
            except ValueError:
                raise ConfigError(f"no running world named {name!r}; start it with World.start({name!r})") from None
            return ingress_world(ingress)
        info: WorldInfo = ray.get(first.describe.remote())
        datastores = [first] + [ray.get_actor(datastore_name(i), namespace=namespace) for i in range(1, info.shards)]
        memorystore = ray.get_actor(MEMORYSTORE_NAME, namespace=namespace)
        messaging = ray.get_actor(MESSAGING_NAME, namespace=namespace)
        budget = ray.get_actor(BUDGET_NAME, namespace=namespace) if info.budget is not None else None
        return cls(info, RayRuntime(), {DATASTORE: datastores, MEMORYSTORE: [memorystore], MESSAGING: [messaging]},
                   budget, None)

    @classmethod
    def in_process(cls, name: str = "local", backend: str = "memory", path: str | None = None,
                   clock: Clock | None = None, faults: FaultConfig | None = None, shards: int = 1,
                   budget: str | None = "current") -> "World":
        """The same world inside this process, without Ray: for tests (with a `ManualClock`) and scripts.
        With a manual clock budgets refill only when the test moves the clock."""
        faults = _check_config(name, backend, shards, faults, budget)
        path = _default_path(name, backend, path)
        info = WorldInfo(name, backend, path, shards, clock or SimClock.starting_now(), faults, budget)
        try:   # made inside a running event loop, its key hosts and coordinator live on that loop
            runtime = LocalRuntime.here(name)
        except RuntimeError:
            runtime = LocalRuntime(name)
        local = {DATASTORE: [DataStoreShardActor(info, i) for i in range(shards)],
                 MEMORYSTORE: [MemoryStoreShardActor(info)], MESSAGING: [MessagingActor(info)]}
        budget_service = BudgetServiceActor(info) if budget is not None else None
        return cls(info, runtime, local, budget_service, None)

    def __reduce__(self):
        if isinstance(self.runtime, LocalRuntime):
            raise TypeError("an in-process world cannot leave its process; use World.start for Ray")
        return (World.connect, (self.info.name,))

    # -------------------------------------------------------------------------------------------------- use

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def clock(self) -> Clock:
        return self.info.clock

    def now(self) -> int:
        """Simulated milliseconds since the epoch."""
        return self.info.clock.now()

    def server(self, job_id: str | None = None, players: int = 0) -> "Server":
        """A simulated game server: its identity, its player count, and its DataStore, MemoryStore and
        MessagingService clients (one `Server` per job id: its messaging client is the one that receives)."""
        if job_id is None:
            job_id = uuid.uuid4().hex[:12]
        if not isinstance(job_id, str) or not job_id:
            raise ConfigError(f"job_id must be a non-empty string, got {job_id!r}")
        server = Server(self, job_id)
        server.set_players(players)
        return server

    def set_faults(self, faults: FaultConfig) -> None:
        """Change what goes wrong, from now on, on every shard and in the MemoryStore."""
        _check_config(self.name, self.info.backend, self.info.shards, faults)
        for shard in self._shards(DATASTORE) + self._shards(MEMORYSTORE):
            self._call(shard, "set_faults", faults)
        self._call(self._shards(MESSAGING)[0], "set_faults", faults)

    def budget_statistics(self):
        """The budget ledger's snapshot (every server's buckets, the experience buckets, leases), or None."""
        return None if self._budget is None else self._call(self._budget, "statistics")

    def shutdown(self) -> None:
        """Stop the world's actors. Each DataStore shard first closes its SQLite file (the WAL checkpointed into
        it), the shard that holds a shared file last, so the file alone holds every acknowledged write and no
        `-wal` or `-shm` is left: a copy of `world.db` loses nothing, `World.start` on the same path sees all of
        it, and the file's lock is free for the next world. A shard that is dead or does not answer within
        `CLOSE_TIMEOUT_S` is killed unclosed (its writes are in the `-wal` beside the file, which the next open
        reads). Shutting down twice is harmless."""
        shards = self._shards(DATASTORE)
        holders = [s for i, s in enumerate(shards) if self.info.holds_file(i)]
        joiners = [s for i, s in enumerate(shards) if not self.info.holds_file(i)]
        if isinstance(self.runtime, LocalRuntime):
            for shard in joiners + holders:
                shard.close()
            return
        try:
            _close_on_ray([joiners, holders])
        finally:
            self._kill_actors()

    def _kill_actors(self) -> None:
        handles = list(self._handles or (self._shards(DATASTORE) + self._shards(MEMORYSTORE) + self._shards(MESSAGING)
                                         + ([self._budget] if self._budget is not None else [])))
        namespace = namespace_of(self.name)
        for name in _names_in(namespace):  # others of the world: its coordinator
            try:
                handles.append(ray.get_actor(name, namespace=namespace))
            except ValueError:
                pass  # gone meanwhile
        _end_actors(handles, namespace)

    # ------------------------------------------------------- the experience, as Open Cloud and its tools see it
    # Operator calls a game server cannot make (Roblox offers them through Open Cloud and the Data Stores Manager);
    # each has a coroutine twin in `AsyncWorld`. Grouped by service:

    # -- DataStore: budgets and storage

    def statistics(self) -> WorldStatistics:
        """The world's DataStore figures: one frozen `ShardStatistics` per shard, in shard order (the result
        iterates and indexes as that list), and the experience's storage against Roblox's limit (`storage_bytes`,
        `lifetime_users`, `storage_limit_bytes`, `over_limit`, `estimated_monthly_cost_usd`: see `StorageUsage`).
        The storage is measured now, by reading every latest version (an operator's call, not a hot path).

        >>> world.statistics().storage_limit_bytes
        524288000
        """
        shards = tuple(self._call(s, "statistics") for s in self._shards(DATASTORE))
        measured = self._storage_holders()
        storage = sum(self._call(s, "storage_bytes") for s in measured)
        users = self._call(self._shards(MEMORYSTORE)[0], "lifetime_users")
        return WorldStatistics(**WorldStatistics.figures(storage, users), shards=shards)

    def set_lifetime_users(self, users: int) -> None:
        """Tell the world how many distinct users have ever played the experience (a simulator knows its player
        population), for the storage limit (500 MB + 1 MB per lifetime user). The world also counts the most
        players it saw online at once, and uses the larger of the two. Setting it again replaces it."""
        _check_players(users, "users")
        self._call(self._shards(MEMORYSTORE)[0], "set_lifetime_users", users)

    def set_datastore_limits(self, limits: DataStoreLimits) -> None:
        """Change, from now on, how much one data store as a whole may read and write per minute before its
        requests get 429 DatastoreThrottled (see `DataStoreLimits`: Roblox publishes no number)."""
        _check_limits(limits)
        for shard in self._shards(DATASTORE):
            self._call(shard, "set_limits", limits)

    def open_cloud(self) -> "Server":
        """The client an Open Cloud v2 server uses (`lodestore serve`): the same DataStore and MemoryStore clients
        as a game server's, outside every game server. Its DataStore requests spend only the experience-wide
        budgets (read, write, list, remove: shared with every game server, as since 2026-04), never a server's
        bucket, and never queue: when the experience's bucket is spent they fail at once with 429
        `<RequestType>ExperienceThrottled` and `retry_after_ms`. It has no players, never joins the CCU and has no
        budget of its own (`get_request_budget` answers 0, `set_rate_limit` lowers nothing). A world without
        request budgets (`budget=None`) lets every request go.

        >>> cloud = world.open_cloud()
        >>> cloud.datastores.get_data_store("players").get("user_1")
        """
        return Server(self, OPEN_CLOUD_JOB_ID, budgeted=False, open_cloud=True)

    def _storage_holders(self) -> list:
        """The shards whose backends together hold every entry once: every shard, or the first of a shared file."""
        shards = self._shards(DATASTORE)
        return shards[:1] if self.info.shared_file else shards

    # -- DataStore: data stores' lifecycle, snapshots and erasure

    def delete_data_store(self, name: str) -> DataStoreInfo:
        """Delete a data store (Open Cloud v2's delete): from now on every request of every server to it fails
        with 404 `DatastoreDeleted`; it is listed with state DELETED and `expire_time` = now + 30 days by
        `list_data_stores(show_deleted=True)`, can be undeleted until then, and is purged after (every entry and
        version gone, its name free again), lazily: when a request or an operator call touches it, or at a shard's
        hourly sweep. Until purged it keeps counting toward storage. 404 `DatastoreNotFound` when it holds nothing;
        deleting a deleted store answers its info unchanged."""
        check_store_name(name)
        if not any(self._administer_all(DescribeStore(name))):
            raise _store_not_found(name)
        return _merged(self._administer_all(DeleteStore(name)), name)

    def undelete_data_store(self, name: str) -> DataStoreInfo:
        """Undo `delete_data_store` within its 30 days: the store is as it was, every version included. 400
        `DatastoreNotDeleted` for a store that is not deleted, 404 `DatastoreNotFound` for one purged already."""
        check_store_name(name)
        return _merged(self._administer_all(UndeleteStore(name)), name)

    def snapshot_data_stores(self) -> SnapshotResult:
        """Open Cloud v2's data-stores:snapshot: once per UTC day, guarantee a backup of every key as it is now
        (the next write of each key keeps the version it replaces, even within the same UTC hour). A second call
        the same UTC day takes none and says so, with the time of the one taken."""
        now = self.now()
        latest = self._administer(self._shards(DATASTORE)[0], Snapshot(None))
        if latest is not None and same_utc_day(latest, now):
            return SnapshotResult(False, latest)
        self._administer_all(Snapshot(now))
        return SnapshotResult(True, now)

    def set_deletion_templates(self, templates) -> None:
        """Set the experience's deletion templates (Data Stores Manager's user data templates): up to 100, each a
        `DeletionTemplate(store, scope, key)` or a (store, scope, key) tuple with a `{UserId}` token in one or more
        of them; `erase_user` removes the keys they name. Kept in the world's file, for `lodestore inspect erase`.
        A bad list raises ConfigError naming the problem and changes nothing."""
        checked = check_templates(templates)
        self._administer_all(PutMeta(TEMPLATES_META, [[t.store, t.scope, t.key] for t in checked]))

    def deletion_templates(self) -> tuple[DeletionTemplate, ...]:
        """The templates `set_deletion_templates` set (none at first)."""
        stored = self._administer(self._shards(DATASTORE)[0], GetMeta(TEMPLATES_META))
        return tuple(DeletionTemplate(*t) for t in stored or ())

    def erase_user(self, user_id: int, templates=None) -> ErasureReport:
        """Erase a user's data (Roblox's right to erasure): every key the deletion templates name for `user_id`
        (or `templates`, when given), with every version and backup (no tombstone: nothing of the value is left),
        also in a deleted store; and what lodestore's own layers keep of it (a Store's record, the shard chunks
        any version of it points to, the transaction markers that name it; see `actors._erasure`). Then it checks
        that nothing is left: `report.remaining` lists what still is (empty when complete).

        A key a live session holds right now is erased all the same, as Roblox erases it whoever plays: the
        session's next save finds its record gone and writes nothing (its fenced compare-and-set fails, and the
        session ends as having lost its lock), so the erased data does not come back. Chunks such a save wrote just
        before may be left; `remaining` then lists them, and erasing again removes them. Erase after the user left.

        >>> world.set_deletion_templates([("players", "global", "user_{UserId}")])
        >>> world.erase_user(42).remaining
        ()
        """
        return self._drive(erase(check_user_id(user_id), self._templates(templates)))

    def check_erased(self, user_id: int, templates=None) -> list[ErasedKey]:
        """What `erase_user` would find of the user now: each key still stored (empty: nothing is left). Reads
        only."""
        return self._drive(remaining(check_user_id(user_id), self._templates(templates)))

    def _templates(self, templates) -> tuple[DeletionTemplate, ...]:
        return self.deletion_templates() if templates is None else check_templates(templates)

    def _administer(self, shard, op):
        result = self._call(shard, "administer", [op])[0]
        if isinstance(result, DataStoreError):
            raise result
        return result

    def _administer_all(self, op) -> list:
        """`op` on every shard (each keeps its own copy of the lifecycle state); the first failure raised."""
        results = [self._call(s, "administer", [op])[0] for s in self._shards(DATASTORE)]
        return _raise_first(results)

    def _route(self, request) -> tuple[list, Callable[[list], Any]]:
        """For an erasure's shard request (see `storage._erasure`): the shards to ask, and how their answers make
        one. A key's request goes to the shard that owns it; a listing to every shard (one, for a shared file)."""
        shards = self._shards(DATASTORE)
        if isinstance(request, ListAllKeys):
            return (shards[:1] if self.info.shared_file else shards,
                    lambda found: sorted({k for keys in found for k in keys})[:request.limit])
        return [shards[shard_of((request.store, request.scope, request.key), len(shards))]], lambda found: found[0]

    def _drive(self, steps):
        """Run an erasure's generator (see `storage._erasure`) to its result."""
        done, request = _advance(steps, None)
        while not done:
            if isinstance(request, Rewrite):
                answer = self._rewritten(request).update(request.key, request.fn)
            else:
                shards, combine = self._route(request)
                answer = combine([self._administer(s, request) for s in shards])
            done, request = _advance(steps, answer)
        return request

    def _rewritten(self, request: Rewrite):
        return self._operator().datastores.get_data_store(request.store, request.scope)

    def _operator(self) -> "Server":
        """An operator's client, outside every game server's budget (erasure's rewrites)."""
        if self._operator_server is None:
            self._operator_server = Server(self, "lodestore-operator", budgeted=False)
        return self._operator_server

    # -- MemoryStore

    def flush_memory_store(self) -> MemoryStoreFlushed:
        """Empty every hash map, sorted map and queue of the experience at once (Open Cloud's memory-store:flush),
        and say what was emptied. The quotas stay as they were: the memory is free at once, the request units
        spent in the last minute stay spent, and the memory quota keeps its 8-day peak of players (see
        `MemoryStoreEngine.flush`). Flushing twice is flushing once.

        >>> world.flush_memory_store()
        MemoryStoreFlushed(structures=3, items=120, bytes=5210)
        """
        return self._call(self._shards(MEMORYSTORE)[0], "flush")

    def set_hash_map_request_limit(self, limit: int | None) -> None:
        """Give every hash map a request limit of its own, `limit` units per minute as a whole (None, the default:
        none, only each partition's; whether Roblox has one is disputed). Over it a request fails with
        DataStructureRequestsOverLimit."""
        self._call(self._shards(MEMORYSTORE)[0], "set_hash_map_request_limit", limit)

    # -- MessagingService

    def publish(self, topic: str, message: Any) -> None:
        """Open Cloud's publish (universe-messaging-service:publish): `message` to every server subscribed to
        `topic`, from outside any game server. Same topic and message rules as a server's `publish`; no server's
        send limit applies, the receive limits do (what is over them is dropped, counted in the statistics)."""
        topic, text = check_topic(topic), encode_message(message)
        self._call(self._shards(MESSAGING)[0], "publish", None, 0, topic, text)

    def messaging_statistics(self) -> MessagingStatistics:
        """The MessagingService's snapshot: publishes, deliveries, drops by reason (see `MessagingStatistics`)."""
        return self._call(self._shards(MESSAGING)[0], "statistics")

    # ---------------------------------------------------------------------------------------------- plumbing

    def _shards(self, service: str) -> list:
        return self._transport.shards[service]

    def _call(self, target, method: str, *args):
        return self.runtime.call(target, method, *args)

    async def _acall(self, target, method: str, *args):
        return await self.runtime.acall(target, method, *args)

    def _send(self, target, method: str, *args) -> None:
        """Like `_call`, without waiting for the answer."""
        self.runtime.send(target, method, *args)


class AsyncWorld:
    """`World`'s operator calls as coroutines (`world.aio`), for code on an event loop (the Open Cloud server, an
    async actor): they await the world's actors instead of blocking the loop. Same effects as the blocking twins."""

    def __init__(self, world: World) -> None:
        self._world = world

    # -- DataStore: budgets and storage

    async def statistics(self) -> WorldStatistics:
        """`World.statistics`, awaiting the shards."""
        w = self._world
        shards = tuple([await w._acall(s, "statistics") for s in w._shards(DATASTORE)])
        storage = sum([await w._acall(s, "storage_bytes") for s in w._storage_holders()])
        users = await w._acall(w._shards(MEMORYSTORE)[0], "lifetime_users")
        return WorldStatistics(**WorldStatistics.figures(storage, users), shards=shards)

    async def set_lifetime_users(self, users: int) -> None:
        """`World.set_lifetime_users`, awaiting the actor."""
        _check_players(users, "users")
        await self._world._acall(self._world._shards(MEMORYSTORE)[0], "set_lifetime_users", users)

    async def set_datastore_limits(self, limits: DataStoreLimits) -> None:
        """`World.set_datastore_limits`, awaiting the shards."""
        _check_limits(limits)
        for shard in self._world._shards(DATASTORE):
            await self._world._acall(shard, "set_limits", limits)

    # -- DataStore: data stores' lifecycle, snapshots and erasure

    async def delete_data_store(self, name: str) -> DataStoreInfo:
        check_store_name(name)
        if not any(await self._administer_all(DescribeStore(name))):
            raise _store_not_found(name)
        return _merged(await self._administer_all(DeleteStore(name)), name)

    async def undelete_data_store(self, name: str) -> DataStoreInfo:
        check_store_name(name)
        return _merged(await self._administer_all(UndeleteStore(name)), name)

    async def snapshot_data_stores(self) -> SnapshotResult:
        world = self._world
        now = world.now()
        latest = await self._administer(world._shards(DATASTORE)[0], Snapshot(None))
        if latest is not None and same_utc_day(latest, now):
            return SnapshotResult(False, latest)
        await self._administer_all(Snapshot(now))
        return SnapshotResult(True, now)

    async def set_deletion_templates(self, templates) -> None:
        checked = check_templates(templates)
        await self._administer_all(PutMeta(TEMPLATES_META, [[t.store, t.scope, t.key] for t in checked]))

    async def deletion_templates(self) -> tuple[DeletionTemplate, ...]:
        stored = await self._administer(self._world._shards(DATASTORE)[0], GetMeta(TEMPLATES_META))
        return tuple(DeletionTemplate(*t) for t in stored or ())

    async def erase_user(self, user_id: int, templates=None) -> ErasureReport:
        return await self._drive(erase(check_user_id(user_id), await self._templates(templates)))

    async def check_erased(self, user_id: int, templates=None) -> list[ErasedKey]:
        return await self._drive(remaining(check_user_id(user_id), await self._templates(templates)))

    async def _templates(self, templates) -> tuple[DeletionTemplate, ...]:
        return await self.deletion_templates() if templates is None else check_templates(templates)

    async def _administer(self, shard, op):
        result = (await self._world._acall(shard, "administer", [op]))[0]
        if isinstance(result, DataStoreError):
            raise result
        return result

    async def _administer_all(self, op) -> list:
        world = self._world
        return _raise_first([(await world._acall(s, "administer", [op]))[0] for s in world._shards(DATASTORE)])

    async def _drive(self, steps):
        world = self._world
        done, request = _advance(steps, None)
        while not done:
            if isinstance(request, Rewrite):
                answer = await world._rewritten(request).aio.update(request.key, request.fn)
            else:
                shards, combine = world._route(request)
                answer = combine([await self._administer(s, request) for s in shards])
            done, request = _advance(steps, answer)
        return request

    # -- MemoryStore

    async def flush_memory_store(self) -> MemoryStoreFlushed:
        """Coroutine version of `World.flush_memory_store`."""
        return await self._world._acall(self._world._shards(MEMORYSTORE)[0], "flush")

    async def set_hash_map_request_limit(self, limit: int | None) -> None:
        """Coroutine version of `World.set_hash_map_request_limit`."""
        await self._world._acall(self._world._shards(MEMORYSTORE)[0], "set_hash_map_request_limit", limit)

    # -- MessagingService

    async def publish(self, topic: str, message: Any) -> None:
        w = self._world
        topic, text = check_topic(topic), encode_message(message)
        await w._acall(w._shards(MESSAGING)[0], "publish", None, 0, topic, text)

    async def messaging_statistics(self) -> MessagingStatistics:
        w = self._world
        return await w._acall(w._shards(MESSAGING)[0], "statistics")


def _advance(steps, answer) -> tuple[bool, Any]:
    """(False, next request) of a generator given `answer`, or (True, its result)."""
    try:
        return False, steps.send(answer)
    except StopIteration as stop:
        return True, stop.value


def _raise_first(results: list) -> list:
    for result in results:
        if isinstance(result, DataStoreError):
            raise result
    return results


def _store_not_found(name: str) -> DataStoreError:
    return DataStoreError(404, "DatastoreNotFound", f"data store {name!r} holds nothing (no live key): there is "
                          f"nothing to delete")


def _merged(infos: list, name: str) -> DataStoreInfo:
    """One store's info from every shard's answer (None: the shard holds nothing of it)."""
    merged = merge_infos([[info] for info in infos if info is not None])
    if not merged:
        raise _store_not_found(name)
    return merged[0]


def _check_limits(limits: Any) -> None:
    if not isinstance(limits, DataStoreLimits):
        raise ConfigError(f"limits must be a storage.DataStoreLimits, got {type(limits).__name__}")


def _check_players(players: Any, what: str = "players") -> None:
    if isinstance(players, bool) or not isinstance(players, int) or players < 0:
        raise ConfigError(f"{what} must be an int >= 0, got {players!r}", field=what)


def _unanswered(exc: BaseException) -> DataStoreError:
    """What a request whose budget lease got no answer (the budget actor died or restarts) fails with."""
    return DataStoreError(500, "InternalServerError", f"the budget actor did not answer ({type(exc).__name__}); the "
                          f"request was not sent")


class _BudgetLink:
    """How one server's gate reaches the world's budget ledger."""

    def __init__(self, world: World, server: "Server") -> None:
        self._world = world
        self._server = server

    def lease(self, server_id: str, request_type, want: int):
        try:
            return self._world._call(self._world._budget, "lease", server_id, request_type, want,
                                     self._server.players)
        except self._world.runtime.failures as exc:
            raise _unanswered(exc) from exc

    async def alease(self, server_id: str, request_type, want: int):
        """`lease` from a coroutine: the event loop goes on while the ledger answers."""
        try:
            return await self._world._acall(self._world._budget, "lease", server_id, request_type, want,
                                            self._server.players)
        except self._world.runtime.failures as exc:
            raise _unanswered(exc) from exc

    def release(self, lease_id: str, unused: int) -> None:
        self._world._send(self._world._budget, "release", lease_id, unused)

    def available(self, server_id: str, request_type) -> int:
        return self._world._call(self._world._budget, "available", server_id, request_type)

    async def aavailable(self, server_id: str, request_type) -> int:
        return await self._world._acall(self._world._budget, "available", server_id, request_type)

    def set_rate_limit(self, server_id: str, request_type, base: int, per_player: int) -> int:
        return self._world._call(self._world._budget, "set_rate_limit", server_id, request_type, base, per_player)

    async def aset_rate_limit(self, server_id: str, request_type, base: int, per_player: int) -> int:
        return await self._world._acall(self._world._budget, "set_rate_limit", server_id, request_type, base,
                                        per_player)

    def take_experience(self, request_type, count: int) -> int:
        return self._world._call(self._world._budget, "take_experience", request_type, count)

    async def atake_experience(self, request_type, count: int) -> int:
        return await self._world._acall(self._world._budget, "take_experience", request_type, count)


class Server:
    """One simulated Roblox game server (a JobId) with `players` players, and its service clients.

    `budgeted=False` makes a client outside every game server's request budget (an operator's tool, or a
    simulator's verifier reading the final data); game servers are always budgeted when the world has budgets.
    `open_cloud=True` (with `budgeted=False`: `World.open_cloud`) spends the experience-wide budgets instead."""

    def __init__(self, world: World, job_id: str, budgeted: bool = True, open_cloud: bool = False) -> None:
        self.world = world
        self.job_id = job_id
        self.players = 0
        self.closed = False
        link = _BudgetLink(world, self) if world._budget is not None and budgeted else None
        gate = (BudgetGate(link, world.clock, job_id, buckets=bucket_map(world.info.budget)) if link is not None
                else ExperienceGate(_BudgetLink(world, self)) if open_cloud and world._budget is not None
                else OpenGate())
        self.datastores = DataStoreService(world._transport, world.clock, gate, job_id, budget=link,
                                           shared_storage=world.info.shared_file)
        self.memorystores = MemoryStoreService(world._transport, world.clock, OpenGate(), job_id)
        self.datastores.recorder = self.memorystores.recorder = world.recorder
        self.messaging = MessagingService(world, job_id, lambda: self.players)
        self.aio = AsyncServer(self)

    def __repr__(self) -> str:
        return f"Server({self.job_id!r}, players={self.players}, world={self.world.name!r})"

    def _check_open(self) -> None:
        if self.closed:
            raise ServerClosedError(f"game server {self.job_id!r} is closed")

    def set_players(self, players: int) -> None:
        """Change how many players this server has; quotas and budgets follow from now on. ServerClosedError after
        `close()`: a closed server never comes back into the world's CCU."""
        self._check_open()
        _check_players(players)
        self.players = players
        memorystore = self.world._shards(MEMORYSTORE)[0]
        self.world._call(memorystore, "set_players", self.job_id, players)
        if self.world._budget is not None:
            try:
                self.world._call(self.world._budget, "set_players", self.job_id, players)
            except self.world.runtime.failures:
                pass   # restarting: every lease carries the count and registers a server the new ledger does not know

    def begin_shutdown(self) -> None:
        """The server is closing (BindToClose): its budgets get Roblox's shutdown boost, once. Leased tokens go
        back first, so the boost lifts the server's whole budget to max(current, 150 x rate / 60)."""
        self._check_open()
        if self.world._budget is not None:
            self.datastores.release_leases()
            self.world._call(self.world._budget, "begin_shutdown", self.job_id)

    def close(self) -> None:
        """The server is gone: unused leased tokens go back, its players leave the world's CCU. Closing again does
        the same again (each step is idempotent)."""
        self.closed = True
        self.datastores.release_leases()
        self.messaging.close()
        self.world._call(self.world._shards(MEMORYSTORE)[0], "set_players", self.job_id, 0)
        if self.world._budget is not None:
            self.world._call(self.world._budget, "remove_server", self.job_id)


class AsyncServer:
    """`Server`'s lifecycle calls as coroutines (`server.aio`), for code on an event loop (an async actor, the
    in-process simulator): they await the world's actors instead of blocking the loop. Same effects as the blocking
    twins, and the same answer to a repeated delivery."""

    def __init__(self, server: Server) -> None:
        self._server = server

    async def set_players(self, players: int) -> None:
        s = self._server
        s._check_open()
        _check_players(players)
        s.players = players
        await s.world._acall(s.world._shards(MEMORYSTORE)[0], "set_players", s.job_id, players)
        if s.world._budget is not None:
            try:
                await s.world._acall(s.world._budget, "set_players", s.job_id, players)
            except s.world.runtime.failures:
                pass   # restarting: every lease carries the count and registers a server the new ledger does not know

    async def begin_shutdown(self) -> None:
        s = self._server
        s._check_open()
        if s.world._budget is not None:
            s.datastores.release_leases()
            await s.world._acall(s.world._budget, "begin_shutdown", s.job_id)

    async def close(self) -> None:
        s = self._server
        s.closed = True
        s.datastores.release_leases()
        await s.messaging.aio.close()
        await s.world._acall(s.world._shards(MEMORYSTORE)[0], "set_players", s.job_id, 0)
        if s.world._budget is not None:
            await s.world._acall(s.world._budget, "remove_server", s.job_id)


NAMES_FREE_TIMEOUT_S = 10.0
"""How long ending a world's actors waits for Ray to release their names (a world of that name can start again)."""


def _names_in(namespace: str) -> list[str]:
    return [e["name"] for e in ray.util.list_named_actors(all_namespaces=True) if e["namespace"] == namespace]


def _end_actors(handles: list, namespace: str) -> None:
    """Kill `handles` (for good) and wait, at most `NAMES_FREE_TIMEOUT_S`, until Ray has released every actor name
    of `namespace`: `ray.kill` returns before the names are free, and a world of the same name started meanwhile
    would find them taken."""
    for h in handles:
        ray.kill(h, no_restart=True)
    deadline = time.monotonic() + NAMES_FREE_TIMEOUT_S
    while _names_in(namespace) and time.monotonic() < deadline:
        time.sleep(0.05)   # Ray's bookkeeping, not simulated time


CLOSE_TIMEOUT_S = 30.0
"""How long `World.shutdown` waits for the DataStore shards to close their files before it kills them anyway."""


def _close_on_ray(waves: list[list]) -> None:
    """Ask every DataStore shard actor to close (each after the batches queued before it), wave after wave, and wait
    for them, at most `CLOSE_TIMEOUT_S` in all. A dead or unreachable shard is skipped; a shard whose close raised
    (its checkpoint failed: the writes stay in the `-wal`) raises here, once every other shard had its chance."""
    deadline = time.monotonic() + CLOSE_TIMEOUT_S
    failed: BaseException | None = None
    for shards in filter(None, waves):
        refs = [shard.close.remote() for shard in shards]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
        for ref in ready:
            try:
                ray.get(ref)
            except ACTOR_FAILURES:
                pass  # dead: nothing of it to close
            except ray.exceptions.RayTaskError as exc:  # the others still close; the first failure is raised after
                failed = failed or exc
    if failed is not None:
        raise failed


def _ensure_ray(address: str | None, dashboard: bool = False) -> str | None:
    """Join the Ray cluster at `address`, or with no address start a Ray of this process's own (`_start_local_ray`);
    nothing when Ray is up already. Without token auth (RAY_AUTH_MODE=disabled, unless set): a local Ray is
    reachable from this machine only, and a cluster's token is the cluster's business (cluster.yaml).

    `dashboard=True` starts that local Ray with its dashboard (on 127.0.0.1) and returns the dashboard's URL; a
    cluster's dashboard is the cluster's own, so asking for one with an `address` is a ConfigError, as is asking
    when Ray is already up (its dashboard was decided when it started)."""
    if dashboard and address is not None:
        raise ConfigError("--dashboard starts local Ray with its dashboard; a cluster (--address) has its own "
                          "(see cluster.yaml)", field="dashboard")
    if ray.is_initialized():
        if dashboard:
            raise ConfigError("--dashboard: Ray is already running in this process, without the dashboard",
                              field="dashboard")
        return None
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is None:
        return _start_local_ray(dashboard)
    _check_reachable(address)
    with _on_loopback() if _is_loopback(address) else contextlib.nullcontext():
        # another process's local Ray (a simulation's, at 127.0.0.1:PORT): joined as one of its own processes
        # would, or Ray would swap the loopback address for the machine's outward one and never reach it
        ray.init(address=address, log_to_driver=False, logging_level="WARNING", configure_logging=True)
    return None


def _is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_reachable(address: str) -> None:
    """A `host:port` address must accept a connection: at an address where no cluster answers, `ray.init` waits
    about two minutes and then exits the process. ('auto' and 'ray://' addresses are Ray's to resolve.)"""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"address {address!r}: expected HOST:PORT of a Ray cluster's head (or 'auto')",
                          field="address")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"no Ray cluster answers at {address} ({exc.strerror or exc})", field="address") from None


_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _on_loopback() -> Iterator[None]:
    """Ray's switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER off while Ray starts or joins (see `_start_local_ray`), in
    the environment and in this process's copy of it, then as it was."""
    from ray._private import ray_constants  # Ray's own switch; no public option binds a local Ray to loopback

    saved_env, saved_switch = os.environ.get(_LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_switch
        if saved_env is None:
            os.environ.pop(_LOOPBACK_SWITCH, None)
        else:
            os.environ[_LOOPBACK_SWITCH] = saved_env


def _start_local_ray(dashboard: bool = False) -> str | None:
    """Start a Ray of our own ("local": never a cluster that happens to run on this machine, which plain
    `ray.init()` would join), every socket of it (GCS, raylet, object manager, workers, agents) listening on
    127.0.0.1 only, so no other machine can reach it. No dashboard, unless `dashboard`: then Ray's dashboard
    listens on 127.0.0.1 too (port 8265, or the next free one Ray finds), and its URL is returned.

    Ray binds its servers to loopback when its node address is 127.0.0.1, and takes 127.0.0.1 as the node address
    when its switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is off (its default on macOS and Windows, where Ray runs
    single-machine; `ray._private.services.get_node_ip_address`). `ray.init(_node_ip_address="127.0.0.1")` does not
    do it: Ray replaces a loopback address with the machine's outward one. The switch is read when ray is imported,
    so it is turned off in this process's copy too while Ray starts; Ray's processes inherit the variable. The
    run's Ray ends with this process however it ends (Ray's fate sharing: PR_SET_PDEATHSIG on Linux)."""
    with _on_loopback():
        context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                           log_to_driver=False, logging_level="WARNING", configure_logging=True)
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:   # a Ray that changed how it picks the address: fail closed
        ray.shutdown()
        raise ConfigError(f"the local Ray started on {node_ip}, not on loopback (127.0.0.1), so other machines "
                          f"could reach it without a token; this Ray version ignores {_LOOPBACK_SWITCH}=0. "
                          f"Start Ray with token auth yourself and pass its address")
    return f"http://{context.dashboard_url}" if dashboard and context.dashboard_url else None


def metrics_url() -> str | None:
    """Where this Ray node serves its metrics (`ray.util.metrics` figures among them) in Prometheus's text format,
    or None when Ray is not up or says no port."""
    if not ray.is_initialized():
        return None
    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here and node.get("MetricsExportPort"):
            return f"http://{node.get('NodeManagerAddress', '127.0.0.1')}:{node['MetricsExportPort']}/metrics"
    return None
