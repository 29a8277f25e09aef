"""Roblox's DataStore rules, applied by one storage shard to the entries it owns.

The engine owns the semantics: versions (one new version string per write; the first write of each UTC hour keeps
the previous version as a backup, later writes in that hour replace it; backups expire 30 days after they stop being
current; the latest never expires), tombstones, compare-and-set for UpdateAsync, increments, listings and ordered
stores, plus the fault injector's decisions. It is plain Python driven by a clock; a Ray actor serves it.

It must never decode a user value except to increment an integer, never run user code, and never write part of a
refused request: every check happens before the first write.
"""

from __future__ import annotations

import zlib
from collections import Counter, deque
from dataclasses import dataclass

import msgpack

from lodestore.storage._clock import Clock
from lodestore.storage._errors import DATASTORE_THROTTLED, KEY_THROTTLED, REQUEST_DROPPED, ConfigError, DataStoreError
from lodestore.storage._faults import FaultConfig, FaultInjector, error_name
from lodestore.storage._limits import (BACKUP_RETENTION_MS, DATASTORE_READ_BYTES_PER_MINUTE,
                                      DATASTORE_WRITE_BYTES_PER_MINUTE, HOUR_MS, INT64_MAX, INT64_MIN,
                                      KEY_READ_BYTES_PER_MINUTE, KEY_WINDOW_MS, KEY_WRITE_BYTES_PER_MINUTE,
                                      VERSION_AT_TIME_FUTURE_MS)
from lodestore.storage.datastore import _messages as m
from lodestore.storage.datastore._backends import Backend, EntryKey, VersionRecord
from lodestore.storage.datastore._lifecycle import StoreLifecycle

__all__ = ["DataStoreEngine", "KeyThroughput", "DataStoreLimits"]

_DOTNET_EPOCH_TICKS = 621_355_968_000_000_000
_SWEEP_EVERY_MS = HOUR_MS


def version_string(created_ms: int, seq: int) -> str:
    """A version id shaped like Roblox's ("08DC2E6F5A1B3C00.0000000003.08DC2E6F5A1B3C00.01"), unique per key."""
    ticks = _DOTNET_EPOCH_TICKS + created_ms * 10_000
    return f"{ticks:016X}.{seq:010d}.{ticks:016X}.01"


def _info(rec: VersionRecord) -> m.KeyInfo:
    return m.KeyInfo(rec.key_created_ms, rec.created_ms, rec.version, rec.user_ids, dict(rec.metadata))


def _entry(rec: VersionRecord | None) -> m.Entry:
    if rec is None or rec.deleted:
        return m.MISSING
    return m.Entry(rec.value, _info(rec))




class _Window:
    __slots__ = ("events", "total")

    def __init__(self) -> None:
        self.events: deque[tuple[int, int]] = deque()  # (ms, bytes)
        self.total = 0

    def used(self, now: int) -> int:
        cutoff = now - KEY_WINDOW_MS
        while self.events and self.events[0][0] <= cutoff:
            self.total -= self.events.popleft()[1]
        return self.total

    def add(self, now: int, amount: int) -> None:
        self.events.append((now, amount))
        self.total += amount

    def wait_ms(self, now: int, amount: int, limit: int) -> int | None:
        """Simulated ms until `amount` more fits under `limit` (the oldest requests leave the window), or None
        when it never can (one request larger than the limit). Call after `used(now)`."""
        if amount > limit:
            return None
        excess, freed = self.total + amount - limit, 0
        for at, size in self.events:
            freed += size
            if freed >= excess:
                return max(1, at + KEY_WINDOW_MS - now)
        return 1


@dataclass(frozen=True, slots=True)
class DataStoreLimits:
    """The throughput one data store may use as a whole, per sliding minute, in bytes (each request rounded up to
    the next KB, as for a key). Over it, requests get 429 `DatastoreThrottled` at once (retryable; the error's
    `retry_after_ms` says when there is room).

    Roblox says a hot data store as a whole is throttled but publishes no number; lodestore's defaults are 100 times
    a key's (2,500 MB read, 400 MB written a minute), far above what a store gets unless one hammers it on purpose.
    A world of several shards gives each shard an equal share of the limit (a store's keys spread evenly over the
    shards' hash ranges). Set with `World.set_datastore_limits`.
    """

    read_bytes_per_minute: int = DATASTORE_READ_BYTES_PER_MINUTE
    write_bytes_per_minute: int = DATASTORE_WRITE_BYTES_PER_MINUTE

    def __post_init__(self) -> None:
        for name in ("read_bytes_per_minute", "write_bytes_per_minute"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
                raise ConfigError(f"DataStoreLimits {name} must be an int of at least 1024 bytes, got {value!r}",
                                  field=name)

    def share(self, shards: int) -> "DataStoreLimits":
        """One shard's part of these limits (at least 1 KB each)."""
        return DataStoreLimits(max(1024, -(-self.read_bytes_per_minute // shards)),
                               max(1024, -(-self.write_bytes_per_minute // shards)))


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MB" if limit % (1024 * 1024) == 0 else f"{limit // 1024} KB"


class KeyThroughput:
    """Roblox's per-key limits: 25 MB read and 4 MB written per key per sliding minute, each request rounded up to
    the next KB; and a data store's as a whole (`DataStoreLimits`). A shard sees every request for its keys, so it
    is where these windows live.

    A refusal counts nothing. A key over its limit raises 429 KeyThrottled with `retry_after_ms`: the client keeps
    the request waiting in its queue ("temporarily skipped") and sends it again then; a store over its limit raises
    429 DatastoreThrottled, which the client does not wait for."""

    SWEEP_EVERY = 10_000

    def __init__(self, limits: DataStoreLimits | None = None) -> None:
        self._windows: dict[tuple, _Window] = {}
        self._since_sweep = 0
        self.limits = limits or DataStoreLimits()
        self.refused: Counter = Counter()   # error name (KeyThrottled, DatastoreThrottled) -> requests refused

    @property
    def key_throttled(self) -> int:
        """Requests refused because one key was over its limit."""
        return self.refused[KEY_THROTTLED[1]]

    @property
    def datastore_throttled(self) -> int:
        """Requests refused because a whole data store was over its limit."""
        return self.refused[DATASTORE_THROTTLED[1]]

    @staticmethod
    def charge(size: int) -> int:
        return max(1, -(-size // 1024)) * 1024

    def _window(self, wk: tuple, now: int) -> _Window:
        window = self._windows.get(wk)
        if window is None:
            window = self._windows[wk] = _Window()
        window.used(now)
        return window

    def admit(self, k: tuple, direction: str, size: int, now: int) -> None:
        """Count a request of `size` bytes against key `k` and its data store, or raise (429 KeyThrottled or
        DatastoreThrottled, with `retry_after_ms`) and count nothing."""
        amount = self.charge(size)
        reads = direction == "read"
        checks = ((self._window((k, direction), now), KEY_THROTTLED, f"key {k[2]!r} of store {k[0]!r}",
                   KEY_READ_BYTES_PER_MINUTE if reads else KEY_WRITE_BYTES_PER_MINUTE),
                  (self._window((k[0], direction), now), DATASTORE_THROTTLED, f"data store {k[0]!r} on this shard",
                   self.limits.read_bytes_per_minute if reads else self.limits.write_bytes_per_minute))
        for window, error, what, limit in checks:
            if window.total + amount > limit:
                self.refused[error[1]] += 1
                raise DataStoreError(*error, f"{what}: {direction}s over {_size(limit)} in the last minute "
                                     f"({window.total // 1024} KB used, this request {amount // 1024} KB)",
                                     retry_after_ms=window.wait_ms(now, amount, limit))
        for window, *_ in checks:
            window.add(now, amount)
        self._since_sweep += 1
        if self._since_sweep >= self.SWEEP_EVERY:
            self._since_sweep = 0
            self._windows = {wk: w for wk, w in self._windows.items() if w.used(now)}


class DataStoreEngine:
    """Executes batches of DataStore requests against one backend.

    >>> engine = DataStoreEngine(MemoryBackend(), ManualClock())
    >>> reply = engine.execute([m.Get("players", "global", "u1")])
    >>> reply.results
    [Entry(value=None, info=None)]
    """

    def __init__(self, backend: Backend, clock: Clock, faults: FaultConfig | None = None,
                 limits: DataStoreLimits | None = None) -> None:
        self.backend = backend
        self.clock = clock
        self.faults = FaultInjector(faults)
        self.throughput = KeyThroughput(limits)
        self.requests = 0
        self.requests_by_type: Counter = Counter()   # RequestType value -> requests
        self.stored_bytes = 0     # bytes of the current values written since this engine started
        self.conflicts = 0
        self._next_sweep_ms = 0
        self._closed = False
        self.lifecycle = StoreLifecycle(backend)   # deleted stores, snapshots, operator requests
        self._handlers = {
            m.Get: self._get, m.Set: self._set, m.Increment: self._increment, m.Remove: self._remove,
            m.ListKeys: self._list_keys, m.ListVersions: self._list_versions, m.GetVersion: self._get_version,
            m.GetVersionAtTime: self._get_version_at_time, m.RemoveVersion: self._remove_version,
            m.OrderedGet: self._ordered_get, m.OrderedSet: self._ordered_set,
            m.OrderedIncrement: self._ordered_increment, m.OrderedRemove: self._ordered_remove,
            m.OrderedRange: self._ordered_range, m.Sweep: self._sweep, **self.lifecycle.handlers(),
        }

    def set_faults(self, faults: FaultConfig) -> None:
        self.faults.reconfigure(faults)

    def set_limits(self, limits: DataStoreLimits) -> None:
        """A data store's throughput limit on this engine, from now on (the windows keep what they counted)."""
        if not isinstance(limits, DataStoreLimits):
            raise ConfigError(f"limits must be a storage.DataStoreLimits, got {type(limits).__name__}")
        self.throughput.limits = limits

    def storage_bytes(self) -> int:
        """What this engine's backend holds toward the experience's storage limit: the zlib-compressed size (level
        6, each value compressed on its own) of the stored msgpack bytes of every key's latest version, plus every
        ordered entry's; tombstones and backups do not count. Reads the whole backend (an operator's call)."""
        if self._closed:
            return 0
        return sum(len(zlib.compress(value)) for value in self.backend.latest_values())

    def close(self) -> None:
        """Close the backend (SQLite: its WAL checkpointed into the file, see `SqliteBackend.close`); from now on
        every request is dropped with 509 RequestDropped, which says it was not applied. Closing again does
        nothing."""
        self._closed = True
        self.backend.close()

    def execute(self, ops: list) -> m.BatchReply:
        """Run every request of the batch in order, in one backend transaction. A request that fails yields its
        DataStoreError in its slot; the others still run. Replaying a batch is not idempotent (like Roblox,
        every write makes a new version), so callers must not retry blindly; see `storage._transport`."""
        if self._closed:
            return m.BatchReply([DataStoreError(*REQUEST_DROPPED,
                                                f"this DataStore shard is closed (its world was shut down); "
                                                f"{type(op).__name__} was not applied") for op in ops], None)
        now = self.clock.now()
        results: list = []
        delays: list[float] | None = None
        with self.backend.transaction():
            if now >= self._next_sweep_ms:
                self._sweep(m.Sweep(), now)
            for i, op in enumerate(ops):
                handler = self._handlers.get(type(op))
                if handler is None:
                    results.append(DataStoreError(502, "RequestRejected", f"unknown request {type(op).__name__}"))
                    continue
                self.requests += 1
                self.requests_by_type[op.request_type.value] += 1
                key = getattr(op, "key", None)
                decision = self.faults.decide(op.request_type,
                                              (getattr(op, "store", None), getattr(op, "scope", None), key), now)
                if decision.delay_ms:
                    if delays is None:
                        delays = [0.0] * len(ops)
                    delays[i] = decision.delay_ms
                if decision.fail_code is not None and not decision.ambiguous:
                    results.append(DataStoreError(decision.fail_code, error_name(decision.fail_code),
                                                  decision.fail_message))
                    continue
                try:
                    self.lifecycle.admit(op, now)
                    result = handler(op, now)
                except DataStoreError as exc:
                    result = exc
                if decision.ambiguous:
                    result = DataStoreError(decision.fail_code, error_name(decision.fail_code), decision.fail_message)
                results.append(result)
        return m.BatchReply(results, delays)

    # ---------------------------------------------------------------------------------------------- standard

    def _get(self, op: m.Get, now: int) -> m.Entry:
        k = (op.store, op.scope, op.key)
        entry = _entry(self.backend.latest(k))
        self.throughput.admit(k, "read", len(entry.value) if entry.value is not None else 0, now)
        return entry

    def _write(self, k: EntryKey, latest: VersionRecord | None, now: int, *, value: bytes | None,
               user_ids: tuple[int, ...], metadata: dict, deleted: bool) -> VersionRecord:
        """Write a new current version, keeping or replacing the previous one by the hourly backup rule (a version
        current at the latest snapshot is always kept: `StoreLifecycle.keeps_backup`)."""
        seq = latest.seq + 1 if latest else 1
        alive = latest is not None and not latest.deleted
        if latest is not None:
            if latest.created_ms // HOUR_MS == now // HOUR_MS and not self.lifecycle.keeps_backup(latest):
                self.backend.delete_version(k, latest.seq)
            else:
                self.backend.supersede(k, latest.seq, now)
        rec = VersionRecord(seq, version_string(now, seq), now, latest.key_created_ms if alive else now, None,
                            deleted, value, user_ids, metadata)
        self.stored_bytes += len(value or b"") - (len(latest.value or b"") if alive else 0)
        self.backend.insert(k, rec)
        return rec

    def _set(self, op: m.Set, now: int) -> m.Written | m.Conflict:
        k = (op.store, op.scope, op.key)
        self.throughput.admit(k, "write", op.size, now)
        latest = self.backend.latest(k)
        if op.if_version is not m.ANY:
            current = latest.version if latest is not None and not latest.deleted else None
            if current != op.if_version:
                self.conflicts += 1
                return m.Conflict(_entry(latest))
        rec = self._write(k, latest, now, value=op.value, user_ids=op.user_ids, metadata=op.metadata, deleted=False)
        return m.Written(_info(rec))

    def _increment(self, op: m.Increment, now: int) -> m.Entry:
        k = (op.store, op.scope, op.key)
        self.throughput.admit(k, "write", 0, now)
        latest = self.backend.latest(k)
        old = 0
        if latest is not None and not latest.deleted:
            old = msgpack.unpackb(latest.value, raw=False)
            if isinstance(old, bool) or not isinstance(old, int):
                raise DataStoreError(103, "ValueNotAllowed",
                                     f"cannot increment key {op.key!r}: its value is a {type(old).__name__}, "
                                     "not an integer")
        new = old + op.delta
        if not INT64_MIN <= new <= INT64_MAX:
            raise DataStoreError(104, "CantStoreValue",
                                 f"incrementing key {op.key!r} by {op.delta} overflows a 64-bit integer")
        value = msgpack.packb(new)
        rec = self._write(k, latest, now, value=value, user_ids=op.user_ids,
                          metadata=latest.metadata if latest is not None and not latest.deleted else {},
                          deleted=False)
        return m.Entry(value, _info(rec))

    def _remove(self, op: m.Remove, now: int) -> m.Entry:
        k = (op.store, op.scope, op.key)
        self.throughput.admit(k, "write", 0, now)   # a remove counts as a write (2025)
        latest = self.backend.latest(k)
        previous = _entry(latest)
        if previous.value is not None:
            self._write(k, latest, now, value=None, user_ids=(), metadata={}, deleted=True)
        return previous

    def _live_versions(self, k: EntryKey, now: int) -> list[VersionRecord]:
        cutoff = now - BACKUP_RETENTION_MS
        return [r for r in self.backend.versions(k) if r.superseded_ms is None or r.superseded_ms > cutoff]

    def _list_keys(self, op: m.ListKeys, now: int) -> list[str]:
        return self.backend.list_keys(op.store, op.scope, op.prefix, op.after, op.limit, op.exclude_deleted)

    def _list_versions(self, op: m.ListVersions, now: int) -> list[tuple[int, m.VersionInfo]]:
        self.throughput.admit((op.store, op.scope, op.key), "read", 0, now)   # counts as a read (2025)
        recs = self._live_versions((op.store, op.scope, op.key), now)
        if not op.ascending:
            recs.reverse()
        out = []
        for r in recs:
            if op.min_ms is not None and r.created_ms < op.min_ms:
                continue
            if op.max_ms is not None and r.created_ms > op.max_ms:
                continue
            if op.after_seq is not None and (r.seq <= op.after_seq if op.ascending else r.seq >= op.after_seq):
                continue
            out.append((r.seq, m.VersionInfo(r.version, r.created_ms, r.deleted)))
            if len(out) >= op.limit:
                break
        return out

    def _get_version(self, op: m.GetVersion, now: int) -> m.Entry:
        for r in self._live_versions((op.store, op.scope, op.key), now):
            if r.version == op.version:
                return _entry(r)
        return m.MISSING

    def _get_version_at_time(self, op: m.GetVersionAtTime, now: int) -> m.Entry:
        if op.ms <= 0 or op.ms > now + VERSION_AT_TIME_FUTURE_MS:
            raise DataStoreError(400, "InvalidTimestamp",
                                 f"timestamp {op.ms} must be > 0 and at most 10 minutes ahead of now ({now})")
        current = None
        for r in self._live_versions((op.store, op.scope, op.key), now):
            if r.created_ms <= op.ms:
                current = r
        return _entry(current)

    def _remove_version(self, op: m.RemoveVersion, now: int) -> None:
        k = (op.store, op.scope, op.key)
        for r in self._live_versions(k, now):
            if r.version == op.version:
                if r.superseded_ms is None:
                    raise DataStoreError(400, "InvalidVersion",
                                         f"version {op.version} is the current version of key {op.key!r}; "
                                         "only backups can be removed")
                self.backend.delete_version(k, r.seq)
                return None
        return None

    # ----------------------------------------------------------------------------------------------- ordered

    def _ordered_get(self, op: m.OrderedGet, now: int) -> m.OrderedValue:
        got = self.backend.ordered_get((op.store, op.scope, op.key))
        return m.OrderedValue(*got) if got else m.OrderedValue(None, None)

    def _ordered_set(self, op: m.OrderedSet, now: int) -> m.OrderedValue | m.OrderedConflict:
        k = (op.store, op.scope, op.key)
        got = self.backend.ordered_get(k)
        if op.if_revision is not m.ANY and (got[1] if got else None) != op.if_revision:
            self.conflicts += 1
            return m.OrderedConflict(m.OrderedValue(*got) if got else m.OrderedValue(None, None))
        revision = got[1] + 1 if got else 1
        self.backend.ordered_put(k, op.value, revision)
        return m.OrderedValue(op.value, revision)

    def _ordered_increment(self, op: m.OrderedIncrement, now: int) -> m.OrderedValue:
        k = (op.store, op.scope, op.key)
        got = self.backend.ordered_get(k)
        new = (got[0] if got else 0) + op.delta
        if not INT64_MIN <= new <= INT64_MAX:
            raise DataStoreError(104, "CantStoreValue",
                                 f"incrementing key {op.key!r} by {op.delta} overflows a 64-bit integer")
        revision = got[1] + 1 if got else 1
        self.backend.ordered_put(k, new, revision)
        return m.OrderedValue(new, revision)

    def _ordered_remove(self, op: m.OrderedRemove, now: int) -> m.OrderedValue:
        k = (op.store, op.scope, op.key)
        got = self.backend.ordered_get(k)
        self.backend.ordered_delete(k)
        return m.OrderedValue(*got) if got else m.OrderedValue(None, None)

    def _ordered_range(self, op: m.OrderedRange, now: int) -> list[tuple[str, int]]:
        return self.backend.ordered_range(op.store, op.scope, op.ascending, op.limit, op.min_value, op.max_value,
                                          op.after)

    def administer(self, ops: list) -> list:
        """Run a World's operator requests (`_lifecycle`: delete, undelete, snapshot, settings, an erasure's raw
        reads and purges) in one backend transaction: no budget, no faults, never refused for a deleted store.
        A request that fails yields its DataStoreError in its slot."""
        if self._closed:
            return [DataStoreError(500, "InternalServerError", "this DataStore shard is closed") for _ in ops]
        now = self.clock.now()
        results: list = []
        with self.backend.transaction():
            for op in ops:
                try:
                    results.append(self.lifecycle.administer(op, now))
                except DataStoreError as exc:
                    results.append(exc)
        return results

    # ---------------------------------------------------------------------------------------------- upkeep

    def _sweep(self, op: m.Sweep, now: int) -> int:
        self._next_sweep_ms = now + _SWEEP_EVERY_MS
        self.lifecycle.purge_expired(now)
        return self.backend.delete_backups_before(now - BACKUP_RETENTION_MS)
