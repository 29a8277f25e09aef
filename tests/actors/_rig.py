"""What the session, lease, participant and migration tests share: an in-process world on a manual clock, hosts of
one store ("players") sharing one scheduler, and helpers to call them and look at what is stored.

Time moves only through `Rig.advance` (the scheduler stops at every timer on the way): no test sleeps.
"""

from __future__ import annotations

import asyncio

from lodestore.actors import TX_STORE, KeyHost, KeyRequest, StoreConfig
from lodestore.storage import ManualClock, Scheduler, World

TEMPLATE = {"coins": 0, "items": []}


class Rig:
    """An in-process world, a shared scheduler, and helpers to look at what is stored."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.world = World.in_process("rig", clock=self.clock, budget=None)
        self.scheduler = Scheduler(self.clock)
        inspector = self.world.server("inspector")
        self.records = inspector.datastores.get_data_store("lodestore/records/players")
        self.shards = inspector.datastores.get_data_store("lodestore/shards/players")
        self.markers = inspector.datastores.get_data_store(TX_STORE)

    def host(self, job: str, **options) -> "Server":
        host = KeyHost(self.world, job, self.scheduler)
        host.open_store(StoreConfig(name="players", template=options.pop("template", TEMPLATE), **options))
        return Server(host)

    async def advance(self, seconds: float) -> None:
        await self.scheduler.advance(seconds)

    def record(self, key: str):
        return self.records.get(key, use_cache=False)[0]

    def version(self, key: str) -> str:
        """The record's current version: it changes with every write."""
        return self.records.get(key, use_cache=False)[1].version


class Server:
    """Calls on one host, raising what it answers, like the Store client does: `await a(Update, "u1", fn)`."""

    def __init__(self, host: KeyHost) -> None:
        self.host = host

    async def __call__(self, kind: type, key=None, *args):
        request = kind("players", key, *args) if issubclass(kind, KeyRequest) else kind("players", *args)
        (reply,) = await self.host.handle([request])
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def runtime(self):
        return self.host.stores["players"]


def nested(depth: int):
    """A value `depth` containers deep: [[...[0]...]]."""
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def run(coro):
    return asyncio.run(coro)


async def until_done(rig: Rig, task: asyncio.Task, step: float = 1.0, limit: float = 600.0):
    waited = 0.0
    while not task.done() and waited < limit:
        await rig.advance(step)
        waited += step
    assert task.done(), f"still waiting after {limit} simulated seconds"
    return task.result()
