"""A key host: every session one key actor holds, for every store, with one timer scheduler.

The same class runs inside a Ray actor (`per-server`: all keys of a simulated game server; `per-key`: one key) and
in this process for tests and scripts. `handle(requests)` takes a batch of `Request`s (one Ray message) and answers a
list in the same order, each a result or the typed exception to raise in the caller; requests for different keys
run concurrently, requests for one key in order. It is plain asyncio: no Ray here.

Delivered twice (Ray may retry a message): `load` of a loaded key and `unload` of an unloaded key are no-ops,
`update` and `update_immutable` run the transform again (as with any repeated call), `save` writes again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from lodestore.actors._config import StoreConfig
from lodestore.actors._errors import KeyNotLoadedError, LoadInProgressError, StoreClosedError
from lodestore.actors._migrations import migrate
from lodestore.actors._scheduler import Scheduler
from lodestore.actors._session import Session, SessionState, StoreCounters, StoreRuntime
from lodestore.actors._txn import ABSENT
from lodestore.storage import ConfigError, LodestoreError, Server, emergency
from lodestore.storage._values import check_key, check_user_ids

__all__ = ["KeyHost", "Request", "StoreStatistics"]

_SESSION_OPS = frozenset({"get", "update", "update_immutable", "save"})

@dataclass(frozen=True)
class Request:
    """One Store API call on its way to a key host."""

    op: str
    store: str
    key: str | None = None
    args: tuple = ()


@dataclass(frozen=True)
class StoreStatistics:
    """A snapshot of one store on one host: sessions by state, what they did, timers pending."""

    store: str
    sessions: dict = field(default_factory=dict)
    counters: StoreCounters = field(default_factory=StoreCounters)
    timers: int = 0
    closed: bool = False


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

    async def handle(self, requests: list[Request]) -> list[Any]:
        """Answer a batch: each entry is the call's result, or the LodestoreError (or other exception) it raised."""
        return await asyncio.gather(*(self._answer(r) for r in requests))

    async def _answer(self, request: Request) -> Any:
        try:
            return await self.call(request)
        except Exception as exc:  # travels back as a value; the client raises it
            return exc

    async def call(self, request: Request) -> Any:
        rt = self.stores.get(request.store)
        if rt is None:
            raise StoreClosedError(f"Store is closed: store {request.store!r} is not open on this server")
        op = request.op
        if op in _SESSION_OPS:
            session = _session(rt, request.key)
            if op == "save":
                return await session.save(force=True)
            return await getattr(session, op)(*request.args)
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise ConfigError(f"unknown store operation {op!r}")
        return await handler(rt, request.key, *request.args)

    # ------------------------------------------------------------------------------------------ operations

    async def _op_load(self, rt: StoreRuntime, key: str, user_ids: Any = None) -> None:
        check_key(key)
        uids = check_user_ids(user_ids)
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

    async def _op_unload(self, rt: StoreRuntime, key: str) -> bool:
        """True when a session was unloaded; False when the key was not loaded (a repeated unload)."""
        check_key(key)
        session = rt.sessions.get(key)
        if session is None:
            if rt.closed:
                raise _store_closed(rt)
            return False
        await session.unload()
        return True

    async def _op_close(self, rt: StoreRuntime, key: None = None) -> None:
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

    async def _op_peek(self, rt: StoreRuntime, key: str) -> Any:
        check_key(key)
        value, _ = await rt.retrying(lambda: rt.records.aio.get(key), "record read", key)
        return await _stored_data(rt, key, value)

    async def _op_probe_lock_active(self, rt: StoreRuntime, key: str) -> bool:
        check_key(key)
        return await rt.locks(key).aio.get(key) is not None

    async def _op_list_versions(self, rt: StoreRuntime, key: str, kwargs: dict | None = None) -> Any:
        return await rt.records.aio.list_versions(key, **(kwargs or {}))

    async def _op_read_version(self, rt: StoreRuntime, key: str, version: str) -> Any:
        value, _ = await rt.records.aio.get_version(key, version)
        return await _stored_data(rt, key, value)

    async def _op_is_loaded(self, rt: StoreRuntime, key: str) -> bool:
        session = rt.sessions.get(key)
        return session is not None and session.state in (SessionState.ACTIVE, SessionState.IN_TRANSACTION)

    async def _op_loaded_keys(self, rt: StoreRuntime, key: None = None) -> list[str]:
        return [k for k, s in rt.sessions.items() if s.state in (SessionState.ACTIVE, SessionState.IN_TRANSACTION)]

    async def _op_statistics(self, rt: StoreRuntime, key: None = None) -> StoreStatistics:
        states: dict[str, int] = {}
        for session in rt.sessions.values():
            states[session.state.value] = states.get(session.state.value, 0) + 1
        return StoreStatistics(rt.config.name, states, StoreCounters(**vars(rt.counters)),
                               self.scheduler.pending(), rt.closed)

    # ------------------------------------------------------------------------- transaction participant
    #
    # What a coordinator calls, one message per key actor per phase. Each answers {key: result or exception}.
    # Delivered twice: prepare answers the same data, write is done once, finish is a no-op the second time.

    async def tx_calls(self, calls: list[tuple[str, tuple]]) -> list[Any]:
        """Several participant calls in one message (a coordinator batches them per loop turn)."""
        async def one(method: str, args: tuple) -> Any:
            if method not in ("tx_prepare", "tx_write", "tx_finish"):
                return ConfigError(f"unknown transaction call {method!r}")
            try:
                return await getattr(self, method)(*args)
            except Exception as exc:
                return exc

        return await asyncio.gather(*(one(m, a) for m, a in calls))

    async def tx_prepare(self, tx_id: str, store: str, keys: list[str], timeout_s: float) -> dict:
        rt = self.stores.get(store)
        return await _per_key(keys, lambda key: _session(rt, key).participant.prepare(tx_id, timeout_s)
                              if rt is not None else _no_store(store))

    async def tx_write(self, tx_id: str, store: str, writes: dict) -> dict:
        rt = self.stores.get(store)
        return await _per_key(list(writes),
                              lambda key: _in_tx(rt, key, store).participant.write(tx_id, *writes[key]))

    async def tx_finish(self, tx_id: str, store: str, outcomes: dict) -> dict:
        rt = self.stores.get(store)

        async def finish(key: str) -> str | None:
            session = rt.sessions.get(key) if rt is not None else None
            if session is None:
                return ABSENT   # nobody here can clean this key's record: the coordinator must
            await session.participant.finish(tx_id, *outcomes[key])
            return None

        return await _per_key(list(outcomes), finish)

    # ---------------------------------------------------------------------------------------- lifecycle

    async def shutdown(self) -> None:
        """The server is closing (BindToClose): every store closes (final saves at emergency priority), then the
        tokens this host leased go back. The server's budget boost and its removal are the GameServer's."""
        errors = []
        for rt in list(self.stores.values()):
            try:
                await self._op_close(rt)
            except LodestoreError as exc:
                errors.append(exc)
        self.server.datastores._gate.release_all()
        if errors:
            raise errors[0]

    def stall_locks(self, seconds: float) -> None:
        """Fault injection: for `seconds` of simulated time this host neither refreshes its locks nor notices them
        running out, while everything else goes on (a lock holder stalled by a long pause). Afterwards each session
        checks its lock as usual: one whose lock ran out meanwhile is lost."""
        until = self.scheduler.now() + int(seconds * 1000)
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
