"""Sessions: one simulated game server's hold on one key (Lyra's Session, with a fencing token).

A `Session` owns the key's lock (a MemoryStore hash map item with a TTL, refreshed on a timer), the data in memory,
the applied migrations, the checksum of the last saved state, and the autosave, refresh and deadline timers of its
store's scheduler. Operations that read or change data run one at a time, in the order they arrived (the mailbox);
writes run one at a time in their own lane, so a slow save never holds up an update, and each save writes a snapshot
at least as new as the one before it.

Safety rules this module keeps:
- Never a write after the lock is gone. The lock has a local deadline (send time of the last refresh that landed +
  TTL); a write is not started past it. Every record names the session that wrote it last (`session`, a fencing
  token), and every write is a compare-and-set that only goes through while the stored record is still ours, so a
  session whose lock was taken over cannot write even when its clock or its refreshes lag.
- A failed load (a migration or schema failure, a lock timeout, a storage error) writes nothing and releases the lock.
- Unload saves first and releases the lock only after the save landed; when the save fails the session stays loaded
  (and keeps its lock) so nothing acknowledged is dropped.

Plain Python on asyncio: no Ray here. `StoreRuntime` is one store inside one host (its config, clients, sessions).
"""

from __future__ import annotations

import asyncio
import uuid
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from lodestore.actors import _records as rec
from lodestore.actors._config import LogMessage, StoreConfig, check_schema
from lodestore.actors._errors import (KeyClosedError, LockLostError, LockTimeoutError, MigrationError, RecordError,
                            TxLockedError)
from lodestore.actors._records import copy_data
from lodestore.actors._scheduler import Scheduler, Timer
from lodestore.actors._txn import (TX_STORE, abort_if_pending, lock_map_name, marker_committed, records_store,
                                   resolve_in_doubt, shards_store)
from lodestore.storage import DataStoreError, MemoryStoreError, RequestType, TransformError, UpdateResult
from lodestore.storage._values import canonical, check_value

__all__ = ["SessionState", "Session", "StoreRuntime", "StoreCounters"]

ORPHAN_BUDGET_FLOOR = 100   # remove old shards only while this many remove requests are left (Lyra's rule)
REFRESH_RETRY_S = 10.0      # after a failed refresh, try again this soon (the TTL has 30 s to spare by default)
_CLAIM_ATTEMPTS = 8         # loads that keep losing the record to a stale writer give up after this many reads


class SessionState(str, Enum):
    LOADING = "loading"
    ACTIVE = "active"
    IN_TRANSACTION = "in_transaction"
    CLOSING = "closing"
    CLOSED = "closed"
    LOCK_LOST = "lock_lost"


_LIVE = (SessionState.ACTIVE, SessionState.IN_TRANSACTION, SessionState.CLOSING)
_ENDED = (SessionState.CLOSED, SessionState.LOCK_LOST)


@dataclass
class StoreCounters:
    loads: int = 0
    load_failures: int = 0
    unloads: int = 0
    saves: int = 0
    saves_skipped: int = 0
    save_failures: int = 0
    lock_waits: int = 0
    lock_steals: int = 0
    locks_lost: int = 0
    refreshes: int = 0
    refresh_failures: int = 0
    shards_written: int = 0
    tx_committed: int = 0
    tx_aborted: int = 0
    tx_timeouts: int = 0
    orphans_removed: int = 0


class StoreRuntime:
    """One store inside one host: its configuration, storage clients, scheduler and live sessions."""

    def __init__(self, config: StoreConfig, server: Any, scheduler: Scheduler) -> None:
        self.config = config
        self.scheduler = scheduler
        self.job_id = server.job_id
        self.datastores = server.datastores
        self.records = server.datastores.get_data_store(records_store(config.name))
        self.shards = server.datastores.get_data_store(shards_store(config.name))
        self.txs = server.datastores.get_data_store(TX_STORE)
        self._lock_maps = [server.memorystores.get_hash_map(lock_map_name(config.name, i, config.lock_partitions))
                           for i in range(config.lock_partitions)]
        self.sessions: dict[str, Session] = {}
        self.closed = False
        self.counters = StoreCounters()
        self.shard_limit = rec.SHARD_LIMIT_CHARS  # JSON characters above which data is split into shard keys
        self.stalled_until = 0  # simulated ms: lock upkeep (refresh, deadline check) is frozen until then

    def lock_event(self, kind: str, session: "Session") -> None:
        """Tell the `lock_callback` (if any) what happened to `session`'s lock."""
        callback = self.config.lock_callback
        if callback is None:
            return
        now, until = self.scheduler.now(), session.lock_deadline
        at = now if kind in ("acquired", "refreshed") else min(now, until)
        try:
            callback(kind, session.key, session.lock_id, at, until)
        except Exception as exc:
            self.log("error", f"lock_callback raised {type(exc).__name__}: {exc}", key=session.key)

    def stalled(self, retry: Callable[[], Any]) -> bool:
        """True (and `retry` armed for when it ends) while lock upkeep is stalled by `KeyHost.stall_locks`."""
        if self.scheduler.now() >= self.stalled_until:
            return False
        self.scheduler.call_at(self.stalled_until, retry)
        return True

    def locks(self, key: str) -> Any:
        """The MemoryStore hash map holding `key`'s lock (keys are spread over `lock_partitions` maps)."""
        maps = self._lock_maps
        return maps[0] if len(maps) == 1 else maps[zlib.crc32(key.encode()) % len(maps)]

    def log(self, level: str, message: str, **context: Any) -> None:
        callback = self.config.log_callback
        if callback is not None:
            try:
                callback(LogMessage(level, message, {"store": self.config.name, **context}))
            except Exception:
                pass  # a broken logger must not break the session that is logging

    async def retrying(self, call: Callable[[], Any], what: str, key: str) -> Any:
        """Run a storage call, retrying throttling and server errors with waits of 1, 2, 4, 8 ... simulated s."""
        attempts = self.config.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except (DataStoreError, MemoryStoreError) as exc:
                retryable = exc.retryable if isinstance(exc, DataStoreError) else exc.name in _MS_RETRYABLE
                if not retryable or attempt == attempts:
                    raise
                wait = min(2.0 ** (attempt - 1), 30.0)
                self.log("warn", f"{what} failed ({exc}); retrying in {wait:g} s", key=key, attempt=attempt)
                await self.scheduler.sleep(wait)

    async def read_data(self, key: str, value: Any, *, use_cache: bool = True, settle: bool = False) -> Any:
        """The data a stored record holds: shards joined, a transaction resolved by its marker. With `settle` (a
        load, which writes the record next), a transaction still pending is aborted first by compare-and-set, so
        its coordinator can no longer commit it after this record has been overwritten with the data before it."""
        if not rec.is_record(value):
            raise RecordError(f"key {key!r} of store {self.config.name!r} holds something that is not a record")
        file = value["file"]
        if "shard" in file:
            keys = rec.shard_keys(file)
            chunks = await asyncio.gather(*(self.retrying(lambda k=k: self.shards.aio.get(k, use_cache), "shard read",
                                                          key) for k in keys))
            return rec.read_file(file, [c[0] for c in chunks])
        txinfo = file["data"]
        tx_id = txinfo.get("tx_id")
        if tx_id is None:
            return txinfo["committed_data"]
        marker = None
        if settle:
            marker, _ = await self.retrying(lambda: self.txs.aio.update(tx_id, abort_if_pending), "marker update", key)
        if marker is None:  # not settled here, or cancelled: it was not pending (or is gone)
            marker, _ = await self.retrying(lambda: self.txs.aio.get(tx_id, False), "transaction marker read", key)
        return rec.committed(txinfo, marker_exists=not marker_committed(marker))

    def migrate(self, key: str, data: Any, applied: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
        """Apply, in order, every migration step not applied yet. Raises MigrationError (nothing is written)."""
        known = self.config.migration_names
        unknown = [name for name in applied if name not in known]
        if unknown:
            raise MigrationError(f"key {key!r} has migration {unknown[0]!r} applied, which store "
                                 f"{self.config.name!r} does not know: a newer server wrote it; refusing to load")
        for step in self.config.migrations:
            if step.name in applied:
                continue
            try:
                out = step.apply(data)
            except Exception as exc:
                raise MigrationError(f"migration {step.name!r} failed for key {key!r}: "
                                     f"{type(exc).__name__}: {exc}") from exc
            if out is None:
                raise MigrationError(f"migration {step.name!r} returned None for key {key!r}; a step returns the "
                                     f"migrated data")
            try:
                check_value(out, what=f"data after migration {step.name!r}")
            except DataStoreError as exc:
                raise MigrationError(f"migration {step.name!r} for key {key!r}: {exc.message}") from None
            data, applied = out, applied + (step.name,)
        return data, applied

    def check_schema(self, key: str, data: Any) -> None:
        check_schema(self.config.schema, key, data)

    def notify_changed(self, key: str, new: Any, old: Any) -> None:
        for callback in self.config.changed_callbacks:
            try:
                callback(key, copy_data(new), None if old is None else copy_data(old))
            except Exception as exc:
                self.log("error", f"changed callback raised {type(exc).__name__}: {exc}", key=key)


_MS_RETRYABLE = frozenset({"InternalError", "RequestThrottled", "TotalRequestsOverLimit"})


class Session:
    """One key held by one server. Created LOADING by the host; `load()` makes it ACTIVE or ends it."""

    __slots__ = ("rt", "key", "user_ids", "state", "lock_id", "data", "applied", "saved_checksum", "info", "file",
                 "orphans", "mailbox", "save_lane", "lock_deadline", "unload_requested", "loaded", "closed",
                 "_refresh_timer", "_deadline_timer", "_autosave_timer", "_frozen", "_holds_lock", "tx", "_refused_txs")

    def __init__(self, rt: StoreRuntime, key: str, user_ids: tuple[int, ...] = ()) -> None:
        loop = asyncio.get_running_loop()
        self.rt = rt
        self.key = key
        self.user_ids = user_ids
        self.state = SessionState.LOADING
        self.lock_id = uuid.uuid4().hex
        self.data: Any = None          # replaced, never mutated in place: a reference is a snapshot
        self.applied: tuple[str, ...] = ()
        self.saved_checksum: str | None = None
        self.info = None               # KeyInfo of the record as this session last wrote it
        self.file: dict | None = None  # the sharded file the record points to, when it is sharded
        self.orphans: list[dict] = []
        self.mailbox = asyncio.Lock()
        self.save_lane = asyncio.Lock()
        self.lock_deadline = 0
        self.unload_requested = False
        self.loaded = loop.create_future()   # set when load ends, either way
        self.closed = loop.create_future()   # set when the session ends (closed, lock lost, or load failed)
        self._refresh_timer: Timer | None = None
        self._deadline_timer: Timer | None = None
        self._autosave_timer: Timer | None = None
        self._frozen: Any = None
        self._holds_lock = False
        self.tx: _Tx | None = None          # the transaction holding this session, if any
        self._refused_txs: list[str] = []   # transactions this session gave up on: a late message is refused

    def __repr__(self) -> str:
        return f"Session({self.rt.config.name!r}, {self.key!r}, {self.state.value})"

    # --------------------------------------------------------------------------------------------- load

    async def load(self) -> None:
        rt = self.rt
        try:
            await self._acquire_lock()
            self._arm_refresh(rt.config.lock_refresh)   # a load can take long (retries): the lock must not lapse
            self._arm_deadline()
            self._stop_if_unloading()
            data, applied = await self._claim()
            self._stop_if_unloading()
            if self.state is not SessionState.LOADING:   # the host crashed or closed while we loaded
                raise KeyClosedError(f"Key is closed: key {self.key!r} was closed while it was loading")
        except BaseException as exc:
            rt.counters.load_failures += 1
            rt.log("warn", f"load failed: {type(exc).__name__}: {exc}", key=self.key)
            await self._release_lock()
            self._end(SessionState.CLOSED)
            _resolve(self.loaded)
            raise
        self.data, self.applied = data, applied
        self.saved_checksum = rec.checksum(data)  # the claim wrote exactly this
        self.state = SessionState.ACTIVE
        rt.counters.loads += 1
        first = rt.config.autosave_interval * (0.5 + 0.5 * (zlib.crc32(self.key.encode()) / 0xFFFFFFFF))
        self._arm_autosave(first)  # spread autosaves over the interval, deterministically per key
        _resolve(self.loaded)
        rt.notify_changed(self.key, data, None)

    def _stop_if_unloading(self) -> None:
        if self.unload_requested:
            raise KeyClosedError(f"Key is closed: key {self.key!r} was unloaded while it was loading")

    def _lock_value(self) -> dict:
        return {"session": self.lock_id, "job": self.rt.job_id, "at": self.rt.scheduler.now()}

    async def _acquire_lock(self) -> None:
        rt, cfg = self.rt, self.rt.config
        give_up = rt.scheduler.now() + int(cfg.lock_wait * 1000)
        stolen = []

        def claim(old: Any) -> Any:
            if old is None or not isinstance(old, dict) or old.get("session") == self.lock_id:
                return self._lock_value()
            if cfg.lock_steal_after is not None and \
                    rt.scheduler.now() - int(old.get("at", 0)) >= cfg.lock_steal_after * 1000:
                stolen.append(old.get("job"))
                return self._lock_value()
            return None

        attempt = 0
        last_error: MemoryStoreError | None = None
        while True:
            self._stop_if_unloading()
            sent = rt.scheduler.now()
            try:
                got = await rt.locks(self.key).aio.update(self.key, claim, expiration=cfg.lock_ttl)
                last_error = None
            except MemoryStoreError as exc:
                rt.log("warn", f"lock request failed: {exc}", key=self.key)
                got, last_error = None, exc
            if got is not None:
                self._holds_lock = True
                self.lock_deadline = sent + int(cfg.lock_ttl * 1000)
                rt.lock_event("acquired", self)
                if stolen:
                    rt.counters.lock_steals += 1
                    rt.log("warn", f"took over the lock from job {stolen[-1]!r}, which stopped refreshing it",
                           key=self.key)
                return
            attempt += 1
            if attempt == 1:
                rt.counters.lock_waits += 1
            now = rt.scheduler.now()
            if now >= give_up:
                why = (f"the MemoryStore kept refusing ({last_error})" if last_error is not None
                       else "another session held it")
                raise LockTimeoutError(f"Failed to acquire lock for key {self.key!r} of store {cfg.name!r}: {why} "
                                       f"for {cfg.lock_wait:g} s")
            await rt.scheduler.sleep(min(2.0 ** (attempt - 1), 30.0, (give_up - now) / 1000))

    async def _claim(self) -> tuple[Any, tuple[str, ...]]:
        """Read the record, migrate and check it, and write it back naming this session (the fencing token)."""
        rt = self.rt
        for _ in range(_CLAIM_ATTEMPTS):
            value, info = await rt.retrying(lambda: rt.records.aio.get(self.key, False), "record read", self.key)
            if value is None:
                data, applied = await self._new_data()
            else:
                data = await rt.read_data(self.key, value, use_cache=False, settle=True)
                applied = tuple(value["applied_migrations"])
                stored = list(value.get("orphaned_files", ()))
                self.orphans = stored + [f for f in self.orphans if f not in stored]  # keep our own strays
                self.file = value["file"] if "shard" in value["file"] else None
            data, applied = rt.migrate(self.key, data, applied)
            rt.check_schema(self.key, data)
            self.applied = applied
            if await self._write(data, current=(value, info)):
                return data, applied
            rt.log("info", "the record changed while loading; reading it again", key=self.key)
        raise RecordError(f"key {self.key!r}: the record kept changing while loading ({_CLAIM_ATTEMPTS} reads)")

    async def _new_data(self) -> tuple[Any, tuple[str, ...]]:
        cfg = self.rt.config
        if cfg.import_legacy_data is not None:
            try:
                legacy = cfg.import_legacy_data(self.key)
            except Exception as exc:
                raise MigrationError(f"import_legacy_data raised for key {self.key!r}: "
                                     f"{type(exc).__name__}: {exc}") from exc
            if legacy is not None:
                try:
                    check_value(legacy, what="imported legacy data")
                except DataStoreError as exc:
                    raise MigrationError(f"import_legacy_data for key {self.key!r}: {exc.message}") from None
                return copy_data(legacy), ()   # imported data has no migration applied yet
        return copy_data(cfg.template), cfg.migration_names   # a new key counts as having every step applied

    # ---------------------------------------------------------------------------------------- reads, updates

    def _check_usable(self) -> None:
        if self.state is SessionState.ACTIVE:
            return
        if self.state is SessionState.LOCK_LOST:
            raise LockLostError(f"Key is closed: the lock on key {self.key!r} was lost")
        raise KeyClosedError(f"Key is closed: key {self.key!r} is {self.state.value}")

    async def get(self) -> Any:
        async with self.mailbox:
            self._check_usable()
            return copy_data(self.data)

    async def update(self, fn: Callable[[Any], Any]) -> bool:
        async with self.mailbox:
            self._check_usable()
            draft = copy_data(self.data)
            try:
                verdict = fn(draft)
            except Exception as exc:
                raise TransformError(f"update transform for key {self.key!r} raised {type(exc).__name__}: {exc}") \
                    from exc
            if verdict is not True and verdict is not False:
                raise TransformError(f"update transform for key {self.key!r} must return True (commit) or False "
                                     f"(abort), got {verdict!r:.60}; nothing changed")
            if verdict:
                self._commit(draft)
            return verdict

    async def update_immutable(self, fn: Callable[[Any], Any]) -> bool:
        async with self.mailbox:
            self._check_usable()
            if self._frozen is None:
                self._frozen = rec.freeze(self.data)
            try:
                out = fn(self._frozen)
            except Exception as exc:
                raise TransformError(f"update_immutable transform for key {self.key!r} raised "
                                     f"{type(exc).__name__}: {exc}") from exc
            if out is False:
                return False
            if out is None or out is True:
                raise TransformError(f"update_immutable transform for key {self.key!r} must return the new data "
                                     f"or False (abort), got {out!r}; nothing changed")
            self._commit(rec.thaw(out))
            return True

    def _commit(self, new: Any) -> None:
        """Make `new` the session's data after checking it is storable and valid; raises and changes nothing."""
        check_value(new, what=f"data for key {self.key!r}")
        self.rt.check_schema(self.key, new)
        old, self.data, self._frozen = self.data, new, None
        self.rt.notify_changed(self.key, new, old)

    # -------------------------------------------------------------------------------------------- saving

    async def save(self, force: bool = True) -> bool:
        """Write the data (a snapshot taken once this save's turn comes). Without `force`, skip the write when the
        data equals what was saved last. Returns whether a write happened."""
        async with self.save_lane:
            if self.state not in _LIVE:
                self._check_usable()
            data = self.data
            blob = canonical(data)   # data in a session has passed check_value
            digest = rec.digest(blob)
            if not force and digest == self.saved_checksum:
                self.rt.counters.saves_skipped += 1
                return False
            try:
                ok = await self._write(data, size_hint=len(blob))
            except LockLostError:
                self._lose("the lock ran out before the write could start")
                raise
            except BaseException:
                self.rt.counters.save_failures += 1
                raise
            if not ok:
                self._lose("another session wrote the record: this session's lock was taken over")
                raise LockLostError(f"Key is closed: the lock on key {self.key!r} was lost before the save")
            self.saved_checksum = digest
            self.rt.counters.saves += 1
            return True

    async def _write(self, data: Any, current: tuple[Any, Any] | None = None, size_hint: int | None = None,
                     txinfo: dict | None = None) -> bool:
        """Write a record holding `data` (or, for a transaction, the inline `txinfo`). For a save, it
        compare-and-sets against the version this session wrote last, and goes through only while the stored record
        still names this session. For a load's claim, `current` is the record as read. Returns False when someone
        else's record was found (nothing written)."""
        rt = self.rt
        if txinfo is not None:
            file, chunks = {"data": txinfo}, {}
        elif size_hint is not None and size_hint + rec.INLINE_OVERHEAD_CHARS <= rt.shard_limit // 2:
            file, chunks = rec.inline_file(data), {}   # far under the limit: skip make_file's own size check
        else:
            file, chunks = rec.make_file(data, limit=rt.shard_limit)
        if chunks:
            await asyncio.gather(*(rt.retrying(lambda k=k, v=v: rt.shards.aio.set(k, v), "shard write", self.key)
                                   for k, v in chunks.items()))
            rt.counters.shards_written += len(chunks)
        orphans = list(self.orphans) + ([self.file] if self.file is not None else [])
        record = rec.new_record(None, self.applied, self.lock_id, file=file, orphaned_files=orphans)
        result = UpdateResult(record, list(self.user_ids), rt.config.metadata_template)
        first = [True]

        def guarded(old: Any, info: Any) -> Any:
            if first[0]:  # the entry we expected: ours (a save) or the one just read (a claim)
                first[0] = False
                return result
            if isinstance(old, dict) and old.get("session") == self.lock_id:
                return result  # our own earlier attempt landed although it was reported as failed
            return None

        if current is None:
            current = ({"session": self.lock_id}, self.info)
        try:
            _, info = await rt.retrying(lambda: self._guarded_update(guarded, current, first), "record write",
                                        self.key)
        except BaseException:
            if chunks:
                self.orphans.append(file)  # written shards nobody points to: remove them later
            raise
        if info is None:
            if chunks:
                self.orphans.append(file)
            return False
        self.info = info
        self.orphans = orphans
        self.file = file if chunks else None
        if orphans:
            rt.scheduler.spawn(self._remove_orphans(orphans))
        return True

    async def _guarded_update(self, guarded: Callable, current: tuple, first: list) -> tuple[Any, Any]:
        if self._holds_lock and self.rt.scheduler.now() >= self.lock_deadline:
            raise LockLostError(f"Key is closed: the lock on key {self.key!r} ran out before the write")
        first[0] = True  # every attempt starts from the expected entry again
        return await self.rt.records.aio.update(self.key, guarded, current=current)

    async def _remove_orphans(self, orphans: list[dict]) -> None:
        """Remove shards of files the record no longer points to, while the remove budget allows (Lyra's rule).
        The record forgets them at its next write."""
        rt = self.rt
        for file in list(orphans):   # (it may be self.orphans, which shrinks as files go)
            for key in rec.shard_keys(file):
                if rt.datastores.budgets_enforced and \
                        rt.datastores.get_request_budget(RequestType.STANDARD_REMOVE) < ORPHAN_BUDGET_FLOOR:
                    return
                try:
                    await rt.shards.aio.remove(key)
                except DataStoreError as exc:
                    rt.log("warn", f"removing old shard {key!r} failed: {exc}", key=self.key)
                    return
                rt.counters.orphans_removed += 1
            if file in self.orphans:
                self.orphans.remove(file)

    # ---------------------------------------------------------------------------------------- unloading

    async def unload(self) -> None:
        """Final save (when the data changed), then release the lock. Unloading while loading stops the load."""
        if self.state is SessionState.LOADING:
            self.unload_requested = True
            await asyncio.shield(self.loaded)
        if self.state in _ENDED:
            return self._check_not_lost()
        if self.state is SessionState.CLOSING:
            await asyncio.shield(self.closed)
            return self._check_not_lost()
        async with self.mailbox:
            if self.state in _ENDED:
                return self._check_not_lost()
            self.state = SessionState.CLOSING
            _cancel(self._autosave_timer)
            try:
                await self.save(force=False)
            except BaseException:
                if self.state is SessionState.CLOSING:
                    self.state = SessionState.ACTIVE  # keep the data and the lock; autosave keeps trying
                    self._arm_autosave(self.rt.config.autosave_interval)
                raise
            await self._release_lock()
            self.rt.counters.unloads += 1
            self._end(SessionState.CLOSED)

    def _check_not_lost(self) -> None:
        """An unload that finds its session ended by a lost lock must not pass for a final save."""
        if self.state is SessionState.LOCK_LOST:
            raise LockLostError(f"Lock lost: key {self.key!r} of store {self.rt.config.name!r} lost its lock before "
                                f"its final save; changes since its last save are gone")

    async def _release_lock(self) -> None:
        if not self._holds_lock:
            return
        self.rt.lock_event("released", self)
        self._holds_lock = False
        mine = self.lock_id
        try:
            await self.rt.locks(self.key).aio.update(
                self.key, lambda old: old if isinstance(old, dict) and old.get("session") == mine else None,
                expiration=0)
        except MemoryStoreError as exc:
            self.rt.log("warn", f"releasing the lock failed ({exc}); it expires by its TTL", key=self.key)

    def _end(self, state: SessionState) -> None:
        self.state = state
        for timer in (self._refresh_timer, self._deadline_timer, self._autosave_timer,
                      self.tx.timer if self.tx is not None else None):
            _cancel(timer)   # an ended session does nothing more, a crashed server's least of all
        if self.rt.sessions.get(self.key) is self:
            del self.rt.sessions[self.key]
        _resolve(self.closed)

    def _lose(self, reason: str) -> None:
        if self.state in _ENDED:
            return
        was_loading = self.state is SessionState.LOADING  # then the load fails instead: no on_lock_lost
        self._release_tx()
        if self._holds_lock:
            self.rt.lock_event("lost", self)
        self._holds_lock = False
        self.rt.counters.locks_lost += 1
        self._end(SessionState.LOCK_LOST)
        _resolve(self.loaded)
        self.rt.log("error", f"lock lost: {reason}", key=self.key)
        if self.rt.config.on_lock_lost is not None and not was_loading:
            try:
                self.rt.config.on_lock_lost(self.key)
            except Exception as exc:
                self.rt.log("error", f"on_lock_lost raised {type(exc).__name__}: {exc}", key=self.key)

    # ----------------------------------------------------------------------------------- transactions
    #
    # The participant's side of a two-phase commit (the coordinator package drives it). While a transaction holds
    # the session, it holds the mailbox and the save lane: no update, save or unload runs until it finishes. Every
    # message names its transaction and may arrive twice: a repeat is answered as the first was, or is a no-op.

    async def tx_prepare(self, tx_id: str, timeout_s: float) -> Any:
        """Join transaction `tx_id`: block other operations and answer a copy of the data."""
        if self.tx is not None and self.tx.id == tx_id:
            return copy_data(self.tx.before)
        if tx_id in self._refused_txs:
            raise KeyClosedError(f"Key is closed: key {self.key!r} already gave up transaction {tx_id!r}")
        if self.tx is not None:
            raise TxLockedError(f"Key is already locked by another transaction: key {self.key!r}")
        self._check_usable()
        await self.mailbox.acquire()
        try:
            await self.save_lane.acquire()
        except BaseException:
            self.mailbox.release()
            raise
        if self.tx is not None or self.state is not SessionState.ACTIVE:
            busy = self.tx is not None
            self.save_lane.release()
            self.mailbox.release()
            if busy:
                raise TxLockedError(f"Key is already locked by another transaction: key {self.key!r}")
            self._check_usable()
        self.state = SessionState.IN_TRANSACTION
        self.tx = _Tx(tx_id, self.data)
        sched = self.rt.scheduler
        self.tx.timer = sched.call_later(timeout_s, lambda: sched.spawn(self._tx_expire(tx_id)))
        return copy_data(self.data)

    def _current_tx(self, tx_id: str) -> _Tx:
        if self.tx is None or self.tx.id != tx_id:
            raise KeyClosedError(f"Key is closed: key {self.key!r} is not in transaction {tx_id!r} any more")
        return self.tx

    async def tx_write(self, tx_id: str, patch: list, after: Any) -> None:
        """Phase one: write the record as {committed_data: before, tx_id, tx_patch} (fenced, as every write)."""
        tx = self._current_tx(tx_id)
        if tx.written:
            return
        check_value(after, what=f"data for key {self.key!r}")
        self.rt.check_schema(self.key, after)
        txinfo = {"committed_data": tx.before, "tx_id": tx_id, "tx_patch": patch}
        tx.writing = True
        try:
            ok = await self._write(tx.before, txinfo=txinfo)
        except LockLostError:
            self._lose("the lock ran out before the transaction's write")
            raise
        finally:
            tx.writing = False
        if not ok:
            self._lose("another session wrote the record: this session's lock was taken over")
            raise LockLostError(f"Key is closed: the lock on key {self.key!r} was lost in a transaction")
        tx.after, tx.written = after, True

    async def tx_finish(self, tx_id: str, outcome: str, after: Any = None) -> None:
        """Phase two. "commit": the data becomes the transaction's result (the record already holds it, resolved by
        the marker). "apply": a one-key transaction: the data changes like an update, to be saved as usual.
        "abort": the data stays; a record written in phase one is rewritten without the transaction."""
        if self.tx is None or self.tx.id != tx_id:
            return  # finished already, or never joined: a repeated or late message
        tx = self.tx
        try:
            if outcome == "commit":
                new = tx.after if tx.written else after
                old, self.data, self._frozen = self.data, new, None
                if tx.written:
                    self.saved_checksum = rec.checksum(new)
                self.rt.counters.tx_committed += 1
                self.rt.notify_changed(self.key, new, old)
            elif outcome == "apply":
                self.rt.check_schema(self.key, after)
                old, self.data, self._frozen = self.data, after, None
                self.rt.counters.tx_committed += 1
                self.rt.notify_changed(self.key, after, old)
            elif outcome == "abort":
                self.rt.counters.tx_aborted += 1
                if tx.written:
                    await self._write(tx.before)
                    self.saved_checksum = rec.checksum(tx.before)
            else:
                raise ValueError(f"unknown transaction outcome {outcome!r}")
        finally:
            if self.tx is tx:
                self._release_tx()

    def _release_tx(self) -> None:
        tx, self.tx = self.tx, None
        if tx is None:
            return
        _cancel(tx.timer)
        if self.state is SessionState.IN_TRANSACTION:
            self.state = SessionState.ACTIVE
        self.save_lane.release()
        self.mailbox.release()

    async def _tx_expire(self, tx_id: str) -> None:
        """The coordinator went quiet: settle the transaction from what is stored, never by guessing."""
        tx = self.tx
        if tx is None or tx.id != tx_id:
            return
        rt = self.rt
        sched = rt.scheduler
        if tx.writing:  # the record may be landing right now: settle once the write has answered
            tx.timer = sched.call_later(5.0, lambda: sched.spawn(self._tx_expire(tx_id)))
            return
        rt.counters.tx_timeouts += 1
        self._refused_txs = (self._refused_txs + [tx_id])[-16:]
        if not tx.written:  # without this record the commit point cannot have been reached
            rt.log("warn", f"transaction {tx_id} timed out before its write; leaving it", key=self.key)
            self._release_tx()
            return
        try:
            outcome = await resolve_in_doubt(rt, tx_id, self.key)
        except Exception as exc:
            rt.log("warn", f"transaction {tx_id} in doubt ({exc}); asking again later", key=self.key)
            tx.timer = sched.call_later(10.0, lambda: sched.spawn(self._tx_expire(tx_id)))
            return
        rt.log("warn", f"transaction {tx_id} timed out; the store says {outcome}", key=self.key)
        await self.tx_finish(tx_id, "commit" if outcome == "committed" else "abort")

    # ------------------------------------------------------------------------------------------- timers

    def _arm_refresh(self, seconds: float) -> None:
        sched = self.rt.scheduler
        self._refresh_timer = sched.call_later(seconds, lambda: sched.spawn(self._refresh()))

    def _arm_deadline(self) -> None:
        self._deadline_timer = self.rt.scheduler.call_at(self.lock_deadline, self._check_deadline)

    def _arm_autosave(self, seconds: float) -> None:
        sched = self.rt.scheduler
        self._autosave_timer = sched.call_later(seconds, lambda: sched.spawn(self._autosave()))

    def _keeps_lock(self) -> bool:
        return self._holds_lock and self.state not in _ENDED

    async def _refresh(self) -> None:
        if not self._keeps_lock():
            return
        rt, cfg = self.rt, self.rt.config
        if rt.stalled(lambda: rt.scheduler.spawn(self._refresh())):
            return
        sent = rt.scheduler.now()
        mine = self.lock_id
        try:
            got = await rt.locks(self.key).aio.update(
                self.key, lambda old: self._lock_value() if isinstance(old, dict) and old.get("session") == mine
                else None, expiration=cfg.lock_ttl)
        except MemoryStoreError as exc:
            rt.counters.refresh_failures += 1
            rt.log("warn", f"lock refresh failed ({exc}); trying again in {REFRESH_RETRY_S:g} s", key=self.key)
            if self._keeps_lock():
                self._arm_refresh(min(REFRESH_RETRY_S, cfg.lock_refresh))
            return
        if not self._keeps_lock():
            return
        if got is None:
            self._lose("the lock item is gone or names another session")
            return
        self.lock_deadline = max(self.lock_deadline, sent + int(cfg.lock_ttl * 1000))
        rt.counters.refreshes += 1
        rt.lock_event("refreshed", self)
        self._arm_refresh(cfg.lock_refresh)

    def _check_deadline(self) -> None:
        if not self._keeps_lock() or self.rt.stalled(self._check_deadline):
            return
        if self.rt.scheduler.now() >= self.lock_deadline:
            self._lose("no refresh landed before the lock's TTL ran out")
        else:
            self._arm_deadline()

    async def _autosave(self) -> None:
        if self.state not in (SessionState.ACTIVE, SessionState.IN_TRANSACTION):
            return  # (in a transaction, the save waits for it in the save lane)
        try:
            await self.save(force=False)
        except LockLostError:
            return
        except Exception as exc:
            self.rt.log("warn", f"autosave failed: {type(exc).__name__}: {exc}", key=self.key)
        if self.state in (SessionState.ACTIVE, SessionState.IN_TRANSACTION):
            self._arm_autosave(self.rt.config.autosave_interval)


@dataclass
class _Tx:
    id: str
    before: Any
    after: Any = None
    written: bool = False
    writing: bool = False   # a phase-one write is in flight: it may land, so the session cannot give up yet
    timer: Timer | None = None


def _cancel(timer: Timer | None) -> None:
    if timer is not None:
        timer.cancel()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
