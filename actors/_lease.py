"""The lock lease: one session's hold on its key's lock (Lyra's Locks, a handle with release, isLocked, onLockLost).

Owns the lock item `{"session": lease id, "job": JobId, "at": ms}` and where it lives (`StoreConfig.lock_store`):
- "memorystore" (Lyra's `Locks.luau`): an entry of the MemoryStore hash map `StoreRuntime.locks(key)` with TTL
  `lock_ttl`, written by the hash map's UpdateAsync; a release writes it with TTL 0.
- "datastore" (Lyra PR #17, `useDSSLocking`, in `Locks.luau` and `Store.luau`): a value in DataStore
  `lodestore/locks/<store>` under the player's key, written by UpdateAsync (compare-and-set). A DataStore has no TTL,
  so the item counts as expired `lock_ttl` after its `at` (on the simulated clock; Lyra reads KeyInfo.UpdatedTime), and
  a release writes a free marker `{"session": None, ...}` while the value still names this lease, where Lyra's
  RemoveAsync removes whatever is there, even a lock another session took over meanwhile.
The two are one small item backend (`lock_items`: get, update, clear) under one lease. The lease owns acquiring the
item (waiting with backoff while another session holds it, up to `lock_wait`; taking it over from a holder that has
not refreshed it for `lock_steal_after`), refreshing it every `lock_refresh`, the local deadline (send time of the
last refresh that landed + TTL), the stall of `KeyHost.stall_locks`, releasing it, and telling its owner when upkeep
finds it lost (`on_lost`). Every change is reported to the store's `lock_callback` ("acquired", "refreshed",
"released", "lost", "crashed").

It never reads or writes a record and never decides what a lost lock means for the data (the session does); once it
stopped holding (released, lost, abandoned) it never writes the lock item again and keeps no timer.
Delivered twice: a lease is acquired once (a repeated load is the host's no-op and never reaches it), and a lock
write that landed although it was reported failed is found naming this lease on the next attempt and taken as ours;
a second release, `lost()` or `abandon()` is a no-op, so "lost" is reported once and `on_lost` called at most once.
A repeated release write finds the item free (or another lease's) and writes nothing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from lodestore.actors._errors import LockTimeoutError
from lodestore.storage import Backoff, DataStoreError, LodestoreError, MemoryStoreError, Timer, new_id

if TYPE_CHECKING:
    from lodestore.actors._session import StoreRuntime

__all__ = ["LockLease", "acquire_wait", "REFRESH_RETRY_S", "lock_items", "lock_active", "lock_datastore_name",
           "LOCKS_PREFIX"]

LOCKS_PREFIX = "lodestore/locks/"
"""With `lock_store="datastore"`, a store's locks live in DataStore `LOCKS_PREFIX + store` (`lock_datastore_name`)."""

REFRESH_RETRY_S = 10.0      # after a failed refresh, try again this soon (the TTL has 30 s to spare by default)


_ACQUIRE_BACKOFF = Backoff(base=1.0, cap=30.0)


def acquire_wait(attempt: int, left_ms: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1, 2, ...) to take the lock, with `left_ms` of
    `lock_wait` left: 1, 2, 4 ... up to 30 s, never past the end of the wait."""
    return min(_ACQUIRE_BACKOFF.wait(attempt), left_ms / 1000)


def lock_datastore_name(store: str) -> str:
    """The DataStore holding `store`'s locks when its `lock_store` is "datastore" (one key per player key)."""
    return LOCKS_PREFIX + store


def _names(item: Any, session: str) -> bool:
    return isinstance(item, dict) and item.get("session") == session


class _HashMapItems:
    """Lock items in the MemoryStore hash map `rt.locks(key)`, with TTL `lock_ttl` (Lyra's lock)."""

    __slots__ = ("rt",)
    where = "the MemoryStore"
    errors: tuple = (MemoryStoreError,)

    def __init__(self, rt: StoreRuntime) -> None:
        self.rt = rt

    async def get(self, key: str) -> Any:
        return await self.rt.locks(key).aio.get(key)

    async def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        return await self.rt.locks(key).aio.update(key, fn, expiration=self.rt.config.lock_ttl)

    async def clear(self, key: str, session: str) -> None:
        await self.rt.locks(key).aio.update(key, lambda old: old if _names(old, session) else None, expiration=0)


class _DataStoreItems:
    """Lock items as values of DataStore `lodestore/locks/<store>` (Lyra PR #17). There is no TTL: `fn` and `get`
    see an item whose `at` + `lock_ttl` has passed, or a released one, as absent. Every `update` is UpdateAsync: a
    read and, unless `fn` declines, a write of the server's DataStore budget; `get` bypasses the 4 s read cache."""

    __slots__ = ("rt", "store")
    where = "the DataStore"
    errors: tuple = (DataStoreError,)

    def __init__(self, rt: StoreRuntime) -> None:
        self.rt = rt
        self.store = rt.datastores.get_data_store(lock_datastore_name(rt.config.name))

    def _live(self, item: Any) -> Any:
        """`item` while it names a session and has not expired, else None."""
        if not isinstance(item, dict) or not isinstance(item.get("session"), str):
            return None
        at = item.get("at")
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            return None
        return item if self.rt.scheduler.now() < at + int(self.rt.config.lock_ttl * 1000) else None

    async def get(self, key: str) -> Any:
        value, _ = await self.store.aio.get(key, use_cache=False)
        return self._live(value)

    async def update(self, key: str, fn: Callable[[Any], Any]) -> Any:
        value, _ = await self.store.aio.update(key, lambda old, info: fn(self._live(old)))
        return value

    async def clear(self, key: str, session: str) -> None:
        rt = self.rt

        def free(old: Any, info: Any) -> Any:
            return {"session": None, "job": rt.job_id, "at": rt.scheduler.now()} if _names(old, session) else None

        await self.store.aio.update(key, free)


def lock_items(rt: StoreRuntime) -> _HashMapItems | _DataStoreItems:
    """The lock items of `rt`'s store, where its `lock_store` keeps them: `get(key)` (the live item or None),
    `update(key, fn)` (compare-and-set: `fn(live item or None)` returns the new item or None to write nothing; the
    item written, or None), `clear(key, session)` (free the item while it names `session`). Failures raise one of
    its `errors`."""
    return _DataStoreItems(rt) if rt.config.lock_store == "datastore" else _HashMapItems(rt)


async def lock_active(rt: StoreRuntime, key: str) -> bool:
    """Whether some session holds `key`'s lock now (Lyra's probeLockActive), wherever the store keeps its locks."""
    return await lock_items(rt).get(key) is not None


class LockLease:
    """One session's lease on `key`'s lock. `acquire()` takes it and starts its upkeep; `release()` gives it back.

    >>> lease = LockLease(rt, "user_1", on_lost=lambda reason: print("lost:", reason))
    >>> await lease.acquire()            # waits up to lock_wait; raises LockTimeoutError
    >>> lease.held, lease.deadline       # (True, ms on the simulated clock up to which no one else can hold it)
    >>> await lease.release()

    `on_lost(reason)` is called once when the lease itself finds the lock gone: a refresh finds the item gone or
    naming someone else, or the deadline passes with no refresh landed. An owner that learns it by other means (a
    fenced write refused) calls `lost()`, which reports "lost" without calling `on_lost`.
    """

    __slots__ = ("rt", "key", "id", "deadline", "_held", "_on_lost", "_items", "_refresh_timer", "_deadline_timer")

    def __init__(self, rt: StoreRuntime, key: str, on_lost: Callable[[str], Any] | None = None) -> None:
        self.rt = rt
        self.key = key
        self.id = new_id()           # the fencing token: records written under this lease name it
        self.deadline = 0              # ms: the lease counts itself the holder up to then
        self._held = False
        self._on_lost = on_lost
        self._items = lock_items(rt)   # where the store keeps its locks
        self._refresh_timer: Timer | None = None
        self._deadline_timer: Timer | None = None

    def __repr__(self) -> str:
        return f"LockLease({self.rt.config.name!r}, {self.key!r}, held={self._held})"

    @property
    def held(self) -> bool:
        """Whether this lease holds the lock (Lyra's isLocked): acquired, and not released, lost or abandoned."""
        return self._held

    def past_deadline(self) -> bool:
        """True when the lease holds the lock but its local deadline has passed: no write may start now."""
        return self._held and self.rt.scheduler.now() >= self.deadline

    def _value(self) -> dict:
        return {"session": self.id, "job": self.rt.job_id, "at": self.rt.scheduler.now()}

    # ------------------------------------------------------------------------------------------ acquire

    async def acquire(self, check_stop: Callable[[], None] | None = None,
                      wake: asyncio.Future | None = None) -> None:
        """Take the lock, waiting while another session holds it (up to `lock_wait`, then LockTimeoutError), and
        start refreshing it. `check_stop()` runs before every attempt; what it raises ends the wait. `wake`, once
        done, cuts the wait between two attempts short (an unload of the loading key: `check_stop` then ends it)."""
        cfg = self.rt.config
        sent, stolen = await self._take_item(check_stop, wake)
        self._held = True
        self.deadline = sent + int(cfg.lock_ttl * 1000)
        self._event("acquired")
        if stolen:
            self.rt.counters.lock_steals += 1
            self.rt.log("warn", f"took over the lock from job {stolen[-1]!r}, which stopped refreshing it",
                        key=self.key)
        self._arm_refresh(cfg.lock_refresh)   # a load can take long (retries): the lock must not lapse
        self._arm_deadline()

    async def _take_item(self, check_stop: Callable[[], None] | None,
                         wake: asyncio.Future | None = None) -> tuple[int, list]:
        """Write the lock item naming this lease; (send time of the write that did, jobs stolen from)."""
        rt, cfg = self.rt, self.rt.config
        give_up = rt.scheduler.now() + int(cfg.lock_wait * 1000)
        stolen: list = []

        def claim(old: Any) -> Any:
            if old is None or not isinstance(old, dict) or old.get("session") == self.id:
                return self._value()
            if cfg.lock_steal_after is not None and \
                    rt.scheduler.now() - int(old.get("at", 0)) >= cfg.lock_steal_after * 1000:
                stolen.append(old.get("job"))
                return self._value()
            return None

        attempt = 0
        last_error: LodestoreError | None = None
        while True:
            if check_stop is not None:
                check_stop()
            sent = rt.scheduler.now()
            try:
                got = await self._items.update(self.key, claim)
                last_error = None
            except self._items.errors as exc:
                rt.log("warn", f"lock request failed: {exc}", key=self.key)
                got, last_error = None, exc
            if got is not None:
                return sent, stolen
            attempt += 1
            if attempt == 1:
                rt.counters.lock_waits += 1
            now = rt.scheduler.now()
            if now >= give_up:
                why = (f"{self._items.where} kept refusing ({last_error})" if last_error is not None
                       else "another session held it")
                raise LockTimeoutError(f"Failed to acquire lock for key {self.key!r} of store {cfg.name!r}: {why} "
                                       f"for {cfg.lock_wait:g} s")
            await rt.scheduler.sleep_until(now + int(acquire_wait(attempt, give_up - now) * 1000), wake)

    # --------------------------------------------------------------------------------------- ending it

    async def release(self) -> None:
        """Give the lock back (the item is freed while it still names this lease). A failed release is logged:
        the item then expires `lock_ttl` after its last write. A no-op when not held."""
        if not self._held:
            return
        self._event("released")
        self._held = False
        self._cancel_timers()
        try:
            await self._items.clear(self.key, self.id)
        except self._items.errors as exc:
            self.rt.log("warn", f"releasing the lock failed ({exc}); it expires lock_ttl after its last write",
                        key=self.key)

    def lost(self) -> None:
        """The lock is gone: report "lost" (once) and stop upkeep. Nothing is written; `on_lost` is not called."""
        self._drop("lost")

    def abandon(self) -> None:
        """A crash: report "crashed" and stop upkeep without touching the item, which expires `lock_ttl` after its
        last write."""
        self._drop("crashed")

    def _drop(self, kind: str) -> None:
        if self._held:
            self._event(kind)
        self._held = False
        self._cancel_timers()

    def _lose(self, reason: str) -> None:
        self.lost()
        if self._on_lost is not None:
            self._on_lost(reason)

    # -------------------------------------------------------------------------------------------- upkeep

    def _arm_refresh(self, seconds: float) -> None:
        sched = self.rt.scheduler
        self._refresh_timer = sched.call_later(seconds, lambda: sched.spawn(self._refresh()))

    def _arm_deadline(self) -> None:
        self._deadline_timer = self.rt.scheduler.call_at(self.deadline, self._check_deadline)

    def _cancel_timers(self) -> None:
        for timer in (self._refresh_timer, self._deadline_timer):
            if timer is not None:
                timer.cancel()

    async def _refresh(self) -> None:
        if not self._held:
            return
        rt, cfg = self.rt, self.rt.config
        if rt.stalled(lambda: rt.scheduler.spawn(self._refresh())):
            return
        sent = rt.scheduler.now()
        mine = self.id
        try:
            got = await self._items.update(self.key, lambda old: self._value() if _names(old, mine) else None)
        except self._items.errors as exc:
            rt.counters.refresh_failures += 1
            rt.log("warn", f"lock refresh failed ({exc}); trying again in {REFRESH_RETRY_S:g} s", key=self.key)
            if self._held:
                self._arm_refresh(min(REFRESH_RETRY_S, cfg.lock_refresh))
            return
        if not self._held:
            return
        if got is None:
            self._lose("the lock item is gone or names another session")
            return
        self.deadline = max(self.deadline, sent + int(cfg.lock_ttl * 1000))
        rt.counters.refreshes += 1
        self._event("refreshed")
        self._arm_refresh(cfg.lock_refresh)

    def _check_deadline(self) -> None:
        if not self._held or self.rt.stalled(self._check_deadline):
            return
        if self.rt.scheduler.now() >= self.deadline:
            self._lose("no refresh landed before the lock's TTL ran out")
        else:
            self._arm_deadline()

    def _event(self, kind: str) -> None:
        """Tell the `lock_callback` (if any) what happened to this lease."""
        callback = self.rt.config.lock_callback
        if callback is None:
            return
        now, until = self.rt.scheduler.now(), self.deadline
        at = now if kind in ("acquired", "refreshed") else min(now, until)
        try:
            callback(kind, self.key, self.id, at, until)
        except Exception as exc:
            self.rt.log("error", f"lock_callback raised {type(exc).__name__}: {exc}", key=self.key)
