"""A key host: every session one key actor holds, for every store, with one timer scheduler.

The same class runs inside a Ray actor (`per-server`: all keys of a simulated game server; `per-key`: one key) and
in this process for tests and scripts. `handle(requests)` takes a batch of `HostRequest`s (one Ray message) and
answers a list in the same order, each a result or the typed exception to raise in the caller; requests for
different keys run concurrently, requests for one key in order. `tx_calls(calls)` does the same for a coordinator's
`TxCall`s. Each request type has one handler, found by the request's type. It is plain asyncio: no Ray here.

Delivered twice (Ray may retry a message): `Load` of a loaded key and `Unload` of an unloaded key are no-ops,
`Update` and `UpdateImmutable` run the transform again (as with any repeated call), `Save` writes again; the
transaction calls are idempotent per transaction id (see `actors._participant`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from lodestore.actors._config import StoreConfig, check_seconds
from lodestore.actors._errors import KeyNotLoadedError, LoadInProgressError, StoreClosedError
from lodestore.actors._lease import lock_active
from lodestore.actors._migrations import migrate
from lodestore.actors._requests import (Close, Get, HostRequest, IsLoaded, ListVersions, Load, LoadedKeys, Peek,
                                        ProbeLockActive, ReadVersion, Save, Statistics, TxCall, TxFinish, TxPrepare,
                                        TxWrite, Unload, Update, UpdateImmutable)
from lodestore.actors._session import Session, SessionState, StoreCounters, StoreRuntime
from lodestore.actors._txn import ABSENT
from lodestore.storage import (ConfigError, GateStatistics, LodestoreError, Scheduler, Server, check_key, check_user_ids,
                               emergency)

__all__ = ["KeyHost", "StoreStatistics"]

_HANDLERS: dict[type, Callable[..., Awaitable[Any]]] = {}      # HostRequest type -> KeyHost method
_TX_HANDLERS: dict[type, Callable[..., Awaitable[Any]]] = {}   # TxCall type -> KeyHost method


def _answers(table: dict, kind: type) -> Callable:
    """Register the decorated method as the handler of requests of type `kind`."""
    def register(method: Callable) -> Callable:
        table[kind] = method
        return method
    return register


@dataclass(frozen=True)
class StoreStatistics:
    """A snapshot of one store on one host: sessions by state, what they did, timers pending."""

    store: str
    sessions: dict = field(default_factory=dict)
    counters: StoreCounters = field(default_factory=StoreCounters)
    timers: int = 0
    closed: bool = False
    gate: GateStatistics | None = None   # the key actor's DataStore budget gate (shared by its stores)
    errors: tuple[str, ...] = ()         # the key actor's latest background failures (no caller to tell)


class KeyHost:
    """The sessions of one key actor. Build it inside a running event loop's thread (it owns asyncio objects)."""

    def __init__(self, world: Any, job_id: str, scheduler: Scheduler | None = None, *,
                 budgeted: bool = True) -> None:
        self.server = Server(world, job_id, budgeted)
        self.scheduler = scheduler if scheduler is not None else Scheduler(world.clock)
        if self.scheduler.on_error is None:
            self.scheduler.on_error = self._background_error
        self.stores: dict[str, StoreRuntime] = {}
        self.errors: list[str] = []  # background failures with no caller to tell (kept short)

    def _background_error(self, exc: BaseException) -> None:
        self.errors = (self.errors + [f"{type(exc).__name__}: {exc}"])[-20:]

    def open_store(self, config: StoreConfig) -> None:
        """Make `config`'s store available here. Idempotent; a closed store of that name is opened afresh."""
        if not isinstance(config, StoreConfig):
            raise ConfigError(f"open_store needs a StoreConfig, got {type(config).__name__}")
        current = self.stores.get(config.name)
        if current is None or current.closed:
            self.stores[config.name] = StoreRuntime(config, self.server, self.scheduler)

    async def handle(self, requests: list[HostRequest]) -> list[Any]:
        """Answer a batch: each entry is the call's result, or the LodestoreError (or other exception) it raised."""
        if len(requests) == 1:
            return [await self._answer(requests[0])]
        return await asyncio.gather(*(self._answer(r) for r in requests))

    async def _answer(self, request: HostRequest) -> Any:
        try:
            return await self.call(request)
        except Exception as exc:  # travels back as a value; the client raises it
            return exc

    async def call(self, request: HostRequest) -> Any:
        """Answer one request (raising what it fails with).

        >>> await host.call(Load("players", "user_1"))
        >>> await host.call(Update("players", "user_1", lambda data: data.update(coins=1) or True))
        True
        """
        handler = _HANDLERS.get(type(request))
        if handler is None:
            raise ConfigError(f"a key host answers the request types of lodestore.actors (Load, Get, Update, ...); "
                              f"got a {type(request).__name__}: {request!r:.80}")
        rt = self.stores.get(request.store)
        if rt is None:
            raise StoreClosedError(f"Store is closed: store {request.store!r} is not open on this server")
        return await handler(self, rt, request)

    # ------------------------------------------------------------------------------------------ operations

    @_answers(_HANDLERS, Get)
    async def _get(self, rt: StoreRuntime, request: Get) -> Any:
        return await _session(rt, request.key).get()

    @_answers(_HANDLERS, Update)
    async def _update(self, rt: StoreRuntime, request: Update) -> bool:
        return await _session(rt, request.key).update(request.fn)

    @_answers(_HANDLERS, UpdateImmutable)
    async def _update_immutable(self, rt: StoreRuntime, request: UpdateImmutable) -> bool:
        return await _session(rt, request.key).update_immutable(request.fn)

    @_answers(_HANDLERS, Save)
    async def _save(self, rt: StoreRuntime, request: Save) -> bool:
        return await _session(rt, request.key).save(force=True)

    @_answers(_HANDLERS, Load)
    async def _load(self, rt: StoreRuntime, request: Load) -> None:
        key = request.key
        check_key(key)
        uids = check_user_ids(request.user_ids)
        while True:
            if rt.closed:
                raise _store_closed(rt)
            session = rt.sessions.get(key)
            if session is None:
                break
            if session.state is SessionState.LOADING:
                raise LoadInProgressError(f"Load already in progress: key {key!r} of store {rt.config.name!r}")
            if session.state is SessionState.CLOSING:
                await asyncio.shield(session.closed)  # load after the unload: it reads what the unload saved
                continue
            return None  # already loaded by this server
        session = rt.sessions[key] = Session(rt, key, uids)
        await session.load()

    @_answers(_HANDLERS, Unload)
    async def _unload(self, rt: StoreRuntime, request: Unload) -> bool:
        """True when a session was unloaded; False when the key was not loaded (a repeated unload)."""
        check_key(request.key)
        session = rt.sessions.get(request.key)
        if session is None:
            if rt.closed:
                raise _store_closed(rt)
            return False
        await session.unload()
        return True

    @_answers(_HANDLERS, Close)
    async def _close(self, rt: StoreRuntime, request: Close | None = None) -> None:
        """Close the store: unload every key (final saves at emergency priority), refuse everything after."""
        rt.closed = True
        with emergency():
            results = await asyncio.gather(*(s.unload() for s in list(rt.sessions.values())),
                                           return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            rt.log("error", f"unload at close failed: {type(failure).__name__}: {failure}")
        if failures:
            raise failures[0]

    @_answers(_HANDLERS, Peek)
    async def _peek(self, rt: StoreRuntime, request: Peek) -> Any:
        key = request.key
        check_key(key)
        value, _ = await rt.retrying(lambda: rt.records.aio.get(key), "record read", key)
        return await _stored_data(rt, key, value)

    @_answers(_HANDLERS, ProbeLockActive)
    async def _probe_lock_active(self, rt: StoreRuntime, request: ProbeLockActive) -> bool:
        check_key(request.key)
        return await lock_active(rt, request.key)

    @_answers(_HANDLERS, ListVersions)
    async def _list_versions(self, rt: StoreRuntime, request: ListVersions) -> Any:
        return await rt.records.aio.list_versions(request.key, **(request.kwargs or {}))

    @_answers(_HANDLERS, ReadVersion)
    async def _read_version(self, rt: StoreRuntime, request: ReadVersion) -> Any:
        value, _ = await rt.records.aio.get_version(request.key, request.version)
        return await _stored_data(rt, request.key, value)

    @_answers(_HANDLERS, IsLoaded)
    async def _is_loaded(self, rt: StoreRuntime, request: IsLoaded) -> bool:
        session = rt.sessions.get(request.key)
        return session is not None and session.state in (SessionState.ACTIVE, SessionState.IN_TRANSACTION)

    @_answers(_HANDLERS, LoadedKeys)
    async def _loaded_keys(self, rt: StoreRuntime, request: LoadedKeys) -> list[str]:
        return [k for k, s in rt.sessions.items() if s.state in (SessionState.ACTIVE, SessionState.IN_TRANSACTION)]

    @_answers(_HANDLERS, Statistics)
    async def _statistics(self, rt: StoreRuntime, request: Statistics) -> StoreStatistics:
        states: dict[str, int] = {}
        for session in rt.sessions.values():
            states[session.state.value] = states.get(session.state.value, 0) + 1
        return StoreStatistics(rt.config.name, states, StoreCounters(**vars(rt.counters)),
                               self.scheduler.pending(), rt.closed, self.server.datastores.gate_statistics(),
                               tuple(self.errors[-5:]))

    # ------------------------------------------------------------------------- transaction participant
    #
    # What a coordinator calls, one message per key actor per phase. Each answers {key: result or exception}.
    # Delivered twice: prepare answers the same data, write is done once, finish is a no-op the second time.

    async def tx_calls(self, calls: list[TxCall]) -> list[Any]:
        """Several participant calls in one message (a coordinator batches them per loop turn); each entry is the
        call's {key: result or exception}, or the exception the whole call failed with."""
        async def one(call: TxCall) -> Any:
            try:
                return await self.tx_call(call)
            except Exception as exc:
                return exc

        return await asyncio.gather(*(one(c) for c in calls))

    async def tx_call(self, call: TxCall) -> dict:
        """Answer one participant call: {key: result or exception}."""
        handler = _TX_HANDLERS.get(type(call))
        if handler is None:
            raise ConfigError(f"a key host answers the transaction calls TxPrepare, TxWrite and TxFinish; got a "
                              f"{type(call).__name__}: {call!r:.80}")
        return await handler(self, call)

    @_answers(_TX_HANDLERS, TxPrepare)
    async def _tx_prepare(self, call: TxPrepare) -> dict:
        rt = self.stores.get(call.store)
        return await _per_key(call.keys, lambda key: _session(rt, key).participant.prepare(call.tx_id, call.timeout_s)
                              if rt is not None else _no_store(call.store))

    @_answers(_TX_HANDLERS, TxWrite)
    async def _tx_write(self, call: TxWrite) -> dict:
        rt = self.stores.get(call.store)
        return await _per_key(call.keys, lambda key: _in_tx(rt, key, call.store).participant.write(
            call.tx_id, *call.writes[key]))

    @_answers(_TX_HANDLERS, TxFinish)
    async def _tx_finish(self, call: TxFinish) -> dict:
        rt = self.stores.get(call.store)

        async def finish(key: str) -> str | None:
            session = rt.sessions.get(key) if rt is not None else None
            if session is None or not session.participant.holds(call.tx_id):
                # Only the session in this transaction can vouch for the key's record. Any other (none, or a later
                # session of the key, loaded after the one in the transaction lost its lock) cannot: the record may
                # still carry the transaction, and only the coordinator can clean it.
                return ABSENT
            await session.participant.finish(call.tx_id, *call.outcomes[key])
            return None

        return await _per_key(call.keys, finish)

    # ---------------------------------------------------------------------------------------- lifecycle

    async def shutdown(self) -> None:
        """The server is closing (BindToClose): every store closes (final saves at emergency priority), then the
        tokens this host leased go back. The server's budget boost and its removal are the GameServer's."""
        errors = []
        for rt in list(self.stores.values()):
            try:
                await self._close(rt)
            except LodestoreError as exc:
                errors.append(exc)
        self.server.datastores.release_leases()
        if errors:
            raise errors[0]

    def stall_locks(self, seconds: float) -> None:
        """Fault injection: for `seconds` of simulated time this host neither refreshes its locks nor notices them
        running out, while everything else goes on (a lock holder stalled by a long pause). Afterwards each session
        checks its lock as usual: one whose lock ran out meanwhile is lost. `seconds` is from 0 to
        `MAX_LOCK_TTL_S` (longer than any lock lives), else ConfigError."""
        until = self.scheduler.now() + int(check_seconds("seconds", seconds, minimum=0) * 1000)
        for rt in self.stores.values():
            rt.stalled_until = max(rt.stalled_until, until)

    def crash(self) -> None:
        """Stop at once, as a crashed server does: no saves, no lock releases, no timers. Locks expire by TTL."""
        for rt in self.stores.values():
            rt.closed = True
            for session in list(rt.sessions.values()):
                session.crash()


async def _per_key(keys: list[str], call) -> dict:
    async def one(key: str) -> Any:
        try:
            return await call(key)
        except Exception as exc:
            return exc

    return dict(zip(keys, await asyncio.gather(*(one(k) for k in keys))))


async def _no_store(store: str) -> None:
    raise StoreClosedError(f"Store is closed: store {store!r} is not open on this server")


def _in_tx(rt: StoreRuntime | None, key: str, store: str) -> Session:
    session = rt.sessions.get(key) if rt is not None else None
    if session is None:
        raise KeyNotLoadedError(f"Key not loaded: key {key!r} of store {store!r}")
    return session


async def _stored_data(rt: StoreRuntime, key: str, value: Any) -> Any:
    """What a stored record holds, as a load would see it (shards joined, transaction resolved, migrated), or None."""
    if value is None:
        return None
    data = await rt.read_data(key, value)
    data, _ = migrate(rt.config, key, data, tuple(value["applied_migrations"]))
    return data


def _store_closed(rt: StoreRuntime) -> StoreClosedError:
    return StoreClosedError(f"Store is closed: store {rt.config.name!r}")


def _session(rt: StoreRuntime, key: Any) -> Session:
    if rt.closed:
        raise _store_closed(rt)
    session = rt.sessions.get(key) if isinstance(key, str) else None
    if session is None or session.state is SessionState.LOADING:
        if not isinstance(key, str):
            check_key(key)
        raise KeyNotLoadedError(f"Key not loaded: key {key!r} of store {rt.config.name!r}")
    return session
