"""How the MemoryStore engine holds items: hash maps, sorted maps and queues as indexed Python structures.

Owns the in-memory shapes of one experience's MemoryStore: keyed structures (a hash map indexed by partition and
key, a sorted map by sort key class, sort key and key), queues (visible values in priority order, reads that hide
values until their invisibility ends), the order a sorted map sorts in, which partition a hash-map key is in, the
sliding minute of request units (per structure and per partition), and the trailing peak the memory quota follows.
It knows nothing of Roblox's limits, never reads a clock (times are passed in), never raises for a request and never
looks inside a value: the engine decides, these only keep what it decided.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from typing import Any
from zlib import crc32

from sortedcontainers import SortedKeyList

from lodestore.storage.memorystore._messages import Item, SortKey

__all__ = ["Kind", "StructureId", "AFTER", "sorted_order", "MapEntry", "KeyedStructure", "QueueEntry", "PendingRead",
           "QueueStructure", "UnitLedger", "TrailingPeak", "UNIT_WINDOW_MS", "hash_partition"]

UNIT_WINDOW_MS = 60_000       # request units are counted over the last 60 simulated seconds


class Kind(str, Enum):
    """What a structure is; a structure is named by (kind, name), so a hash map and a queue may share a name."""

    HASH_MAP = "HashMap"
    SORTED_MAP = "SortedMap"
    QUEUE = "Queue"


StructureId = tuple  # (Kind, name)


class AfterEveryKey:
    """Compares greater than every key, so `(0, 10, AFTER)` lies past every item with numeric sort key 10."""

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return other is self

    def __gt__(self, other: object) -> bool:
        return other is not self

    def __ge__(self, other: object) -> bool:
        return True


AFTER = AfterEveryKey()


@dataclass(slots=True, eq=False)
class MapEntry:
    """One stored hash map or sorted map item. A write replaces the entry object; `alive` turns False when it goes."""

    structure: "KeyedStructure"
    key: str
    value: bytes
    size: int
    version: int
    sort_key: SortKey
    expires_at: int
    order: Any
    alive: bool = True

    @property
    def footprint(self) -> int:
        return self.size + len(self.key)

    def item(self) -> Item:
        return Item(self.key, self.value, self.version, self.sort_key, self.expires_at)


class KeyedStructure:
    """A hash map (ordered by partition and key, for listing) or a sorted map (ordered by sort key class, sort key,
    key)."""

    def __init__(self, sid: StructureId) -> None:
        self.sid = sid
        self.entries: dict[str, MapEntry] = {}
        self.index = SortedKeyList(key=attrgetter("order"))
        self.items = 0
        self.bytes = 0

    def add(self, entry: MapEntry) -> None:
        self.entries[entry.key] = entry
        self.index.add(entry)
        self.items += 1
        self.bytes += entry.footprint

    def discard(self, entry: MapEntry) -> None:
        del self.entries[entry.key]
        self.index.remove(entry)
        self.items -= 1
        self.bytes -= entry.footprint


@dataclass(slots=True, eq=False)
class QueueEntry:
    """One value in a queue, visible or hidden by a read (`read`); `alive` turns False when it goes."""

    queue: "QueueStructure"
    order: tuple          # (-priority, arrival), so the first item is read first
    value: bytes
    size: int
    expires_at: int
    alive: bool = True
    read: "PendingRead | None" = None

    @property
    def footprint(self) -> int:
        return self.size


@dataclass(slots=True, eq=False)
class PendingRead:
    """Items hidden by one QueueRead until `invisible_until`; `active` turns False once removed or timed out."""

    queue: "QueueStructure"
    read_id: str
    items: list
    invisible_until: int
    active: bool = True


class QueueStructure:
    """A queue: its visible values in read order, and the reads that hide the others."""

    def __init__(self, sid: StructureId) -> None:
        self.sid = sid
        self.visible = SortedKeyList(key=attrgetter("order"))
        self.reads: dict[str, PendingRead] = {}
        self.items = 0            # visible + invisible
        self.bytes = 0


class UnitLedger:
    """Request units spent in the last minute, experience-wide and per bucket, as one sliding window.

    A bucket is whatever a limit counts: a structure (its `StructureId`), or one partition of a hash map
    (`(Kind.HASH_MAP, name, partition)`). One request may charge several buckets (a hash map's partition and the
    map itself; a listing every partition it scanned); the experience total counts its units once.
    """

    def __init__(self) -> None:
        self._spent: deque[tuple] = deque()     # (time_ms, units, ((bucket, units), ...)), oldest first
        self.total = 0
        self.by_bucket: dict[tuple, int] = {}

    def forget_until(self, now: int) -> None:
        """Drop what was spent 60 s or more before `now`."""
        cutoff = now - UNIT_WINDOW_MS
        while self._spent and self._spent[0][0] <= cutoff:
            _, units, charges = self._spent.popleft()
            self.total -= units
            for bucket, spent in charges:
                left = self.by_bucket[bucket] - spent
                if left:
                    self.by_bucket[bucket] = left
                else:
                    del self.by_bucket[bucket]

    def spend(self, now: int, units: int, charges: tuple) -> None:
        """Count `units` against the experience and each `(bucket, units)` of `charges` against its bucket."""
        self._spent.append((now, units, charges))
        self.total += units
        for bucket, spent in charges:
            self.by_bucket[bucket] = self.by_bucket.get(bucket, 0) + spent


class TrailingPeak:
    """The largest value a step function took over a trailing window (a player count over the last 8 days).

    `set(now, value)` records that the value is `value` from `now` on; `peak(now)` is the largest value in effect at
    any time in (now - window, now]. A monotonic deque: a value that a later, larger one outlasts can never be the
    peak again, so it is dropped; each value is added and dropped once.
    """

    def __init__(self, window_ms: int, value: int = 0) -> None:
        self.window_ms = window_ms
        self._values: deque[list] = deque([[value, None]])     # [value, ms when it stopped holding (None: holds)]

    def set(self, now: int, value: int) -> None:
        self._values[-1][1] = now               # the value in effect until now (always the last one)
        while self._values and self._values[-1][0] <= value:
            self._values.pop()
        self._values.append([value, None])

    def peak(self, now: int) -> int:
        cutoff = now - self.window_ms
        while self._values[0][1] is not None and self._values[0][1] <= cutoff:
            self._values.popleft()
        return self._values[0][0]


def hash_partition(key: str, partitions: int) -> int:
    """Which of a hash map's `partitions` holds `key`: a stable hash, the same in every process and run."""
    return crc32(key.encode("utf-8", "surrogatepass")) % partitions


def sorted_order(sort_key: SortKey, key: Any) -> tuple:
    """Position in a sorted map: numbers first, then strings, then no sort key; ties by key."""
    if sort_key is None:
        return (2, 0, key)
    if isinstance(sort_key, str):
        return (1, sort_key, key)
    return (0, sort_key, key)
