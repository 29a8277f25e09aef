"""The DataStore client a simulated game server calls: DataStoreService, DataStore, OrderedDataStore.

It checks every argument before anything is sent (a refused call spends nothing and changes nothing), turns values
into msgpack, routes each request to the shard that owns its key, keeps Roblox's 4-second read cache per data store
object, and runs UpdateAsync's optimistic loop: read with version, run the transform here, compare-and-set at the
shard, run the transform again on the newer value when another writer got there first. Every operation is written
once, as a generator (see `storage._transport`), and offered blocking and as coroutines (`store.aio`).
It must never hold stored state beyond that cache, nor decide a Roblox rule the engine owns (versions, backups,
compare-and-set): it asks the shard.
"""

from __future__ import annotations

import base64
import functools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from lodestore.storage._backoff import Backoff
from lodestore.storage._budget import check_rate_limit
from lodestore.storage._clients import Recorder, async_twin, call_transform, recorded
from lodestore.storage._errors import INVALID_EXCLUSIVE_START_KEY, ConfigError, DataStoreError
from lodestore.storage._ids import new_rng
from lodestore.storage._limits import (DEFAULT_SCOPE, INT64_MAX, INT64_MIN, LIST_KEYS_DEFAULT_PAGE,
                                      KEY_THROTTLE_MAX_WAIT_MS, LIST_VERSIONS_DEFAULT_PAGE, MAX_KEY_NAME,
                                      MAX_LIST_PAGE, MAX_SORTED_PAGE, MAX_STORE_NAME, READ_CACHE_MS, RequestType)
from lodestore.storage._scheduler import sleep
from lodestore.storage._throttle import GateStatistics, KeyLanes
from lodestore.storage._transport import (DATASTORE, Call, Permit, Sleep, Transport, TransportFailure, arun, run,
                                          shard_of)
from lodestore.storage._types import SortDirection, check_direction, is_int
from lodestore.storage._values import (check_key, check_metadata, check_page_size, check_scope, check_store_name,
                                       check_user_ids, check_value, decode, encode)
from lodestore.storage.datastore import _messages as m
from lodestore.storage.datastore._lifecycle import LIST_STORES_DEFAULT_PAGE, ListStores, merge_infos

__all__ = ["DataStoreService", "DataStore", "OrderedDataStore", "UpdateResult",
           "DataStoreStatistics", "RetryPolicy"]

MAX_UPDATE_ATTEMPTS = 100
MAX_BATCH_GET = 100        # OrderedDataStore:BatchGetAsync takes up to 100 keys


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What an `update` transform returns to set user ids and metadata too (Roblox's extra return values).
    A transform that returns a plain value keeps the entry's user ids and metadata."""

    value: Any
    user_ids: Any = None
    metadata: Any = None


def _encode_cursor(kind: str, position: Any) -> str:
    return base64.urlsafe_b64encode(msgpack.packb([kind, position], use_bin_type=True)).decode("ascii")


def _decode_cursor(kind: str, cursor: str | None) -> Any:
    if cursor is None:
        return None
    try:
        got_kind, position = msgpack.unpackb(base64.urlsafe_b64decode(cursor.encode("ascii")), raw=False)
        if got_kind != kind:
            raise ValueError(got_kind)
        return position
    except Exception:
        raise DataStoreError(*INVALID_EXCLUSIVE_START_KEY, f"cursor {str(cursor)[:40]!r} is not a {kind} cursor "
                             "returned by this kind of listing") from None


def _direction(direction: Any) -> bool:
    """True for ascending; a direction that is neither raises 400 InvalidArgument."""
    refuse = functools.partial(DataStoreError, 400, "InvalidArgument")
    return check_direction(direction, refuse) is SortDirection.ASCENDING


def _optional_ms(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if not is_int(value):
        raise DataStoreError(106, "InvalidArgument", f"{what} must be milliseconds as an int, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Automatic retries of retryable failures (301-306, 5xx): up to `attempts` tries in all, waiting
    base x 2^n simulated seconds (at most `max_delay`), each wait shortened by up to `jitter` of itself.
    Lyra's choice is RetryPolicy(attempts=5, base_delay=1, max_delay=8). A retried write that had failed
    ambiguously may apply twice (every write is a new version, so it is still one value): statistics count them."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 8.0
    jitter: float = 0.5
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or not 1 <= self.attempts <= 100:
            raise ConfigError(f"retry attempts must be an int from 1 to 100, got {self.attempts!r}")
        for name in ("base_delay", "max_delay", "jitter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ConfigError(f"retry {name} must be a finite number >= 0, got {v!r}")
        if self.jitter > 1:
            raise ConfigError(f"retry jitter is a fraction from 0 to 1, got {self.jitter!r}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Simulated seconds to wait before retry number `attempt` (1-based)."""
        return Backoff(self.base_delay, self.max_delay, self.jitter).wait(attempt, rng)


@dataclass(frozen=True, slots=True)
class DataStoreStatistics:
    """A snapshot of one server's DataStore traffic, counted at the client. `key_throttle_waits` counts the times
    a request found its key throttled and waited in its queue for the key's window to make room ("temporarily
    skipped"), `key_throttle_wait_ms` the simulated ms they waited in all."""

    requests: dict[str, int]
    errors: dict[int, int]
    cache_hits: int
    update_conflicts: int
    retried: int
    retried_writes: int
    budget: GateStatistics
    key_throttle_waits: int = 0
    key_throttle_wait_ms: int = 0


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.errors: Counter = Counter()
        self.cache_hits = 0
        self.update_conflicts = 0
        self.retried = 0
        self.retried_writes = 0
        self.key_throttle_waits = 0
        self.key_throttle_wait_ms = 0


class DataStoreService:
    """One simulated server's view of DataStoreService. Obtain it as `world.server(...).datastores`."""

    def __init__(self, transport: Transport, clock, gate: Any, job_id: str = "", budget: Any = None,
                 shared_storage: bool = False) -> None:
        self._transport = transport
        self._shared_storage = shared_storage  # every shard reads one SQLite file: one shard answers a listing
        self._clock = clock
        self._gate = gate
        self._budget = budget
        self.job_id = job_id
        self._counters = _Counters()
        self._lanes = KeyLanes()
        self.retry: RetryPolicy | None = None
        self._rng = new_rng()
        self.recorder: Recorder | None = None   # hears every get/set/update/increment/remove (the simulator's hosts)
        self._objects = 0                        # data store objects made: each names its own read cache
        self.aio = AsyncDataStoreService(self)

    def get_data_store(self, name: str, scope: str = DEFAULT_SCOPE, *, all_scopes: bool = False) -> "DataStore":
        check_store_name(name)
        if all_scopes:
            if scope not in ("", DEFAULT_SCOPE):
                raise ConfigError(f"an all_scopes data store takes keys as 'scope/key' and no scope; got {scope!r}")
            scope = ""
        else:
            check_scope(scope)
        return DataStore(self, name, scope, all_scopes)

    def get_ordered_data_store(self, name: str, scope: str = DEFAULT_SCOPE) -> "OrderedDataStore":
        check_store_name(name)
        check_scope(scope)
        return OrderedDataStore(self, name, scope)

    def list_data_stores(self, prefix: str = "", page_size: int = 0, cursor: str | None = None, *,
                         show_deleted: bool = False) -> m.Page:
        """One page of `DataStoreInfo` in name order (ListDataStoresAsync): the standard data stores whose names
        start with `prefix` and that hold something (a live key); 0 = 32 per page. One StandardList request.
        `show_deleted` lists deleted stores too (state DELETED, with the time they are purged), as Open Cloud's
        `showDeleted` does; otherwise they are left out.

        >>> page = server.datastores.list_data_stores("player")
        >>> [info.name for info in page.items]
        ['players', 'players-v2']
        """
        return self._run(functools.partial(self._op_list_data_stores, prefix, page_size, cursor, show_deleted))

    def _op_list_data_stores(self, prefix="", page_size=0, cursor=None, show_deleted=False):
        if not isinstance(prefix, str) or len(prefix) > MAX_STORE_NAME:
            raise DataStoreError(102, "KeyNameLimit", f"prefix must be a string of at most {MAX_STORE_NAME} "
                                 f"characters, got {prefix!r}")
        limit = check_page_size(page_size, default=LIST_STORES_DEFAULT_PAGE, maximum=MAX_LIST_PAGE)
        op = ListStores(prefix, _decode_cursor("stores", cursor), limit, bool(show_deleted))
        yield Permit(op.request_type, call="list_data_stores")
        self._count(op.request_type)
        replies = yield self._listing_calls(op)
        infos = merge_infos([self._check(reply[0]) for reply in replies])[:limit]
        return m.Page(infos, _encode_cursor("stores", infos[-1].name) if len(infos) == limit else None)

    def configure(self, *, retry: RetryPolicy | None = None) -> None:
        """Turn automatic retries on (a RetryPolicy) or off (None, the default)."""
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a storage.RetryPolicy or None, got {type(retry).__name__}")
        self.retry = retry
        self._rng = random.Random(retry.seed if retry is not None else None)

    @property
    def budgets_enforced(self) -> bool:
        """False when the world runs without request budgets (`budget=None`): every request may go at once."""
        return self._budget is not None

    def get_request_budget(self, request_type: RequestType | str) -> int:
        """How many requests of this type this server can make now (GetRequestBudgetForRequestType): the budget
        actor's bucket plus the tokens this server holds in leases. From a coroutine (and always in a virtual-time
        world): `await datastores.aio.get_request_budget(...)`."""
        rtype = _request_type(request_type)
        held = self._gate.local_tokens(rtype)
        if self._budget is None:
            return held
        return held + self._budget.available(self.job_id, rtype)

    def set_rate_limit(self, request_type: RequestType | str, base: int, per_player: int) -> None:
        """Roblox's SetRateLimitForRequestType: lower this server's own limit of `request_type` to
        `base + per_player x players` requests per minute (`base` 0..10000, `per_player` 0..200). The limit is the
        lower of Roblox's and this one: it never rises above Roblox's; setting it again replaces it. UpdateAsync and
        OnUpdate cannot be set (an update spends StandardRead and StandardWrite: lower those). Bad input raises
        ConfigError naming the argument and changes nothing. Tokens this server already holds in leases stay
        spendable. Without request budgets (`budget=None`) it only checks its arguments. From a coroutine:
        `await datastores.aio.set_rate_limit(...)`.

        >>> server.datastores.set_rate_limit("StandardWrite", 10, 1)   # at most 10 + n writes a minute
        """
        rtype, _ = check_rate_limit(request_type, base, per_player)
        if self._budget is not None:
            self._budget.set_rate_limit(self.job_id, rtype, base, per_player)

    def queue_sizes(self) -> dict[str, int]:
        """Requests waiting in each throttle queue (Get, Set, OrderedGet, OrderedSet)."""
        return self._gate.queue_sizes()

    def wait_for_empty_queue(self, timeout: float | None = None) -> bool:
        """Block until no request waits for budget (True), or `timeout` real seconds pass (False)."""
        return self._gate.wait_for_empty_queue(timeout)

    def flush_queue(self) -> int:
        """Drop every routine request waiting for budget (each caller gets a DataStoreError); emergencies stay."""
        return self._gate.flush_queue()

    def emergency_flush_queue(self) -> int:
        """Drop every request waiting for budget, emergencies included."""
        return self._gate.emergency_flush_queue()

    def gate_statistics(self) -> GateStatistics:
        """A snapshot of this server's request-budget gate: tokens held per request type, queue depths, requests
        granted and throttled, requests dropped, leases taken (what `statistics().budget` holds, without the
        client's counters).

        >>> server.datastores.gate_statistics().throttled
        0
        """
        return self._gate.statistics()

    def release_leases(self) -> None:
        """Give back to the world's budget every request token this server holds in leases and has not spent (a
        server that stops, or begins its shutdown); the next request leases afresh. Calling it again gives back
        only what was leased since; without request budgets it does nothing."""
        self._gate.release_all()

    def wait_for_budget(self, permit: Permit) -> None:
        """Wait, as every request does before it is sent, until this server's budget grants `permit`, and spend
        its token without sending anything: for tools that measure the budget protocol (`bench.budget`). A full
        throttle queue raises its DataStoreError (301-306), as it would for a request.

        >>> server.datastores.wait_for_budget(Permit(RequestType.STANDARD_WRITE, "user_1", 0, "set"))
        """
        if not isinstance(permit, Permit):
            raise ConfigError(f"permit must be a storage.Permit, got {type(permit).__name__}")
        self._gate.acquire(permit)

    def statistics(self) -> DataStoreStatistics:
        c = self._counters
        budget = self._gate.statistics()
        with c.lock:
            return DataStoreStatistics(dict(c.requests), dict(c.errors), c.cache_hits, c.update_conflicts,
                                       c.retried, c.retried_writes, budget, c.key_throttle_waits,
                                       c.key_throttle_wait_ms)

    # ------------------------------------------------------------------------------------------------ plumbing

    def _shards(self) -> int:
        return self._transport.shard_count(DATASTORE)

    def _listing_calls(self, op: Any) -> list[Call]:
        """A listing asks every shard for its hash range, or one shard when all of them share one file."""
        shards = 1 if self._shared_storage else self._shards()
        return [Call(DATASTORE, i, [op]) for i in range(shards)]

    def _call(self, parts: tuple[str, str, str], op: Any) -> Call:
        return Call(DATASTORE, shard_of(parts, self._shards()), [op])

    def _count(self, request_type: RequestType) -> None:
        with self._counters.lock:
            self._counters.requests[request_type.value] += 1

    def _check(self, result: Any) -> Any:
        if isinstance(result, DataStoreError):
            with self._counters.lock:
                self._counters.errors[result.code] += 1
            raise result
        return result

    def _key_wait(self, result: Any, waited_ms: int) -> int | None:
        """Simulated ms a request whose key is throttled waits in its queue before it is sent again, or None: the
        result is final (not a KeyThrottled, or waiting longer would pass `KEY_THROTTLE_MAX_WAIT_MS` in all)."""
        if not (isinstance(result, DataStoreError) and result.name == "KeyThrottled"
                and result.retry_after_ms is not None
                and waited_ms + result.retry_after_ms <= KEY_THROTTLE_MAX_WAIT_MS):
            return None
        with self._counters.lock:
            self._counters.key_throttle_waits += 1
            self._counters.key_throttle_wait_ms += result.retry_after_ms
        return result.retry_after_ms

    def _should_retry(self, exc: DataStoreError, attempt: int, write: bool) -> float | None:
        """Simulated seconds to wait before trying again, or None to give up."""
        if self.retry is None or not exc.retryable or attempt >= self.retry.attempts:
            return None
        with self._counters.lock:
            self._counters.retried += 1
            if write:
                self._counters.retried_writes += 1
        return self.retry.delay(attempt, self._rng)

    def _run(self, make: Callable, lane: Any = None, write: bool = False) -> Any:
        with self._lanes.hold(lane):
            attempt = 0
            while True:
                attempt += 1
                try:
                    try:
                        return run(make(), self._transport, self._gate)
                    except TransportFailure as exc:
                        raise self._lost(exc) from exc
                except DataStoreError as exc:
                    wait = self._should_retry(exc, attempt, write)
                    if wait is None:
                        raise
                time.sleep(self._clock.real_seconds(wait))

    async def _arun(self, make: Callable, lane: Any = None, write: bool = False) -> Any:
        async with self._lanes.ahold(lane):
            attempt = 0
            while True:
                attempt += 1
                try:
                    try:
                        return await arun(make(), self._transport, self._gate)
                    except TransportFailure as exc:
                        raise self._lost(exc) from exc
                except DataStoreError as exc:
                    wait = self._should_retry(exc, attempt, write)
                    if wait is None:
                        raise
                await sleep(self._clock, wait)

    def _lost(self, exc: TransportFailure) -> DataStoreError:
        with self._counters.lock:
            self._counters.errors[500] += 1
        return DataStoreError(500, "InternalServerError", f"{exc}; the request may or may not have taken effect")


def _request_type(request_type: Any) -> RequestType:
    try:
        return RequestType(request_type)
    except ValueError:
        raise ConfigError(f"unknown request type {request_type!r}; known: "
                          f"{', '.join(t.value for t in RequestType)}") from None


class AsyncDataStoreService:
    """The calls of `DataStoreService` that ask the world's actors, as coroutines (`datastores.aio`)."""

    def __init__(self, service: DataStoreService) -> None:
        self._service = service

    async def get_request_budget(self, request_type: RequestType | str) -> int:
        """`DataStoreService.get_request_budget`, awaiting the budget actor instead of blocking the loop."""
        service = self._service
        rtype = _request_type(request_type)
        held = service._gate.local_tokens(rtype)
        if service._budget is None:
            return held
        return held + await service._budget.aavailable(service.job_id, rtype)

    async def list_data_stores(self, prefix: str = "", page_size: int = 0, cursor: str | None = None, *,
                               show_deleted: bool = False) -> m.Page:
        """Coroutine version of `DataStoreService.list_data_stores`."""
        service = self._service
        return await service._arun(functools.partial(service._op_list_data_stores, prefix, page_size, cursor,
                                                     show_deleted))

    async def set_rate_limit(self, request_type: RequestType | str, base: int, per_player: int) -> None:
        """`DataStoreService.set_rate_limit`, awaiting the budget actor instead of blocking the loop."""
        service = self._service
        rtype, _ = check_rate_limit(request_type, base, per_player)
        if service._budget is not None:
            await service._budget.aset_rate_limit(service.job_id, rtype, base, per_player)


_NO_NOTE: dict = {}
"""Where an operation notes the versions it read and wrote when nobody records it (written to, never read)."""


def _seq(info: m.KeyInfo | None) -> int | None:
    """The per-key sequence number of a version string (its second field, see `_engine.version_string`), or None."""
    return None if info is None else int(info.version.split(".", 2)[1])


class DataStore:
    """A standard data store (Roblox's GlobalDataStore/DataStore). Blocking methods; `self.aio` has coroutines.

    >>> store = server.datastores.get_data_store("players")
    >>> version = store.set("user_1", {"coins": 10}, user_ids=[1])
    >>> value, info = store.get("user_1")
    >>> store.update("user_1", lambda old, info: {**old, "coins": old["coins"] + 5})
    ({'coins': 15}, KeyInfo(...))
    """

    def __init__(self, service: DataStoreService, name: str, scope: str, all_scopes: bool) -> None:
        self._service = service
        self.name = name
        self.scope = scope
        self.all_scopes = all_scopes
        self._cache: dict[tuple, tuple[int, m.Entry]] = {}
        self._cache_lock = threading.Lock()
        service._objects += 1
        self.obj = f"{service.job_id}#{service._objects}"   # names this object (and its cache) in request records
        self.aio = AsyncDataStore(self)

    def __repr__(self) -> str:
        return f"DataStore({self.name!r}, scope={self.scope!r}{', all_scopes=True' if self.all_scopes else ''})"

    # Blocking API -------------------------------------------------------------------------------------------

    def get(self, key: str, use_cache: bool = True) -> tuple[Any, m.KeyInfo | None]:
        """(value, KeyInfo), or (None, None) for a missing or deleted key. Served from this object's 4 s cache
        unless `use_cache=False`; a cached read spends no budget."""
        return self._service._run(*self._plan("get", key, use_cache))

    def set(self, key: str, value: Any, user_ids: Any = None, metadata: Any = None) -> str:
        """Write `value`, replacing user ids and metadata; returns the new version string."""
        return self._service._run(*self._plan("set", key, value, user_ids, metadata))

    def update(self, key: str, fn: Callable[[Any, m.KeyInfo | None], Any], *,
               current: tuple[Any, m.KeyInfo | None] | None = None) -> tuple[Any, m.KeyInfo | None]:
        """Roblox's UpdateAsync: `fn(old, key_info)` returns the new value (or an `UpdateResult`), or None to
        cancel. It may run more than once when another writer wins the race; it must not have side effects.

        `current=(value, key_info)` is an extension for callers that already know the entry (a session that wrote
        it last): the first attempt runs `fn` on it and compare-and-sets against `key_info.version` (None: the key
        must not exist) without reading first. When that guess is stale, `fn` re-runs on the stored entry, as
        after any lost race. It spends the same budget as UpdateAsync (a read and a write)."""
        return self._service._run(*self._plan("update", key, fn, current=current))

    def increment(self, key: str, delta: int = 1, user_ids: Any = None) -> tuple[int, m.KeyInfo]:
        return self._service._run(*self._plan("increment", key, delta, user_ids))

    def remove(self, key: str) -> tuple[Any, m.KeyInfo | None]:
        """Write a tombstone; returns the value and KeyInfo the key had, or (None, None)."""
        return self._service._run(*self._plan("remove", key))

    def list_keys(self, prefix: str = "", page_size: int = 0, cursor: str | None = None,
                  exclude_deleted: bool = False) -> m.Page:
        """One page of key names in order (0 = 50 per page); pass `page.cursor` back for the next page."""
        return self._service._run(*self._plan("list_keys", prefix, page_size, cursor, exclude_deleted))

    def list_versions(self, key: str, direction: Any = SortDirection.ASCENDING, min_date: int | None = None,
                      max_date: int | None = None, page_size: int = 0, cursor: str | None = None) -> m.Page:
        """One page of `VersionInfo` (0 = 1024 per page), by creation time, tombstones included."""
        return self._service._run(*self._plan("list_versions", key, direction, min_date, max_date, page_size, cursor))

    def get_version(self, key: str, version: str) -> tuple[Any, m.KeyInfo | None]:
        return self._service._run(*self._plan("get_version", key, version))

    def get_version_at_time(self, key: str, ms: int) -> tuple[Any, m.KeyInfo | None]:
        """The version that was current at `ms` (0 < ms <= now + 10 minutes), or (None, None)."""
        return self._service._run(*self._plan("get_version_at_time", key, ms))

    def remove_version(self, key: str, version: str) -> None:
        """Delete one backup version for good (deprecated on Roblox). The current version cannot be removed."""
        return self._service._run(*self._plan("remove_version", key, version))


    _KEYED = frozenset({"get", "set", "update", "increment", "remove", "list_versions", "get_version",
                        "get_version_at_time", "remove_version"})
    _WRITES = frozenset({"set", "update", "increment", "remove", "remove_version"})
    _RECORDED = frozenset({"get", "set", "update", "increment", "remove"})   # what a request recorder hears of

    def _plan(self, name: str, *args: Any, **kwargs: Any) -> tuple[Callable, Any, bool]:
        """(operation factory, lane, is a write) for one call of method `name`."""
        make = functools.partial(getattr(self, f"_op_{name}"), *args, **kwargs)
        lane = None
        key = None
        if name in self._KEYED:
            key = args[0] if args else kwargs.get("key")
            lane = (self.name, self.scope, key) if isinstance(key, str) else None
        recorder = self._service.recorder
        if recorder is not None and name in self._RECORDED and lane is not None:
            make = self._recording(recorder, name, key, make, args, kwargs)
        return make, lane, name in self._WRITES

    def _recording(self, recorder: Recorder, name: str, key: str, op: Callable, args: tuple,
                   kwargs: dict) -> Callable:
        """The operation factory `op` of a call of method `name`, each run of it heard by `recorder`
        (`storage._clients.recorded`)."""
        use_cache = name == "get" and bool(args[1] if len(args) > 1 else kwargs.get("use_cache", True))
        scope, entry = key.split("/", 1) if self.all_scopes and "/" in key else (self.scope, key)
        head = ("ds", self.name, scope, entry, self.obj, name)
        clock, write, cache = self._service._clock, name != "get", "miss" if use_cache else "off"
        return lambda: recorded(recorder, head, clock, write, lambda note: op(note=note), cache)

    # Operations (generators) --------------------------------------------------------------------------------

    def _parts(self, key: Any) -> tuple[str, str, str]:
        if not self.all_scopes:
            check_key(key)
            return (self.name, self.scope, key)
        if not isinstance(key, str) or "/" not in key:
            raise DataStoreError(101 if key == "" else 102, "KeyNameEmpty" if key == "" else "KeyNameLimit",
                                 f"an all_scopes data store takes keys as 'scope/key', got {key!r}")
        scope, name = key.split("/", 1)
        check_scope(scope)
        check_key(name)
        return (self.name, scope, name)

    def _cached(self, parts: tuple) -> m.Entry | None:
        with self._cache_lock:
            hit = self._cache.get(parts)
            if hit is None:
                return None
            if hit[0] <= self._service._clock.now():
                del self._cache[parts]
                return None
            return hit[1]

    def _remember(self, parts: tuple, entry: m.Entry) -> None:
        with self._cache_lock:
            self._cache[parts] = (self._service._clock.now() + READ_CACHE_MS, entry)

    def _request(self, parts: tuple, op: Any, size: int = 0, call: str = ""):
        """Spend the budget for `op` (`call` names the client method), send it, and give back its checked result.

        A key over its throughput limit does not fail the request at once: as on Roblox, the request stays in its
        queue, skipped until the key's window has room (the shard says when), and is sent again then, with no
        more budget spent; after `KEY_THROTTLE_MAX_WAIT_MS` of waiting in all it fails with 429 KeyThrottled."""
        yield Permit(op.request_type, parts[2], size, call)
        self._service._count(op.request_type)
        waited = 0
        while True:
            results = yield self._service._call(parts, op)
            wait = self._service._key_wait(results[0], waited)
            if wait is None:
                return self._service._check(results[0])
            waited += wait
            yield Sleep(wait / 1000.0)

    @staticmethod
    def _pair(entry: m.Entry) -> tuple[Any, m.KeyInfo | None]:
        return (None, None) if entry.value is None else (decode(entry.value), entry.info)

    def _op_get(self, key, use_cache=True, note=_NO_NOTE):
        parts = self._parts(key)
        if use_cache:
            entry = self._cached(parts)
            if entry is not None:
                with self._service._counters.lock:
                    self._service._counters.cache_hits += 1
                note["read"], note["cache"] = _seq(entry.info), "hit"
                return self._pair(entry)
        entry = yield from self._request(parts, m.Get(*parts), call="get")
        note["read"] = _seq(entry.info)
        self._remember(parts, entry)
        return self._pair(entry)

    def _op_set(self, key, value, user_ids=None, metadata=None, note=_NO_NOTE):
        parts = self._parts(key)
        size = check_value(value)
        uids, meta = check_user_ids(user_ids), check_metadata(metadata)
        data = encode(value)
        written = yield from self._request(parts, m.Set(*parts, data, size, uids, meta), size, call="set")
        note["written"] = _seq(written.info)
        self._remember(parts, m.Entry(data, written.info))
        return written.info.version

    def _op_update(self, key, fn, current=None, note=_NO_NOTE):
        parts = self._parts(key)
        if not callable(fn):
            raise TypeError(f"update needs a callable transform, got {type(fn).__name__}")
        known = _check_current(current)
        if known is None:
            entry = yield from self._request(parts, m.Get(*parts), call="update")
        else:
            yield Permit(m.Get.request_type, parts[2], 0, "update")  # UpdateAsync's read, skipped but paid for
            self._service._count(m.Get.request_type)
            entry = m.MISSING if known[1] is None else m.Entry(None, known[1])
        for _ in range(MAX_UPDATE_ATTEMPTS):
            if known is not None:
                old, known = known[0], None
            else:
                old = None if entry.value is None else decode(entry.value)
            out = call_transform(fn, key, old, entry.info)
            if out is None:
                return (None, None)
            if isinstance(out, UpdateResult):
                value, uids, meta = out.value, check_user_ids(out.user_ids), check_metadata(out.metadata)
            else:
                value = out
                uids = entry.info.user_ids if entry.info else ()
                meta = entry.info.metadata if entry.info else {}
            size = check_value(value)
            data = encode(value)
            expected = entry.info.version if entry.info is not None else None
            result = yield from self._request(parts, m.Set(*parts, data, size, uids, meta, if_version=expected), size,
                                              call="update")
            if isinstance(result, m.Conflict):
                with self._service._counters.lock:
                    self._service._counters.update_conflicts += 1
                entry = result.current
                continue
            note["read"], note["written"] = _seq(entry.info), _seq(result.info)
            self._remember(parts, m.Entry(data, result.info))
            return decode(data), result.info
        raise DataStoreError(500, "InternalServerError",
                             f"update of key {key!r} lost the race {MAX_UPDATE_ATTEMPTS} times in a row")

    def _op_increment(self, key, delta=1, user_ids=None, note=_NO_NOTE):
        parts = self._parts(key)
        if not is_int(delta) or not INT64_MIN <= delta <= INT64_MAX:
            raise DataStoreError(103, "ValueNotAllowed", f"increment delta must be a 64-bit integer, got {delta!r}")
        uids = check_user_ids(user_ids)
        entry = yield from self._request(parts, m.Increment(*parts, delta, uids), call="increment")
        note["written"] = _seq(entry.info)
        self._remember(parts, entry)
        return self._pair(entry)

    def _op_remove(self, key, note=_NO_NOTE):
        parts = self._parts(key)
        entry = yield from self._request(parts, m.Remove(*parts), call="remove")
        note["read"] = _seq(entry.info)
        self._remember(parts, m.MISSING)
        return self._pair(entry)

    def _op_list_keys(self, prefix="", page_size=0, cursor=None, exclude_deleted=False):
        if not isinstance(prefix, str) or len(prefix) > MAX_KEY_NAME + (51 if self.all_scopes else 0):
            raise DataStoreError(102, "KeyNameLimit", f"prefix must be a string of at most {MAX_KEY_NAME} "
                                 f"characters, got {prefix!r}")
        limit = check_page_size(page_size, default=LIST_KEYS_DEFAULT_PAGE, maximum=MAX_LIST_PAGE)
        after = _decode_cursor("keys", cursor)
        op = m.ListKeys(self.name, None if self.all_scopes else self.scope, prefix, after, limit,
                        bool(exclude_deleted))
        yield Permit(op.request_type)
        self._service._count(op.request_type)
        replies = yield self._service._listing_calls(op)
        # A set: the shards of a SQLite world share one file, so each of them answers for every key.
        keys = sorted({k for reply in replies for k in self._service._check(reply[0])})[:limit]
        return m.Page(keys, _encode_cursor("keys", keys[-1]) if len(keys) == limit else None)

    def _op_list_versions(self, key, direction=SortDirection.ASCENDING, min_date=None, max_date=None, page_size=0,
                          cursor=None):
        parts = self._parts(key)
        ascending = _direction(direction)
        min_ms, max_ms = _optional_ms(min_date, "min_date"), _optional_ms(max_date, "max_date")
        if min_ms is not None and max_ms is not None and min_ms > max_ms:
            raise DataStoreError(107, "InvalidArgument", f"min_date {min_ms} is after max_date {max_ms}")
        limit = check_page_size(page_size, default=LIST_VERSIONS_DEFAULT_PAGE, maximum=MAX_LIST_PAGE)
        after = _decode_cursor("versions", cursor)
        found = yield from self._request(parts, m.ListVersions(*parts, ascending, min_ms, max_ms, after, limit))
        items = [info for _, info in found]
        return m.Page(items, _encode_cursor("versions", found[-1][0]) if len(found) == limit else None)

    def _op_get_version(self, key, version):
        parts = self._parts(key)
        if not isinstance(version, str) or not version:
            raise DataStoreError(400, "InvalidArgument", f"version must be a version string, got {version!r}")
        return self._pair((yield from self._request(parts, m.GetVersion(*parts, version))))

    def _op_get_version_at_time(self, key, ms):
        parts = self._parts(key)
        if not is_int(ms):
            raise DataStoreError(400, "InvalidTimestamp", f"timestamp must be milliseconds as an int, got {ms!r}")
        return self._pair((yield from self._request(parts, m.GetVersionAtTime(*parts, ms))))

    def _op_remove_version(self, key, version):
        parts = self._parts(key)
        if not isinstance(version, str) or not version:
            raise DataStoreError(400, "InvalidArgument", f"version must be a version string, got {version!r}")
        yield from self._request(parts, m.RemoveVersion(*parts, version))


AsyncDataStore = async_twin(DataStore, ("get", "set", "update", "increment", "remove", "list_keys",
                                        "list_versions", "get_version", "get_version_at_time", "remove_version"))


def _check_current(current: Any) -> tuple[Any, m.KeyInfo | None] | None:
    if current is None:
        return None
    if (not isinstance(current, tuple) or len(current) != 2
            or not (current[1] is None or isinstance(current[1], m.KeyInfo))):
        raise TypeError(f"current must be a (value, KeyInfo or None) pair, got {current!r:.80}")
    return current


def _check_ordered_value(value: Any, what: str = "value") -> int:
    if not is_int(value) or not INT64_MIN <= value <= INT64_MAX:
        raise DataStoreError(103, "ValueNotAllowed",
                             f"an ordered data store holds 64-bit integers only; {what} is {value!r}")
    return value


class OrderedDataStore:
    """An ordered data store: integer values, read back sorted with `get_sorted`. No versions or metadata."""

    def __init__(self, service: DataStoreService, name: str, scope: str) -> None:
        self._service = service
        self.name = name
        self.scope = scope
        self.aio = AsyncOrderedDataStore(self)

    def __repr__(self) -> str:
        return f"OrderedDataStore({self.name!r}, scope={self.scope!r})"

    def get(self, key: str) -> int | None:
        return self._service._run(*self._plan("get", key))

    def set(self, key: str, value: int) -> None:
        return self._service._run(*self._plan("set", key, value))

    def increment(self, key: str, delta: int = 1) -> int:
        return self._service._run(*self._plan("increment", key, delta))

    def update(self, key: str, fn: Callable[[int | None], int | None]) -> int | None:
        """`fn(old)` returns the new integer, or None to cancel; re-run when another writer got there first."""
        return self._service._run(*self._plan("update", key, fn))

    def remove(self, key: str) -> int | None:
        return self._service._run(*self._plan("remove", key))

    def get_sorted(self, ascending: bool = True, page_size: int = 50, min_value: int | None = None,
                   max_value: int | None = None, cursor: str | None = None) -> m.Page:
        """One page of (key, value) pairs in value order (ties by key); `page.cursor` for the next one."""
        return self._service._run(*self._plan("get_sorted", ascending, page_size, min_value, max_value, cursor))

    def batch_get(self, keys: list[str]) -> dict[str, int]:
        """Roblox's BatchGetAsync: the values of up to 100 keys, as {key: value}; missing keys are left out. Each
        key (a repeated key once) counts as one OrderedRead; the keys' shards are asked at once.

        >>> ranks.batch_get(["alice", "bob", "nobody"])
        {'alice': 12, 'bob': 7}
        """
        return self._service._run(*self._plan("batch_get", keys))

    def _parts(self, key: Any) -> tuple[str, str, str]:
        check_key(key)
        return (self.name, self.scope, key)

    _request = DataStore._request
    _plan = DataStore._plan
    _KEYED = frozenset({"get", "set", "increment", "update", "remove"})
    _WRITES = frozenset({"set", "increment", "update", "remove"})
    _RECORDED = frozenset()   # ordered data stores hold no versions: nothing for the consistency checker

    def _op_get(self, key):
        parts = self._parts(key)
        return (yield from self._request(parts, m.OrderedGet(*parts), call="get")).value

    def _op_set(self, key, value):
        parts = self._parts(key)
        _check_ordered_value(value)
        yield from self._request(parts, m.OrderedSet(*parts, value), call="set")

    def _op_increment(self, key, delta=1):
        parts = self._parts(key)
        _check_ordered_value(delta, "delta")
        return (yield from self._request(parts, m.OrderedIncrement(*parts, delta), call="increment")).value

    def _op_update(self, key, fn):
        parts = self._parts(key)
        if not callable(fn):
            raise TypeError(f"update needs a callable transform, got {type(fn).__name__}")
        current = yield from self._request(parts, m.OrderedGet(*parts), call="update")
        for _ in range(MAX_UPDATE_ATTEMPTS):
            new = call_transform(fn, key, current.value)
            if new is None:
                return None
            _check_ordered_value(new)
            result = yield from self._request(parts, m.OrderedSet(*parts, new, if_revision=current.revision),
                                              call="update")
            if isinstance(result, m.OrderedConflict):
                with self._service._counters.lock:
                    self._service._counters.update_conflicts += 1
                current = result.current
                continue
            return result.value
        raise DataStoreError(500, "InternalServerError",
                             f"update of key {key!r} lost the race {MAX_UPDATE_ATTEMPTS} times in a row")

    def _op_remove(self, key):
        parts = self._parts(key)
        return (yield from self._request(parts, m.OrderedRemove(*parts), call="remove")).value

    def _op_batch_get(self, keys):
        if not isinstance(keys, (list, tuple)):
            raise DataStoreError(106, "InvalidArgument",
                                 f"batch_get takes a list of keys, got {type(keys).__name__}")
        keys = list(dict.fromkeys(keys)) if all(isinstance(k, str) for k in keys) else keys
        if len(keys) > MAX_BATCH_GET:
            raise DataStoreError(106, "InvalidArgument",
                                 f"batch_get takes at most {MAX_BATCH_GET} keys, got {len(keys)}")
        parts = [self._parts(key) for key in keys]
        by_shard: dict[int, list[m.OrderedGet]] = {}
        for p in parts:
            by_shard.setdefault(shard_of(p, self._service._shards()), []).append(m.OrderedGet(*p))
        for p in parts:   # each key is one read
            yield Permit(m.OrderedGet.request_type, p[2], 0, "batch_get")
            self._service._count(m.OrderedGet.request_type)
        if not by_shard:
            return {}
        replies = yield [Call(DATASTORE, shard, ops) for shard, ops in by_shard.items()]
        found = {}
        for ops, results in zip(by_shard.values(), replies):
            for op, result in zip(ops, results):
                value = self._service._check(result).value
                if value is not None:
                    found[op.key] = value
        return {key: found[key] for key in keys if key in found}

    def _op_get_sorted(self, ascending=True, page_size=50, min_value=None, max_value=None, cursor=None):
        if not is_int(page_size) or not 1 <= page_size <= MAX_SORTED_PAGE:
            raise DataStoreError(106, "InvalidArgument",
                                 f"page_size must be an int from 1 to {MAX_SORTED_PAGE}, got {page_size!r}")
        for what, bound in (("min_value", min_value), ("max_value", max_value)):
            if bound is not None and not is_int(bound):
                raise DataStoreError(106, "InvalidArgument", f"{what} must be an int or None, got {bound!r}")
        if min_value is not None and max_value is not None and min_value > max_value:
            raise DataStoreError(107, "InvalidArgument", f"min_value {min_value} is greater than max_value {max_value}")
        after = _decode_cursor("sorted", cursor)
        op = m.OrderedRange(self.name, self.scope, bool(ascending), page_size, min_value, max_value,
                            tuple(after) if after is not None else None)
        yield Permit(op.request_type, call="get_sorted")
        self._service._count(op.request_type)
        replies = yield self._service._listing_calls(op)
        # A set: the shards of a SQLite world share one file, so each of them answers for every key.
        pairs = list({tuple(p) for reply in replies for p in self._service._check(reply[0])})
        pairs.sort(key=lambda kv: (kv[1], kv[0]), reverse=not ascending)
        pairs = pairs[:page_size]
        last = pairs[-1] if pairs else None
        return m.Page(pairs, _encode_cursor("sorted", [last[1], last[0]]) if len(pairs) == page_size else None)


AsyncOrderedDataStore = async_twin(OrderedDataStore, ("get", "set", "increment", "update", "remove", "get_sorted",
                                                      "batch_get"))
