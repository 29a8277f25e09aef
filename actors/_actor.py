"""The key actor: a thin Ray actor around one `KeyHost`, and the one place that knows its Ray options.

It receives batches, hands them to the host, and replies; it runs the host's timer scheduler as a background task
(one scheduler per actor, whatever the number of sessions). A crashed key actor is not restarted: it plays a crashed
game server, whose sessions are gone and whose locks expire by their TTL.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from lodestore.actors._config import StoreConfig
from lodestore.actors._host import KeyHost
from lodestore.actors._requests import HostRequest, TxCall

__all__ = ["KeyActor", "key_actor_options"]


class _KeyActor:
    def __init__(self, world: Any, job_id: str, configs: tuple[StoreConfig, ...] = ()) -> None:
        self._world = world
        self._job_id = job_id
        self._configs = configs
        self._host: KeyHost | None = None
        self._driver: asyncio.Task | None = None

    def _ready(self) -> KeyHost:
        # asyncio objects must be made on the actor's event loop, so the host is built on the first call
        if self._host is None:
            self._host = KeyHost(self._world, self._job_id)
            for config in self._configs:
                self._host.open_store(config)
            self._driver = asyncio.get_running_loop().create_task(self._host.scheduler.drive())
        return self._host

    async def handle(self, requests: list[HostRequest]) -> list[Any]:
        """Idempotency is per operation; see `actors._host`."""
        return await self._ready().handle(requests)

    async def open_store(self, config: StoreConfig) -> None:
        """Idempotent."""
        self._ready().open_store(config)

    async def shutdown(self) -> None:
        """Close every store with final saves; delivered twice, the second finds nothing left to save."""
        await self._ready().shutdown()

    async def tx_calls(self, calls: list[TxCall]) -> list:
        """A batch of a coordinator's `TxPrepare`, `TxWrite` and `TxFinish`; idempotent per transaction id."""
        return await self._ready().tx_calls(calls)

    async def memory_bytes(self) -> int:
        """Resident memory of this actor's process (Linux), for benchmarks."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def errors(self) -> list[str]:
        return list(self._ready().errors)


KeyActor = ray.remote(_KeyActor)


def key_actor_options(world: Any) -> dict:
    """Ray options of a key actor: no CPU reserved (it mostly waits), never restarted, and enough concurrency for
    thousands of waiting operations (loads waiting for locks, saves waiting for budget). It is not named: its owner
    (a `GameServer`) holds the handle, and the actor ends with that owner, as a game server's process would.
    Key actors spread over a cluster's nodes; a node's loss is a crash of the game servers it ran."""
    return {"num_cpus": 0, "max_restarts": 0, "max_task_retries": 0, "max_concurrency": 100_000,
            "scheduling_strategy": "SPREAD"}
