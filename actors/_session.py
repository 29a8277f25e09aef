"""Sessions: one simulated game server's hold on one key (Lyra's Session, with a fencing token).

A `Session` owns the data in memory, the applied migrations, the checksum of the last saved state, the load (lock,
claim of the record), the fenced writes, the removal of orphaned shards, the unload, and the autosave timer of its
store's scheduler. Operations that read or change data run one at a time, in the order they arrived (the mailbox);
writes run one at a time in their own lane, so a slow save never holds up an update, and each save writes a snapshot
at least as new as the one before it. Its lock is a `LockLease` (`actors._lease`: acquire, refresh, deadline, steal,
release, lost), its side of a transaction a `TxParticipant` (`actors._participant`), and the data a load starts
from comes from `actors._migrations`.

Safety rules this module keeps:
- Never a write after the lock is gone. The lock has a local deadline (send time of the last refresh that landed +
  TTL); a write is not started past it. Every record names the session that wrote it last (`session`, a fencing
  token), and every write is a compare-and-set that only goes through while the stored record is still ours, so a
  session whose lock was taken over cannot write even when its clock or its refreshes lag.
- A failed load (a migration or schema failure, a lock timeout, a storage error) writes nothing and releases the lock.
- Unload saves first and releases the lock only after the save landed; when the save fails the session stays loaded
  (and keeps its lock) so nothing acknowledged is dropped.

Plain Python on asyncio: no Ray here. `StoreRuntime` is one store inside one host (its config, clients, sessions).
Delivered twice: the host makes a repeated load or unload a no-op; a repeated save writes again; a record write
retried after an ambiguous failure finds its own earlier attempt (it names this session) and counts it as done.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from lodestore.actors import _records as rec
from lodestore.actors._config import LogMessage, StoreConfig, check_schema
from lodestore.actors._errors import KeyClosedError, LockLostError, RecordError
from lodestore.actors._lease import LockLease
from lodestore.actors._migrations import initial_data, migrate
from lodestore.actors._participant import TxParticipant
from lodestore.actors._records import copy_data
from lodestore.actors._txn import (TX_STORE, abort_if_pending, lock_map_name, marker_committed, records_store,
                                   shards_store)
from lodestore.storage import (Backoff, DataStoreError, MemoryStoreError, RequestType, Scheduler, Timer,
                               TransformError, UpdateResult, canonical, retry)

__all__ = ["SessionState", "Session", "StoreRuntime", "StoreCounters"]

ORPHAN_BUDGET_FLOOR = 100   # remove old shards only while this many remove requests are left (Lyra's rule)
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
        def warn(exc: BaseException, attempt: int, wait: float) -> None:
            self.log("warn", f"{what} failed ({exc}); retrying in {wait:g} s", key=key, attempt=attempt)

        return await retry(call, attempts=self.config.retry_attempts, backoff=STORAGE_BACKOFF,
                           retryable=_retryable, sleep=self.scheduler.sleep, on_retry=warn)

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

    def check_schema(self, key: str, data: Any) -> None:
        check_schema(self.config.schema, key, data)

    def notify_changed(self, key: str, new: Any, old: Any) -> None:
        for callback in self.config.changed_callbacks:
            try:
                callback(key, copy_data(new), None if old is None else copy_data(old))
            except Exception as exc:
                self.log("error", f"changed callback raised {type(exc).__name__}: {exc}", key=key)


# Roblox's MemoryStore errors worth retrying: the service failed the request, or a request-unit limit was spent.
_MS_RETRYABLE = frozenset({"InternalError", "TotalRequestsOverLimit", "DataStructureRequestsOverLimit",
                           "PartitionRequestsOverLimit"})
STORAGE_BACKOFF = Backoff(base=1.0, cap=30.0)   # a session's storage retries and lock waits: 1, 2, 4 ... 30 s


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, DataStoreError):
        return exc.retryable
    return isinstance(exc, MemoryStoreError) and exc.name in _MS_RETRYABLE


class Session:
    """One key held by one server. Created LOADING by the host; `load()` makes it ACTIVE or ends it.

    Its lock is `self.lease` (a `LockLease`), its side of a transaction `self.participant` (a `TxParticipant`);
    `check_usable`, `enter_transaction`, `leave_transaction`, `replace_data`, `write_record` and `lose` are what the
    participant calls back."""

    __slots__ = ("rt", "key", "user_ids", "state", "data", "applied", "saved_checksum", "info", "file", "orphans",
                 "mailbox", "save_lane", "unload_requested", "loaded", "closed", "lease", "participant",
                 "_autosave_timer", "_frozen", "_unload_wake")

    def __init__(self, rt: StoreRuntime, key: str, user_ids: tuple[int, ...] = ()) -> None:
        loop = asyncio.get_running_loop()
        self.rt = rt
        self.key = key
        self.user_ids = user_ids
        self.state = SessionState.LOADING
        self.data: Any = None          # replaced, never mutated in place: a reference is a snapshot
        self.applied: tuple[str, ...] = ()
        self.saved_checksum: str | None = None
        self.info = None               # KeyInfo of the record as this session last wrote it
        self.file: dict | None = None  # the sharded file the record points to, when it is sharded
        self.orphans: list[dict] = []
        self.mailbox = asyncio.Lock()
        self.save_lane = asyncio.Lock()
        self.unload_requested = False
        self.loaded = loop.create_future()   # set when load ends, either way
        self.closed = loop.create_future()   # set when the session ends (closed, lock lost, or load failed)
        self.lease = LockLease(rt, key, on_lost=self.lose)
        self.participant = TxParticipant(self)
        self._autosave_timer: Timer | None = None
        self._frozen: Any = None
        self._unload_wake: asyncio.Future | None = None   # done when an unload asks a loading session to stop

    def __repr__(self) -> str:
        return f"Session({self.rt.config.name!r}, {self.key!r}, {self.state.value})"

    @property
    def lock_id(self) -> str:
        """The fencing token: the lease's id, named by every record this session writes."""
        return self.lease.id

    # --------------------------------------------------------------------------------------------- load

    async def load(self) -> None:
        rt = self.rt
        self._unload_wake = asyncio.get_running_loop().create_future()
        try:
            # refreshed from now on: a load can take long; an unload meanwhile stops the wait at once
            await self.lease.acquire(self._stop_if_unloading, self._unload_wake)
            self._stop_if_unloading()
            data, applied = await self._claim()
            self._stop_if_unloading()
            if self.state is not SessionState.LOADING:   # the host crashed or closed while we loaded
                raise KeyClosedError(f"Key is closed: key {self.key!r} was closed while it was loading")
        except BaseException as exc:
            rt.counters.load_failures += 1
            rt.log("warn", f"load failed: {type(exc).__name__}: {exc}", key=self.key)
            await self.lease.release()
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

    async def _claim(self) -> tuple[Any, tuple[str, ...]]:
        """Read the record, migrate and check it, and write it back naming this session (the fencing token)."""
        rt = self.rt
        for _ in range(_CLAIM_ATTEMPTS):
            value, info = await rt.retrying(lambda: rt.records.aio.get(self.key, False), "record read", self.key)
            if value is None:
                data, applied = initial_data(rt.config, self.key)
            else:
                data = await rt.read_data(self.key, value, use_cache=False, settle=True)
                applied = tuple(value["applied_migrations"])
                stored = list(value.get("orphaned_files", ()))
                self.orphans = stored + [f for f in self.orphans if f not in stored]  # keep our own strays
                self.file = value["file"] if "shard" in value["file"] else None
            data, applied = migrate(rt.config, self.key, data, applied)
            rt.check_schema(self.key, data)
            self.applied = applied
            if await self._write(data, current=(value, info)):
                return data, applied
            rt.log("info", "the record changed while loading; reading it again", key=self.key)
        raise RecordError(f"key {self.key!r}: the record kept changing while loading ({_CLAIM_ATTEMPTS} reads)")

    # ---------------------------------------------------------------------------------------- reads, updates

    def check_usable(self) -> None:
        """Raise unless the session is ACTIVE: LockLostError when its lock was lost, else KeyClosedError."""
        if self.state is SessionState.ACTIVE:
            return
        if self.state is SessionState.LOCK_LOST:
            raise LockLostError(f"Key is closed: the lock on key {self.key!r} was lost")
        raise KeyClosedError(f"Key is closed: key {self.key!r} is {self.state.value}")

    async def get(self) -> Any:
        async with self.mailbox:
            self.check_usable()
            return copy_data(self.data)

    async def update(self, fn: Callable[[Any], Any]) -> bool:
        async with self.mailbox:
            self.check_usable()
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
            self.check_usable()
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
        rec.check_data(new, what=f"data for key {self.key!r}")
        self.rt.check_schema(self.key, new)
        old = self.replace_data(new)
        self.rt.notify_changed(self.key, new, old)

    def replace_data(self, new: Any) -> Any:
        """Make `new` (already checked) the session's data; returns the data it replaces."""
        old, self.data, self._frozen = self.data, new, None
        return old

    # ------------------------------------------------------------------------------------- transactions

    def enter_transaction(self) -> None:
        """A transaction holds the session (its participant holds the mailbox and the save lane)."""
        self.state = SessionState.IN_TRANSACTION

    def leave_transaction(self) -> None:
        """The transaction let go: the session is ACTIVE again, unless it ended meanwhile."""
        if self.state is SessionState.IN_TRANSACTION:
            self.state = SessionState.ACTIVE

    # -------------------------------------------------------------------------------------------- saving

    async def save(self, force: bool = True) -> bool:
        """Write the data (a snapshot taken once this save's turn comes). Without `force`, skip the write when the
        data equals what was saved last. Returns whether a write happened."""
        async with self.save_lane:
            if self.state not in _LIVE:
                self.check_usable()
            data = self.data
            taken = self.rt.scheduler.now()
            blob = canonical(data)   # data in a session has passed check_data
            digest = rec.digest(blob)
            if not force and digest == self.saved_checksum:
                self.rt.counters.saves_skipped += 1
                self._saved(taken)
                return False
            try:
                ok = await self._write(data, size_hint=len(blob))
            except LockLostError:
                self.lose("the lock ran out before the write could start")
                raise
            except BaseException:
                self.rt.counters.save_failures += 1
                raise
            if not ok:
                self.lose("another session wrote the record: this session's lock was taken over")
                raise LockLostError(f"Key is closed: the lock on key {self.key!r} was lost before the save")
            self.saved_checksum = digest
            self.rt.counters.saves += 1
            self._saved(taken)
            return True

    def _saved(self, taken: int) -> None:
        callback = self.rt.config.save_callback
        if callback is not None:
            try:
                callback(self.key, taken)
            except Exception as exc:
                self.rt.log("error", f"save callback raised {type(exc).__name__}: {exc}", key=self.key)

    async def write_record(self, data: Any, *, txinfo: dict | None = None) -> bool:
        """A fenced write of the record holding `data` (or, for a transaction's phase one, the inline `txinfo`):
        False when someone else's record was found (nothing written). Raises LockLostError past the deadline."""
        return await self._write(data, txinfo=txinfo)

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
        if self.lease.past_deadline():
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
            if self._unload_wake is not None and not self._unload_wake.done():
                self._unload_wake.set_result(None)
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
            await self.lease.release()
            self.rt.counters.unloads += 1
            self._end(SessionState.CLOSED)

    def _check_not_lost(self) -> None:
        """An unload that finds its session ended by a lost lock must not pass for a final save."""
        if self.state is SessionState.LOCK_LOST:
            raise LockLostError(f"Lock lost: key {self.key!r} of store {self.rt.config.name!r} lost its lock before "
                                f"its final save; changes since its last save are gone")

    def crash(self) -> None:
        """The server crashed: stop at once, with no save and no lock release (the lock expires by its TTL)."""
        self.lease.abandon()
        self._end(SessionState.CLOSED)

    def _end(self, state: SessionState) -> None:
        self.state = state
        _cancel(self._autosave_timer)   # an ended session does nothing more, a crashed server's least of all
        self.participant.cancel_timer()  # (the lease keeps no timer once it stopped holding)
        if self.rt.sessions.get(self.key) is self:
            del self.rt.sessions[self.key]
        _resolve(self.closed)

    def lose(self, reason: str) -> None:
        """The lock is lost (the lease found it gone, or a fenced write was refused): the session ends LOCK_LOST
        without writing again, and `on_lock_lost(key)` hears of it (not for a session still loading: its load
        fails instead). A no-op once the session ended."""
        if self.state in _ENDED:
            return
        was_loading = self.state is SessionState.LOADING  # then the load fails instead: no on_lock_lost
        self.participant.release()
        self.lease.lost()
        self.rt.counters.locks_lost += 1
        self._end(SessionState.LOCK_LOST)
        _resolve(self.loaded)
        self.rt.log("error", f"lock lost: {reason}", key=self.key)
        if self.rt.config.on_lock_lost is not None and not was_loading:
            try:
                self.rt.config.on_lock_lost(self.key)
            except Exception as exc:
                self.rt.log("error", f"on_lock_lost raised {type(exc).__name__}: {exc}", key=self.key)

    # ------------------------------------------------------------------------------------------- timers

    def _arm_autosave(self, seconds: float) -> None:
        sched = self.rt.scheduler
        self._autosave_timer = sched.call_later(seconds, lambda: sched.spawn(self._autosave()))

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


def _cancel(timer: Timer | None) -> None:
    if timer is not None:
        timer.cancel()


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
