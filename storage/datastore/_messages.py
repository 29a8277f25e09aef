"""The messages a DataStore client sends to a storage shard, and the results it gets back.

Requests and results are frozen, slotted dataclasses: plain values that Ray ships cheaply in batches. Stored values
travel as msgpack `bytes` and are never unpickled; the user ids and metadata beside them are small JSON-like data.
This module holds no logic and must never import the client or the engine; `ANY` and `BatchReply`, shared with the
MemoryStore, come from `storage._types`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lodestore.storage._limits import RequestType
from lodestore.storage._types import ANY, BatchReply

__all__ = [
    "ANY", "KeyInfo", "VersionInfo", "Page",
    "Get", "Set", "Increment", "Remove", "ListKeys", "ListVersions", "GetVersion", "GetVersionAtTime", "RemoveVersion",
    "OrderedGet", "OrderedSet", "OrderedIncrement", "OrderedRemove", "OrderedRange", "Sweep",
    "Entry", "MISSING", "Written", "Conflict", "OrderedValue", "OrderedConflict", "BatchReply",
]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What Roblox's DataStoreKeyInfo tells about the version a read or write saw.

    `created_time` and `updated_time` are milliseconds since the epoch on the world's clock.
    """

    created_time: int
    updated_time: int
    version: str
    user_ids: tuple[int, ...] = ()
    metadata: dict = field(default_factory=dict)

    def get_user_ids(self) -> list[int]:
        return list(self.user_ids)

    def get_metadata(self) -> dict:
        return dict(self.metadata)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One entry of `list_versions` (Roblox's DataStoreObjectVersionInfo)."""

    version: str
    created_time: int
    is_deleted: bool


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; pass `cursor` back to get the next page. `cursor` is None on the last page."""

    items: list
    cursor: str | None

    @property
    def is_finished(self) -> bool:
        return self.cursor is None


# ---------------------------------------------------------------------------------------------------------------
# Requests. `store`, `scope` and `key` name one entry; every request says which budget it spends.


@dataclass(frozen=True, slots=True)
class Get:
    store: str
    scope: str
    key: str
    request_type = RequestType.STANDARD_READ


@dataclass(frozen=True, slots=True)
class Set:
    """Write a new version. `if_version`: ANY (plain SetAsync), None (only if absent or deleted) or a version string
    (only if that is still the current version: the compare-and-set of UpdateAsync)."""

    store: str
    scope: str
    key: str
    value: bytes
    size: int
    user_ids: tuple[int, ...] = ()
    metadata: dict = field(default_factory=dict)
    if_version: Any = ANY
    request_type = RequestType.STANDARD_WRITE


@dataclass(frozen=True, slots=True)
class Increment:
    store: str
    scope: str
    key: str
    delta: int
    user_ids: tuple[int, ...] = ()
    request_type = RequestType.STANDARD_WRITE


@dataclass(frozen=True, slots=True)
class Remove:
    store: str
    scope: str
    key: str
    request_type = RequestType.STANDARD_REMOVE


@dataclass(frozen=True, slots=True)
class ListKeys:
    """Keys of one store and scope (or of every scope when `scope` is None, named "scope/key"), in key order,
    starting after `after`."""

    store: str
    scope: str | None
    prefix: str
    after: str | None
    limit: int
    exclude_deleted: bool
    request_type = RequestType.STANDARD_LIST


@dataclass(frozen=True, slots=True)
class ListVersions:
    store: str
    scope: str
    key: str
    ascending: bool
    min_ms: int | None
    max_ms: int | None
    after_seq: int | None
    limit: int
    request_type = RequestType.STANDARD_LIST


@dataclass(frozen=True, slots=True)
class GetVersion:
    store: str
    scope: str
    key: str
    version: str
    request_type = RequestType.STANDARD_READ


@dataclass(frozen=True, slots=True)
class GetVersionAtTime:
    store: str
    scope: str
    key: str
    ms: int
    request_type = RequestType.STANDARD_READ


@dataclass(frozen=True, slots=True)
class RemoveVersion:
    store: str
    scope: str
    key: str
    version: str
    request_type = RequestType.REMOVE_VERSION


@dataclass(frozen=True, slots=True)
class OrderedGet:
    store: str
    scope: str
    key: str
    request_type = RequestType.ORDERED_READ


@dataclass(frozen=True, slots=True)
class OrderedSet:
    """`if_revision`: ANY, None (only if absent) or the revision a previous read saw."""

    store: str
    scope: str
    key: str
    value: int
    if_revision: Any = ANY
    request_type = RequestType.ORDERED_WRITE


@dataclass(frozen=True, slots=True)
class OrderedIncrement:
    store: str
    scope: str
    key: str
    delta: int
    request_type = RequestType.ORDERED_WRITE


@dataclass(frozen=True, slots=True)
class OrderedRemove:
    store: str
    scope: str
    key: str
    request_type = RequestType.ORDERED_REMOVE


@dataclass(frozen=True, slots=True)
class OrderedRange:
    """Up to `limit` (key, value) pairs in value order (ties by key), after the exclusive bound `after`."""

    store: str
    scope: str
    ascending: bool
    limit: int
    min_value: int | None
    max_value: int | None
    after: tuple[int, str] | None
    request_type = RequestType.ORDERED_LIST


@dataclass(frozen=True, slots=True)
class Sweep:
    """Housekeeping: delete backups past their retention. Spends no budget; never faulted."""

    request_type = None


# ---------------------------------------------------------------------------------------------------------------
# Results. A failed request yields its DataStoreError in its slot of the batch instead.


@dataclass(frozen=True, slots=True)
class Entry:
    """A value (msgpack) and its KeyInfo, or (None, None) for a missing or deleted key."""

    value: bytes | None
    info: KeyInfo | None


MISSING = Entry(None, None)


@dataclass(frozen=True, slots=True)
class Written:
    info: KeyInfo


@dataclass(frozen=True, slots=True)
class Conflict:
    """A compare-and-set lost: `current` is what is there now, so the caller can re-run its transform at once."""

    current: Entry


@dataclass(frozen=True, slots=True)
class OrderedValue:
    value: int | None
    revision: int | None


@dataclass(frozen=True, slots=True)
class OrderedConflict:
    current: OrderedValue
