"""The MemoryStore client a simulated game server calls: MemoryStoreService, HashMap, SortedMap, Queue.

It checks and encodes values (JSON-storable, msgpack on the wire), sends each request to the world's MemoryStore
actor, and runs the optimistic `update` loops here, in the caller, re-running the transform when another writer got
there first, as Roblox does. Blocking methods, and the same as coroutines on `.aio`. It owns no stored state, and
must never decide what the engine owns (versions, expiry, limits and quotas): it asks the MemoryStore actor.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

from lodestore.storage._clients import Recorder, async_twin, recorded
from lodestore.storage._errors import DataStoreError, MemoryStoreError
from lodestore.storage._limits import MS_MAX_VALUE_BYTES, MS_QUEUE_DEFAULT_INVISIBILITY_S
from lodestore.storage._transport import MEMORYSTORE, Call, Gate, Sleep, Transport, TransportFailure, arun, run
from lodestore.storage._values import check_value, decode, encode
from lodestore.storage.memorystore import _messages as ms

__all__ = ["MemoryStoreService", "HashMap", "SortedMap", "Queue"]

MAX_UPDATE_ATTEMPTS = 30
_QUEUE_POLL_S = 0.25  # simulated seconds between polls of an empty queue while `read` waits


def _transform(fn: Callable, key: str, *args: Any) -> Any:
    """`fn(*args)`; an exception it raises fails the update with Roblox's TransformCallbackFailed (the original is
    `__cause__`), and nothing is written."""
    try:
        return fn(*args)
    except Exception as exc:
        raise MemoryStoreError(ms.TRANSFORM_CALLBACK_FAILED, f"the update transform for key {key!r} raised "
                               f"{type(exc).__name__}: {exc}") from exc


def _encoded(value: Any) -> tuple[bytes, int]:
    """The value as msgpack, and its size in bytes of UTF-8 JSON (what MemoryStore's 32 KB limit counts)."""
    try:
        chars = check_value(value)
    except DataStoreError as exc:
        raise MemoryStoreError(ms.INVALID_REQUEST, exc.message) from None
    size = chars
    if chars <= 2 * MS_MAX_VALUE_BYTES:  # past that it is refused whatever the encoding; skip the work
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return encode(value), size


class MemoryStoreService:
    """One simulated server's view of MemoryStoreService. Obtain it as `world.server(...).memorystores`."""

    def __init__(self, transport: Transport, clock, gate: Gate, job_id: str = "") -> None:
        self._transport = transport
        self._clock = clock
        self._gate = gate
        self.job_id = job_id
        self.recorder: Recorder | None = None   # hears every map item's get/set/update/remove (the simulator's hosts)

    def get_hash_map(self, name: str) -> "HashMap":
        return HashMap(self, name)

    def get_sorted_map(self, name: str) -> "SortedMap":
        return SortedMap(self, name)

    def get_queue(self, name: str, invisibility_timeout: float = MS_QUEUE_DEFAULT_INVISIBILITY_S) -> "Queue":
        return Queue(self, name, invisibility_timeout)

    def _run(self, make: Callable, lane: Any = None, write: bool = False) -> Any:
        try:
            return run(make(), self._transport, self._gate)
        except TransportFailure as exc:
            raise MemoryStoreError(ms.INTERNAL_ERROR, f"{exc}; the request may or may not have taken effect") from exc

    async def _arun(self, make: Callable, lane: Any = None, write: bool = False) -> Any:
        try:
            return await arun(make(), self._transport, self._gate)
        except TransportFailure as exc:
            raise MemoryStoreError(ms.INTERNAL_ERROR, f"{exc}; the request may or may not have taken effect") from exc


_NO_NOTE: dict = {}
"""Where an operation notes the versions it read and wrote when nobody records it (written to, never read)."""


class _Structure:
    def __init__(self, service: MemoryStoreService, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise MemoryStoreError(ms.INVALID_REQUEST, f"a structure name must be a non-empty string, got {name!r}")
        self._service = service
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    _KIND = ""                  # "hash" / "sorted": a map whose items a request recorder hears of
    _RECORDED = frozenset({"get", "set", "update", "remove"})

    def _plan(self, name: str, *args: Any, **kwargs: Any) -> tuple[Callable, None, bool]:
        make = functools.partial(getattr(self, f"_op_{name}"), *args, **kwargs)
        recorder = self._service.recorder
        if recorder is not None and self._KIND and name in self._RECORDED and args and isinstance(args[0], str):
            # a map item has no read cache: every record's `cache` is "off"
            head = ("ms", f"{self._KIND}:{self.name}", "", args[0], self._service.job_id, name)
            clock, write, op = self._service._clock, name != "get", make
            return lambda: recorded(recorder, head, clock, write, lambda note: op(note=note)), None, False
        return make, None, False

    def _request(self, op: Any):
        results = yield Call(MEMORYSTORE, 0, [op])
        if isinstance(results[0], MemoryStoreError):
            raise results[0]
        return results[0]


class HashMap(_Structure):
    """A MemoryStore hash map: items with a TTL, compare-and-set `update`.

    >>> locks = server.memorystores.get_hash_map("locks")
    >>> locks.update("user_1", lambda old: old or "my-lock-id", expiration=90)
    'my-lock-id'
    """

    _KIND = "hash"

    def __init__(self, service: MemoryStoreService, name: str) -> None:
        super().__init__(service, name)
        self.aio = AsyncHashMap(self)

    def get(self, key: str) -> Any:
        """The item's value, or None when absent or expired."""
        return self._service._run(*self._plan("get", key))

    def set(self, key: str, value: Any, expiration: float) -> bool:
        """Store `value` for `expiration` seconds (0..3,888,000; 0 removes it at once)."""
        return self._service._run(*self._plan("set", key, value, expiration))

    def update(self, key: str, fn: Callable[[Any], Any], expiration: float) -> Any:
        """`fn(old)` returns the new value, or None to cancel; re-run on conflict. Returns the stored value. When
        `fn` raises, `MemoryStoreError("TransformCallbackFailed")` (the exception is `__cause__`)."""
        return self._service._run(*self._plan("update", key, fn, expiration))

    def remove(self, key: str) -> None:
        return self._service._run(*self._plan("remove", key))

    def list_items(self, count: int, cursor: str | None = None) -> tuple[list[tuple[str, Any]], str | None]:
        """One page of (key, value), and the cursor of the next page (None when done). Pages go through the map's
        partitions in turn (not in key order); a page costs the partitions it scanned plus the items it returned."""
        return self._service._run(*self._plan("list_items", count, cursor))

    def _op_get(self, key, note=_NO_NOTE):
        item = yield from self._request(ms.HashMapGet(self.name, key))
        note["read"] = None if item is None else item.version
        return None if item is None else decode(item.value)

    def _op_set(self, key, value, expiration, note=_NO_NOTE):
        data, size = _encoded(value)
        note["written"] = (yield from self._request(ms.HashMapSet(self.name, key, data, size, expiration))).version
        return True

    def _op_update(self, key, fn, expiration, note=_NO_NOTE):
        if not callable(fn):
            raise TypeError(f"update needs a callable transform, got {type(fn).__name__}")
        item = yield from self._request(ms.HashMapGet(self.name, key))
        for _ in range(MAX_UPDATE_ATTEMPTS):
            new = _transform(fn, key, None if item is None else decode(item.value))
            if new is None:
                return None
            data, size = _encoded(new)
            expected = None if item is None else item.version
            result = yield from self._request(
                ms.HashMapSet(self.name, key, data, size, expiration, if_version=expected))
            if isinstance(result, ms.Conflict):
                item = result.current
                continue
            note["read"], note["written"] = expected, result.version
            return decode(data)
        raise MemoryStoreError(ms.UPDATE_CONFLICT,
                               f"update of {self.name!r} key {key!r}: exceeded max number of retries")

    def _op_remove(self, key, note=_NO_NOTE):
        yield from self._request(ms.HashMapRemove(self.name, key))

    def _op_list_items(self, count, cursor=None):
        page = yield from self._request(ms.HashMapList(self.name, count, cursor))
        return [(item.key, decode(item.value)) for item in page.items], page.cursor


class SortedMap(_Structure):
    """A MemoryStore sorted map: items ordered by sort key (numbers, then strings, then none), ties by key."""

    _KIND = "sorted"

    def __init__(self, service: MemoryStoreService, name: str) -> None:
        super().__init__(service, name)
        self.aio = AsyncSortedMap(self)

    def get(self, key: str) -> tuple[Any, Any]:
        """(value, sort_key), or (None, None) when absent or expired."""
        return self._service._run(*self._plan("get", key))

    def set(self, key: str, value: Any, expiration: float, sort_key: Any = None) -> bool:
        return self._service._run(*self._plan("set", key, value, expiration, sort_key))

    def update(self, key: str, fn: Callable[[Any, Any], Any], expiration: float) -> Any:
        """`fn(old_value, old_sort_key)` returns (value, sort_key), or None to cancel; re-run on conflict."""
        return self._service._run(*self._plan("update", key, fn, expiration))

    def remove(self, key: str) -> None:
        return self._service._run(*self._plan("remove", key))

    def get_range(self, direction: Any, count: int, lower_bound: Any = None,
                  upper_bound: Any = None) -> list[tuple[str, Any, Any]]:
        """Up to `count` (key, value, sort_key) in order; bounds are exclusive (sort_key, key) pairs."""
        return self._service._run(*self._plan("get_range", direction, count, lower_bound, upper_bound))

    def get_size(self) -> int:
        return self._service._run(*self._plan("get_size"))

    def _op_get(self, key, note=_NO_NOTE):
        item = yield from self._request(ms.SortedMapGet(self.name, key))
        note["read"] = None if item is None else item.version
        return (None, None) if item is None else (decode(item.value), item.sort_key)

    def _op_set(self, key, value, expiration, sort_key=None, note=_NO_NOTE):
        data, size = _encoded(value)
        written = yield from self._request(ms.SortedMapSet(self.name, key, data, size, expiration, sort_key))
        note["written"] = written.version
        return True

    def _op_update(self, key, fn, expiration, note=_NO_NOTE):
        if not callable(fn):
            raise TypeError(f"update needs a callable transform, got {type(fn).__name__}")
        item = yield from self._request(ms.SortedMapGet(self.name, key))
        for _ in range(MAX_UPDATE_ATTEMPTS):
            old = (None, None) if item is None else (decode(item.value), item.sort_key)
            out = _transform(fn, key, *old)
            if out is None:
                return None
            if not isinstance(out, tuple) or len(out) != 2:
                raise MemoryStoreError(ms.INVALID_REQUEST, f"a sorted map transform returns (value, sort_key) or "
                                       f"None; for key {key!r} it returned {type(out).__name__}")
            data, size = _encoded(out[0])
            expected = None if item is None else item.version
            result = yield from self._request(
                ms.SortedMapSet(self.name, key, data, size, expiration, out[1], if_version=expected))
            if isinstance(result, ms.Conflict):
                item = result.current
                continue
            note["read"], note["written"] = expected, result.version
            return decode(data), out[1]
        raise MemoryStoreError(ms.UPDATE_CONFLICT,
                               f"update of {self.name!r} key {key!r}: exceeded max number of retries")

    def _op_remove(self, key, note=_NO_NOTE):
        yield from self._request(ms.SortedMapRemove(self.name, key))

    def _op_get_range(self, direction, count, lower_bound=None, upper_bound=None):
        items = yield from self._request(ms.SortedMapGetRange(self.name, direction, count, lower_bound, upper_bound))
        return [(item.key, decode(item.value), item.sort_key) for item in items]

    def _op_get_size(self):
        return (yield from self._request(ms.SortedMapGetSize(self.name)))


class Queue(_Structure):
    """A MemoryStore queue: `add` with priority, `read` hides items for the invisibility timeout until `remove`."""

    def __init__(self, service: MemoryStoreService, name: str,
                 invisibility_timeout: float = MS_QUEUE_DEFAULT_INVISIBILITY_S) -> None:
        super().__init__(service, name)
        self.invisibility_timeout = invisibility_timeout
        self.aio = AsyncQueue(self)

    def add(self, value: Any, expiration: float, priority: float = 0) -> None:
        return self._service._run(*self._plan("add", value, expiration, priority))

    def read(self, count: int = 1, all_or_nothing: bool = False,
             wait_timeout: float = 0) -> tuple[list[Any], str | None]:
        """(values, read_id). Waits up to `wait_timeout` simulated seconds for items (not on a manual clock), and
        pays one extra request unit per 2 s it waited (or part of 2 s)."""
        return self._service._run(*self._plan("read", count, all_or_nothing, wait_timeout))

    def remove(self, read_id: str) -> None:
        return self._service._run(*self._plan("remove", read_id))

    def get_size(self, exclude_invisible: bool = False) -> int:
        return self._service._run(*self._plan("get_size", exclude_invisible))

    def _op_add(self, value, expiration, priority=0):
        data, size = _encoded(value)
        yield from self._request(ms.QueueAdd(self.name, data, size, expiration, priority))

    def _op_read(self, count=1, all_or_nothing=False, wait_timeout=0):
        clock = self._service._clock
        start = clock.now()
        wait_ms = max(float(wait_timeout), 0.0) * 1000
        can_wait = clock.real_seconds(1.0) > 0
        last = None       # how long the read had waited at its previous attempt (None: this is the first)
        while True:
            waited = int(min(clock.now() - start, wait_ms))
            batch = yield from self._request(ms.QueueRead(self.name, count, all_or_nothing, self.invisibility_timeout,
                                                          waited_ms=waited, last_waited_ms=last))
            last = waited
            if batch.values or not can_wait or clock.now() >= start + wait_ms:
                return [decode(v) for v in batch.values], batch.read_id
            yield Sleep(_QUEUE_POLL_S)

    def _op_remove(self, read_id):
        yield from self._request(ms.QueueRemove(self.name, read_id))

    def _op_get_size(self, exclude_invisible=False):
        return (yield from self._request(ms.QueueGetSize(self.name, exclude_invisible)))


AsyncHashMap = async_twin(HashMap, ("get", "set", "update", "remove", "list_items"))
AsyncSortedMap = async_twin(SortedMap, ("get", "set", "update", "remove", "get_range", "get_size"))
AsyncQueue = async_twin(Queue, ("add", "read", "remove", "get_size"))
