"""The runtime (how actors are reached, in process) and the one loop-turn coalescer (storage/_runtime.py)."""

from __future__ import annotations

import asyncio

import pytest

from lodestore.storage import Coalescer, LocalRuntime


class Counter:
    def __init__(self, start: int) -> None:
        self.value = start
        self.crashed = False

    def add(self, n: int) -> int:
        self.value += n
        return self.value

    async def slow_add(self, n: int) -> int:
        await asyncio.sleep(0)
        return self.add(n)

    def crash(self) -> None:
        self.crashed = True


def test_one_loop_turn_of_submissions_travels_as_one_send_with_a_reply_each():
    sent = []

    async def send(items):
        sent.append(list(items))
        return [item * 10 for item in items]

    async def main():
        batcher = Coalescer(send)
        first = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
        second = await batcher.submit(7)
        return first, second

    first, second = asyncio.run(main())
    assert first == [0, 10, 20, 30, 40] and second == 70
    assert sent == [[0, 1, 2, 3, 4], [7]]


def test_a_failed_send_is_every_items_reply_as_the_owner_maps_it():
    async def send(items):
        raise ConnectionError("gone")

    async def main():
        batcher = Coalescer(send, failed=lambda exc: ("failed", type(exc).__name__))
        return await asyncio.gather(*(batcher.submit(i) for i in range(3)))

    assert asyncio.run(main()) == [("failed", "ConnectionError")] * 3


def test_a_local_runtime_on_a_background_loop_spawns_calls_sends_and_kills():
    runtime = LocalRuntime("test")
    counter = runtime.spawn(Counter, 1)
    assert runtime.call(counter, "add", 2) == 3
    assert runtime.call(counter, "slow_add", 3) == 6          # a coroutine method runs on the runtime's loop
    runtime.send(counter, "add", 4)                           # a plain method runs at once
    assert counter.value == 10
    assert runtime.block(_acall_from_another_loop(runtime, counter)) == 15
    runtime.kill(counter)
    runtime.block(asyncio.sleep(0))                           # the kill ran on the loop before this
    assert counter.crashed


async def _acall_from_another_loop(runtime, counter):
    return await runtime.acall(counter, "slow_add", 5)


def test_a_runtime_on_the_running_loop_answers_coroutines_and_refuses_to_block_it():
    async def main():
        runtime = LocalRuntime.here("test")
        counter = runtime.spawn(Counter, 0)
        assert await runtime.acall(counter, "slow_add", 2) == 2
        assert await runtime.acall(counter, "add", 1) == 3
        with pytest.raises(RuntimeError, match="use its coroutine"):
            runtime.call(counter, "slow_add", 1)
        assert runtime.singleton("one", Counter, 5) is runtime.singleton("one", Counter, 99)
        runtime.forget("one")
        assert runtime.singleton("one", Counter, 99).value == 99

    asyncio.run(main())
