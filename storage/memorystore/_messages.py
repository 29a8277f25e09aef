"""The messages a MemoryStore client sends to the world's MemoryStore, the results it gets back, and the error names.

Requests and results are frozen, slotted dataclasses that Ray ships in batches; stored values travel as msgpack
`bytes` with the `size` the client computed, and are never decoded on the way. The names a `MemoryStoreError` carries
live here too, so the client and the engine refuse with the same words. This module holds no logic and must never
import the client or the engine; `ANY` and `SortDirection`, shared with the DataStore, come from `storage._types`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from lodestore.storage._limits import MS_QUEUE_DEFAULT_INVISIBILITY_S
from lodestore.storage._types import ANY, AnyVersion, SortDirection

__all__ = [
    "ANY", "AnyVersion", "SortDirection", "Version", "SortKey", "RangeBound", "Operation",
    "HashMapGet", "HashMapSet", "HashMapRemove", "HashMapList",
    "SortedMapGet", "SortedMapSet", "SortedMapRemove", "SortedMapGetRange", "SortedMapGetSize",
    "QueueAdd", "QueueRead", "QueueRemove", "QueueGetSize",
    "Item", "Written", "Conflict", "HashMapPage", "QueueBatch", "QueueRemoved", "MemoryStoreStatistics",
    "MemoryStoreFlushed",
    "INVALID_REQUEST", "ITEM_VALUE_SIZE_TOO_LARGE", "INVALID_EXPIRATION_TIME", "TOTAL_REQUESTS_OVER_LIMIT",
    "TOTAL_MEMORY_OVER_LIMIT", "DATA_STRUCTURE_MEMORY_OVER_LIMIT", "DATA_STRUCTURE_ITEMS_OVER_LIMIT",
    "DATA_STRUCTURE_REQUESTS_OVER_LIMIT", "PARTITION_REQUESTS_OVER_LIMIT", "NO_ITEM_FOUND", "TRANSFORM_CALLBACK_FAILED",
    "INTERNAL_ERROR", "UPDATE_CONFLICT", "SUCCESS",
]

# Error names carried on MemoryStoreError.name, and the response statuses Roblox's MemoryStore observability dashboard
# counts (`MemoryStoreStatistics.statuses`). All but INVALID_REQUEST are Roblox's own; INVALID_REQUEST covers every
# malformed argument (bad structure name, key, count, cursor, direction, bound, sort key, priority, version, read id).
INVALID_REQUEST = "InvalidRequest"
ITEM_VALUE_SIZE_TOO_LARGE = "ItemValueSizeTooLarge"
INVALID_EXPIRATION_TIME = "InvalidExpirationTime"
TOTAL_REQUESTS_OVER_LIMIT = "TotalRequestsOverLimit"            # the experience spent its 1000 + 120 x CCU units
TOTAL_MEMORY_OVER_LIMIT = "TotalMemoryOverLimit"                # the experience holds 64 KB + 1.2 KB x users
DATA_STRUCTURE_MEMORY_OVER_LIMIT = "DataStructureMemoryOverLimit"   # a sorted map or queue holds 100 MB
DATA_STRUCTURE_ITEMS_OVER_LIMIT = "DataStructureItemsOverLimit"     # a sorted map or queue holds 1,000,000 items
DATA_STRUCTURE_REQUESTS_OVER_LIMIT = "DataStructureRequestsOverLimit"   # a sorted map or queue spent 100,000 units
PARTITION_REQUESTS_OVER_LIMIT = "PartitionRequestsOverLimit"    # one partition of a hash map spent its units
NO_ITEM_FOUND = "NoItemFound"                   # a status, not an error: a Get or a Queue Remove found nothing
TRANSFORM_CALLBACK_FAILED = "TransformCallbackFailed"   # an update's transform raised (raised by the client)
INTERNAL_ERROR = "InternalError"                # the service failed the request (a fault, an unanswered call)
UPDATE_CONFLICT = "UpdateConflict"              # an update lost its compare-and-set more times than it retries
SUCCESS = "Success"                             # a status: the request did what it was asked


# ---------------------------------------------------------------------------------------------------------------------
# Messages


Version = Union[AnyVersion, int, None]
SortKey = Union[int, float, str, None]
RangeBound = tuple  # (sort_key or None, key or None), an exclusive bound as Roblox's {sortKey=..., key=...}


@dataclass(frozen=True, slots=True)
class HashMapGet:
    """Read one hash map item: `Item`, or None when it is absent or expired. 1 unit."""

    map: str
    key: str


@dataclass(frozen=True, slots=True)
class HashMapSet:
    """Write one hash map item if `if_version` holds: `Written`, or `Conflict`. 1 unit, 2 when conditional.

    `expiration_s=0` removes the item (it is gone at once): a lock is released with
    `HashMapSet(map, key, value, size, 0, if_version=my_version)`.
    """

    map: str
    key: str
    value: bytes
    size: int
    expiration_s: float
    if_version: Version = ANY


@dataclass(frozen=True, slots=True)
class HashMapRemove:
    """Remove one hash map item (absent is fine): None. 1 unit."""

    map: str
    key: str


@dataclass(frozen=True, slots=True)
class HashMapList:
    """One page of a hash map: `HashMapPage`. 1 unit per partition scanned plus 1 per item returned.

    A hash map spans partitions; a page goes through them in turn, in key order within each, so the whole listing
    gives every item once, in an order that is the same in every run but is not key order. Start with
    `cursor=None` (or ""), then pass the page's `cursor` until it is None.
    """

    map: str
    count: int
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class SortedMapGet:
    """Read one sorted map item: `Item` (with its sort key), or None. 1 unit."""

    map: str
    key: str


@dataclass(frozen=True, slots=True)
class SortedMapSet:
    """Write one sorted map item if `if_version` holds: `Written`, or `Conflict`. 1 unit, 2 when conditional.

    `sort_key` is a finite number, a string of at most 128 characters, or None (no sort key).
    """

    map: str
    key: str
    value: bytes
    size: int
    expiration_s: float
    sort_key: SortKey = None
    if_version: Version = ANY


@dataclass(frozen=True, slots=True)
class SortedMapRemove:
    """Remove one sorted map item (absent is fine): None. 1 unit."""

    map: str
    key: str


@dataclass(frozen=True, slots=True)
class SortedMapGetRange:
    """Up to `count` items in sorted order strictly between the bounds: `tuple[Item, ...]`. 1 unit per item, min 1.

    Order: numeric sort keys ascending, then string sort keys, then items without one; ties by key. A bound is a pair
    `(sort_key, key)`, exclusive: `(10, "bob")` is the position of that item; `(10, None)` lies past every item with
    sort key 10 (as a lower bound) or before them all (as an upper bound); `(None, "bob")` is the position of key "bob"
    among the items without a sort key.

    >>> SortedMapGetRange("top", "Descending", 10, upper_bound=(1000, None))   # best 10 below 1000
    """

    map: str
    direction: str
    count: int
    lower_bound: RangeBound | None = None
    upper_bound: RangeBound | None = None


@dataclass(frozen=True, slots=True)
class SortedMapGetSize:
    """How many items the sorted map holds: int. 1 unit."""

    map: str


@dataclass(frozen=True, slots=True)
class QueueAdd:
    """Append a value: None. Higher `priority` is read first, FIFO within a priority. 1 unit."""

    queue: str
    value: bytes
    size: int
    expiration_s: float
    priority: float = 0


@dataclass(frozen=True, slots=True)
class QueueRead:
    """Take up to `count` visible values and hide them for `invisibility_s`: `QueueBatch`. 1 unit per item, min 1.

    With `all_or_nothing`, fewer than `count` visible values read nothing. Values not removed with the batch's
    `read_id` before the invisibility ends become visible again in their old place.

    A read that waits for values (`Queue.read`'s `wait_timeout`) asks again while it waits: each attempt says how
    long the read had waited by then (`waited_ms`) and at its previous attempt (`last_waited_ms`, None on the
    first). A later attempt costs 1 unit per item it takes (none when it takes nothing) plus the waiting it adds:
    one extra unit per 2 s waited, or part of 2 s, as Roblox charges.
    """

    queue: str
    count: int
    all_or_nothing: bool = False
    invisibility_s: float = MS_QUEUE_DEFAULT_INVISIBILITY_S
    waited_ms: int = 0
    last_waited_ms: int | None = None


@dataclass(frozen=True, slots=True)
class QueueRemove:
    """Delete for good the values of one read that are still invisible: `QueueRemoved`. 1 unit.

    An unknown read id, or one whose invisibility ended, removes nothing (`QueueRemoved(0)`), so a retried Remove
    is harmless.
    """

    queue: str
    read_id: str


@dataclass(frozen=True, slots=True)
class QueueGetSize:
    """How many values the queue holds (only the visible ones with `exclude_invisible`): int. 1 unit."""

    queue: str
    exclude_invisible: bool = False


Operation = Union[HashMapGet, HashMapSet, HashMapRemove, HashMapList, SortedMapGet, SortedMapSet, SortedMapRemove,
                  SortedMapGetRange, SortedMapGetSize, QueueAdd, QueueRead, QueueRemove, QueueGetSize]


# ---------------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Item:
    """A hash map or sorted map item as stored: `version` is what `if_version` compares; `expires_at` is in ms."""

    key: str
    value: bytes
    version: int
    sort_key: SortKey = None
    expires_at: int = 0


@dataclass(frozen=True, slots=True)
class Written:
    """A write took effect; `version` is the item's new version (pass it as `if_version` to write again)."""

    version: int


@dataclass(frozen=True, slots=True)
class Conflict:
    """A conditional write did not hold and changed nothing; `current` is the item now (None when absent).

    The client re-runs the user's transform on `current.value` and writes again with `if_version=current.version`.
    """

    current: Item | None


@dataclass(frozen=True, slots=True)
class HashMapPage:
    """Items of one `HashMapList` page in key order; `cursor` fetches the next page, None after the last one."""

    items: tuple[Item, ...]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class QueueBatch:
    """Values read from a queue, highest priority first; `read_id` is None when nothing was read."""

    values: tuple[bytes, ...]
    read_id: str | None


@dataclass(frozen=True, slots=True)
class QueueRemoved:
    """How many values a `QueueRemove` deleted (0 for an unknown or timed-out read id)."""

    count: int


@dataclass(frozen=True, slots=True)
class MemoryStoreFlushed:
    """What a flush (Open Cloud's memory-store:flush, `World.flush_memory_store`) emptied: structures, items
    (hash map and sorted map items and queue values, hidden ones too) and the bytes they held."""

    structures: int
    items: int
    bytes: int


@dataclass(frozen=True, slots=True)
class MemoryStoreStatistics:
    """A snapshot of one experience's MemoryStore: what it holds and how much of its quotas it uses."""

    structures: int
    hash_maps: int
    sorted_maps: int
    queues: int
    items: int
    bytes_used: int
    memory_quota_bytes: int
    units_last_minute: int
    units_quota_per_minute: int
    users: int
    ccu: int
    enforce_quotas: bool
    requests: dict = field(default_factory=dict)    # operation name ("HashMapUpdate", ...) -> operations run
    quota_users: int = 0         # the users the memory quota counts: the peak of the last 8 days
    statuses: dict = field(default_factory=dict)    # response status ("Success", "NoItemFound", an error) -> count
    injected_errors: int = 0     # operations the MemoryStore faults failed (InternalError)
