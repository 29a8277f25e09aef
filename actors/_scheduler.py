"""One timer scheduler per key actor: every session's autosave, lock refresh, lock deadline and backoff wait.

A heap of (due ms on the simulated clock, sequence, callback). `run_due()` runs what is due; `drive()` is the real-time
loop a Ray actor runs (it sleeps until the next due time, scaled by the clock, and wakes early when an earlier timer
arrives). With a `ManualClock` nothing fires by itself: tests move the clock and call `run_due()` (or `advance`).
Cancelled timers stay in the heap until their time comes and are skipped then, so cancel is O(1).
Callbacks are plain functions; work that waits is started with `spawn`, which keeps the task referenced and hands
any exception it ends with to `on_error`. It never touches storage.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any, Callable, Coroutine

from lodestore.storage import Clock, ManualClock

__all__ = ["Scheduler", "Timer"]

_MAX_NAP_S = 1.0  # the real-time driver re-reads the clock at least this often


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


class Scheduler:
    """Timers on the simulated clock, for every session of one actor."""

    def __init__(self, clock: Clock, on_error: Callable[[BaseException], Any] | None = None) -> None:
        self.clock = clock
        self.on_error = on_error
        self._heap: list[tuple[int, int, Timer]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def manual(self) -> bool:
        return isinstance(self.clock, ManualClock)

    def now(self) -> int:
        return self.clock.now()

    def call_at(self, due_ms: int, fn: Callable[[], Any]) -> Timer:
        timer = Timer(int(due_ms), fn)
        if self._heap and due_ms < self._heap[0][0] and self._wake is not None:
            self._wake.set()
        heapq.heappush(self._heap, (timer.due, next(self._seq), timer))
        return timer

    def call_later(self, seconds: float, fn: Callable[[], Any]) -> Timer:
        return self.call_at(self.clock.now() + int(seconds * 1000), fn)

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of simulated time (for a manual clock: until a test moves it that far)."""
        future = asyncio.get_running_loop().create_future()
        self.call_later(seconds, lambda: future.done() or future.set_result(None))
        await future

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

    async def settle(self, turns: int = 30) -> None:
        """Let every task that can run, run (for manual-clock tests: storage calls complete within a few turns)."""
        for _ in range(turns):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Manual clock only: move time forward `seconds`, stopping at every timer on the way, running it and
        letting what it started settle, as if that time had really passed."""
        if not self.manual:
            raise TypeError("advance needs a ManualClock; a SimClock moves by itself")
        target = self.clock.now() + int(round(seconds * 1000))
        await self.settle()
        while True:
            due = self.next_due()
            if due is None or due > target:
                break
            if due > self.clock.now():
                self.clock.set(due)
            self.run_due()
            await self.settle()
        if target > self.clock.now():
            self.clock.set(target)
        self.run_due()
        await self.settle()

    async def drive(self) -> None:
        """Run timers as simulated time passes (a Ray actor's background task). Never returns."""
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
