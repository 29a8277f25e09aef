"""One game server's side of the request budget: leased tokens, Roblox's four throttle queues, priorities.

Every DataStore request asks its server's `BudgetGate` for a token before it is sent. Tokens come from the world's
budget actor in leases (batches), so a server pays one Ray call per batch of requests, not per request; they are spent
here, only before their lease expires, and what is left goes back with `release`. When no token is at hand the request
waits in the FIFO queue of its kind (Set, OrderedSet, Get, OrderedGet), at most 30 deep; a request that finds its queue
full fails at once with Roblox's 301-306. Emergency requests (a final save at shutdown) go before routine ones.
Nothing here talks to storage, and nothing is dropped without its caller getting an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from lodestore.storage._errors import THROTTLE_NAMES, THROTTLED_CODE, DataStoreError, throttled_name
from lodestore.storage._limits import RequestType
from lodestore.storage._scheduler import wait_for
from lodestore.storage._transport import Permit

__all__ = ["BudgetGate", "OpenGate", "ExperienceGate", "KeyLanes", "QueueKind", "emergency", "GateStatistics",
           "QUEUE_LIMIT"]

QUEUE_LIMIT = 30
MIN_LEASE = 20            # tokens a lease asks for beyond what the waiting requests need, at first
MAX_LEASE = 1000          # ... doubled while whole leases get used, halved when one comes back with leftovers
POLL_S = 0.05             # real seconds between budget checks while a queue waits for a refill (at least)
WAITER_POLL_S = 1.0       # simulated seconds a request behind the head of its queue waits before it looks again
                          # (it is woken at once when the head is served)


class QueueKind:
    GET = "Get"
    SET = "Set"
    ORDERED_GET = "OrderedGet"
    ORDERED_SET = "OrderedSet"


QUEUE_OF = {
    RequestType.STANDARD_READ: QueueKind.GET, RequestType.STANDARD_LIST: QueueKind.GET,
    RequestType.STANDARD_WRITE: QueueKind.SET, RequestType.STANDARD_REMOVE: QueueKind.SET,
    RequestType.REMOVE_VERSION: QueueKind.SET,
    RequestType.ORDERED_READ: QueueKind.ORDERED_GET, RequestType.ORDERED_LIST: QueueKind.ORDERED_GET,
    RequestType.ORDERED_WRITE: QueueKind.ORDERED_SET, RequestType.ORDERED_REMOVE: QueueKind.ORDERED_SET,
}

# Roblox's "request dropped: throttled and the queue was full" codes, by the call that was dropped.
_DROP_CODES = {"get": 301, "set": 302, "increment": 303, "update": 304, "get_sorted": 305, "remove": 306}
_DEFAULT_DROP = {QueueKind.GET: 301, QueueKind.SET: 302, QueueKind.ORDERED_GET: 305, QueueKind.ORDERED_SET: 302}

_emergency: contextvars.ContextVar[bool] = contextvars.ContextVar("lodestore_emergency", default=False)


@contextlib.contextmanager
def emergency() -> Iterator[None]:
    """Mark every DataStore request made inside this block (this thread or task) as an emergency: served before
    routine requests in its queue, and kept by `flush_queue`. Use it for final saves at shutdown."""
    token = _emergency.set(True)
    try:
        yield
    finally:
        _emergency.reset(token)


def is_emergency(permit: Permit) -> bool:
    return permit.emergency or _emergency.get()


class BudgetLink(Protocol):
    """How a gate reaches the budget ledger (a Ray actor, or an object in this process)."""

    def lease(self, server_id: str, request_type: RequestType, want: int) -> Any: ...
    def release(self, lease_id: str, unused: int) -> None: ...


_DONE, _LEASE, _WAIT = object(), object(), object()


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """A snapshot of one server's budget gate. `throttled` counts requests that had to wait for budget;
    `throttled_by` splits them by Roblox's name of the budget that was spent: `<RequestType>GameServerThrottled`
    (this server's own bucket) or `<RequestType>ExperienceThrottled` (the experience-wide one)."""

    tokens: dict[str, int]
    queue_sizes: dict[str, int]
    granted: int
    throttled: int
    dropped: dict[int, int]
    flushed: int
    leases: int
    throttled_by: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Pool:
    """Tokens of one request type from the current lease."""

    tokens: int = 0
    lease_id: str | None = None
    expires_at: int = 0
    batch: int = MIN_LEASE


@dataclass(slots=True)
class _Waiter:
    permit: Permit
    emergency: bool
    kind: str
    dropped_by: str | None = None
    counted_throttled: bool = field(default=False)


class BudgetGate:
    """Grants DataStore request permits for one server from leased tokens, queueing when the budget is out.

    Thread-safe; coroutines wait in a worker thread. Fair: a queue is served in order (emergencies first), and a
    request never overtakes one already waiting in its queue.
    """

    def __init__(self, link: BudgetLink, clock, server_id: str, *, queue_limit: int = QUEUE_LIMIT,
                 buckets: dict[RequestType, RequestType] | None = None) -> None:
        self._link = link
        # Request types that share one ledger bucket (the legacy profile) share one local pool too.
        self._bucket = buckets or {t: t for t in RequestType}
        self._clock = clock
        self.server_id = server_id
        self.queue_limit = queue_limit
        self._cv = threading.Condition()
        self._queues: dict[str, deque[_Waiter]] = {k: deque() for k in set(QUEUE_OF.values())}
        self._pools: dict[RequestType, _Pool] = {t: _Pool() for t in RequestType}
        self._leasing: set[RequestType] = set()  # buckets whose lease call is in flight
        self._wakeups: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._granted = 0
        self._throttled = 0
        self._throttled_by: Counter = Counter()
        self._dropped: Counter = Counter()
        self._flushed = 0
        self._leases = 0

    # ------------------------------------------------------------------------------------------------ permits

    def acquire(self, permit: Permit) -> None:
        with self._cv:
            waiter, queue = self._admit(permit)
            if waiter is None:
                return
            try:
                while True:
                    action, wait = self._step(waiter, queue)
                    if action is _DONE:
                        return
                    if action is _LEASE:
                        granted, retry_after_ms, limited_by = self._lease(permit.request_type, waiting=len(queue))
                        if granted:
                            continue
                        wait = self._throttled_wait(waiter, retry_after_ms, limited_by)
                    self._cv.wait(wait)
            finally:
                self._leave(waiter, queue)

    async def aacquire(self, permit: Permit) -> None:
        """The coroutine twin of `acquire`: waits on the event loop (never parks a worker thread for long),
        so any number of coroutines may wait for budget at once."""
        loop = asyncio.get_running_loop()
        with self._cv:
            waiter, queue = self._admit(permit)
            if waiter is None:
                return
        try:
            while True:
                wakeup = None
                with self._cv:
                    action, wait = self._step(waiter, queue)
                    if action is _DONE:
                        return
                    if action is _WAIT:
                        wakeup = loop.create_future()
                        self._wakeups.append((loop, wakeup))
                if action is _LEASE:
                    if hasattr(self._link, "alease"):
                        granted, retry_after_ms, limited_by = await self._alease(permit.request_type, len(queue))
                    else:
                        granted, retry_after_ms, limited_by = await asyncio.to_thread(
                            self._lease_locked, permit.request_type, queue)
                    if granted:
                        continue
                    with self._cv:
                        self._throttled_wait(waiter, retry_after_ms, limited_by)
                        wait_s = max(POLL_S, retry_after_ms / 1000.0)
                    wakeup = loop.create_future()
                    with self._cv:
                        self._wakeups.append((loop, wakeup))
                else:
                    wait_s = WAITER_POLL_S
                # simulated seconds (a paced clock turns them into real ones, a virtual world's scheduler waits them)
                await wait_for(wakeup, self._clock, wait_s, min_real_s=POLL_S)
        finally:
            with self._cv:
                self._leave(waiter, queue)

    def _admit(self, permit: Permit) -> tuple[_Waiter | None, deque[_Waiter]]:
        """Take a token at once when nobody waits before us (waiter None), else queue the request, or refuse it
        when its queue is full. Caller holds the lock."""
        kind = QUEUE_OF[permit.request_type]
        queue = self._queues[kind]
        if not queue and self._take(permit.request_type):
            return None, queue
        if len(queue) >= self.queue_limit:
            code = _DROP_CODES.get(permit.call, _DEFAULT_DROP[kind])
            self._dropped[code] += 1
            raise DataStoreError(code, THROTTLE_NAMES[code],
                                 f"request dropped: throttled and the {kind} queue was full "
                                 f"({self.queue_limit} waiting) on server {self.server_id!r}")
        waiter = _Waiter(permit, is_emergency(permit), kind)
        if waiter.emergency:
            position = next((i for i, w in enumerate(queue) if not w.emergency), len(queue))
            queue.insert(position, waiter)
        else:
            queue.append(waiter)
        return waiter, queue

    def _step(self, waiter: _Waiter, queue: deque[_Waiter]) -> tuple[object, float]:
        """One look at a queued request, lock held: done (it got a token), lease (it is at the head and must
        fetch tokens; the bucket is marked as being leased), or wait (how long at most before looking again)."""
        if waiter.dropped_by is not None:
            code = _DROP_CODES.get(waiter.permit.call, _DEFAULT_DROP[waiter.kind])
            raise DataStoreError(code, THROTTLE_NAMES[code], f"request dropped from the {waiter.kind} queue by "
                                 f"{waiter.dropped_by} on server {self.server_id!r}")
        if queue and queue[0] is waiter:
            if self._take(waiter.permit.request_type):
                return _DONE, 0.0
            bucket = self._bucket[waiter.permit.request_type]
            if bucket not in self._leasing:
                self._leasing.add(bucket)
                return _LEASE, 0.0
        return _WAIT, POLL_S

    def _throttled_wait(self, waiter: _Waiter, retry_after_ms: int, limited_by: str) -> float:
        """The budget is out: count the request as throttled (once, under the name of the budget that was spent:
        `limited_by` is "Experience" or "GameServer") and say how long to wait. Lock held."""
        if not waiter.counted_throttled:
            waiter.counted_throttled = True
            self._throttled += 1
            self._throttled_by[throttled_name(waiter.permit.request_type, limited_by)] += 1
        return max(POLL_S, self._clock.real_seconds(retry_after_ms / 1000.0))

    def _leave(self, waiter: _Waiter, queue: deque[_Waiter]) -> None:
        if waiter in queue:
            queue.remove(waiter)
        self._notify()

    def _notify(self) -> None:
        """Wake every waiter, threads and coroutines. Lock held."""
        self._cv.notify_all()
        wakeups, self._wakeups = self._wakeups, []
        for loop, future in wakeups:
            loop.call_soon_threadsafe(_wake, future)

    def _take(self, rtype: RequestType) -> bool:
        """Spend one local token of `rtype` if a live lease has one. Caller holds the lock."""
        pool = self._pools[self._bucket[rtype]]
        if pool.tokens and self._clock.now() < pool.expires_at:
            pool.tokens -= 1
            self._granted += 1
            return True
        return False

    def _lease(self, rtype: RequestType, waiting: int) -> tuple[int, int, str]:
        """Return what is left of the old lease and lease a new batch; the lock is released during the call.
        The batch adapts like a congestion window: a lease used up doubles the next, leftovers halve it."""
        rtype, old_id, unused, want = self._lease_begin(rtype, waiting)
        self._cv.release()
        try:
            if old_id is not None:
                self._link.release(old_id, unused)
            lease = self._link.lease(self.server_id, rtype, want)
        finally:
            self._cv.acquire()
            self._leasing.discard(rtype)
            self._notify()
        return self._lease_end(rtype, lease)

    async def _alease(self, rtype: RequestType, waiting: int) -> tuple[int, int, str]:
        """`_lease` for a link that leases with a coroutine (`alease`): the event loop never blocks on the ledger."""
        with self._cv:
            rtype, old_id, unused, want = self._lease_begin(rtype, waiting)
        try:
            if old_id is not None:
                self._link.release(old_id, unused)
            lease = await self._link.alease(self.server_id, rtype, want)
        finally:
            with self._cv:
                self._leasing.discard(rtype)
                self._notify()
        with self._cv:
            return self._lease_end(rtype, lease)

    def _lease_begin(self, rtype: RequestType, waiting: int) -> tuple[RequestType, str | None, int, int]:
        """Take back what is left of the current lease and size the next one. Lock held."""
        rtype = self._bucket[rtype]
        pool = self._pools[rtype]
        old_id, unused = pool.lease_id, pool.tokens
        if old_id is not None:
            pool.batch = min(pool.batch * 2, MAX_LEASE) if unused == 0 else max(MIN_LEASE, pool.batch // 2)
        pool.tokens, pool.lease_id = 0, None
        return rtype, old_id, unused, waiting + pool.batch

    def _lease_end(self, rtype: RequestType, lease: Any) -> tuple[int, int, str]:
        """Keep a new lease's tokens; (granted, retry_after_ms, which budget was short). Lock held."""
        self._leases += 1
        pool = self._pools[rtype]
        if lease.granted:  # a lease of nothing is not recorded by the ledger and needs no release
            pool.tokens, pool.lease_id, pool.expires_at = lease.granted, lease.lease_id, lease.expires_at
        return lease.granted, lease.retry_after_ms, lease.limited_by

    def _lease_locked(self, rtype: RequestType, queue: deque[_Waiter]) -> tuple[int, int, str]:
        with self._cv:
            return self._lease(rtype, waiting=len(queue))

    # --------------------------------------------------------------------------------------- queue control

    def local_tokens(self, rtype: RequestType) -> int:
        with self._cv:
            pool = self._pools[self._bucket[rtype]]
            return pool.tokens if self._clock.now() < pool.expires_at else 0

    def queue_sizes(self) -> dict[str, int]:
        with self._cv:
            return {kind: len(q) for kind, q in sorted(self._queues.items())}

    def wait_for_empty_queue(self, timeout: float | None = None) -> bool:
        """Block until every queue is empty (True), or `timeout` real seconds pass (False)."""
        with self._cv:
            return self._cv.wait_for(lambda: not any(self._queues.values()), timeout)

    def flush_queue(self) -> int:
        """Drop every routine request waiting in the queues (each caller gets a typed error); emergencies stay."""
        return self._drop(lambda w: not w.emergency, "flush_queue")

    def emergency_flush_queue(self) -> int:
        """Drop every waiting request, emergencies included (the server is going away now)."""
        return self._drop(lambda w: True, "emergency_flush_queue")

    def _drop(self, which, why: str) -> int:
        with self._cv:
            dropped = 0
            for queue in self._queues.values():
                for waiter in [w for w in queue if which(w)]:
                    waiter.dropped_by = why
                    queue.remove(waiter)
                    dropped += 1
            self._flushed += dropped
            self._notify()
            return dropped

    def release_all(self) -> None:
        """Give every unused leased token back (a server that stops)."""
        with self._cv:
            pools = [(p.lease_id, p.tokens) for p in self._pools.values() if p.lease_id is not None]
            for p in self._pools.values():
                p.tokens, p.lease_id = 0, None
        for lease_id, unused in pools:
            self._link.release(lease_id, unused)

    def statistics(self) -> GateStatistics:
        with self._cv:
            now = self._clock.now()
            tokens = {t.value: (p.tokens if now < p.expires_at else 0) for t, p in self._pools.items()}
            return GateStatistics(tokens, {k: len(q) for k, q in sorted(self._queues.items())}, self._granted,
                                  self._throttled, dict(self._dropped), self._flushed, self._leases,
                                  dict(self._throttled_by))


class OpenGate:
    """A gate that grants everything at once: a world started with `budget=None` (no request budgets)."""

    server_id = ""

    def acquire(self, permit: Permit) -> None:
        return None

    async def aacquire(self, permit: Permit) -> None:
        return None

    def local_tokens(self, rtype: RequestType) -> int:
        return 0

    def queue_sizes(self) -> dict[str, int]:
        return {kind: 0 for kind in sorted(set(QUEUE_OF.values()))}

    def wait_for_empty_queue(self, timeout: float | None = None) -> bool:
        return True

    def flush_queue(self) -> int:
        return 0

    def emergency_flush_queue(self) -> int:
        return 0

    def release_all(self) -> None:
        return None

    def statistics(self) -> GateStatistics:
        return GateStatistics({}, self.queue_sizes(), 0, 0, {}, 0, 0)


class ExperienceLink(Protocol):
    """How an `ExperienceGate` reaches the budget ledger's experience buckets (`BudgetLedger.take_experience`)."""

    def take_experience(self, request_type: RequestType, count: int) -> int: ...
    async def atake_experience(self, request_type: RequestType, count: int) -> int: ...


class ExperienceGate(OpenGate):
    """The gate of a client outside every game server (Open Cloud v2): each request spends one token of the
    experience-wide bucket of its request type (shared with the game servers), and nothing of any server's bucket.
    It never queues: when the bucket is spent the request fails at once with 429 `<RequestType>ExperienceThrottled`
    and `retry_after_ms` (when the bucket will have the token), as Open Cloud answers 429 with retry-after. One
    ledger call per request: Open Cloud's requests come one HTTP request at a time. It has no queue, tokens or
    leases (those of `OpenGate`: none)."""

    def __init__(self, link: ExperienceLink) -> None:
        self._link = link
        self._lock = threading.Lock()
        self._granted = 0
        self._throttled: Counter = Counter()

    def acquire(self, permit: Permit) -> None:
        self._settle(permit, self._link.take_experience(permit.request_type, 1))

    async def aacquire(self, permit: Permit) -> None:
        self._settle(permit, await self._link.atake_experience(permit.request_type, 1))

    def _settle(self, permit: Permit, retry_after_ms: int) -> None:
        with self._lock:
            if not retry_after_ms:
                self._granted += 1
                return
            name = throttled_name(permit.request_type, "Experience")
            self._throttled[name] += 1
        raise DataStoreError(THROTTLED_CODE, name, f"the experience's {permit.request_type.value} budget (shared by "
                             f"every game server and Open Cloud) is spent; retry after {retry_after_ms} ms",
                             retry_after_ms=int(retry_after_ms))

    def statistics(self) -> GateStatistics:
        with self._lock:
            throttled = dict(self._throttled)
            return GateStatistics({}, self.queue_sizes(), self._granted, sum(throttled.values()), {}, 0, 0,
                                  throttled)


class _Lane:
    __slots__ = ("next_ticket", "serving", "users", "abandoned", "coroutines")

    def __init__(self) -> None:
        self.next_ticket = 0
        self.serving = 0
        self.users = 0
        self.abandoned: set[int] = set()  # tickets whose holder gave up before its turn
        self.coroutines: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}  # ticket -> its wakeup


class KeyLanes:
    """Per-key FIFO lanes: operations on one key from one server run one at a time, in the order they began, so a
    read never overtakes an earlier write. A ticket is taken the moment an operation starts."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._lanes: dict[Any, _Lane] = {}

    def _ticket(self, key: Any) -> tuple[_Lane, int]:
        with self._cv:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            lane.users += 1
            ticket = lane.next_ticket
            lane.next_ticket += 1
            return lane, ticket

    def _wait(self, lane: _Lane, ticket: int) -> None:
        with self._cv:
            self._cv.wait_for(lambda: lane.serving == ticket)

    def _done(self, key: Any, lane: _Lane, ticket: int) -> None:
        with self._cv:
            if lane.serving == ticket:
                lane.serving += 1
                while lane.serving in lane.abandoned:
                    lane.abandoned.discard(lane.serving)
                    lane.serving += 1
            else:
                lane.abandoned.add(ticket)
            lane.coroutines.pop(ticket, None)
            waiting = lane.coroutines.get(lane.serving)
            if waiting is not None:
                waiting[0].call_soon_threadsafe(_wake, waiting[1])
            lane.users -= 1
            if lane.users == 0:
                del self._lanes[key]
            self._cv.notify_all()

    @contextlib.contextmanager
    def hold(self, key: Any) -> Iterator[None]:
        if key is None:
            yield
            return
        lane, ticket = self._ticket(key)
        try:
            self._wait(lane, ticket)
            yield
        finally:
            self._done(key, lane, ticket)

    @contextlib.asynccontextmanager
    async def ahold(self, key: Any):
        if key is None:
            yield
            return
        lane, ticket = self._ticket(key)
        try:
            with self._cv:
                turn = None
                if lane.serving != ticket:
                    loop = asyncio.get_running_loop()
                    turn = loop.create_future()
                    lane.coroutines[ticket] = (loop, turn)
            if turn is not None:
                await turn
            yield
        finally:
            self._done(key, lane, ticket)
