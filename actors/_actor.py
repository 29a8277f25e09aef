"""The key actor: a thin actor around one `KeyHost`, and the one place that knows its Ray options.

It receives batches, hands them to the host, and replies. Its host uses the scheduler of the loop it lives on (a Ray
actor's own loop, driven in the background; a local runtime's loop, shared by every key actor there, so a manual
clock's `advance` fires them all). A crashed key actor is not restarted: it plays a crashed
game server, whose sessions are gone and whose locks expire by their TTL.
"""

from __future__ import annotations

import os
from typing import Any

from lodestore.actors._config import StoreConfig
from lodestore.actors._host import KeyHost
from lodestore.actors._requests import HostRequest, TxCall
from lodestore.storage import Scheduler, actor_options

__all__ = ["KeyActor", "key_actor_options"]


class KeyActor:
    """A key host as an actor (a Ray actor, or an object on a local runtime's loop)."""

    def __init__(self, world: Any, job_id: str, configs: tuple[StoreConfig, ...] = ()) -> None:
        self._world = world
        self._job_id = job_id
        self._configs = configs
        self._host: KeyHost | None = None

    def _ready(self) -> KeyHost:
        # asyncio objects must be made on the actor's event loop, so the host is built on the first call
        if self._host is None:
            self._host = KeyHost(self._world, self._job_id, Scheduler.for_loop(self._world.clock))
            for config in self._configs:
                self._host.open_store(config)
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

    def stall_locks(self, seconds: float) -> None:
        """Fault injection (see `KeyHost.stall_locks`). Delivered twice: the stall ends at the later deadline."""
        self._ready().stall_locks(seconds)

    def crash(self) -> None:
        """Die as a crashed server does (a local runtime's kill): nothing saved, no lock released."""
        if self._host is not None:
            self._host.crash()

    async def memory_bytes(self) -> int:
        """Resident memory of this actor's process (Linux), for benchmarks."""
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    async def errors(self) -> list[str]:
        return list(self._ready().errors)



def key_actor_options(world: Any) -> dict:
    """Ray options of a key actor: never restarted, and enough concurrency for thousands of waiting operations
    (loads waiting for locks, saves waiting for budget). It is not named: its owner (a `GameServer`) holds the
    handle, and the actor ends with that owner, as a game server's process would. Key actors spread over a
    cluster's nodes; a node's loss is a crash of the game servers it ran."""
    return actor_options(None, world.name, restart=False, max_concurrency=100_000, spread=True)
