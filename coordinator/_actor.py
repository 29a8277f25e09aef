"""The coordinator actor: one named, detached actor per world, restarted by Ray when it dies.

A thin shell: it runs `Coordinator.run` for each request and answers the result or the typed error as a value. After
every start (a restart included) it settles the markers a previous life left, and again every `RECOVER_EVERY_S`.
Calls are not retried by Ray (`max_task_retries=0`): a transaction must not run twice, so a caller whose coordinator
died hears `TxUnknownError` and the restarted coordinator settles the transaction from its marker.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from lodestore.coordinator._coordinator import Coordinator, TxRequest
from lodestore.coordinator._errors import TxUnknownError
from lodestore.storage import namespace_of

__all__ = ["CoordinatorActor", "coordinator_handle", "forget_handle", "unknown_after_crash", "COORDINATOR_NAME"]

COORDINATOR_NAME = "coordinator"
RECOVER_EVERY_S = 30.0


class _CoordinatorActor:
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
            await asyncio.sleep(RECOVER_EVERY_S)

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


CoordinatorActor = ray.remote(_CoordinatorActor)


_handles: dict[str, Any] = {}


def coordinator_handle(world: Any) -> Any:
    """The world's coordinator actor, created on first use (detached: it outlives the process that made it).
    The handle is kept per world: looking a named actor up costs a round trip to Ray's control store."""
    handle = _handles.get(_world_key(world))
    if handle is None:
        handle = _handles[_world_key(world)] = _get_or_create(world)
    return handle


def forget_handle(world: Any) -> None:
    _handles.pop(_world_key(world), None)


def _world_key(world: Any) -> tuple:
    # a world started again under the same name has a new clock (its start time): a new key, a fresh lookup
    return (world.name, repr(world.clock))


def _get_or_create(world: Any) -> Any:
    return CoordinatorActor.options(name=COORDINATOR_NAME, namespace=namespace_of(world.name), get_if_exists=True,
                                    lifetime="detached", num_cpus=0, max_restarts=-1, max_task_retries=0,
                                    max_concurrency=10_000).remote(world)


def unknown_after_crash(exc: BaseException) -> TxUnknownError:
    return TxUnknownError(f"the coordinator died during the transaction ({type(exc).__name__}); it settles the "
                          f"transaction from its marker when it restarts")
