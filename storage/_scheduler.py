"""Timers on the simulated clock, one scheduler per event loop: every autosave, lock refresh, lock deadline, backoff
wait and retry of the code running on that loop.

A heap of (due ms on the simulated clock, sequence, callback). `run_due()` runs what is due; `drive()` is the real-time
loop a Ray actor runs (it sleeps until the next due time, scaled by the clock, and wakes early when an earlier timer
arrives). With a `ManualClock` nothing fires by itself: tests move the clock and call `run_due()` (or `advance`), and
time moves only when nothing on the loop can run any more (`settle`, like trio's autojump clock), so a chain of calls,
however deep, never sees the clock move under it.
Cancelled timers stay in the heap until their time comes and are skipped then, so cancel is O(1).
Callbacks are plain functions; work that waits is started with `spawn`, which keeps the task referenced and hands
any exception it ends with to `on_error`. `sleep(clock, seconds)` is how code that has no scheduler of its own
(storage clients, the coordinator) waits: on the running loop's scheduler when one is bound to it, else on the
clock's pace. Nothing here reads the wall clock except through a paced clock, or touches storage.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from typing import Any, Callable, Coroutine

from lodestore.storage._clock import Clock, ManualClock

__all__ = ["Scheduler", "Timer", "sleep", "wait_for"]

_MAX_NAP_S = 1.0  # the real-time driver re-reads the clock at least this often
_FALLBACK_TURNS = 30


class Timer:
    """A handle on one scheduled callback."""

    __slots__ = ("due", "fn", "cancelled")

    def __init__(self, due: int, fn: Callable[[], Any]) -> None:
        self.due = due
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.fn = None  # drop references early: a session may be gone long before its timer's time comes


_settling: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int]" = weakref.WeakKeyDictionary()
_bound: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Scheduler]" = weakref.WeakKeyDictionary()


async def sleep(clock: Clock, seconds: float) -> None:
    """Wait `seconds` of simulated time on `clock`: through the scheduler bound to the running loop when it keeps
    that clock (a manual clock's waits then end when time is moved past them), else at the clock's pace."""
    scheduler = _bound.get(asyncio.get_running_loop())
    if scheduler is not None and scheduler.keeps(clock):
        await scheduler.sleep(seconds)
    else:
        await asyncio.sleep(clock.real_seconds(seconds))


async def wait_for(future: asyncio.Future, clock: Clock, seconds: float, min_real_s: float = 0.0) -> None:
    """Wait until `future` is done or `seconds` of simulated time on `clock` have passed, whichever comes first
    (never raises for the timeout; the future is left as it is). Through the scheduler bound to the running loop
    when it keeps that clock, else at the clock's pace, and then at least `min_real_s` real seconds."""
    scheduler = _bound.get(asyncio.get_running_loop())
    if scheduler is not None and scheduler.keeps(clock):
        timer = scheduler.call_later(seconds, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            timer.cancel()
        return
    try:
        await asyncio.wait_for(future, max(min_real_s, clock.real_seconds(seconds)))
    except asyncio.TimeoutError:
        pass


class Scheduler:
    """Timers on the simulated clock, for everything running on one event loop."""

    def __init__(self, clock: Clock, on_error: Callable[[BaseException], Any] | None = None) -> None:
        self.clock = clock
        self.on_error = on_error
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()
        try:
            self.bind(asyncio.get_running_loop())
        except RuntimeError:
            pass  # made outside a loop: bound when it first drives or advances one

    @classmethod
    def for_loop(cls, clock: Clock) -> "Scheduler":
        """The scheduler of the running loop for `clock`: the one bound to it, or a new one bound now (and, on a
        paced clock, driven by a background task). Everything on one loop shares one scheduler, so a manual
        clock's `advance` fires every timer of that loop."""
        loop = asyncio.get_running_loop()
        scheduler = _bound.get(loop)
        if scheduler is not None and scheduler.keeps(clock):
            return scheduler
        scheduler = cls(clock)
        _bound[loop] = scheduler
        if not scheduler.manual:
            scheduler.spawn(scheduler.drive())
        return scheduler

    def keeps(self, clock: Clock) -> bool:
        """Whether this scheduler's timers run on `clock`: the same manual clock, or a paced clock equal to it
        (paced clocks are values, copied into every process of a world)."""
        return self.clock is clock or (not self.manual and self.clock == clock)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make this the scheduler that `sleep(clock, s)` uses on `loop` (the first one bound keeps it)."""
        _bound.setdefault(loop, self)

    @property
    def manual(self) -> bool:
        return isinstance(self.clock, ManualClock)

    def now(self) -> int:
        return self.clock.now()

    def call_at(self, due_ms: int, fn: Callable[[], Any]) -> Timer:
        timer = Timer(int(due_ms), fn)
        if self._wake is not None and (not self._heap or due_ms < self._heap[0][0]):
            self._wake.set()   # the driver naps until the earliest timer: this one is earlier (or the only one)
        heapq.heappush(self._heap, (timer.due, next(self._seq), timer))
        return timer

    def call_later(self, seconds: float, fn: Callable[[], Any]) -> Timer:
        return self.call_at(self.clock.now() + int(seconds * 1000), fn)

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of simulated time (for a manual clock: until a test moves it that far)."""
        future = asyncio.get_running_loop().create_future()
        self.call_later(seconds, lambda: future.done() or future.set_result(None))
        await future

    async def sleep_until(self, due_ms: int | None, wake: asyncio.Future | None = None) -> bool:
        """Wait until simulated time `due_ms` (None: without end), or less when `wake` is done first (`wake` is
        only watched, never resolved); answers whether `wake` ended the wait. What a wait that something may cut
        short (an unload of a loading key, a poke) is made of."""
        if wake is not None and wake.done():
            return True
        slept = asyncio.get_running_loop().create_future()
        timer = None if due_ms is None else self.call_at(due_ms, lambda: slept.done() or slept.set_result(None))
        try:
            await asyncio.wait([slept] if wake is None else [slept, wake], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if timer is not None:
                timer.cancel()
        return wake is not None and wake.done()

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        """Run `coro` as a task that stays referenced until it ends; an exception goes to `on_error`."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self.on_error is not None:
            self.on_error(task.exception())

    def next_due(self) -> int | None:
        """When the earliest live timer is due (ms), or None."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pending(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def run_due(self) -> int:
        """Run every callback due by now, in due order; returns how many ran."""
        now = self.clock.now()
        ran = 0
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            fn, timer.fn = timer.fn, None
            timer.cancelled = True
            ran += 1
            try:
                fn()
            except Exception as exc:  # one bad callback must not stop every other session's timers
                if self.on_error is not None:
                    self.on_error(exc)
        return ran

    @staticmethod
    async def settle() -> None:
        """Return once nothing else on this loop can run: every task is waiting (on a timer, a lock, a future) and
        no callback is ready. In-process storage answers within the loop, so a call chain of any depth completes
        before this returns."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)   # CPython's run queue; a loop without one gets a fixed number of turns
        if ready is None:
            for _ in range(_FALLBACK_TURNS):
                await asyncio.sleep(0)
            return
        if not ready and not _settling.get(loop):
            return   # nothing is ready to run, and no other task is settling: settled already
        # Tasks settling at the same time see each other's turn in the queue: only what is beyond them is work.
        _settling[loop] = _settling.get(loop, 0) + 1
        try:
            await asyncio.sleep(0)
            while len(ready) >= _settling[loop]:
                await asyncio.sleep(0)
        finally:
            _settling[loop] -= 1

    async def advance(self, seconds: float) -> None:
        """Manual clock only: move time forward `seconds`, stopping at every timer on the way, running it and
        letting what it started settle, as if that time had really passed."""
        await self.advance_to(self.clock.now() + int(round(seconds * 1000)))

    async def advance_to(self, target: int) -> None:
        """Manual clock only: `advance` up to the simulated time `target` (ms since the epoch; not in the past)."""
        if not self.manual:
            raise TypeError("advance needs a ManualClock; a SimClock moves by itself")
        self.bind(asyncio.get_running_loop())
        await self.settle()
        while True:   # until nothing is due by `target`, what the last timers started included
            due = self.next_due()
            if due is not None and due <= target:
                if due > self.clock.now():
                    self.clock.set(due)
                self.run_due()
                await self.settle()
            elif self.clock.now() < target:
                self.clock.set(target)
            else:
                break

    async def drive(self) -> None:
        """Run timers as simulated time passes (a Ray actor's background task). Never returns."""
        self.bind(asyncio.get_running_loop())
        self._wake = asyncio.Event()
        while True:
            self.run_due()
            due = self.next_due()
            if self.manual:
                nap = None
            elif due is None:
                nap = _MAX_NAP_S
            else:
                nap = min(_MAX_NAP_S, max(0.0, self.clock.real_seconds((due - self.clock.now()) / 1000.0)))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), nap)
            except asyncio.TimeoutError:
                pass
