"""The coordinator actor: one per world (on Ray a named, detached actor, restarted by Ray when it dies).

A thin shell: it runs `Coordinator.run` for each request and answers the result or the typed error as a value. After
every start (a restart included) it settles the markers a previous life left, and again every `RECOVER_EVERY_S`
simulated seconds. Calls are not retried by Ray (`max_task_retries=0`): a transaction must not run twice, so a
caller whose coordinator died hears `TxUnknownError` and the restarted coordinator settles the transaction from its
marker. `coordinator_ref(world)` reaches it through the world's runtime, in this process or on Ray alike.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lodestore.coordinator._coordinator import Coordinator, TxRequest
from lodestore.coordinator._errors import TxUnknownError
from lodestore.storage import actor_options, sleep

__all__ = ["CoordinatorActor", "coordinator_ref", "forget_coordinator", "unknown_after_crash", "COORDINATOR_NAME"]

COORDINATOR_NAME = "coordinator"
RECOVER_EVERY_S = 30.0


class CoordinatorActor:
    def __init__(self, world: Any) -> None:
        self._world = world
        self._coordinator: Coordinator | None = None

    def _ready(self) -> Coordinator:
        if self._coordinator is None:
            self._coordinator = Coordinator(self._world)
            asyncio.get_running_loop().create_task(self._recover_forever())
        return self._coordinator

    async def _recover_forever(self) -> None:
        while True:
            try:
                await self._coordinator.recover()
            except Exception:
                pass  # storage trouble: the next round tries again
            await sleep(self._world.clock, RECOVER_EVERY_S)

    async def run(self, req: TxRequest) -> Any:
        """Not idempotent (a transform runs once per call): Ray never retries it."""
        try:
            return await self._ready().run(req)
        except Exception as exc:
            return exc

    async def run_many(self, reqs: list[TxRequest]) -> list[Any]:
        """Several transactions in one message (a client batches one loop turn's). Not retried by Ray."""
        coordinator = self._ready()

        async def one(req: TxRequest) -> Any:
            try:
                return await coordinator.run(req)
            except Exception as exc:
                return exc

        return await asyncio.gather(*(one(r) for r in reqs))

    async def recover(self) -> dict:
        """Idempotent."""
        return await self._ready().recover()

    async def statistics(self) -> Any:
        return self._ready().statistics()


def _key(world: Any) -> tuple:
    # a world started again under the same name has a new clock (its start time): a new key, a fresh lookup
    return (COORDINATOR_NAME, world.name, repr(world.clock))


def coordinator_ref(world: Any) -> Any:
    """The world's coordinator actor, created on first use (on Ray detached: it outlives the process that made it)."""
    return world.runtime.singleton(_key(world), CoordinatorActor, world,
                                   **actor_options(COORDINATOR_NAME, world.name, max_concurrency=10_000))


def forget_coordinator(world: Any) -> None:
    """The coordinator did not answer (it died): look it up afresh next time."""
    world.runtime.forget(_key(world))


def unknown_after_crash(exc: BaseException) -> TxUnknownError:
    return TxUnknownError(f"the coordinator died during the transaction ({type(exc).__name__}); it settles the "
                          f"transaction from its marker when it restarts")
