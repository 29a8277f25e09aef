"""Data stores' lifecycle, as one shard keeps it: deletion and its 30 days, purging, snapshots, and the raw access
an erasure needs.

Owns the state of each deleted data store (when it was deleted: it is DELETED until `PURGE_AFTER_MS` later, then
purged), the time of the latest snapshot (after it, the next write of every key keeps the previous version as a
backup, see `keeps_backup`), the world-level settings kept in the world's file (the deletion templates), and the
operator requests a World sends to every shard (`administer`): they spend no budget, are never faulted and are not
refused for a deleted store. All of it is persisted in the shard's backend (`get_meta`/`put_meta`, JSON), so a world
restarted on the same SQLite file finds its deleted stores, its snapshot time and its templates again.

Purging is lazy and measured on the world's clock: a deleted store past its 30 days is purged (every entry and every
version written before its deletion removed; its name is free again) when a request or an operator call touches it,
or at the engine's hourly sweep, whichever comes first. Until then its entries stay where they are and count toward
storage.

It must never decode a user value, and never change an entry of a store that is not deleted, except for an erasure's
`PurgeKey` (the one request that removes a key with every version and leaves no tombstone).

Delivered twice: `DeleteStore` of a deleted store answers its info unchanged, `Snapshot` and `PutMeta` set the same
value again, `PurgeKey` finds nothing the second time; `UndeleteStore` of a store it restored already answers 400
`DatastoreNotDeleted` (the first delivery did it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from lodestore.storage._errors import DATASTORE_DELETED, DataStoreError
from lodestore.storage._limits import BACKUP_RETENTION_MS, RequestType
from lodestore.storage.datastore import _messages as m
from lodestore.storage.datastore._backends import Backend, VersionRecord

__all__ = ["DataStoreState", "DataStoreInfo", "SnapshotResult", "PURGE_AFTER_MS",
           "LIST_STORES_DEFAULT_PAGE", "same_utc_day", "StoreLifecycle", "ListStores", "DescribeStore", "DeleteStore",
           "UndeleteStore", "Snapshot", "GetMeta", "PutMeta", "ReadVersions", "PurgeKey", "ListAllKeys", "merge_infos"]


LIST_STORES_DEFAULT_PAGE = 32
"""ListDataStoresAsync's default page size."""

PURGE_AFTER_MS = BACKUP_RETENTION_MS
"""A deleted data store can be undeleted for 30 days; then it is purged."""

_STATES_META = "data_stores"      # {name: {"deleted_ms": int}} of the deleted stores
_SNAPSHOT_META = "snapshot_ms"    # the latest snapshot's time, or absent
_DAY_MS = 24 * 3600 * 1000

STANDARD_REQUESTS = (m.Get, m.Set, m.Increment, m.Remove, m.ListKeys, m.ListVersions, m.GetVersion,
                     m.GetVersionAtTime, m.RemoveVersion)
"""The requests that reach a standard data store, refused while it is deleted (ordered data stores are another
namespace on Roblox and are not deleted with it)."""


class DataStoreState(str, Enum):
    """A data store's state as Open Cloud v2 reports it."""

    ACTIVE = "ACTIVE"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class DataStoreInfo:
    """One data store, as `DataStoreService.list_data_stores` and `World.delete_data_store` describe it (Roblox's
    DataStoreInfo, with Open Cloud v2's state and expire time). Times are ms on the world's clock: `created_time` is
    the earliest creation time of a key it holds, `updated_time` its latest write; `expire_time` is when a deleted
    store is purged (deletion + 30 days), None for an active one."""

    name: str
    created_time: int
    updated_time: int
    state: DataStoreState = DataStoreState.ACTIVE
    expire_time: int | None = None


@dataclass(frozen=True, slots=True)
class SnapshotResult:
    """What `World.snapshot_data_stores` did: whether it took a snapshot now (False: one was taken this UTC day
    already), and the latest snapshot's time in ms (0: never)."""

    new_snapshot_taken: bool
    latest_snapshot_time: int


# ---------------------------------------------------------------------------------------------------------------
# Requests. `ListStores` is a game server's (it spends StandardList); the others are a World's operator calls.


@dataclass(frozen=True, slots=True)
class ListStores:
    """Data stores that hold something, in name order, with names starting with `prefix` and after `after`."""

    prefix: str
    after: str | None
    limit: int
    show_deleted: bool
    request_type = RequestType.STANDARD_LIST


@dataclass(frozen=True, slots=True)
class DescribeStore:
    """The store's info from this shard, or None when this shard holds nothing of it."""

    name: str


@dataclass(frozen=True, slots=True)
class DeleteStore:
    """Mark the store deleted on this shard (every shard is told, also those that hold nothing of it, so that no
    request anywhere reaches it); answers its info here, or None."""

    name: str


@dataclass(frozen=True, slots=True)
class UndeleteStore:
    name: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Take a snapshot at `at_ms` (the World decides whether one is due); `at_ms` None only reads the latest."""

    at_ms: int | None


@dataclass(frozen=True, slots=True)
class GetMeta:
    name: str


@dataclass(frozen=True, slots=True)
class PutMeta:
    name: str
    value: Any   # JSON-ready


@dataclass(frozen=True, slots=True)
class ReadVersions:
    """Every stored version of one key, expired backups not yet swept included: [(created_ms, value or None)]."""

    store: str
    scope: str
    key: str


@dataclass(frozen=True, slots=True)
class PurgeKey:
    """Remove one key with every version and backup, leaving no tombstone; answers how many versions went."""

    store: str
    scope: str
    key: str


@dataclass(frozen=True, slots=True)
class ListAllKeys:
    """Up to `limit` key names of one store and scope after `after`, whatever the store's state."""

    store: str
    scope: str
    after: str | None
    limit: int


def merge_infos(parts: list[list[DataStoreInfo]]) -> list[DataStoreInfo]:
    """One list in name order from every shard's answer: a store on several shards is created at the earliest of
    their times and updated at the latest (the shards of a shared file answer alike)."""
    merged: dict[str, DataStoreInfo] = {}
    for infos in parts:
        for info in infos:
            seen = merged.get(info.name)
            if seen is not None:
                info = DataStoreInfo(info.name, min(seen.created_time, info.created_time),
                                     max(seen.updated_time, info.updated_time), info.state, info.expire_time)
            merged[info.name] = info
    return [merged[name] for name in sorted(merged)]


def _not_found(name: str, why: str) -> DataStoreError:
    return DataStoreError(404, "DatastoreNotFound", f"data store {name!r} {why}")


class StoreLifecycle:
    """One shard's lifecycle state over its backend (see the module docstring). The engine asks `admit` before
    every request, `keeps_backup` before every write, and `purge_expired` at its sweep."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.deleted: dict[str, int] = {name: int(s["deleted_ms"])
                                        for name, s in (backend.get_meta(_STATES_META) or {}).items()}
        self.snapshot_ms: int | None = backend.get_meta(_SNAPSHOT_META)
        self._admin: dict[type, Callable[[Any, int], Any]] = {
            DescribeStore: self._describe,
            DeleteStore: self._delete, UndeleteStore: self._undelete, Snapshot: self._snapshot,
            GetMeta: lambda op, now: self.backend.get_meta(op.name),
            PutMeta: lambda op, now: self.backend.put_meta(op.name, op.value),
            ReadVersions: self._read_versions, PurgeKey: self._purge_key, ListAllKeys: self._list_all_keys,
        }

    def handlers(self) -> dict[type, Callable[[Any, int], Any]]:
        """The game-server requests this module answers, for the engine's table of handlers."""
        return {ListStores: self._list_stores}

    # ------------------------------------------------------------------------------------ the engine's hooks

    def admit(self, op: Any, now: int) -> None:
        """Raise 404 `DatastoreDeleted` (`storage.DATASTORE_DELETED`) for a request to a deleted standard data
        store; purge one past its 30 days first (then the request sees an empty store)."""
        if not isinstance(op, STANDARD_REQUESTS) or op.store not in self.deleted:
            return
        if self._purge_if_expired(op.store, now):
            return
        raise DataStoreError(*DATASTORE_DELETED,
                             f"data store {op.store!r} was deleted; undelete it (World.undelete_data_store) before "
                             f"{self.deleted[op.store] + PURGE_AFTER_MS} ms, when it is purged")

    def keeps_backup(self, previous: VersionRecord) -> bool:
        """Whether a write must keep `previous` as a backup although it is of the same UTC hour: it was current
        when the latest snapshot was taken (created at or before it)."""
        return self.snapshot_ms is not None and previous.created_ms <= self.snapshot_ms

    def purge_expired(self, now: int) -> int:
        """Purge every deleted store past its 30 days; how many were."""
        return sum(self._purge_if_expired(name, now) for name in list(self.deleted))

    def administer(self, op: Any, now: int) -> Any:
        handler = self._admin.get(type(op))
        if handler is None:
            raise DataStoreError(502, "RequestRejected", f"unknown operator request {type(op).__name__}")
        return handler(op, now)

    # ------------------------------------------------------------------------------------------- requests

    def _list_stores(self, op: ListStores, now: int) -> list[DataStoreInfo]:
        self.purge_expired(now)
        hidden = () if op.show_deleted else tuple(self.deleted)
        return [self._info(name, created, updated)
                for name, created, updated in self.backend.store_summaries(op.prefix, op.after, op.limit, hidden)]

    def _info(self, name: str, created: int, updated: int) -> DataStoreInfo:
        deleted = self.deleted.get(name)
        if deleted is None:
            return DataStoreInfo(name, created, updated)
        return DataStoreInfo(name, created, updated, DataStoreState.DELETED, deleted + PURGE_AFTER_MS)

    def _summary(self, name: str) -> DataStoreInfo | None:
        found = self.backend.store_summaries(name, None, 1, ())
        if not found or found[0][0] != name:
            return None
        return self._info(*found[0])

    def _describe(self, op: DescribeStore, now: int) -> DataStoreInfo | None:
        self._purge_if_expired(op.name, now)
        return self._summary(op.name)

    def _delete(self, op: DeleteStore, now: int) -> DataStoreInfo | None:
        self._purge_if_expired(op.name, now)
        if op.name not in self.deleted:
            self.deleted[op.name] = now
            self._save_states()
        return self._summary(op.name)

    def _undelete(self, op: UndeleteStore, now: int) -> DataStoreInfo | None:
        if self._purge_if_expired(op.name, now):
            raise _not_found(op.name, f"was purged {PURGE_AFTER_MS // _DAY_MS} days after its deletion; it can no "
                                      f"longer be undeleted")
        if op.name not in self.deleted:
            raise DataStoreError(400, "DatastoreNotDeleted", f"data store {op.name!r} is not deleted")
        del self.deleted[op.name]
        self._save_states()
        return self._summary(op.name)

    def _snapshot(self, op: Snapshot, now: int) -> int | None:
        if op.at_ms is not None and (self.snapshot_ms is None or op.at_ms > self.snapshot_ms):
            self.snapshot_ms = op.at_ms
            self.backend.put_meta(_SNAPSHOT_META, op.at_ms)
        return self.snapshot_ms

    def _read_versions(self, op: ReadVersions, now: int) -> list[tuple[int, bytes | None]]:
        return [(r.created_ms, r.value) for r in self.backend.versions((op.store, op.scope, op.key))]

    def _purge_key(self, op: PurgeKey, now: int) -> int:
        return self.backend.purge_key((op.store, op.scope, op.key))

    def _list_all_keys(self, op: ListAllKeys, now: int) -> list[str]:
        return self.backend.list_keys(op.store, op.scope, "", op.after, op.limit, False)

    # ------------------------------------------------------------------------------------------- plumbing

    def _purge_if_expired(self, name: str, now: int) -> bool:
        deleted = self.deleted.get(name)
        if deleted is None or now < deleted + PURGE_AFTER_MS:
            return False
        # Only what was written before the deletion: the shards of a shared file purge one after the other, and a
        # late one must not take the versions of a new store of that name another shard wrote meanwhile.
        self.backend.purge_store(name, deleted)
        del self.deleted[name]
        self._save_states()
        return True

    def _save_states(self) -> None:
        self.backend.put_meta(_STATES_META, {name: {"deleted_ms": ms} for name, ms in sorted(self.deleted.items())})


def same_utc_day(a_ms: int, b_ms: int) -> bool:
    return a_ms // _DAY_MS == b_ms // _DAY_MS
