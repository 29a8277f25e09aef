"""The scheduler of a loop and the manual clock's run-until-quiet (storage/_scheduler.py)."""

from __future__ import annotations

import asyncio

from lodestore.storage import ManualClock, Scheduler, sleep


async def _deep(depth: int) -> int:
    """A chain of `depth` hops, each yielding to the loop once (as nested storage calls do)."""
    if depth == 0:
        return 0
    await asyncio.sleep(0)
    return 1 + await _deep(depth - 1)


def test_time_moves_only_when_nothing_on_the_loop_can_run():
    async def main():
        clock = ManualClock()
        scheduler = Scheduler(clock)
        seen = []

        async def chain():
            start = clock.now()
            hops = await _deep(500)          # far deeper than any fixed number of settling turns
            seen.append((hops, clock.now() - start))

        scheduler.spawn(chain())
        await scheduler.advance(60)
        assert seen == [(500, 0)]            # the whole chain ran before the clock moved
        assert clock.now() == 1_700_000_060_000

    asyncio.run(main())


def test_concurrent_settles_both_return():
    async def main():
        await asyncio.wait_for(asyncio.gather(Scheduler.settle(), Scheduler.settle(), Scheduler.settle()), 5)

    asyncio.run(main())


def test_a_clock_sleep_on_a_bound_manual_scheduler_ends_when_time_is_moved_past_it():
    async def main():
        clock = ManualClock()
        scheduler = Scheduler.for_loop(clock)
        woke = []

        async def waiter():
            await sleep(clock, 5)
            woke.append(clock.now())

        task = asyncio.ensure_future(waiter())
        await scheduler.advance(4)
        assert woke == [] and not task.done()
        await scheduler.advance(1)
        assert woke == [1_700_000_005_000]
        assert Scheduler.for_loop(clock) is scheduler   # one scheduler per loop and clock

    asyncio.run(main())


def test_sleep_until_ends_at_its_time_or_when_woken_and_never_resolves_the_wake():
    async def main():
        clock = ManualClock()
        scheduler = Scheduler(clock)
        t0 = clock.now()
        timed = scheduler.spawn(scheduler.sleep_until(t0 + 5_000, asyncio.get_running_loop().create_future()))
        await scheduler.advance(4)
        assert not timed.done()
        await scheduler.advance(1)
        assert timed.result() is False and clock.now() == t0 + 5_000      # its time came: not woken

        wake = asyncio.get_running_loop().create_future()
        woken = scheduler.spawn(scheduler.sleep_until(clock.now() + 30_000, wake))
        await scheduler.advance(2)
        wake.set_result("unload")
        await scheduler.advance(0)
        assert woken.result() is True and wake.result() == "unload"        # cut short, the wake left as it was
        assert scheduler.pending() == 0                                    # its timer is gone with it
        assert await scheduler.sleep_until(None, wake) is True             # a wake already done: no wait at all

    asyncio.run(main())
