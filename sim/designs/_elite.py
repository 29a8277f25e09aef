"""The elite design: EliteDataStoreService, a queue, key-level read/write locks and argument checks in front of
Roblox's DataStoreService, and no session lock.

Where its behaviour comes from: `../shared/reference/seeds/elitedatastoreservice.md` and the source of
`Elentium/EliteDataStoreService-REWORK-` (HEAD da59ea1, release 1.6.0: `src/init.luau`, `README.md`,
`CHANGELOG.md`; release 1.5.0 is commit df85502):
- Every mirrored call (`Get`, `Set`, `Increment`, `Update`, `Remove`, `GetVersion`, `GetVersionAtTime`,
  `ListVersions`, `ListKeys`, `RemoveVersion`, `GetSorted`, `AdvanceToNextPage`) answers a pair instead of raising:
  Luau's `pcall` of the DataStore method. The source returns `(success, result)`; here it is `EliteResult(value,
  success)` (a NamedTuple: `value, ok = await store.get(key)`), `value` being the call's result, or the error it
  raised when `success` is False (Luau gives the error's message). Argument checks are not answered that way: the
  source calls `error()` before anything is queued, so they raise `EliteArgumentError` (a `TypeError`) naming the
  argument's number, name, what was expected and what came. Exactly the source's checks are made (Get's options,
  Update's transform, Increment's delta/user ids/options, the version, timestamp, listing and sorting arguments); a
  key must be a str or an int (the typed signature's `string | number`: the source's `tostring(Key)` check never
  fails). What the source leaves unchecked (Set's value, user ids and options) goes to the DataStore, whose refusal
  comes back as `(error, False)`.
- `PerformDatastoreRequest`: a call runs at once, in the caller's task, when "the queues are empty" and its key is
  free for its mode; the key lock is taken, the budget (`GetRequestBudgetForRequestType`) re-checked, and when it is
  under 1 the call goes to the queue. Otherwise it waits in the main queue, or the priority queue when `prioritize`
  is True (every mirrored call's last argument, as in the source).
- The processor (`RunService.Heartbeat`, `IterationCycle` 0.35 s, `SetIterationCycle`): while `FinishedAll` is
  False, every cycle walks the dropped-requests queue, then the priority queue, then the main queue, each request
  once: one whose budget is at least 1 and whose key is free is dispatched (`ProcessRequest`: take the key lock,
  re-check the budget; under 1 the lock goes back and the request moves to the dropped-requests queue), any other
  goes to the back of its queue. After the cycle `FinishedAll = AreQueuesEmpty()`; an enqueue from a call sets it
  False again (a move to the dropped-requests queue does not).
- Key locks (`IsKeyValid`, `AcquireKeyLock`, `ReleaseKeyLock`, per data store object and key): a read may start
  when nobody writes and no write is pending; a write when nobody writes and nobody reads; waiters are woken in
  order, a write first. Reads: Get, GetVersion, GetVersionAtTime, ListVersions; writes: Set, Increment, Update,
  Remove, RemoveVersion. Locks live in one server only: nothing stops another server (no session lock).
- `WaitForAllRequests`: at least a frame (`task.wait()`), then until `FinishedAll`. `GetQueueSize`,
  `GetPriorityQueueSize`. BindToClose (`SHUTDOWN_YIELD`): 2 s, then until `FinishedAll`.
- `GuardCall`: up to `DEFAULT_MAX_RETRIES` (5) attempts, waiting `DEFAULT_RETRIES_INTERMISSION` (1 s) x attempt
  (exponential backoff on) after every failure, the last one included.

Two defects of the source are kept, as released (option `release`):
- 1.6.0 (HEAD) changed `AreQueuesEmpty` from "every queue's Count is 0" (1.5.0) to "no queue is being iterated
  right now", which is always true outside the (synchronous) cycle. So after every cycle `FinishedAll` becomes true
  and the processor stops: a request left in a queue (its key was still busy, or the budget out) waits until some
  other call is enqueued; `wait_for_all_requests` returns while requests still wait; and a new call takes the fast
  path ahead of queued ones whenever its own key is free.
- Both releases: a fast-path call that took its key lock and then found the budget under 1 goes to the queue still
  holding that lock. A write then never runs (its own lock makes its key busy for ever: every later write and read
  of that key in that server waits for ever too); a read leaves a reader behind, so every later write of that key
  waits for ever.
`release = "patched"` is 1.5.0 with the lock given back before queueing: what the README promises ("no more
dropped calls").

Python stand-ins: a request the processor dispatches counts against its budget until its task starts and the
DataStore call takes its token (Luau's task.spawn starts the call at once; an asyncio task starts later), so one
cycle never dispatches more than the budget allows; a fast-path call takes its token in the caller's own step, as
in Luau. A world without request budgets
(`budget=None`) has an unlimited budget here. The caller's context (e.g. `storage.emergency()`) travels with a
queued request. A heartbeat's frame is not modelled: a cycle runs `iteration_cycle` after the last one.
Not here: GetGlobalDataStore, ListDataStores, CheckDataStoreAccess, SetConstant, DataStoreOptions.

The game played on it (`EliteLayer`) is the README's: Get on join (success False: the player is kicked, here
DesignError "LoadFailed"; nil: fresh data), the data kept and changed in memory, Set on leave and on BindToClose
with `prioritize = true` ("Best Practices"), and an autosave loop with Set.

Owns: `EliteDataStoreService` (one per game server: the Luau module is one per server), `EliteDataStore`,
`EliteDataStorePages`, `EliteLayer` and the design's entry. Never does: lock a key across servers, retry a failed
call by itself (only `guard_call` retries), or drop a call with an error when Roblox's throttle queue would.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Awaitable, Callable, NamedTuple

from lodestore.actors import StoreConfig
from lodestore.storage import (DEFAULT_SCOPE, ConfigError, LodestoreError, RequestType, Scheduler, Server,
                               SortDirection, Timer, new_id)
from lodestore.sim.designs._base import DataLayer, Design, DesignError, ReplayChanges, read_values

__all__ = ["EliteDataStoreService", "EliteDataStore", "EliteDataStorePages", "EliteResult", "EliteArgumentError",
           "EliteQueueSizes", "EliteStatistics", "AccessMode", "Release", "GetOptions", "SetOptions",
           "IncrementOptions", "EliteOptions", "EliteLayer", "ELITE", "ITERATION_CYCLE"]

ITERATION_CYCLE = 0.35          # Processor.IterationCycle
FRAME_S = 1 / 60                # one Heartbeat: what `task.wait()` waits at least
SHUTDOWN_YIELD_S = 2.0          # the module's BindToClose: task.wait(2), then until FinishedAll
BIND_TO_CLOSE_LIMIT_S = 30.0    # Roblox ends a server whose BindToClose callbacks run longer
DEFAULT_MAX_RETRIES = 5
DEFAULT_RETRIES_INTERMISSION = 1.0
DEFAULT_EXPONENTIAL_BACKOFF = True

_R = RequestType


class EliteResult(NamedTuple):
    """What a mirrored call answers: `value` (the result, or the error when `success` is False) and `success`."""

    value: Any
    success: bool


class EliteArgumentError(LodestoreError, TypeError):
    """A call's argument has the wrong type (the source's `error("Invalid argument #n ...")`): raised before
    anything is queued or sent."""


class AccessMode(str, Enum):
    """How a request uses its key (`KeyAccessMode`)."""

    READ = "Read"
    WRITE = "Write"


class Release(str, Enum):
    """Which release's processor runs (see the module docstring)."""

    V1_6_0 = "1.6.0"
    V1_5_0 = "1.5.0"
    PATCHED = "patched"


@dataclass(frozen=True)
class GetOptions:
    """DataStoreGetOptions: `use_cache` False reads past the 4 s read cache."""

    use_cache: bool = True


@dataclass(frozen=True)
class SetOptions:
    """DataStoreSetOptions: the metadata written with the value."""

    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class IncrementOptions:
    """DataStoreIncrementOptions (lodestore's increment keeps metadata as it is; accepted, as Roblox does)."""

    metadata: dict = field(default_factory=dict)


class EliteQueueSizes(NamedTuple):
    queue: int
    priority: int
    dropped: int


@dataclass(frozen=True)
class EliteStatistics:
    """A snapshot of one service: its queues, what ran where, and its key locks."""

    queue: int
    priority_queue: int
    dropped_requests: int
    in_flight: int
    finished_all: bool
    fast_path: int          # calls that ran at once in the caller's task
    queued: int             # calls that waited in a queue
    dispatched: int         # queued requests the processor sent
    moved_to_dropped: int   # dispatches that found the budget spent after taking the key lock
    cycles: int
    succeeded: int
    failed: int
    keys_locked: int        # keys with a reader or writer now (a leaked lock stays here)


def _type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _bad(method: str, n: int, name: str, expected: str, got: Any) -> EliteArgumentError:
    return EliteArgumentError(f"Invalid argument #{n} ({name}) to {method}: {expected} expected, got "
                              f"{_type_name(got)} {got!r:.60}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_key(method: str, key: Any) -> str:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise _bad(method, 1, "key", "string or number", key)
    return str(key)


def _check_prioritize(method: str, n: int, prioritize: Any) -> bool:
    if prioritize is not None and not isinstance(prioritize, bool):
        raise _bad(method, n, "prioritize", "nil or boolean", prioritize)
    return bool(prioritize)


def _check_optional(method: str, n: int, name: str, value: Any, ok: Callable[[Any], bool], expected: str) -> None:
    if value is not None and not ok(value):
        raise _bad(method, n, name, expected, value)


# ---------------------------------------------------------------------------------------------------- key locks


@dataclass
class _KeyState:
    writing: bool = False
    active_readers: int = 0
    pending_writes: int = 0
    ref_count: int = 0


class _KeyLocks:
    """`KeyRegistry` and `KeyWaiters` of one data store object: the source's rules, one server only."""

    def __init__(self) -> None:
        self.states: dict[str, _KeyState] = {}
        self.waiters: dict[str, dict[AccessMode, deque[asyncio.Future]]] = {}

    def can(self, key: str, mode: AccessMode) -> bool:
        """IsKeyValid: a read when nobody writes and no write is pending; a write when nobody writes or reads."""
        info = self.states.get(key)
        if info is None:
            return True
        if mode is AccessMode.READ:
            return not info.writing and info.pending_writes == 0
        return not info.writing and info.active_readers == 0

    async def acquire(self, key: str, mode: AccessMode) -> None:
        """AcquireKeyLock: waits (woken by a release) until the key is free for `mode`, then takes it."""
        info = self.states.setdefault(key, _KeyState())
        if mode is AccessMode.WRITE:
            info.pending_writes += 1
        while not self.can(key, mode):
            waiters = self.waiters.setdefault(key, {AccessMode.READ: deque(), AccessMode.WRITE: deque()})
            turn = asyncio.get_running_loop().create_future()
            waiters[mode].append(turn)
            await turn
        self._take(info, mode)

    def take_nowait(self, key: str, mode: AccessMode) -> None:
        """AcquireKeyLock when `can(key, mode)` was just seen true: it does not wait (the source's only use)."""
        info = self.states.setdefault(key, _KeyState())
        assert self.can(key, mode), (key, mode)
        if mode is AccessMode.WRITE:
            info.pending_writes += 1
        self._take(info, mode)

    @staticmethod
    def _take(info: _KeyState, mode: AccessMode) -> None:
        info.ref_count += 1
        if mode is AccessMode.WRITE:
            info.pending_writes -= 1
            info.writing = True
        else:
            info.active_readers += 1

    def release(self, key: str, mode: AccessMode) -> None:
        """ReleaseKeyLock: give the key back and wake the first waiting write, else every waiting read."""
        info = self.states.get(key)
        if info is None:
            return
        info.ref_count -= 1
        if mode is AccessMode.WRITE:
            info.writing = False
        else:
            info.active_readers -= 1
        waiters = self.waiters.get(key)
        if waiters is not None:
            if info.active_readers == 0 and not info.writing and waiters[AccessMode.WRITE]:
                _resume(waiters[AccessMode.WRITE].popleft())
                return
            while not info.writing and info.pending_writes == 0 and waiters[AccessMode.READ]:
                _resume(waiters[AccessMode.READ].popleft())
            if not waiters[AccessMode.READ] and not waiters[AccessMode.WRITE]:
                del self.waiters[key]
        if info.ref_count <= 0 and key not in self.waiters:
            del self.states[key]

    def locked(self) -> int:
        return sum(1 for s in self.states.values() if s.writing or s.active_readers)


def _resume(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


# ------------------------------------------------------------------------------------------------------ requests


@dataclass(eq=False)
class _Request:
    name: str
    run: Callable[[], Awaitable[Any]]          # the DataStore call, answering its result or raising
    request_types: tuple[RequestType, ...]     # its budget: the smallest of these (UpdateAsync: Get's and Set's)
    locks: _KeyLocks | None
    key: str | None
    mode: AccessMode | None
    prioritize: bool
    context: contextvars.Context
    future: asyncio.Future


class EliteDataStoreService:
    """One game server's EliteDataStoreService over `server` (a `storage.Server`), its processor on `scheduler`.

    >>> elite = EliteDataStoreService(server, scheduler)
    >>> store = elite.get_data_store("PlayerData")
    >>> data, ok = await store.get("Player_1")
    >>> version, ok = await store.set("Player_1", {"coins": 100}, None, None, True)   # prioritize = True
    """

    def __init__(self, server: Server, scheduler: Scheduler, *, release: str = Release.V1_6_0.value,
                 iteration_cycle: float = ITERATION_CYCLE) -> None:
        try:
            self.release = Release(release)
        except ValueError:
            raise ConfigError(f"release must be one of {', '.join(r.value for r in Release)}, got {release!r}",
                              field="release") from None
        self.server = server
        self.scheduler = scheduler
        self.iteration_cycle = ITERATION_CYCLE
        self.set_iteration_cycle(iteration_cycle)
        self._cache: dict[tuple, EliteDataStore] = {}
        self._queue: deque[_Request] = deque()
        self._priority: deque[_Request] = deque()
        self._dropped: deque[_Request] = deque()
        self._processing: set[str] = set()
        self.finished_all = True
        self._finished_waiters: list[asyncio.Future] = []
        self._timer: Timer | None = None
        self._reserved: dict[RequestType, int] = {}    # request type -> dispatched requests not yet returned
        self._budgets: dict[RequestType, int] = {}     # the budget as last asked (each cycle, each fast path)
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self._stopped = False
        self._n = dict(fast_path=0, queued=0, dispatched=0, moved_to_dropped=0, cycles=0, succeeded=0, failed=0)

    # ------------------------------------------------------------------------------------------- public API

    def get_data_store(self, name: str, scope: str = DEFAULT_SCOPE) -> "EliteDataStore":
        """GetDataStore: the same object for the same name and scope (`DatastoresCache`)."""
        return self._store(name, scope, False)

    def get_ordered_data_store(self, name: str, scope: str = DEFAULT_SCOPE) -> "EliteDataStore":
        """GetOrderedDataStore: integer values, `get_sorted`."""
        return self._store(name, scope, True)

    def _store(self, name: str, scope: str, ordered: bool) -> "EliteDataStore":
        cached = self._cache.get((ordered, name, scope))
        if cached is None:
            service = self.server.datastores
            ds = (service.get_ordered_data_store(name, scope) if ordered
                  else service.get_data_store(name, scope))
            cached = self._cache[(ordered, name, scope)] = EliteDataStore(self, ds, name, scope, ordered)
        return cached

    async def get_request_budget(self, request_type: RequestType | str) -> int:
        """GetRequestBudgetForRequestType, as Roblox answers it."""
        return await self.server.datastores.aio.get_request_budget(request_type)

    def set_iteration_cycle(self, seconds: float) -> None:
        """SetIterationCycle: how often the processor walks its queues."""
        if not _is_number(seconds) or not 0 < seconds < math.inf:
            raise _bad("EliteDataStoreService.set_iteration_cycle", 1, "seconds", "positive finite number", seconds)
        self.iteration_cycle = float(seconds)

    def get_queue_size(self) -> int:
        """GetQueueSize: requests in the main queue."""
        return len(self._queue)

    def get_priority_queue_size(self) -> int:
        """GetPriorityQueueSize: requests in the priority queue."""
        return len(self._priority)

    def get_queue_sizes(self) -> EliteQueueSizes:
        """Every queue's size, the dropped-requests queue included (which the source does not expose)."""
        return EliteQueueSizes(len(self._queue), len(self._priority), len(self._dropped))

    async def wait_for_all_requests(self) -> None:
        """WaitForAllRequests: a frame, then until the processor says it finished (`FinishedAll`). With release
        1.6.0 that is after its next cycle, whatever is still queued; in every release, calls in flight may still
        be running when it returns."""
        await self.scheduler.sleep(FRAME_S)
        while not self.finished_all and not self._stopped:
            turn = asyncio.get_running_loop().create_future()
            self._finished_waiters.append(turn)
            await turn

    async def guard_call(self, method: Callable[..., Awaitable[EliteResult]], max_retries: int | None = None,
                         retries_intermission: float | None = None, exponential_backoff: bool | None = None,
                         *args: Any) -> EliteResult:
        """GuardCall: `await method(*args)` until it succeeds or `max_retries` attempts (default 5) were made,
        waiting `retries_intermission` (default 1 s) x the attempt number (x 1 without backoff) after each failure."""
        where = "EliteDataStoreService.guard_call"
        if not callable(method):
            raise _bad(where, 1, "method", "function", method)
        _check_optional(where, 2, "max_retries", max_retries, _is_number, "nil or number")
        _check_optional(where, 3, "retries_intermission", retries_intermission, _is_number, "nil or number")
        _check_optional(where, 4, "exponential_backoff", exponential_backoff, lambda v: isinstance(v, bool),
                        "nil or boolean")
        backoff = DEFAULT_EXPONENTIAL_BACKOFF if exponential_backoff is None else exponential_backoff
        limit = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
        pause = DEFAULT_RETRIES_INTERMISSION if retries_intermission is None else retries_intermission
        attempts = 0
        while True:
            attempts += 1
            value, success = await method(*args)
            if not success:
                await self.scheduler.sleep(pause * (attempts if backoff else 1))
            if success or attempts >= limit:
                return EliteResult(value, success)

    def statistics(self) -> EliteStatistics:
        locked = sum(store._locks.locked() for store in self._cache.values())
        return EliteStatistics(len(self._queue), len(self._priority), len(self._dropped), self._in_flight,
                               self.finished_all, keys_locked=locked, **self._n)

    def stop(self) -> None:
        """The server is gone (not in the source: the module ends with its server): the processor stops, calls in
        flight are cancelled, and every queued call answers (error, False)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        gone = LodestoreError(f"server {self.server.job_id!r} closed before the request ran")
        for queue in (self._dropped, self._priority, self._queue):
            while queue:
                request = queue.popleft()
                if not request.future.done():
                    request.future.set_result(EliteResult(gone, False))
        self._finish()

    # ------------------------------------------------------------------------------------------ the processor

    async def _perform(self, request: _Request) -> EliteResult:
        """PerformDatastoreRequest."""
        if self._stopped:
            return EliteResult(LodestoreError(f"server {self.server.job_id!r} is closed"), False)
        key, mode, locks = request.key, request.mode, request.locks
        if self._queues_empty() and (key is None or locks.can(key, mode)):
            if key is not None:
                locks.take_nowait(key, mode)
            await self._ask_budgets(set(request.request_types))
            if self._budget(request) < 1:
                if key is not None and self.release is Release.PATCHED:
                    locks.release(key, mode)
                # releases 1.6.0 and 1.5.0 queue the request still holding its key lock (see the module docstring)
                return await self._enqueue(request)
            self._n["fast_path"] += 1
            self._in_flight += 1
            try:
                return await self._call(request)
            finally:
                self._in_flight -= 1
                if key is not None:
                    locks.release(key, mode)
        return await self._enqueue(request)

    def _queues_empty(self) -> bool:
        """AreQueuesEmpty: 1.6.0 asks whether a queue is being walked right now; 1.5.0 whether every queue is empty."""
        if self.release is Release.V1_6_0:
            return not self._processing
        return not (self._queue or self._priority or self._dropped)

    def _budget(self, request: _Request) -> float:
        """The request's budget as last asked (`_ask_budgets`), less what was dispatched and has not returned."""
        if not self.server.datastores.budgets_enforced:
            return math.inf
        return min(self._budgets.get(t, 0) - self._reserved.get(t, 0) for t in request.request_types)

    async def _ask_budgets(self, types: set[RequestType]) -> None:
        """Ask the budget of `types` now. The source asks GetRequestBudgetForRequestType at each check, which
        yields nothing in Luau; here the budget actor answers a message, so the processor asks once before a cycle
        (and the fast path before its check), and the checks of that cycle read the answer."""
        service = self.server.datastores
        if service.budgets_enforced:
            for t in sorted(types, key=lambda t: t.value):
                try:
                    self._budgets[t] = await service.aio.get_request_budget(t)
                except LodestoreError:
                    pass   # the budget actor did not answer: the last answer stands (the processor goes on)

    def _reserve(self, request: _Request, delta: int) -> None:
        for t in request.request_types:
            self._reserved[t] = self._reserved.get(t, 0) + delta

    async def _enqueue(self, request: _Request) -> EliteResult:
        self._n["queued"] += 1
        (self._priority if request.prioritize else self._queue).append(request)
        self.finished_all = False
        self._arm()
        return await request.future

    def _arm(self) -> None:
        if self._timer is None and not self._stopped:
            self._timer = self.scheduler.call_later(self.iteration_cycle, self._cycle)

    def _cycle(self) -> None:
        """One heartbeat past the iteration cycle: ask the budgets, then walk the dropped, priority and main
        queues, in that order."""
        if self._stopped or self.finished_all:
            self._timer = None
            return
        types = {t for q in (self._dropped, self._priority, self._queue) for r in q for t in r.request_types}
        task = self.scheduler.spawn(self._walk(types))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _walk(self, types: set[RequestType]) -> None:
        await self._ask_budgets(types)
        self._timer = None
        if self._stopped or self.finished_all:
            return
        self._n["cycles"] += 1
        for name, queue in (("dropped", self._dropped), ("priority", self._priority), ("queue", self._queue)):
            self._iterate(name, queue)
        if self._queues_empty():
            self._finish()
        else:
            self._arm()

    def _finish(self) -> None:
        self.finished_all = True
        waiters, self._finished_waiters = self._finished_waiters, []
        for turn in waiters:
            _resume(turn)

    def _iterate(self, name: str, queue: deque[_Request]) -> None:
        """IterateThrough: each request once; a valid one is dispatched, any other goes to the back."""
        if not queue or name in self._processing:
            return
        self._processing.add(name)
        try:
            for _ in range(len(queue)):
                request = queue.popleft()
                if self._budget(request) > 0 and (request.key is None
                                                  or request.locks.can(request.key, request.mode)):
                    self._process(request)
                else:
                    queue.append(request)
        finally:
            self._processing.discard(name)

    def _process(self, request: _Request) -> None:
        """ProcessRequest (its synchronous part, as Luau's task.spawn runs it): take the key lock, re-check the
        budget (under 1: the lock goes back, the request to the dropped-requests queue), send."""
        if request.key is not None and not request.locks.can(request.key, request.mode):
            self._spawn(request.context, self._process_after_lock(request))   # not reached from a cycle
            return
        if request.key is not None:
            request.locks.take_nowait(request.key, request.mode)
        self._dispatch(request)

    async def _process_after_lock(self, request: _Request) -> None:
        await request.locks.acquire(request.key, request.mode)
        self._dispatch(request)

    def _dispatch(self, request: _Request) -> None:
        if self._budget(request) < 1:
            if request.key is not None:
                request.locks.release(request.key, request.mode)
            self._n["moved_to_dropped"] += 1
            self._dropped.append(request)   # FinishedAll is left as it is (the source's Enqueue alone)
            return
        self._n["dispatched"] += 1
        self._reserve(request, +1)
        self._spawn(request.context, self._run_queued(request))

    async def _run_queued(self, request: _Request) -> None:
        self._reserve(request, -1)   # the call spends its token now (or waits in Roblox's queue for it)
        self._in_flight += 1
        try:
            result = await self._call(request)
        finally:
            self._in_flight -= 1
            if request.key is not None:
                request.locks.release(request.key, request.mode)
        if not request.future.done():
            request.future.set_result(result)

    async def _call(self, request: _Request) -> EliteResult:
        """The source's `pcall` of the DataStore method: whatever it raises comes back as (error, False)."""
        try:
            value = await request.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._n["failed"] += 1
            return EliteResult(exc, False)
        self._n["succeeded"] += 1
        return EliteResult(value, True)

    def _spawn(self, context: contextvars.Context, coro: Awaitable[Any]) -> None:
        task = context.run(self.scheduler.spawn, coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _request(self, name: str, run: Callable[[], Awaitable[Any]], types: tuple[RequestType, ...],
                 locks: _KeyLocks | None, key: str | None, mode: AccessMode | None, prioritize: bool) -> _Request:
        return _Request(name, run, types, locks, key, mode, prioritize, contextvars.copy_context(),
                        asyncio.get_running_loop().create_future())


# ------------------------------------------------------------------------------------------------- data stores


class EliteDataStore:
    """An EliteDataStore (or EliteOrderedDataStore when `ordered`): Roblox's data store calls through the service's
    queue and key locks, each answering `EliteResult(value, success)`. Obtain it from
    `EliteDataStoreService.get_data_store`."""

    def __init__(self, service: EliteDataStoreService, ds: Any, name: str, scope: str, ordered: bool) -> None:
        self._service = service
        self._ds = ds
        self.name = name
        self.scope = scope
        self.ordered = ordered
        self._locks = _KeyLocks()

    def __repr__(self) -> str:
        return f"EliteDataStore({self.name!r}, scope={self.scope!r}{', ordered' if self.ordered else ''})"

    def _type(self, standard: RequestType, ordered: RequestType | None = None) -> tuple[RequestType, ...]:
        return ((ordered or standard) if self.ordered else standard,)

    async def _perform(self, name: str, run: Callable[[], Awaitable[Any]], types: tuple[RequestType, ...],
                       key: str | None, mode: AccessMode | None, prioritize: bool) -> EliteResult:
        service = self._service
        return await service._perform(service._request(name, run, types, self._locks if key is not None else None,
                                                       key, mode, prioritize))

    def can_read(self, key: str | int) -> bool:
        """CanRead: whether a read of `key` could start now."""
        return self._locks.can(_check_key("EliteDataStore.can_read", key), AccessMode.READ)

    def can_write(self, key: str | int) -> bool:
        """CanWrite: whether a write of `key` could start now."""
        return self._locks.can(_check_key("EliteDataStore.can_write", key), AccessMode.WRITE)

    async def get(self, key: str | int, options: GetOptions | None = None,
                  prioritize: bool | None = False) -> EliteResult:
        """Get: (the stored value or None, True), or (error, False). The DataStore's KeyInfo is not returned (the
        source returns GetAsync's first result only)."""
        where = "EliteDataStore.get"
        key = _check_key(where, key)
        _check_optional(where, 2, "options", options, lambda v: isinstance(v, GetOptions), "nil or GetOptions")
        prioritize = _check_prioritize(where, 3, prioritize)
        use_cache = options.use_cache if options is not None else True

        async def run() -> Any:
            if self.ordered:
                return await self._ds.aio.get(key)
            return (await self._ds.aio.get(key, use_cache))[0]
        return await self._perform("get", run, self._type(_R.STANDARD_READ, _R.ORDERED_READ), key, AccessMode.READ,
                                   prioritize)

    async def set(self, key: str | int, value: Any, user_ids: list[int] | None = None,
                  options: SetOptions | None = None, prioritize: bool | None = False) -> EliteResult:
        """Set: (the new version, True), or (error, False). `value` is read when the request is sent, as Luau reads
        the table it was given then."""
        where = "EliteDataStore.set"
        key = _check_key(where, key)
        prioritize = _check_prioritize(where, 5, prioritize)

        async def run() -> Any:
            if self.ordered:
                return await self._ds.aio.set(key, value)
            return await self._ds.aio.set(key, value, user_ids, options.metadata if options is not None else None)
        return await self._perform("set", run, self._type(_R.STANDARD_WRITE, _R.ORDERED_WRITE), key,
                                   AccessMode.WRITE, prioritize)

    async def increment(self, key: str | int, delta: int | None = None, user_ids: list[int] | None = None,
                        options: IncrementOptions | None = None, prioritize: bool | None = False) -> EliteResult:
        """Increment: (the new value, True), or (error, False); `delta` defaults to 1."""
        where = "EliteDataStore.increment"
        key = _check_key(where, key)
        _check_optional(where, 2, "delta", delta, _is_number, "nil or number")
        _check_optional(where, 3, "user_ids", user_ids, lambda v: isinstance(v, (list, tuple)), "nil or table")
        _check_optional(where, 4, "options", options, lambda v: isinstance(v, IncrementOptions),
                        "nil or IncrementOptions")
        prioritize = _check_prioritize(where, 5, prioritize)
        step = 1 if delta is None else delta

        async def run() -> Any:
            if self.ordered:
                return await self._ds.aio.increment(key, step)
            return (await self._ds.aio.increment(key, step, user_ids))[0]
        return await self._perform("increment", run, self._type(_R.STANDARD_WRITE, _R.ORDERED_WRITE), key,
                                   AccessMode.WRITE, prioritize)

    async def update(self, key: str | int, transform: Callable[..., Any],
                     prioritize: bool | None = False) -> EliteResult:
        """Update: `transform(old, key_info)` (an ordered store: `transform(old)`) returns the new value, or None
        to cancel; (the new value, True), or (error, False). Its budget is the smaller of Get's and Set's."""
        where = "EliteDataStore.update"
        key = _check_key(where, key)
        if not callable(transform):
            raise _bad(where, 2, "transform", "function", transform)
        prioritize = _check_prioritize(where, 3, prioritize)

        async def run() -> Any:
            if self.ordered:
                return await self._ds.aio.update(key, transform)
            return (await self._ds.aio.update(key, transform))[0]
        types = (_R.ORDERED_READ, _R.ORDERED_WRITE) if self.ordered else (_R.STANDARD_READ, _R.STANDARD_WRITE)
        return await self._perform("update", run, types, key, AccessMode.WRITE, prioritize)

    async def remove(self, key: str | int, prioritize: bool | None = False) -> EliteResult:
        """Remove: (the value the key had, True), or (error, False)."""
        where = "EliteDataStore.remove"
        key = _check_key(where, key)
        prioritize = _check_prioritize(where, 2, prioritize)

        async def run() -> Any:
            if self.ordered:
                return await self._ds.aio.remove(key)
            return (await self._ds.aio.remove(key))[0]
        return await self._perform("remove", run, self._type(_R.STANDARD_REMOVE, _R.ORDERED_REMOVE), key,
                                   AccessMode.WRITE, prioritize)

    async def get_version(self, key: str | int, version: str, prioritize: bool | None = False) -> EliteResult:
        where = "EliteDataStore.get_version"
        key = _check_key(where, key)
        if not isinstance(version, str):
            raise _bad(where, 2, "version", "string", version)
        prioritize = _check_prioritize(where, 3, prioritize)
        async def run() -> Any:
            return (await self._ds.aio.get_version(key, version))[0]
        return await self._perform("get_version", run, (_R.STANDARD_READ,), key, AccessMode.READ, prioritize)

    async def get_version_at_time(self, key: str | int, timestamp: int,
                                  prioritize: bool | None = False) -> EliteResult:
        where = "EliteDataStore.get_version_at_time"
        key = _check_key(where, key)
        if not _is_number(timestamp):
            raise _bad(where, 2, "timestamp", "number", timestamp)
        prioritize = _check_prioritize(where, 3, prioritize)
        async def run() -> Any:
            return (await self._ds.aio.get_version_at_time(key, timestamp))[0]
        return await self._perform("get_version_at_time", run, (_R.STANDARD_READ,), key, AccessMode.READ,
                                   prioritize)

    async def remove_version(self, key: str | int, version: str, prioritize: bool | None = False) -> EliteResult:
        where = "EliteDataStore.remove_version"
        key = _check_key(where, key)
        if not isinstance(version, str):
            raise _bad(where, 2, "version", "string", version)
        prioritize = _check_prioritize(where, 3, prioritize)
        return await self._perform("remove_version", lambda: self._ds.aio.remove_version(key, version),
                                   (_R.REMOVE_VERSION,), key, AccessMode.WRITE, prioritize)

    async def list_versions(self, key: str | int, sort_direction: SortDirection | None = None,
                            min_date: int | None = None, max_date: int | None = None, page_size: int | None = None,
                            prioritize: bool | None = False) -> EliteResult:
        """ListVersions: (EliteDataStorePages of VersionInfo, True), or (error, False)."""
        where = "EliteDataStore.list_versions"
        key = _check_key(where, key)
        _check_optional(where, 2, "sort_direction", sort_direction, lambda v: isinstance(v, SortDirection),
                        "nil or SortDirection")
        _check_optional(where, 3, "min_date", min_date, _is_number, "nil or number")
        _check_optional(where, 4, "max_date", max_date, _is_number, "nil or number")
        _check_optional(where, 5, "page_size", page_size, _is_number, "nil or number")
        prioritize = _check_prioritize(where, 6, prioritize)
        direction = sort_direction or SortDirection.ASCENDING

        def fetch(cursor: str | None) -> Awaitable[Any]:
            return self._ds.aio.list_versions(key, direction, min_date, max_date, page_size or 0, cursor)
        return await self._pages("list_versions", fetch, (_R.STANDARD_LIST,), key, AccessMode.READ, prioritize)

    async def list_keys(self, prefix: str | None = None, page_size: int | None = None, cursor: str | None = None,
                        exclude_deleted: bool | None = None, prioritize: bool | None = False) -> EliteResult:
        """ListKeys: (EliteDataStorePages of key names, True), or (error, False)."""
        where = "EliteDataStore.list_keys"
        _check_optional(where, 1, "prefix", prefix, lambda v: isinstance(v, str), "nil or string")
        _check_optional(where, 2, "page_size", page_size, _is_number, "nil or number")
        _check_optional(where, 3, "cursor", cursor, lambda v: isinstance(v, str), "nil or string")
        _check_optional(where, 4, "exclude_deleted", exclude_deleted, lambda v: isinstance(v, bool),
                        "nil or boolean")
        prioritize = _check_prioritize(where, 5, prioritize)

        def fetch(after: str | None) -> Awaitable[Any]:
            return self._ds.aio.list_keys(prefix or "", page_size or 0, after, bool(exclude_deleted))
        return await self._pages("list_keys", fetch, (_R.STANDARD_LIST,), None, None, prioritize, cursor)

    async def get_sorted(self, ascending: bool, page_size: int, min_value: int | None = None,
                         max_value: int | None = None, prioritize: bool | None = False) -> EliteResult:
        """GetSorted (an ordered store only): (EliteDataStorePages of (key, value), True), or (error, False)."""
        where = "EliteDataStore.get_sorted"
        if not self.ordered:
            raise EliteArgumentError(f"Cannot use get_sorted on a non-ordered data store ({self.name!r})")
        if not isinstance(ascending, bool):
            raise _bad(where, 1, "ascending", "boolean", ascending)
        if not _is_number(page_size):
            raise _bad(where, 2, "page_size", "number", page_size)
        _check_optional(where, 3, "min_value", min_value, _is_number, "nil or number")
        _check_optional(where, 4, "max_value", max_value, _is_number, "nil or number")
        prioritize = _check_prioritize(where, 5, prioritize)

        def fetch(cursor: str | None) -> Awaitable[Any]:
            return self._ds.aio.get_sorted(ascending, page_size, min_value, max_value, cursor)
        return await self._pages("get_sorted", fetch, (_R.ORDERED_LIST,), None, None, prioritize)

    async def _pages(self, name: str, fetch: Callable[[str | None], Awaitable[Any]], types: tuple[RequestType, ...],
                     key: str | None, mode: AccessMode | None, prioritize: bool, cursor: str | None = None
                     ) -> EliteResult:
        result = await self._perform(name, lambda: fetch(cursor), types, key, mode, prioritize)
        if not result.success:
            return result
        return EliteResult(EliteDataStorePages(self._service, fetch, types, result.value), True)


class EliteDataStorePages:
    """EliteDataStorePages: the current page of a listing, and the next one through the service's queue."""

    def __init__(self, service: EliteDataStoreService, fetch: Callable[[str | None], Awaitable[Any]],
                 types: tuple[RequestType, ...], page: Any) -> None:
        self._service = service
        self._fetch = fetch
        self._types = types
        self._page = page

    def get_current_page(self) -> list:
        return list(self._page.items)

    def is_finished(self) -> bool:
        return self._page.cursor is None

    async def advance_to_next_page(self, prioritize: bool | None = False) -> EliteResult:
        """AdvanceToNextPage: (None, True) once the next page is current, or (error, False)."""
        prioritize = _check_prioritize("EliteDataStorePages.advance_to_next_page", 1, prioritize)
        service = self._service
        cursor = self._page.cursor

        async def run() -> None:
            if cursor is None:
                raise LodestoreError("no more pages: the listing is finished")
            self._page = await self._fetch(cursor)
        result = await service._perform(service._request("advance_to_next_page", run, self._types, None, None, None,
                                                         prioritize))
        return result


# ---------------------------------------------------------------------------------------------------- the design

SAVE_WITH = ("set", "update")
PRIORITIZE = ("final", "all", "none")


@dataclass(frozen=True)
class EliteOptions:
    """`[store.elite]`:
    - `save_with`: "set" (the README: SetAsync of the server's copy) or "update" (UpdateAsync replaying this
      server's changes since its last save on the stored value, the basics page's advice played through Elite).
    - `prioritize`: which saves go in the priority queue: "final" (leave and BindToClose, the README's best
      practice), "all", or "none".
    - `release`: "1.6.0" (HEAD), "1.5.0", or "patched" (see the module docstring).
    - `iteration_cycle`: SetIterationCycle, seconds (default 0.35).
    """

    save_with: str = "set"
    prioritize: str = "final"
    release: str = Release.V1_6_0.value
    iteration_cycle: float = ITERATION_CYCLE

    def __post_init__(self) -> None:
        if self.save_with not in SAVE_WITH:
            raise ConfigError(f"must be one of {', '.join(SAVE_WITH)}, got {self.save_with!r}", field="save_with")
        if self.prioritize not in PRIORITIZE:
            raise ConfigError(f"must be one of {', '.join(PRIORITIZE)}, got {self.prioritize!r}", field="prioritize")
        releases = [r.value for r in Release]
        if self.release not in releases:
            raise ConfigError(f"must be one of {', '.join(releases)}, got {self.release!r}", field="release")
        cycle = self.iteration_cycle
        if not _is_number(cycle) or not 0 < cycle <= 60:
            raise ConfigError(f"must be seconds > 0 and at most 60, got {cycle!r}", field="iteration_cycle")


@dataclass
class _Player:
    data: dict
    session: str
    changes: list[Callable[[dict], bool]] = field(default_factory=list)   # since the last save (save_with update)


class EliteLayer(DataLayer):
    """One server's players, kept as the README's game keeps them on EliteDataStoreService (module docstring)."""

    def __init__(self, server: Server, scheduler: Scheduler, config: StoreConfig, options: EliteOptions) -> None:
        super().__init__(server, scheduler, config)
        self.options = options
        self.elite = EliteDataStoreService(server, scheduler, release=options.release,
                                           iteration_cycle=options.iteration_cycle)
        self.store = self.elite.get_data_store(config.name)
        self.players: dict[str, _Player] = {}
        self.arm(config.autosave_interval, self._autosave)

    def _autosave(self) -> None:
        """Every `autosave_interval`: a Set of every player, all at once (Elite queues what the budget cannot take)."""
        if self.down:
            return
        for key in list(self.players):
            self.spawn(self._autosave_one(key))
        self.arm(self.config.autosave_interval, self._autosave)

    async def _autosave_one(self, key: str) -> None:
        try:
            await self._save(key, self.options.prioritize == "all")
        except DesignError:
            pass   # warned; the next round tries again

    # --------------------------------------------------------------------------------------------- contract

    async def load(self, key: str) -> None:
        self.check_up()
        value, success = await self.store.get(key)
        self.check_up()
        if not success:
            self.counters.load_failures += 1
            self.log("warn", f"Failed to load data for {key}, error: {value}")
            raise DesignError(f"the load of {key!r} failed (the player is kicked): {value}", "LoadFailed")
        if value is not None and not isinstance(value, dict):
            self.log("warn", f"data of {key} is not a table ({type(value).__name__}): starting from the template")
        data = copy.deepcopy(value) if isinstance(value, dict) else self.template()
        player = self.players[key] = _Player(data, new_id())
        self.counters.loads += 1
        self.report("acquired", key, player.session)

    async def update(self, key: str, fn: Callable[[dict], bool]) -> bool:
        player = self._player(key)
        if not fn(player.data):
            return False
        if self.options.save_with == "update":
            player.changes.append(fn)
        self.changed(key)
        return True

    async def save(self, key: str) -> None:
        self._player(key)
        await self._save(key, self.options.prioritize == "all")

    async def unload(self, key: str) -> bool:
        player = self._player(key)
        try:
            await self._save(key, self.options.prioritize != "none")
            ok = True
        except DesignError:
            ok = False
        if self.players.get(key) is player:
            del self.players[key]
            self.forget(key)
            self.report("released", key, player.session)
        return ok

    async def is_loaded(self, key: str) -> bool:
        return key in self.players

    async def close(self) -> None:
        """BindToClose: the module's own handler (2 s, then until the processor finished, within Roblox's 30 s);
        then the server ends and what is still queued with it."""
        if self.down:
            return
        self.halt(cancel_work=False)
        waiting = self.scheduler.spawn(self._shutdown_yield())
        limit = self.scheduler.spawn(self.scheduler.sleep(BIND_TO_CLOSE_LIMIT_S))
        await asyncio.wait([waiting, limit], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        limit.cancel()
        self.elite.stop()

    async def _shutdown_yield(self) -> None:
        await self.scheduler.sleep(SHUTDOWN_YIELD_S)
        await self.elite.wait_for_all_requests()

    def crash(self) -> None:
        self.halt()
        self.elite.stop()
        for key, player in list(self.players.items()):
            self.report("lost", key, player.session)
        self.forget_all()
        self.players.clear()

    # ----------------------------------------------------------------------------------------------- helpers

    async def _save(self, key: str, prioritize: bool) -> None:
        player = self._player(key)
        since = self.now()
        if self.options.save_with == "set":
            # The live table, as the README's game passes it: what is sent is what it holds when the Set runs.
            value, success = await self.store.set(key, player.data, None, None, prioritize)
        else:
            changes, player.changes = player.changes, []
            value, success = await self.store.update(key, ReplayChanges(tuple(changes), self.template()), prioritize)
            if not success:
                player.changes[:0] = changes
            elif self.players.get(key) is player and isinstance(value, dict):
                player.data = copy.deepcopy(value)
                for fn in player.changes:   # changes made while the save waited stay on top
                    fn(player.data)
        if not success:
            self.counters.save_failures += 1
            self.log("warn", f"Failed to save data for {key}, error: {value}")
            raise DesignError(f"the save of {key!r} failed: {value}", "SaveFailed")
        self.saved(key, since)

    def _player(self, key: str) -> _Player:
        self.check_up()
        player = self.players.get(key)
        if player is None:
            raise self.not_loaded(key)
        return player


async def _open(game: Any, scheduler: Scheduler, config: StoreConfig, options: EliteOptions) -> EliteLayer:
    return EliteLayer(game.storage, scheduler, config, options)


ELITE = Design("elite", "EliteDataStoreService: its own queue (priority first) and key read/write locks in front of "
               "DataStoreService, Get on join, Set on leave and every few minutes, no session lock", EliteOptions,
               _open, read_values, transactions=False, lock="none (key read/write locks inside one server)")
