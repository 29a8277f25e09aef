"""A world: one Roblox experience's emulated cloud, and the simulated game servers that use it.

`World.start` starts (or joins) Ray and the world's named actors in a Ray namespace of its own; `World.connect`
attaches to a running world from any process of the cluster; `World.in_process` builds the same world inside this
process, with no Ray, for tests and scripts (a manual clock fits there). `world.server(job_id, players=n)` is one
simulated game server's identity and its clients. This module wires things together and owns no Roblox rules.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
import uuid
from typing import Any

import ray

from lodestore.storage._budget import bucket_map
from lodestore.storage._clock import Clock, SimClock
from lodestore.storage._errors import ConfigError, DataStoreError, ServerClosedError
from lodestore.storage._faults import FaultConfig
from lodestore.storage._placement import STORAGE_PLACEMENTS, storage_nodes
from lodestore.storage._runtime import ACTOR_FAILURES, LocalRuntime, RayRuntime, Runtime
from lodestore.storage._shards import (BUDGET_NAME, MEMORYSTORE_NAME, BudgetServiceActor, DataStoreShardActor,
                                      MemoryStoreShardActor, ShardStatistics, WorldInfo, actor_options, datastore_name,
                                      namespace_of)
from lodestore.storage._throttle import BudgetGate, OpenGate
from lodestore.storage._transport import DATASTORE, MEMORYSTORE, Transport
from lodestore.storage.datastore._client import DataStoreService
from lodestore.storage.memorystore._client import MemoryStoreService
from lodestore.storage.messaging._client import MessagingService
from lodestore.storage.messaging._engine import MAX_CONCURRENCY, MESSAGING, MESSAGING_NAME, MessagingActor
from lodestore.storage.messaging._messages import MessagingStatistics, check_topic, encode_message

__all__ = ["World", "AsyncWorld", "Server", "AsyncServer"]

_WORLD_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
BACKENDS = ("sqlite", "memory")


BUDGET_PROFILES = ("current", "legacy", None)


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
        """Attach to a running world (from a driver, a Ray task or an actor of the same cluster)."""
        _check_config(name, "memory", 1, None)
        _ensure_ray(address)
        namespace = namespace_of(name)
        try:
            first = ray.get_actor(datastore_name(0), namespace=namespace)
        except ValueError:
            raise ConfigError(f"no running world named {name!r}; start it with World.start({name!r})") from None
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
        """Change what goes wrong, from now on, on every shard."""
        _check_config(self.name, self.info.backend, self.info.shards, faults)
        for shard in self._shards(DATASTORE):
            self._call(shard, "set_faults", faults)
        self._call(self._shards(MESSAGING)[0], "set_faults", faults)

    def statistics(self) -> list[ShardStatistics]:
        """One frozen snapshot per DataStore shard, in shard order (see `ShardStatistics`)."""
        return [self._call(s, "statistics") for s in self._shards(DATASTORE)]

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

    # -- DataStore: budgets and storage (open_cloud, statistics above)

    # -- DataStore: data stores' lifecycle, snapshots and erasure

    # -- MemoryStore

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

    # -- DataStore: data stores' lifecycle, snapshots and erasure

    # -- MemoryStore

    # -- MessagingService

    async def publish(self, topic: str, message: Any) -> None:
        w = self._world
        topic, text = check_topic(topic), encode_message(message)
        await w._acall(w._shards(MESSAGING)[0], "publish", None, 0, topic, text)

    async def messaging_statistics(self) -> MessagingStatistics:
        w = self._world
        return await w._acall(w._shards(MESSAGING)[0], "statistics")


def _check_players(players: Any) -> None:
    if isinstance(players, bool) or not isinstance(players, int) or players < 0:
        raise ConfigError(f"players must be an int >= 0, got {players!r}")


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


class Server:
    """One simulated Roblox game server (a JobId) with `players` players, and its service clients.

    `budgeted=False` makes a client outside every game server's request budget (an operator's tool, or a
    simulator's verifier reading the final data); game servers are always budgeted when the world has budgets."""

    def __init__(self, world: World, job_id: str, budgeted: bool = True) -> None:
        self.world = world
        self.job_id = job_id
        self.players = 0
        self.closed = False
        link = _BudgetLink(world, self) if world._budget is not None and budgeted else None
        gate = (BudgetGate(link, world.clock, job_id, buckets=bucket_map(world.info.budget)) if link is not None
                else OpenGate())
        self.datastores = DataStoreService(world._transport, world.clock, gate, job_id, budget=link,
                                           shared_storage=world.info.shared_file)
        self.memorystores = MemoryStoreService(world._transport, world.clock, OpenGate(), job_id)
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


def _ensure_ray(address: str | None) -> None:
    """Join the Ray cluster at `address`, or with no address start a Ray of this process's own (`_start_local_ray`);
    nothing when Ray is up already. Without token auth (RAY_AUTH_MODE=disabled, unless set): a local Ray is
    reachable from this machine only, and a cluster's token is the cluster's business (cluster.yaml)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is None:
        _start_local_ray()
    else:
        _check_reachable(address)
        ray.init(address=address, log_to_driver=False, logging_level="WARNING", configure_logging=True)


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


def _start_local_ray() -> None:
    """Start a Ray of our own ("local": never a cluster that happens to run on this machine, which plain
    `ray.init()` would join), every socket of it (GCS, raylet, object manager, workers, agents) listening on
    127.0.0.1 only, so no other machine can reach it; no dashboard.

    Ray binds its servers to loopback when its node address is 127.0.0.1, and takes 127.0.0.1 as the node address
    when its switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is off (its default on macOS and Windows, where Ray runs
    single-machine; `ray._private.services.get_node_ip_address`). `ray.init(_node_ip_address="127.0.0.1")` does not
    do it: Ray replaces a loopback address with the machine's outward one. The switch is read when ray is imported,
    so it is turned off in this process's copy too while Ray starts; Ray's processes inherit the variable. The
    run's Ray ends with this process however it ends (Ray's fate sharing: PR_SET_PDEATHSIG on Linux)."""
    from ray._private import ray_constants  # Ray's own switch; no public option binds a local Ray to loopback

    saved_env, saved_switch = os.environ.get(_LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 configure_logging=True)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_switch
        if saved_env is None:
            os.environ.pop(_LOOPBACK_SWITCH, None)
        else:
            os.environ[_LOOPBACK_SWITCH] = saved_env
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:   # a Ray that changed how it picks the address: fail closed
        ray.shutdown()
        raise ConfigError(f"the local Ray started on {node_ip}, not on loopback (127.0.0.1), so other machines "
                          f"could reach it without a token; this Ray version ignores {_LOOPBACK_SWITCH}=0. "
                          f"Start Ray with token auth yourself and pass its address")
