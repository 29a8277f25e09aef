"""The MemoryStore engine: every hash map, sorted map and queue of one Roblox experience, held in memory.

Owns the items of the experience's MemoryStore structures, their versions (for compare-and-set), their expiry on the
simulated clock, queue invisibility, and Roblox's MemoryStore limits: item sizes and expiration, per-structure size
and request units (sorted maps and queues), hash-map partitions and their request units, the experience-wide memory
quota (on the peak player count of the last 8 days) and request-unit quota; the MemoryStore faults of the world's
`FaultConfig`; the response statuses Roblox's observability dashboard counts; flushing every structure (Open
Cloud's memory-store:flush); and which key an operation's modelled latency counts against (`latency_key`; the shard
draws the latency). A Ray actor elsewhere serves it; clients send batches of the operation messages of `_messages`
to `MemoryStoreEngine.execute`; the structures that hold the items are in `_structures`.

Hash maps, as Roblox's since 2025, span partitions (`HASH_MAP_PARTITIONS` by default): the 1,000,000-item and 100 MB
limits and the 100,000 units per minute of one structure apply to sorted maps and queues only; each partition of a
hash map has its own `PARTITION_UNITS_PER_MINUTE`, so one hot key gets PartitionRequestsOverLimit while the rest of
the map goes on. Whether a hash map as a whole has a request limit is disputed: `hash_map_request_limit` sets one
(default none).

It must never decode, pickle or copy into another form the values it holds (they are opaque msgpack `bytes`, counted
by the `size` the client computed), read the wall clock (time is the injected clock's), import Ray, sleep, or raise
for one failed operation of a batch (that operation's slot gets its `MemoryStoreError`).
"""

from __future__ import annotations

from collections import Counter

import base64
import binascii
import heapq
import itertools
import math
from itertools import islice
from typing import Any, Callable

from lodestore.storage._clock import Clock
from lodestore.storage._errors import ConfigError, MemoryStoreError
from lodestore.storage._faults import FaultConfig, FaultInjector
from lodestore.storage._limits import (
    MS_HASHMAP_LIST_MAX,
    MS_MAX_BYTES_PER_STRUCTURE,
    MS_MAX_EXPIRATION_S,
    MS_MAX_ITEMS_PER_STRUCTURE,
    MS_MAX_KEY,
    MS_MAX_UNITS_PER_STRUCTURE_MINUTE,
    MS_MAX_VALUE_BYTES,
    MS_MEMORY_BASE_BYTES,
    MS_MEMORY_PER_USER_BYTES,
    MS_QUEUE_READ_MAX,
    MS_SORTED_RANGE_MAX,
    MS_UNITS_BASE_MINUTE,
    MS_UNITS_PER_CCU_MINUTE,
)
from lodestore.storage._types import ANY, BatchReply, SortDirection, check_direction, is_int, is_number
from lodestore.storage.memorystore._messages import (
    DATA_STRUCTURE_ITEMS_OVER_LIMIT,
    DATA_STRUCTURE_MEMORY_OVER_LIMIT,
    DATA_STRUCTURE_REQUESTS_OVER_LIMIT,
    INTERNAL_ERROR,
    INVALID_EXPIRATION_TIME,
    INVALID_REQUEST,
    ITEM_VALUE_SIZE_TOO_LARGE,
    NO_ITEM_FOUND,
    PARTITION_REQUESTS_OVER_LIMIT,
    SUCCESS,
    TOTAL_MEMORY_OVER_LIMIT,
    TOTAL_REQUESTS_OVER_LIMIT,
    Conflict,
    HashMapGet,
    HashMapList,
    HashMapPage,
    HashMapRemove,
    HashMapSet,
    Item,
    MemoryStoreFlushed,
    MemoryStoreStatistics,
    Operation,
    QueueAdd,
    QueueBatch,
    QueueGetSize,
    QueueRead,
    QueueRemove,
    QueueRemoved,
    SortKey,
    SortedMapGet,
    SortedMapGetRange,
    SortedMapGetSize,
    SortedMapRemove,
    SortedMapSet,
    Version,
    Written,
)
from lodestore.storage.memorystore._structures import (
    AFTER,
    KeyedStructure,
    Kind,
    MapEntry,
    PendingRead,
    QueueEntry,
    QueueStructure,
    StructureId,
    TrailingPeak,
    UnitLedger,
    hash_partition,
    sorted_order,
)

__all__ = ["MemoryStoreEngine", "latency_key", "HASH_MAP_PARTITIONS", "PARTITION_UNITS_PER_MINUTE",
           "MEMORY_QUOTA_TRACEBACK_MS", "QUEUE_WAIT_S_PER_UNIT"]

MAX_SORT_KEY_CHARS = 128      # a string sort key, like a key, is at most 128 characters

HASH_MAP_PARTITIONS = 8
"""How many partitions a hash map spans. Roblox does not publish it; 8 keeps a listing cheap (a full scan of an empty
map costs 8 units) while one hot key throttles only its own eighth of the map."""
PARTITION_UNITS_PER_MINUTE = 100_000
"""Request units one hash-map partition serves per minute: what one sorted map or queue serves (Roblox does not
publish the partition limit; a partition is the unit its backend scales by, as a whole sorted map or queue is)."""
MEMORY_QUOTA_TRACEBACK_MS = 8 * 24 * 3600 * 1000
"""The memory quota follows the peak player count of the last 8 days: it rises at once and falls 8 days later."""
QUEUE_WAIT_S_PER_UNIT = 2
"""A queue read that waits pays one extra unit per 2 s it waited (or part of 2 s), on top of its items."""


_KINDS: dict[type, Kind] = {
    HashMapGet: Kind.HASH_MAP, HashMapSet: Kind.HASH_MAP, HashMapRemove: Kind.HASH_MAP, HashMapList: Kind.HASH_MAP,
    SortedMapGet: Kind.SORTED_MAP, SortedMapSet: Kind.SORTED_MAP, SortedMapRemove: Kind.SORTED_MAP,
    SortedMapGetRange: Kind.SORTED_MAP, SortedMapGetSize: Kind.SORTED_MAP,
    QueueAdd: Kind.QUEUE, QueueRead: Kind.QUEUE, QueueRemove: Kind.QUEUE, QueueGetSize: Kind.QUEUE,
}


def latency_key(op: object) -> tuple:
    """The key whose request count an operation's modelled latency draws on: (structure kind, structure name, item
    key), the item key None for an operation on a whole structure (a listing, a size, any queue operation).

    Never raises: an operation the engine will refuse still takes time, so it gets a key too (a name or key that is
    not a string counts by its repr).

    >>> latency_key(HashMapGet("locks", "user_1"))
    ('HashMap', 'locks', 'user_1')
    """
    kind = _KINDS.get(type(op))
    name = getattr(op, "queue" if kind is Kind.QUEUE else "map", None)
    key = getattr(op, "key", None)
    return (kind.value if kind is not None else type(op).__name__,
            name if name is None or isinstance(name, str) else repr(name),
            key if key is None or isinstance(key, str) else repr(key))


# ---------------------------------------------------------------------------------------------------------------------
# Argument checks (each raises MemoryStoreError naming what it received)


def _invalid_request(message: str) -> MemoryStoreError:
    return MemoryStoreError(INVALID_REQUEST, message)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise MemoryStoreError(INVALID_REQUEST, f"{what} name must be a non-empty string, got {name!r}")
    return name


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise MemoryStoreError(INVALID_REQUEST, f"key must be a string, got {type(key).__name__}")
    if not 1 <= len(key) <= MS_MAX_KEY:
        raise MemoryStoreError(INVALID_REQUEST, f"key must be 1..{MS_MAX_KEY} characters, got {len(key)}")
    return key


def _check_value(value: object, size: object) -> int:
    if not isinstance(value, bytes):
        raise MemoryStoreError(INVALID_REQUEST, f"value must be encoded bytes, got {type(value).__name__}")
    if not is_int(size) or size < 0:
        raise MemoryStoreError(INVALID_REQUEST, f"value size must be an int >= 0, got {size!r}")
    if size > MS_MAX_VALUE_BYTES:
        raise MemoryStoreError(ITEM_VALUE_SIZE_TOO_LARGE,
                               f"value is {size} bytes, the limit is {MS_MAX_VALUE_BYTES}")
    return size


def _expiration_ms(expiration_s: object) -> int:
    """Seconds (int or float) to whole ms; a lifetime that rounds to 0 ms is gone at once, as 0 is."""
    if not is_number(expiration_s) or not 0 <= expiration_s <= MS_MAX_EXPIRATION_S:   # NaN fails the comparison
        raise MemoryStoreError(INVALID_EXPIRATION_TIME,
                               f"expiration must be 0..{MS_MAX_EXPIRATION_S} seconds, got {expiration_s!r}")
    return round(expiration_s * 1000)


def _check_if_version(if_version: object) -> Version:
    if if_version is ANY or if_version is None:
        return if_version
    if is_int(if_version):
        return if_version
    raise MemoryStoreError(INVALID_REQUEST, f"if_version must be ANY, None or an int, got {if_version!r}")


def _check_count(count: object, limit: int) -> int:
    if not is_int(count) or not 1 <= count <= limit:
        raise MemoryStoreError(INVALID_REQUEST, f"count must be an int in 1..{limit}, got {count!r}")
    return count


def _check_sort_key(sort_key: object) -> SortKey:
    if sort_key is None:
        return None
    if is_number(sort_key):
        if not math.isfinite(sort_key):
            raise MemoryStoreError(INVALID_REQUEST, f"a numeric sort key must be finite, got {sort_key!r}")
        return sort_key
    if isinstance(sort_key, str):
        if len(sort_key) > MAX_SORT_KEY_CHARS:
            raise MemoryStoreError(INVALID_REQUEST,
                                   f"sort key must be at most {MAX_SORT_KEY_CHARS} characters, got {len(sort_key)}")
        return sort_key
    raise MemoryStoreError(INVALID_REQUEST, f"sort key must be a number, a string or None, got "
                                            f"{type(sort_key).__name__}")


def _check_number(x: object, what: str, low: float, high: float, *, low_open: bool = False) -> float:
    ok = is_number(x) and (low < x if low_open else low <= x) and x <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}]"
        raise MemoryStoreError(INVALID_REQUEST, f"{what} must be a number in {interval}, got {x!r}")
    return x


def _check_bool(x: object, what: str) -> bool:
    if not isinstance(x, bool):
        raise MemoryStoreError(INVALID_REQUEST, f"{what} must be a bool, got {x!r}")
    return x


def _range_bound(bound: object, side: str) -> tuple | None:
    """The order-space position of an exclusive bound, or None when there is no bound."""
    if bound is None:
        return None
    if not isinstance(bound, (tuple, list)) or len(bound) != 2:
        raise MemoryStoreError(INVALID_REQUEST, f"{side} bound must be a (sort_key, key) pair or None, got {bound!r}")
    sort_key, key = bound
    sort_key = _check_sort_key(sort_key)
    if key is None:
        if sort_key is None:
            raise MemoryStoreError(INVALID_REQUEST, f"{side} bound needs a sort key, a key or both, got {bound!r}")
        # Past every item with this sort key (lower), or before all of them (upper).
        return sorted_order(sort_key, AFTER) if side == "lower" else sorted_order(sort_key, None)[:2]
    if not isinstance(key, str) or len(key) > MS_MAX_KEY:
        raise MemoryStoreError(INVALID_REQUEST, f"{side} bound key must be a string of at most {MS_MAX_KEY} "
                                                f"characters, got {key!r}")
    return sorted_order(sort_key, key)


def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode("utf-8", "surrogatepass")).decode("ascii")


def _decode_cursor(cursor: object) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        key = base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8", "surrogatepass")
        if _encode_cursor(key) == cursor:
            return key
    except (AttributeError, ValueError, binascii.Error, UnicodeError):
        pass
    raise MemoryStoreError(INVALID_REQUEST, f"cursor {cursor!r} was not returned by a ListItems page")


def _check_population(users: object, ccu: object) -> tuple[int, int]:
    for what, n in (("users", users), ("ccu", ccu)):
        if not is_int(n) or n < 0:
            raise ConfigError(f"MemoryStore {what} must be an int >= 0, got {n!r}")
    return users, ccu


def _wait_units(waited_ms: object, last_waited_ms: object) -> int:
    """The units a queue read's waiting adds at this attempt: one per 2 s (or part) waited, less what its previous
    attempts paid."""
    if not is_int(waited_ms) or waited_ms < 0:
        raise MemoryStoreError(INVALID_REQUEST, f"waited_ms must be an int >= 0, got {waited_ms!r}")
    if last_waited_ms is not None and (not is_int(last_waited_ms) or not 0 <= last_waited_ms <= waited_ms):
        raise MemoryStoreError(INVALID_REQUEST, f"last_waited_ms must be None or an int in 0..waited_ms "
                                                f"({waited_ms}), got {last_waited_ms!r}")
    per_unit = QUEUE_WAIT_S_PER_UNIT * 1000
    return math.ceil(waited_ms / per_unit) - math.ceil((last_waited_ms or 0) / per_unit)


def _check_request_limit(limit: object) -> int | None:
    if limit is not None and (not is_int(limit) or limit < 1):
        raise ConfigError(f"hash_map_request_limit must be None (no limit) or an int >= 1 (units per minute), got "
                          f"{limit!r}", field="hash_map_request_limit")
    return limit


def _found_nothing(op: object, result: object) -> bool:
    """Whether a request that succeeded found nothing (Roblox's NoItemFound status): a Get of an absent item, or a
    Queue Remove whose read id matched nothing still hidden."""
    if isinstance(op, (HashMapGet, SortedMapGet)):
        return result is None
    return isinstance(op, QueueRemove) and result.count == 0


def _condition_holds(current: MapEntry | None, if_version: Version) -> bool:
    if if_version is ANY:
        return True
    if if_version is None:
        return current is None
    return current is not None and current.version == if_version


# ---------------------------------------------------------------------------------------------------------------------
# The engine


class MemoryStoreEngine:
    """All MemoryStore structures of one experience, on a simulated clock.

    >>> engine = MemoryStoreEngine(ManualClock(), users=10, ccu=10)     # storage._clock.ManualClock
    >>> [got, written] = engine.execute([HashMapGet("locks", "player_1"),
    ...                                  HashMapSet("locks", "player_1", b"\\xa3srv", 5, 60, if_version=None)])
    >>> got is None, type(written).__name__
    (True, 'Written')

    `users` and `ccu` set the experience quotas (memory 64 KB + 1.2 KB x the peak users of the last 8 days; request
    units 1000 + 120 x CCU per minute); `enforce_quotas=False` turns those and the per-structure and per-partition
    unit limits off, while item limits (key, value, expiration) and structure size limits (1,000,000 items, 100 MB,
    sorted maps and queues only) stay. `hash_map_partitions` is how many partitions a hash map spans;
    `hash_map_request_limit` is the request units per minute one hash map may spend as a whole (None: no limit, only
    its partitions' `PARTITION_UNITS_PER_MINUTE`). `faults` is the world's `FaultConfig` (its MemoryStore fields).

    Versions come from one counter for the whole engine: they only grow and are never reused, even after an item
    is removed and written again (or the MemoryStore is flushed), so a stale `if_version` can never match a newer
    item.
    """

    def __init__(self, clock: Clock, *, users: int = 0, ccu: int = 0, enforce_quotas: bool = True,
                 hash_map_partitions: int = HASH_MAP_PARTITIONS, hash_map_request_limit: int | None = None,
                 faults: FaultConfig | None = None) -> None:
        self._clock = clock
        self._users, self._ccu = _check_population(users, ccu)
        self._peak_users = TrailingPeak(MEMORY_QUOTA_TRACEBACK_MS, self._users)
        self._enforce_quotas = bool(enforce_quotas)
        if not is_int(hash_map_partitions) or not 1 <= hash_map_partitions <= 1024:
            raise ConfigError(f"hash_map_partitions must be an int in 1..1024, got {hash_map_partitions!r}",
                              field="hash_map_partitions")
        self._partitions = hash_map_partitions
        self._hash_map_request_limit = _check_request_limit(hash_map_request_limit)
        self.faults = FaultInjector(faults)
        self._structures: dict[StructureId, KeyedStructure | QueueStructure] = {}
        self._timers: list[tuple[int, int, MapEntry | QueueEntry | PendingRead]] = []   # expiries and read timeouts
        self._timer_seq = itertools.count()
        self._versions = itertools.count(1)
        self._arrivals = itertools.count()
        self._read_ids = itertools.count(1)
        self._items = 0
        self._bytes = 0
        self._active_reads = 0
        self._units = UnitLedger()
        self._requests: Counter = Counter()
        self._statuses: Counter = Counter()
        self._handlers: dict[type, Callable[[Any, int], Any]] = {
            HashMapGet: self._hash_map_get,
            HashMapSet: self._hash_map_set,
            HashMapRemove: self._hash_map_remove,
            HashMapList: self._hash_map_list,
            SortedMapGet: self._sorted_map_get,
            SortedMapSet: self._sorted_map_set,
            SortedMapRemove: self._sorted_map_remove,
            SortedMapGetRange: self._sorted_map_get_range,
            SortedMapGetSize: self._sorted_map_get_size,
            QueueAdd: self._queue_add,
            QueueRead: self._queue_read,
            QueueRemove: self._queue_remove,
            QueueGetSize: self._queue_get_size,
        }

    # -- public face ----------------------------------------------------------------------------------------------

    def execute(self, ops: list[Operation]) -> list[Any]:
        """Run operations in order; one result per operation, or the `MemoryStoreError` that operation failed with.

        A failed operation changes nothing and spends no units; the others of the batch still run.

        Delivered twice (Ray retries), reads and `QueueRemove` are harmless; an unconditional Set writes again
        (new version, same value); a conditional Set answers `Conflict` whose `current.value` is the value it wrote;
        `QueueAdd` adds a second copy and `QueueRead` hides a second batch, which reappears after its timeout.
        """
        return self.execute_batch(ops).results

    def execute_batch(self, ops: list[Operation]) -> BatchReply:
        """`execute`, with the delay the MemoryStore faults add to each operation (simulated ms; None when no fault
        latency applies to the batch). An operation the faults fail gets `MemoryStoreError("InternalError")`."""
        results: list[Any] = []
        delays: list[float] | None = None
        for i, op in enumerate(ops):
            key = latency_key(op)        # (structure kind, structure name, item key): what the draws count on
            fault = self.faults.decide_memorystore(type(op).__name__, key[0], key, self._clock.now())
            if fault.delay_ms:
                delays = delays if delays is not None else [0.0] * len(ops)
                delays[i] = fault.delay_ms
            try:
                if fault.error is not None:
                    self._requests[type(op).__name__] += 1
                    raise MemoryStoreError(INTERNAL_ERROR, f"{type(op).__name__}: {fault.error}")
                results.append(self.execute_one(op))
            except MemoryStoreError as error:
                self._statuses[error.name] += 1
                results.append(error)
        return BatchReply(results, delays)

    def execute_one(self, op: Operation) -> Any:
        """Run one operation and return its result; raise `MemoryStoreError` when it is refused."""
        handler = self._handlers.get(type(op))
        if handler is None:
            raise MemoryStoreError(INVALID_REQUEST, f"not a MemoryStore operation: {type(op).__name__}")
        now = self._clock.now()
        self._advance(now)
        self._requests[type(op).__name__] += 1
        result = handler(op, now)
        self._statuses[NO_ITEM_FOUND if _found_nothing(op, result) else SUCCESS] += 1
        return result

    def set_faults(self, faults: FaultConfig) -> None:
        """Apply the MemoryStore fields of `faults` from now on (the per-key draw counts carry on)."""
        self.faults.reconfigure(faults)

    def set_population(self, users: int, ccu: int) -> None:
        """Change the experience's users and CCU. The request-unit quota follows from the next call on; the memory
        quota rises at once with the users and falls only when the count has stayed lower for 8 days (held data is
        kept either way: only writes that need more room are refused)."""
        self._users, self._ccu = _check_population(users, ccu)
        self._peak_users.set(self._clock.now(), self._users)

    def set_hash_map_request_limit(self, limit: int | None) -> None:
        """The request units per minute one hash map may spend as a whole, from now on (None: no such limit)."""
        self._hash_map_request_limit = _check_request_limit(limit)

    @property
    def quota_users(self) -> int:
        """The users the memory quota counts: the most the experience had at any time in the last 8 days."""
        return self._peak_users.peak(self._clock.now())

    @property
    def memory_quota_bytes(self) -> int:
        """64 KB + 1.2 KB x the peak users of the last 8 days (`quota_users`)."""
        return MS_MEMORY_BASE_BYTES + MS_MEMORY_PER_USER_BYTES * self.quota_users

    def flush(self) -> MemoryStoreFlushed:
        """Empty every structure of the experience at once (Open Cloud's memory-store:flush): every item, queue
        value and pending read is gone, and the memory they held is free at once.

        The quotas are the experience's, not the data's, so they stay: the request units spent in the last minute
        stay spent (a flush costs none), the memory quota keeps its 8-day peak, and versions keep growing (an
        `if_version` from before the flush never matches). Delivered twice: the second flush finds nothing.
        """
        self._advance(self._clock.now())
        flushed = MemoryStoreFlushed(len(self._structures), self._items, self._bytes)
        self._structures.clear()
        self._timers.clear()
        self._items = self._bytes = self._active_reads = 0
        return flushed

    @property
    def units_quota_per_minute(self) -> int:
        """1000 + 120 x CCU request units per minute."""
        return MS_UNITS_BASE_MINUTE + MS_UNITS_PER_CCU_MINUTE * self._ccu

    def statistics(self) -> MemoryStoreStatistics:
        """A snapshot of what the experience holds and what it spent in the last minute."""
        self._advance(self._clock.now())
        kinds = [sid[0] for sid in self._structures]
        return MemoryStoreStatistics(
            structures=len(kinds),
            hash_maps=kinds.count(Kind.HASH_MAP),
            sorted_maps=kinds.count(Kind.SORTED_MAP),
            queues=kinds.count(Kind.QUEUE),
            items=self._items,
            bytes_used=self._bytes,
            memory_quota_bytes=self.memory_quota_bytes,
            units_last_minute=self._units.total,
            units_quota_per_minute=self.units_quota_per_minute,
            users=self._users,
            quota_users=self.quota_users,
            statuses=dict(self._statuses),
            injected_errors=self.faults.injected_errors,
            ccu=self._ccu,
            enforce_quotas=self._enforce_quotas,
            requests=dict(self._requests),
        )

    # -- hash maps ------------------------------------------------------------------------------------------------

    def _hash_map_get(self, op: HashMapGet, now: int) -> Item | None:
        sid = (Kind.HASH_MAP, _check_name(op.map, "hash map"))
        return self._get(sid, _check_key(op.key), now)

    def _hash_map_set(self, op: HashMapSet, now: int) -> Written | Conflict:
        sid = (Kind.HASH_MAP, _check_name(op.map, "hash map"))
        return self._set(sid, op.key, op.value, op.size, op.expiration_s, None, op.if_version, now)

    def _hash_map_remove(self, op: HashMapRemove, now: int) -> None:
        sid = (Kind.HASH_MAP, _check_name(op.map, "hash map"))
        self._remove(sid, _check_key(op.key), now)

    def _hash_map_list(self, op: HashMapList, now: int) -> HashMapPage:
        """A page goes through the partitions in turn (key order within each), from the one the cursor's key is
        in: it costs one unit per partition scanned plus one per item returned; a page that reaches the end of the
        map scanned every partition left."""
        sid = (Kind.HASH_MAP, _check_name(op.map, "hash map"))
        count = _check_count(op.count, MS_HASHMAP_LIST_MAX)
        after = _decode_cursor(op.cursor)
        first = hash_partition(after, self._partitions) if after is not None else 0
        structure = self._structures.get(sid)
        entries: list[MapEntry] = []
        if structure is not None:
            start = (first, after) if after is not None else None
            entries = list(islice(structure.index.irange_key(min_key=start, inclusive=(False, True)), count + 1))
        more = len(entries) > count
        entries = entries[:count]
        last = entries[-1].order[0] if more else self._partitions - 1
        per_partition = Counter(entry.order[0] for entry in entries)
        scanned = tuple(((*sid, p), 1 + per_partition[p]) for p in range(first, last + 1))
        self._spend(((sid, len(scanned) + len(entries)),) + scanned, now)
        cursor = _encode_cursor(entries[-1].key) if more else None
        return HashMapPage(tuple(entry.item() for entry in entries), cursor)

    # -- sorted maps ----------------------------------------------------------------------------------------------

    def _sorted_map_get(self, op: SortedMapGet, now: int) -> Item | None:
        sid = (Kind.SORTED_MAP, _check_name(op.map, "sorted map"))
        return self._get(sid, _check_key(op.key), now)

    def _sorted_map_set(self, op: SortedMapSet, now: int) -> Written | Conflict:
        sid = (Kind.SORTED_MAP, _check_name(op.map, "sorted map"))
        sort_key = _check_sort_key(op.sort_key)
        return self._set(sid, op.key, op.value, op.size, op.expiration_s, sort_key, op.if_version, now)

    def _sorted_map_remove(self, op: SortedMapRemove, now: int) -> None:
        sid = (Kind.SORTED_MAP, _check_name(op.map, "sorted map"))
        self._remove(sid, _check_key(op.key), now)

    def _sorted_map_get_range(self, op: SortedMapGetRange, now: int) -> tuple[Item, ...]:
        sid = (Kind.SORTED_MAP, _check_name(op.map, "sorted map"))
        descending = check_direction(op.direction, _invalid_request) is SortDirection.DESCENDING
        count = _check_count(op.count, MS_SORTED_RANGE_MAX)
        low = _range_bound(op.lower_bound, "lower")
        high = _range_bound(op.upper_bound, "upper")
        structure = self._structures.get(sid)
        entries: list[MapEntry] = []
        if structure is not None:
            span = structure.index.irange_key(low, high, inclusive=(False, False), reverse=descending)
            entries = list(islice(span, count))
        self._spend(self._charges(sid, max(1, len(entries))), now)
        return tuple(entry.item() for entry in entries)

    def _sorted_map_get_size(self, op: SortedMapGetSize, now: int) -> int:
        sid = (Kind.SORTED_MAP, _check_name(op.map, "sorted map"))
        self._spend(self._charges(sid, 1), now)
        structure = self._structures.get(sid)
        return structure.items if structure is not None else 0

    # -- keyed structures (hash maps and sorted maps alike) -------------------------------------------------------

    def _get(self, sid: StructureId, key: str, now: int) -> Item | None:
        self._spend(self._charges(sid, 1, key), now)
        entry = self._entry(sid, key)
        return entry.item() if entry is not None else None

    def _set(self, sid: StructureId, key: object, value: object, size: object, expiration_s: object,
             sort_key: SortKey, if_version: object, now: int) -> Written | Conflict:
        key = _check_key(key)
        size = _check_value(value, size)
        lifetime_ms = _expiration_ms(expiration_s)
        if_version = _check_if_version(if_version)
        charges = self._charges(sid, 1 if if_version is ANY else 2, key)
        self._check_units(charges)
        current = self._entry(sid, key)
        if not _condition_holds(current, if_version):
            self._spend(charges, now)
            return Conflict(current.item() if current is not None else None)
        footprint = size + len(key) if lifetime_ms > 0 else 0
        self._check_room(sid, current.footprint if current is not None else None, footprint)
        version = next(self._versions)
        if current is not None:
            self._unstore(current)
        if lifetime_ms > 0:
            structure = self._structure(sid)
            order = ((hash_partition(key, self._partitions), key) if sid[0] is Kind.HASH_MAP
                     else sorted_order(sort_key, key))
            entry = MapEntry(structure, key, value, size, version, sort_key, now + lifetime_ms, order)
            structure.add(entry)
            self._items += 1
            self._bytes += entry.footprint
            self._schedule(entry.expires_at, entry)
        self._spend(charges, now)
        return Written(version)

    def _remove(self, sid: StructureId, key: str, now: int) -> None:
        self._spend(self._charges(sid, 1, key), now)
        entry = self._entry(sid, key)
        if entry is not None:
            self._unstore(entry)

    def _entry(self, sid: StructureId, key: str) -> MapEntry | None:
        structure = self._structures.get(sid)
        return structure.entries.get(key) if structure is not None else None

    # -- queues ---------------------------------------------------------------------------------------------------

    def _queue_add(self, op: QueueAdd, now: int) -> None:
        sid = (Kind.QUEUE, _check_name(op.queue, "queue"))
        size = _check_value(op.value, op.size)
        lifetime_ms = _expiration_ms(op.expiration_s)
        priority = op.priority
        if not is_number(priority) or not math.isfinite(priority):
            raise MemoryStoreError(INVALID_REQUEST, f"priority must be a finite number, got {priority!r}")
        self._check_units(self._charges(sid, 1))
        if lifetime_ms > 0:
            self._check_room(sid, None, size)
            queue = self._structure(sid)
            item = QueueEntry(queue, (-priority, next(self._arrivals)), op.value, size, now + lifetime_ms)
            queue.visible.add(item)
            queue.items += 1
            queue.bytes += size
            self._items += 1
            self._bytes += size
            self._schedule(item.expires_at, item)
        self._spend(self._charges(sid, 1), now)

    def _queue_read(self, op: QueueRead, now: int) -> QueueBatch:
        sid = (Kind.QUEUE, _check_name(op.queue, "queue"))
        count = _check_count(op.count, MS_QUEUE_READ_MAX)
        all_or_nothing = _check_bool(op.all_or_nothing, "all_or_nothing")
        invisibility_s = _check_number(op.invisibility_s, "invisibility_s", 0, MS_MAX_EXPIRATION_S, low_open=True)
        waiting = _wait_units(op.waited_ms, op.last_waited_ms)
        queue = self._structures.get(sid)
        taken: list[QueueEntry] = list(islice(queue.visible, count)) if queue is not None else []
        if all_or_nothing and len(taken) < count:
            taken = []
        charges = self._charges(sid, max(0 if op.last_waited_ms is not None else 1, len(taken)) + waiting)
        self._check_units(charges)
        if not taken:
            self._spend(charges, now)
            return QueueBatch((), None)
        read = PendingRead(queue, f"r{next(self._read_ids)}", taken, now + max(1, round(invisibility_s * 1000)))
        del queue.visible[:len(taken)]
        for item in taken:
            item.read = read
        queue.reads[read.read_id] = read
        self._active_reads += 1
        self._schedule(read.invisible_until, read)
        self._spend(charges, now)
        return QueueBatch(tuple(item.value for item in taken), read.read_id)

    def _queue_remove(self, op: QueueRemove, now: int) -> QueueRemoved:
        sid = (Kind.QUEUE, _check_name(op.queue, "queue"))
        if not isinstance(op.read_id, str):
            raise MemoryStoreError(INVALID_REQUEST, f"read_id must be a string, got {op.read_id!r}")
        self._spend(self._charges(sid, 1), now)
        queue = self._structures.get(sid)
        read = queue.reads.pop(op.read_id, None) if queue is not None else None
        if read is None:
            return QueueRemoved(0)
        self._end_read(read)
        removed = [item for item in read.items if item.alive]
        for item in removed:
            self._unstore(item)
        return QueueRemoved(len(removed))

    def _queue_get_size(self, op: QueueGetSize, now: int) -> int:
        sid = (Kind.QUEUE, _check_name(op.queue, "queue"))
        exclude_invisible = _check_bool(op.exclude_invisible, "exclude_invisible")
        self._spend(self._charges(sid, 1), now)
        queue = self._structures.get(sid)
        if queue is None:
            return 0
        return len(queue.visible) if exclude_invisible else queue.items

    def _end_read(self, read: PendingRead) -> None:
        read.active = False
        self._active_reads -= 1

    # -- storage bookkeeping --------------------------------------------------------------------------------------

    def _structure(self, sid: StructureId) -> KeyedStructure | QueueStructure:
        structure = self._structures.get(sid)
        if structure is None:
            structure = QueueStructure(sid) if sid[0] is Kind.QUEUE else KeyedStructure(sid)
            self._structures[sid] = structure
        return structure

    def _unstore(self, record: MapEntry | QueueEntry) -> None:
        """Forget one item for good; a structure left empty is forgotten too."""
        record.alive = False
        structure = record.structure if isinstance(record, MapEntry) else record.queue
        if isinstance(record, MapEntry):
            structure.discard(record)
        else:
            if record.read is None:
                structure.visible.remove(record)
            structure.items -= 1
            structure.bytes -= record.size
        self._items -= 1
        self._bytes -= record.footprint
        if structure.items == 0:
            if isinstance(structure, QueueStructure):
                for read in structure.reads.values():
                    self._end_read(read)
                structure.reads.clear()
            del self._structures[structure.sid]

    def _schedule(self, due: int, record: MapEntry | QueueEntry | PendingRead) -> None:
        heapq.heappush(self._timers, (due, next(self._timer_seq), record))
        live = self._items + self._active_reads
        if len(self._timers) > 2 * live + 64:    # overwritten items and removed reads left stale timers behind
            self._timers = [timer for timer in self._timers if self._timer_live(timer[2])]
            heapq.heapify(self._timers)

    @staticmethod
    def _timer_live(record: MapEntry | QueueEntry | PendingRead) -> bool:
        return record.active if isinstance(record, PendingRead) else record.alive

    def _advance(self, now: int) -> None:
        """Expire items and end invisibility whose time has come, and age the unit window; O(log n) per timer."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, record = heapq.heappop(timers)
            if not self._timer_live(record):
                continue
            if isinstance(record, PendingRead):
                self._reappear(record)
            else:
                self._unstore(record)
        self._units.forget_until(now)

    def _reappear(self, read: PendingRead) -> None:
        """The read was not removed in time: its items become visible again in their old place."""
        queue = read.queue
        del queue.reads[read.read_id]
        self._end_read(read)
        for item in read.items:
            if item.alive:
                item.read = None
                queue.visible.add(item)

    # -- limits and quotas ----------------------------------------------------------------------------------------

    def _check_room(self, sid: StructureId, old: int | None, new: int) -> None:
        """Refuse a write that needs room it does not have. `old`: footprint of the item it replaces (None when it
        adds one); `new`: footprint after the write (0 when the write removes the item). A write that does not grow
        what is held (a removal, a same-size or smaller value) is never refused, even over a quota that fell."""
        if new == 0:
            return
        structure = self._structures.get(sid)
        items = structure.items if structure is not None else 0
        used = structure.bytes if structure is not None else 0
        kind, name = sid
        bounded = kind is not Kind.HASH_MAP     # a hash map spans partitions: no item or size limit of its own
        if bounded and old is None and items >= MS_MAX_ITEMS_PER_STRUCTURE:
            raise MemoryStoreError(DATA_STRUCTURE_ITEMS_OVER_LIMIT, f"{kind.value} {name!r} holds {items} items, "
                                                                    f"the limit is {MS_MAX_ITEMS_PER_STRUCTURE}")
        growth = new - (old or 0)
        if growth <= 0:
            return
        if bounded and used + growth > MS_MAX_BYTES_PER_STRUCTURE:
            raise MemoryStoreError(DATA_STRUCTURE_MEMORY_OVER_LIMIT,
                                   f"{kind.value} {name!r} holds {used} bytes, {growth} more would pass the "
                                   f"limit of {MS_MAX_BYTES_PER_STRUCTURE}")
        quota = self.memory_quota_bytes
        if self._enforce_quotas and self._bytes + growth > quota:
            raise MemoryStoreError(TOTAL_MEMORY_OVER_LIMIT,
                                   f"the experience holds {self._bytes} bytes, {growth} more would pass its quota "
                                   f"of {quota} (64 KB + 1.2 KB x {self.quota_users} users, the peak of the last "
                                   f"8 days)")

    def _charges(self, sid: StructureId, units: int, key: str | None = None) -> tuple:
        """What a request of `units` counts against: its structure (first, with the request's units), and for a
        hash map item the partition `key` is in."""
        if sid[0] is not Kind.HASH_MAP:
            return ((sid, units),)
        return ((sid, units), ((*sid, hash_partition(key, self._partitions)), units))

    def _limit(self, bucket: tuple) -> tuple[int | None, str, str]:
        """A bucket's units per minute (None: unlimited), the error its overrun is, and how to name it."""
        if len(bucket) == 3:
            kind, name, partition = bucket
            return PARTITION_UNITS_PER_MINUTE, PARTITION_REQUESTS_OVER_LIMIT, f"partition {partition} of hash map " \
                                                                               f"{name!r}"
        kind, name = bucket
        if kind is Kind.HASH_MAP:
            return self._hash_map_request_limit, DATA_STRUCTURE_REQUESTS_OVER_LIMIT, f"hash map {name!r}"
        return MS_MAX_UNITS_PER_STRUCTURE_MINUTE, DATA_STRUCTURE_REQUESTS_OVER_LIMIT, f"{kind.value} {name!r}"

    def _check_units(self, charges: tuple) -> None:
        if not self._enforce_quotas:
            return
        units = charges[0][1]
        quota = self.units_quota_per_minute
        if self._units.total + units > quota:
            raise MemoryStoreError(TOTAL_REQUESTS_OVER_LIMIT,
                                   f"the experience spent {self._units.total} request units in the last minute, "
                                   f"{units} more would pass its quota of {quota} (1000 + 120 x {self._ccu} CCU)")
        for bucket, more in charges:
            limit, error, what = self._limit(bucket)
            spent = self._units.by_bucket.get(bucket, 0)
            if limit is not None and spent + more > limit:
                raise MemoryStoreError(error, f"{what} spent {spent} request units in the last minute, {more} more "
                                              f"would pass its limit of {limit}")

    def _spend(self, charges: tuple, now: int) -> None:
        """Charge a request to the experience and its buckets (`_charges`: the structure first, with the request's
        units); refuse (changing nothing) when they are not there."""
        self._check_units(charges)
        self._units.spend(now, charges[0][1], charges)
