"""The Store API a game server's code calls: `GameServer.create_store(...)` and `Store` (blocking) / `store.aio`.

A `GameServer` is one simulated Roblox server: its storage identity (budgets, players) and its key actors. A `Store`
checks arguments, routes each call to the key actor holding the key (`per-server`: the server's one actor;
`per-key`: one actor per loaded key, created by `load` and ended by `unload`), and raises the typed error the actor
answered. Coroutines of one event loop that call the same actor in the same loop turn share one Ray message.
With an in-process world (`World.in_process`) the key hosts run on one background event loop in this process, and
`advance(world, seconds)` moves a manual clock and fires every timer on the way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import uuid
import weakref
from typing import Any, Callable

from lodestore.actors import (Close, Get, HostRequest, IsLoaded, KeyActor, KeyNotLoadedError, KeyRequest,
                              ListVersions, Load, LoadedKeys, Peek, Placement, ProbeLockActive, ReadVersion, Save,
                              Statistics, StoreClosedError, StoreConfig, StoreCounters, StoreStatistics, TxCall, Unload,
                              Update, UpdateImmutable, check_seconds, key_actor_options)
from lodestore.coordinator import TxRequest, coordinator_ref, forget_coordinator, unknown_after_crash
from lodestore.storage import Coalescer, ConfigError, ManualClock, Runtime, Scheduler, Server, World

__all__ = ["GameServer", "AsyncGameServer", "Store", "AsyncStore", "StoreTotals", "advance", "store_options",
           "tx_batcher"]

_STORE_OPTIONS = tuple(f.name for f in dataclasses.fields(StoreConfig) if f.name not in ("name", "template"))

_REQUESTS = {"load": Load, "get": Get, "update": Update, "update_immutable": UpdateImmutable, "save": Save,
             "unload": Unload, "close": Close, "peek": Peek, "probe_lock_active": ProbeLockActive,
             "list_versions": ListVersions, "read_version": ReadVersion, "is_loaded": IsLoaded,
             "loaded_keys": LoadedKeys, "statistics": Statistics}


def _request(op: str, store: str, key: Any = None, args: tuple = ()) -> HostRequest:
    """The key host request of Store call `op` (a `KeyRequest` names the key; `args` are its other fields)."""
    kind = _REQUESTS[op]
    return kind(store, key, *args) if issubclass(kind, KeyRequest) else kind(store, *args)


# ----------------------------------------------------------------------------------------- links to hosts

class _Link:
    """One key actor as a GameServer reaches it, through the world's runtime. Coroutines' requests of one loop turn
    travel in one message."""

    def __init__(self, runtime: Runtime, ref: Any) -> None:
        self.runtime = runtime
        self.ref = ref
        self._batcher = Coalescer(lambda requests: runtime.acall(ref, "handle", requests), self._failed)

    def _failed(self, exc: BaseException) -> BaseException:
        return _actor_gone(exc) if isinstance(exc, self.runtime.failures) else exc

    def _blocking(self, method: str, *args: Any) -> Any:
        try:
            return self.runtime.call(self.ref, method, *args)
        except self.runtime.failures as exc:
            raise _actor_gone(exc) from exc

    def call(self, requests: list[HostRequest]) -> list[Any]:
        return self._blocking("handle", requests)

    async def acall(self, requests: list[HostRequest]) -> list[Any]:
        """Requests of one loop turn travel together: the first schedules the flush, the rest join it."""
        if len(requests) == 1:
            return [await self._batcher.submit(requests[0])]
        return list(await asyncio.gather(*(self._batcher.submit(r) for r in requests)))

    def open_store(self, config: StoreConfig) -> None:
        self._blocking("open_store", config)

    async def aopen_store(self, config: StoreConfig) -> None:
        try:
            await self.runtime.acall(self.ref, "open_store", config)
        except self.runtime.failures as exc:
            raise _actor_gone(exc) from exc

    def shutdown(self) -> None:
        try:
            self.runtime.call(self.ref, "shutdown")
        finally:
            self.runtime.kill(self.ref)

    async def ashutdown(self) -> None:
        try:
            await self.runtime.acall(self.ref, "shutdown")
        finally:
            self.runtime.kill(self.ref)

    async def acall_method(self, method: str, *args: Any) -> Any:
        try:
            return await self.runtime.acall(self.ref, method, *args)
        except self.runtime.failures as exc:
            raise _actor_gone(exc) from exc

    def crash(self) -> None:
        self.runtime.kill(self.ref)


def _coordinator_gone(world: World) -> Callable[[BaseException], BaseException]:
    def gone(exc: BaseException) -> BaseException:
        if isinstance(exc, world.runtime.failures):
            forget_coordinator(world)
            return unknown_after_crash(exc)
        return exc
    return gone


_tx_batchers: "weakref.WeakKeyDictionary[Runtime, dict[tuple, Coalescer]]" = weakref.WeakKeyDictionary()


def tx_batcher(world: World) -> Coalescer:
    """One loop turn's transactions of this process go to the world's coordinator in one message; `submit(req)`
    answers the result or the error as a value. Kept per runtime (a world's lifetime in process: a later world of
    the same name and clock must never reach this one's coordinator)."""
    kept = _tx_batchers.setdefault(world.runtime, {})
    key = (world.name, repr(world.clock))
    batcher = kept.get(key)
    if batcher is None:
        batcher = kept[key] = Coalescer(
            lambda reqs: world.runtime.acall(coordinator_ref(world), "run_many", reqs), _coordinator_gone(world))
    return batcher


def _actor_gone(exc: BaseException) -> StoreClosedError:
    return StoreClosedError(f"Store is closed: the key actor is gone ({type(exc).__name__}); its sessions ended "
                            f"with it and their locks expire by TTL")


def _raise_or_return(reply: Any) -> Any:
    if isinstance(reply, BaseException):
        raise reply
    return reply


# ---------------------------------------------------------------------------------------------- server

class GameServer:
    """One simulated Roblox game server (a JobId) with its players and its key actors.

    >>> server = GameServer(world, players=10)
    >>> players = server.create_store("players", template={"coins": 0})
    >>> players.load("user_1")
    >>> players.update("user_1", lambda data: data.__setitem__("coins", data["coins"] + 5) or True)
    True
    >>> server.shutdown()              # BindToClose: final saves at emergency priority, locks released

    `players=None` leaves the server unregistered with the world's services until its first request or
    `set_players` (what `GameServer.create`, the coroutine twin, builds on). Coroutines are on `server.aio`.
    """

    def __init__(self, world: World, job_id: str | None = None, players: int | None = 0,
                 runtime: Runtime | None = None) -> None:
        if not isinstance(world, World):
            raise ConfigError(f"world must be a storage.World, got {type(world).__name__}")
        self.world = world
        self.job_id = job_id if job_id is not None else uuid.uuid4().hex[:12]
        self._storage = world.server(self.job_id, players) if players is not None else Server(world, self.job_id)
        self.runtime = runtime if runtime is not None else world.runtime
        self._host_link: Any = None
        self._stores: dict[str, Store] = {}
        self._down = False
        self._shutting_down = False
        self.aio = AsyncGameServer(self)

    @classmethod
    async def create(cls, world: World, job_id: str | None = None, players: int = 0,
                     runtime: Runtime | None = None) -> "GameServer":
        """`GameServer(...)` from a coroutine: the server registers its players with the world's services without
        blocking the event loop."""
        server = cls(world, job_id, None, runtime)
        await server._storage.aio.set_players(players)
        return server

    def __repr__(self) -> str:
        return f"GameServer({self.job_id!r}, world={self.world.name!r})"

    @property
    def players(self) -> int:
        return self._storage.players

    @property
    def storage(self) -> Server:
        """This server's storage identity: its raw `datastores` and `memorystores` clients (budgeted as this server),
        for data kept outside session-locked stores (a guild's counter written with plain `update`)."""
        return self._storage

    def set_players(self, players: int) -> None:
        """Change the player count; budgets and MemoryStore quotas follow. After `shutdown` (or `crash`) it raises
        StoreClosedError and changes nothing: a server that has left the world's budgets never joins them again."""
        self._check_up()
        self._storage.set_players(players)

    def create_store(self, name: str, template: Any, **options: Any) -> "Store":
        """A store on this server. Options (all keyword): schema, migrations, import_legacy_data, changed_callbacks,
        log_callback, lock_callback, on_lock_lost, metadata_template, autosave_interval, lock_ttl, lock_refresh,
        lock_wait, lock_steal_after, retry_attempts, placement ("per-server", the default, or "per-key"). See
        `StoreConfig`; `store_options(config)` gives a config's options back."""
        config = self._new_config(name, template, options)
        self._server_link().open_store(config)
        return self._add_store(config)

    def _new_config(self, name: str, template: Any, options: dict) -> StoreConfig:
        self._check_up()
        unknown = sorted(set(options) - set(_STORE_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown store option {unknown[0]!r}; known: {', '.join(_STORE_OPTIONS)}")
        config = StoreConfig(name=name, template=template, **options)
        existing = self._stores.get(config.name)
        if existing is not None and not existing._closed:
            raise ConfigError(f"store {config.name!r} is already open on server {self.job_id!r}")
        return config

    def _add_store(self, config: StoreConfig) -> "Store":
        store = self._stores[config.name] = Store(self, config)
        return store

    def stall_locks(self, seconds: float) -> None:
        """Fault injection: for `seconds` (0 to `actors.MAX_LOCK_TTL_S`) of simulated time this server's key actors
        neither refresh their locks nor notice them running out (a long pause of the server's process); see
        `KeyHost.stall_locks`. Same steps as `await server.aio.stall_locks(seconds)`."""
        self.runtime.block(self.aio.stall_locks(seconds))

    def shutdown(self) -> None:
        """BindToClose: the shutdown budget boost, then every store closes (final saves at emergency priority,
        locks released), then the key actors end. The same steps as `await server.aio.shutdown()`, run to their
        end on the server's runtime."""
        if not self._down:
            self.runtime.block(self.aio.shutdown())

    def crash(self) -> None:
        """Die now, like a crashed server: nothing is saved, no lock is released (they expire by TTL)."""
        self._down = True
        for store in self._stores.values():
            for link in store._key_links.values():
                link.crash()
            store._key_links.clear()
            store._closed = True
        if self._host_link is not None:
            self._host_link.crash()

    def memory_bytes(self) -> int:
        """Resident memory of the process holding this server's per-server key actor (Linux), for benchmarks."""
        self._check_up()
        return self._server_link()._blocking("memory_bytes")

    # --------------------------------------------------------------------------------------- plumbing

    def _check_up(self) -> None:
        """Refuse anything but reading figures once the server has shut down or crashed."""
        if self._down:
            raise StoreClosedError(f"Store is closed: server {self.job_id!r} has shut down")

    def _links(self) -> list[_Link]:
        """Every key actor of this server that is up: the server's own, and per-key placement's."""
        links = [self._host_link] if self._host_link is not None else []
        return links + [link for store in self._stores.values() for link in store._key_links.values()]

    def _tx_link(self, store_name: str, key: str) -> _Link:
        """The key actor a coordinator's call for `key` goes to: the one holding its session, else the server's
        own (which answers "not loaded", or ABSENT to a finish)."""
        store = self._stores.get(store_name)
        link = store._key_links.get(key) if store is not None else None
        return link if link is not None else self._server_link()

    def _new_link(self, configs: tuple[StoreConfig, ...]) -> _Link:
        ref = self.runtime.spawn(KeyActor, self.world, self.job_id, configs, **key_actor_options(self.world))
        return _Link(self.runtime, ref)

    def _server_link(self) -> Any:
        if self._host_link is None:
            self._host_link = self._new_link(())
        return self._host_link


class AsyncGameServer:
    """`GameServer`'s coroutines (`server.aio`), for game code on an event loop: natively async (no thread), so an
    in-process world's manual clock only moves when nothing on the loop can run."""

    def __init__(self, server: GameServer) -> None:
        self._server = server

    async def create_store(self, name: str, template: Any, **options: Any) -> "Store":
        """Like `GameServer.create_store`."""
        server = self._server
        config = server._new_config(name, template, options)
        await server._server_link().aopen_store(config)
        return server._add_store(config)

    async def set_players(self, players: int) -> None:
        """Like `GameServer.set_players`."""
        self._server._check_up()
        await self._server._storage.aio.set_players(players)

    async def begin_shutdown(self) -> None:
        """BindToClose begins: the server's budgets get the shutdown boost (once). Game code then saves what it must;
        `shutdown()` ends the server. Delivered twice: the second does nothing."""
        server = self._server
        if server._shutting_down or server._down:
            return
        server._shutting_down = True
        await server._storage.aio.begin_shutdown()

    async def shutdown(self) -> None:
        """Like `GameServer.shutdown`: the boost (unless `begin_shutdown` gave it), every store closes (final saves
        at emergency priority, locks released), the key actors end, the server leaves the world's budgets."""
        server = self._server
        if server._down:
            return
        await self.begin_shutdown()
        server._down = True
        try:
            for store in server._stores.values():
                for link in list(store._key_links.values()):
                    try:
                        await link.acall_method("shutdown")
                    finally:
                        await store._aend_link(link)
                store._key_links.clear()
                store._closed = True
            link = server._host_link
            if link is not None:
                try:
                    await link.acall_method("shutdown")
                    for store in server._stores.values():
                        store._keep_final((await link.acall([Statistics(store.name)]))[0])
                finally:
                    link.crash()
        finally:
            await server._storage.aio.close()

    async def stall_locks(self, seconds: float) -> None:
        """Like `GameServer.stall_locks`."""
        self._server._check_up()
        check_seconds("seconds", seconds, minimum=0)
        await asyncio.gather(*(link.acall_method("stall_locks", seconds) for link in self._server._links()))

    async def tx_calls(self, calls: list[TxCall]) -> list[Any]:
        """A coordinator's participant calls for this server: each call's keys go to the key actor holding them
        (per-key placement splits a call by key). Each answer is {key: result or exception}, as `KeyHost.tx_calls`
        answers; a key actor that is gone answers StoreClosedError for its keys. Idempotent per transaction id."""
        server = self._server

        async def one(call: TxCall) -> Any:
            groups: dict[int, tuple[_Link, list[str]]] = {}
            for key in call.keys:
                link = server._tx_link(call.store, key)
                groups.setdefault(id(link), (link, []))[1].append(key)
            merged: dict = {}
            for link, keys in groups.values():
                try:
                    reply = (await link.acall_method("tx_calls", [call.only(keys)]))[0]
                except Exception as exc:
                    reply = exc
                if isinstance(reply, BaseException):
                    reply = {k: reply for k in keys}
                merged.update(reply)
            return merged

        return list(await asyncio.gather(*(one(c) for c in calls)))


def store_options(config: StoreConfig) -> dict[str, Any]:
    """The `create_store` options that make `config` again: `create_store(config.name, config.template,
    **store_options(config))`."""
    return {name: getattr(config, name) for name in _STORE_OPTIONS}


@dataclasses.dataclass(frozen=True)
class StoreTotals:
    """One store's figures over its whole life on one server, the key actors that have ended included."""

    counters: StoreCounters        # what its sessions did (loads, saves, lock waits, ...), summed over key actors
    throttled: int                 # requests its key actors' budget gates throttled
    key_actors: int                # key actors that have held its sessions (per-key: one per load)


def advance(world: World, seconds: float) -> None:
    """In-process world with a ManualClock: move simulated time `seconds` forward, firing every timer on the way
    (lock refreshes and deadlines, autosaves, backoff waits) and letting what they start finish."""
    if not isinstance(world.clock, ManualClock):
        raise ConfigError("advance is for in-process worlds with a ManualClock; a Ray world's clock runs by itself")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:  # NaN too
        raise ConfigError(f"advance: seconds must be a finite number >= 0, got {seconds!r}", field="seconds")

    async def move() -> None:
        await Scheduler.for_loop(world.clock).advance(seconds)
    world.runtime.block(move())


# ----------------------------------------------------------------------------------------------- store

class Store:
    """A session-locked store on one game server (Lyra's Store). Blocking methods; `self.aio` has coroutines."""

    def __init__(self, server: GameServer, config: StoreConfig) -> None:
        self.server = server
        self.config = config
        self.name = config.name
        self._closed = False
        self._key_links: dict[str, Any] = {}   # per-key placement: the actor holding each loaded key
        self._ended_counters: dict[str, int] = {}   # final counters of the key actors that have ended
        self._ended_throttled = 0
        self._key_actors = 0 if config.placement is Placement.PER_KEY else 1
        self.aio = AsyncStore(self)

    def __repr__(self) -> str:
        return f"Store({self.name!r}, server={self.server.job_id!r}, placement={self.config.placement.value!r})"

    def load(self, key: str, user_ids: Any = None) -> None:
        """Lock the key for this server and read its data (migrated, schema-checked). Waits while another server
        holds the lock, up to `lock_wait`. Loading a loaded key does nothing."""
        return self._call("load", key, (user_ids,))

    def get(self, key: str) -> Any:
        """A deep copy of the key's data."""
        return self._call("get", key)

    def update(self, key: str, fn: Callable[[Any], bool]) -> bool:
        """`fn(data)` changes a copy in place and returns True to commit it, False to drop it."""
        return self._call("update", key, (fn,))

    def update_immutable(self, key: str, fn: Callable[[Any], Any]) -> bool:
        """`fn(frozen_data)` returns new data to commit, or False to drop it."""
        return self._call("update_immutable", key, (fn,))

    def save(self, key: str) -> bool:
        """Write the key's data now, changed or not (before granting a purchase, say)."""
        return self._call("save", key)

    def unload(self, key: str) -> bool:
        """Final save (when changed) and lock release. False when the key was not loaded."""
        return self._call("unload", key)

    def close(self) -> None:
        """Unload every key (final saves at emergency priority); later calls raise "Store is closed"."""
        return self.server.runtime.block(self._aclose())

    async def _aclose(self) -> None:
        self._closed = True
        for key, link in list(self._key_links.items()):
            _raise_or_return((await link.acall([Close(self.name)]))[0])
            self._key_links.pop(key, None)
            await self._aend_link(link)
        return _raise_or_return((await self.server._server_link().acall([Close(self.name)]))[0])

    def totals(self) -> StoreTotals:
        """This store's figures over its life on this server: the live key actors' and the ended ones'."""
        live = self.statistics() if not self._gone() else []
        return self._totals(live)

    def _gone(self) -> bool:
        return self.server._down or (self._closed and self.config.placement is Placement.PER_KEY)

    def _totals(self, live: list[StoreStatistics]) -> StoreTotals:
        counters = dict(self._ended_counters)
        throttled = self._ended_throttled
        for stats in live:
            for name, value in vars(stats.counters).items():
                counters[name] = counters.get(name, 0) + value
            throttled += stats.gate.throttled if stats.gate is not None else 0
        return StoreTotals(StoreCounters(**counters), throttled, self._key_actors)

    def _keep_final(self, stats: Any) -> None:
        """Add an ending key actor's last snapshot to the ended ones' figures."""
        if not isinstance(stats, StoreStatistics):
            return   # it could not answer: what it counted since is lost with it
        for name, value in vars(stats.counters).items():
            self._ended_counters[name] = self._ended_counters.get(name, 0) + value
        self._ended_throttled += stats.gate.throttled if stats.gate is not None else 0

    async def _aend_link(self, link: _Link) -> None:
        """A per-key actor's only session has ended: keep its figures, then end it (nothing is left to save)."""
        try:
            self._keep_final((await link.acall([Statistics(self.name)]))[0])
        except StoreClosedError:
            pass
        link.crash()

    def tx(self, keys: Any, fn: Callable[[dict], bool]) -> bool:
        """A transaction over loaded keys: `fn({key: data})` changes the copies in place and returns True to commit
        them all, or False to abort. All of it or none of it is ever visible. Raises TxAbortedError (nothing
        happened; safe to retry), TxUnknownError, KeysChangedError, SchemaError or TransformError."""
        return self._run_tx(keys, fn, immutable=False)

    def tx_immutable(self, keys: Any, fn: Callable[[dict], Any]) -> bool:
        """Like `tx`, with frozen data: `fn` returns the new {key: data}, or False to abort."""
        return self._run_tx(keys, fn, immutable=True)

    def _tx_request(self, keys: Any, fn: Any, immutable: bool) -> Any:
        if isinstance(keys, str) or not isinstance(keys, (list, tuple)) or not keys:
            raise TypeError(f"tx keys must be a non-empty list of key names, got {keys!r:.80}")
        if len(set(keys)) != len(keys):
            raise ValueError(f"tx keys must not repeat, got {list(keys)!r:.80}")
        if not callable(fn):
            raise TypeError(f"tx needs a callable transform, got {type(fn).__name__}")
        participants = {}
        for key in keys:
            link, _ = self._route("get", key)
            participants[key] = link.ref
        return TxRequest(self.name, tuple(keys), fn, immutable, self.config.schema, participants,
                         self.config.tx_timeout)

    def _run_tx(self, keys: Any, fn: Any, immutable: bool) -> bool:
        req = self._tx_request(keys, fn, immutable)
        world = self.server.world
        try:
            reply = world.runtime.call(coordinator_ref(world), "run", req)
        except world.runtime.failures as exc:
            raise _coordinator_gone(world)(exc) from exc
        return _raise_or_return(reply)

    async def _arun_tx(self, keys: Any, fn: Any, immutable: bool) -> bool:
        req = self._tx_request(keys, fn, immutable)
        return _raise_or_return(await tx_batcher(self.server.world).submit(req))

    def peek(self, key: str) -> Any:
        """The stored data of a key, without locking it (transactions resolved), or None."""
        return self._call("peek", key)

    def probe_lock_active(self, key: str) -> bool:
        """Whether some session holds the key's lock now."""
        return self._call("probe_lock_active", key)

    def list_versions(self, key: str, **kwargs: Any) -> Any:
        """A page of the key's record versions (DataStore.list_versions arguments)."""
        return self._call("list_versions", key, (kwargs,))

    def read_version(self, key: str, version: str) -> Any:
        """The data stored in one version of the key's record, or None."""
        return self._call("read_version", key, (version,))

    def is_loaded(self, key: str) -> bool:
        return self._call("is_loaded", key)

    def loaded_keys(self) -> list[str]:
        if self.config.placement is Placement.PER_KEY:
            self._route("loaded_keys", None)
            return sorted(key for key, link in list(self._key_links.items())
                          if _raise_or_return(link.call([IsLoaded(self.name, key)])[0]))
        return sorted(self._call("loaded_keys", None))

    def statistics(self) -> list[StoreStatistics]:
        """One snapshot per key actor holding this store's sessions."""
        return self._gather("statistics")

    # ------------------------------------------------------------------------------------------ routing

    def _route(self, op: str, key: Any) -> tuple[Any, bool]:
        """(link, is a per-key link created for this call)."""
        if self._closed or self.server._down:
            raise StoreClosedError(f"Store is closed: store {self.name!r}")
        if self.config.placement is Placement.PER_SERVER or op in _SESSIONLESS:
            return self.server._server_link(), False
        link = self._key_links.get(key) if isinstance(key, str) else None
        if link is not None:
            return link, False
        if op == "load":
            link = self._key_links[key] = self.server._new_link((self.config,))
            self._key_actors += 1
            return link, True
        if op in ("unload", "is_loaded"):
            return None, False  # no actor holds it: the answer is False
        raise KeyNotLoadedError(f"Key not loaded: key {key!r} of store {self.name!r}")

    def _after(self, op: str, key: Any, link: Any, created: bool, reply: Any) -> bool:
        """Per-key placement: a key actor ends with its session (unloaded, or a load that failed). True when the
        caller must end `link`."""
        if self.config.placement is not Placement.PER_KEY or op not in ("load", "unload"):
            return False
        if (op == "unload" and not isinstance(reply, BaseException)) or \
                (op == "load" and created and isinstance(reply, BaseException)):
            if self._key_links.get(key) is link:
                del self._key_links[key]
            return True
        return False

    def _call(self, op: str, key: Any, args: tuple = ()) -> Any:
        link, created = self._route(op, key)
        if link is None:
            return False
        reply = link.call([_request(op, self.name, key, args)])[0]
        if self._after(op, key, link, created, reply):
            self.server.runtime.block(self._aend_link(link))
        return _raise_or_return(reply)

    async def _acall(self, op: str, key: Any, args: tuple = ()) -> Any:
        link, created = self._route(op, key)
        if link is None:
            return False
        reply = (await link.acall([_request(op, self.name, key, args)]))[0]
        if self._after(op, key, link, created, reply):
            await self._aend_link(link)
        return _raise_or_return(reply)

    def _gather(self, op: str) -> list:
        if self.config.placement is Placement.PER_SERVER:
            return [_raise_or_return(self.server._server_link().call([_request(op, self.name)])[0])]
        return [_raise_or_return(link.call([_request(op, self.name)])[0]) for link in list(self._key_links.values())]

    async def _agather(self, op: str) -> list:
        if self.config.placement is Placement.PER_SERVER:
            return [_raise_or_return((await self.server._server_link().acall([_request(op, self.name)]))[0])]
        links = list(self._key_links.values())
        replies = await asyncio.gather(*(link.acall([_request(op, self.name)]) for link in links))
        return [_raise_or_return(reply[0]) for reply in replies]

    async def _aloaded_keys(self) -> list[str]:
        if self.config.placement is Placement.PER_KEY:
            self._route("loaded_keys", None)
            items = list(self._key_links.items())
            replies = await asyncio.gather(*(link.acall([IsLoaded(self.name, key)]) for key, link in items))
            return sorted(key for (key, _), reply in zip(items, replies) if _raise_or_return(reply[0]))
        return sorted(await self._acall("loaded_keys", None))


_SESSIONLESS = frozenset({"peek", "probe_lock_active", "list_versions", "read_version", "close", "loaded_keys"})


class AsyncStore:
    """The asyncio flavour of `Store`: the same methods, as coroutines."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def load(self, key: str, user_ids: Any = None) -> None:
        return await self._store._acall("load", key, (user_ids,))

    async def get(self, key: str) -> Any:
        return await self._store._acall("get", key)

    async def update(self, key: str, fn: Callable[[Any], bool]) -> bool:
        return await self._store._acall("update", key, (fn,))

    async def update_immutable(self, key: str, fn: Callable[[Any], Any]) -> bool:
        return await self._store._acall("update_immutable", key, (fn,))

    async def save(self, key: str) -> bool:
        return await self._store._acall("save", key)

    async def unload(self, key: str) -> bool:
        return await self._store._acall("unload", key)

    async def close(self) -> None:
        return await self._store._aclose()

    async def tx(self, keys: Any, fn: Callable[[dict], bool]) -> bool:
        return await self._store._arun_tx(keys, fn, immutable=False)

    async def tx_immutable(self, keys: Any, fn: Callable[[dict], Any]) -> bool:
        return await self._store._arun_tx(keys, fn, immutable=True)

    async def peek(self, key: str) -> Any:
        return await self._store._acall("peek", key)

    async def probe_lock_active(self, key: str) -> bool:
        return await self._store._acall("probe_lock_active", key)

    async def list_versions(self, key: str, **kwargs: Any) -> Any:
        return await self._store._acall("list_versions", key, (kwargs,))

    async def read_version(self, key: str, version: str) -> Any:
        return await self._store._acall("read_version", key, (version,))

    async def is_loaded(self, key: str) -> bool:
        return await self._store._acall("is_loaded", key)

    async def loaded_keys(self) -> list[str]:
        return await self._store._aloaded_keys()

    async def statistics(self) -> list[StoreStatistics]:
        return await self._store._agather("statistics")

    async def totals(self) -> StoreTotals:
        store = self._store
        return store._totals(await store._agather("statistics") if not store._gone() else [])
