"""Calls from outside a running simulation into its world: how an Open Cloud server reaches a virtual-time world.

A simulation in virtual time hosts its world's storage on the cloud node (`storage._virtual`), which only the
engine steps, window by window; nothing outside the run can call it directly. An `Ingress` is the door: a client
outside (the Open Cloud server of `lodestore serve` or of a scenario's `[serve]`, a script using `World.connect`)
`submit`s a call to one of the cloud's storage objects; the engine `take`s what waits at the start of each cloud
window, starts each call as a task on the cloud node, and `answer`s each when its task ends. A call therefore takes
at least one round (two hops of simulated time) and runs among the game servers' requests, in the same world.

The world such a client sees (`ingress_world`) is a `World` like any other: its runtime (`IngressRuntime`) sends
every call to a storage object through the ingress, so the clients' logic (UpdateAsync's loop, the read cache, the
budget gate) runs in the caller's process, exactly as it does for a game server. Its clock is the run's pace
(the run is paced: `time_scale`), anchored where the engine says its play started, and never ahead of where the
engine has been seen (`RunClock`). Its clients record their raw requests (`storage.REQUEST_FIELDS`) into the
ingress, the completion stamped no earlier than the exchange that answered it, so that the times bound what the
engine did; the engine takes them into the run's history when the play ends (`take_records`).

In process (the in-process engine, or a server thread of the driver) the ingress is the plain object; across
processes it is a Ray actor named `INGRESS_NAME` in the world's namespace (`IngressActor`), which the engine polls.
Calls from outside make a run's history depend on them: a served run's digest is not replayable.

Never does: decide which objects a caller may reach beyond storage's own (`REACHABLE`), or retry a call (the cloud
may have applied it: the caller hears `SimulationEnded` when the run ended before answering).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import threading
from typing import Any

from lodestore.storage._clients import REQUEST_FIELDS
from lodestore.storage._clock import SimClock
from lodestore.storage._errors import LodestoreError
from lodestore.storage._shards import WorldInfo

__all__ = ["Ingress", "IngressActor", "IngressRuntime", "RunClock", "SimulationEnded", "INGRESS_NAME",
           "OUTSIDE_PREFIX", "ingress_world", "reachable"]

INGRESS_NAME = "lodestore-ingress"
"""The ingress actor's name in a running simulation's Ray namespace (`namespace_of(world)`)."""

_OBJ, _COMPLETE = REQUEST_FIELDS.index("obj"), REQUEST_FIELDS.index("complete")

OUTSIDE_PREFIX = "outside:"
"""Marks the client object (`obj`) of a raw request record that came in through an ingress: "outside:open-cloud#2"
is Open Cloud's client, never a game server's, whatever job id the outside caller chose."""


class SimulationEnded(LodestoreError):
    """The simulation a call was sent into ended (or stopped serving) before answering: the call may or may not
    have run."""


def reachable(info: WorldInfo) -> frozenset[str]:
    """The cloud objects an outside caller may reach: the world's storage services, nothing of the simulator."""
    from lodestore.storage._virtual import cloud_addresses
    shards, budget = cloud_addresses(info)
    return frozenset(a.name for refs in shards.values() for a in refs) | ({budget.name} if budget else set())


class Ingress:
    """The queue between outside callers and the engine. Thread-safe: callers on any thread or loop, the engine on
    its own."""

    def __init__(self, info: WorldInfo, epoch_ms: int, wall_start_s: float, time_scale: float) -> None:
        self.info = info
        self.pace = (epoch_ms, wall_start_s, time_scale)   # sim ms at wall second wall_start_s, and the pace
        self._names = reachable(info)
        self._guard = threading.Lock()
        self._ids = itertools.count(1)
        self._queued: list[tuple[int, str, str, tuple]] = []
        self._waiting: dict[int, concurrent.futures.Future] = {}
        self._closed: str | None = None
        self.calls = 0
        # the run's simulated ms at the engine's last exchange (None before the first): every call taken later
        # starts at or after it, every answer handed over by then ended at or before it
        self.run_ms: int | None = None
        self._records: list[tuple] = []   # the outside clients' raw requests, for the run's history

    def submit(self, name: str, method: str, args: tuple) -> concurrent.futures.Future:
        """Queue `name.method(*args)` for the cloud node; the future gets its result or its exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if name not in self._names:
            future.set_exception(LookupError(f"{name!r} is not a storage service of this world"))
            return future
        with self._guard:
            if self._closed is not None:
                future.set_exception(SimulationEnded(self._closed))
                return future
            call = next(self._ids)
            self._waiting[call] = future
            self._queued.append((call, name, method, tuple(args)))
            self.calls += 1
        return future

    def take(self) -> list[tuple[int, str, str, tuple]]:
        """The calls that arrived since the last take, in arrival order (the engine starts them)."""
        with self._guard:
            taken, self._queued = self._queued, []
        return taken

    def answer(self, answers: list[tuple[int, bool, Any]]) -> None:
        """Each (call, ok, value): resolve the caller's future with the value, or raise it when not ok."""
        for call, ok, value in answers:
            with self._guard:
                future = self._waiting.pop(call, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def exchange(self, answers: list[tuple[int, bool, Any]],
                 run_ms: int | None = None) -> list[tuple[int, str, str, tuple]]:
        """`answer` then `take`, in one call (one message per round for an ingress across processes), the engine
        being at simulated ms `run_ms` (the start of the cloud window the taken calls start in)."""
        if run_ms is not None:
            self.run_ms = run_ms
        self.answer(answers)
        return self.take()

    def close(self, why: str = "the simulation ended") -> None:
        """No more calls; every call not answered yet raises SimulationEnded."""
        with self._guard:
            self._closed = why
            waiting, self._waiting, self._queued = self._waiting, {}, []
        for future in waiting.values():
            if not future.done():
                future.set_exception(SimulationEnded(why))

    def describe(self) -> tuple[WorldInfo, tuple[int, float, float]]:
        return self.info, self.pace

    def record(self, records: list[tuple]) -> None:
        """Keep the raw request records of an outside caller's clients (simulated ms, as `storage.REQUEST_FIELDS`)."""
        with self._guard:
            self._records.extend(tuple(r) for r in records)

    def take_records(self) -> list[tuple]:
        """The records kept since the last take (the engine's, when the play ends)."""
        with self._guard:
            taken, self._records = self._records, []
        return taken


class IngressActor:
    """An `Ingress` as an async Ray actor: outside processes `submit` (and wait for the answer), the engine
    `exchange`s once per round."""

    def __init__(self, info: WorldInfo, epoch_ms: int, wall_start_s: float, time_scale: float) -> None:
        self.ingress = Ingress(info, epoch_ms, wall_start_s, time_scale)

    async def submit(self, name: str, method: str, args: tuple) -> tuple[bool, Any, int | None]:
        """(ok, the result or the exception, the run's ms as of the answer): the caller's clock learns how far the
        engine has come (`RunClock`)."""
        try:
            value = await asyncio.wrap_future(self.ingress.submit(name, method, args))
        except Exception as exc:
            return False, exc, self.ingress.run_ms
        return True, value, self.ingress.run_ms

    def record(self, records: list) -> None:
        self.ingress.record(records)

    def take_records(self) -> list:
        return self.ingress.take_records()

    def calls(self) -> int:
        return self.ingress.calls

    def run_ms(self) -> int | None:
        return self.ingress.run_ms

    def exchange(self, answers: list, run_ms: int | None = None) -> list:
        return self.ingress.exchange(answers, run_ms)

    def close(self, why: str = "the simulation ended") -> None:
        self.ingress.close(why)

    def describe(self) -> tuple:
        return self.ingress.describe()


@dataclasses.dataclass(frozen=True)
class RunClock:
    """The clock of a world behind an ingress: the run's pace, but never ahead of where the engine has been seen
    (`seen.run_ms`: the ingress's, or what its answers said across processes; the play's start before it said),
    so a time read before a call is at or before the moment the engine starts it, however far a loaded machine
    lets the engine fall behind its pace."""

    pace: SimClock
    seen: Any

    def now(self) -> int:
        seen = self.seen.run_ms   # None: the engine has not exchanged yet, so it is still at the play's start
        return min(self.pace.now(), self.pace.epoch_ms if seen is None else seen)

    def real_seconds(self, simulated_seconds: float) -> float:
        return self.pace.real_seconds(simulated_seconds)


class IngressRuntime:
    """The runtime of a world reached through an ingress: every call to a storage object goes through it."""

    def __init__(self, ingress: Any, seen: int | None = None) -> None:
        self.ingress = ingress                      # an Ingress (this process) or an IngressActor's handle
        self.local = isinstance(ingress, Ingress)
        self._seen = seen                           # across processes: the run's ms in the latest answer
        if self.local:
            self.failures: tuple[type[BaseException], ...] = (SimulationEnded,)
        else:
            from lodestore.storage._runtime import ACTOR_FAILURES
            self.failures = (SimulationEnded,) + ACTOR_FAILURES

    def __reduce__(self):
        if self.local:
            raise TypeError("a world reached through an in-process ingress cannot leave its process")
        return (IngressRuntime, (self.ingress, self._seen))

    @staticmethod
    def _name(ref: Any) -> str:
        name = getattr(ref, "name", None)
        if not isinstance(name, str):
            raise TypeError(f"{ref!r} is not an object of the simulation's cloud")
        return name

    @property
    def run_ms(self) -> int | None:
        """How far the engine is known to have come (simulated ms), or None before it said."""
        return self.ingress.run_ms if self.local else self._seen

    def _answered(self, stamped: tuple[bool, Any, int | None]) -> Any:
        ok, value, run_ms = stamped
        if run_ms is not None and (self._seen is None or run_ms > self._seen):
            self._seen = run_ms
        if not ok:
            raise value
        return value

    def record(self, r: tuple) -> None:
        """A client's raw request record (the world's `recorder`), into the ingress: its completion no earlier
        than the exchange that answered it, which the clock may be behind."""
        seen, r = self.run_ms, list(r)
        r[_OBJ] = OUTSIDE_PREFIX + str(r[_OBJ])
        if seen is not None:
            r[_COMPLETE] = max(r[_COMPLETE], seen)
        r = tuple(r)
        if self.local:
            self.ingress.record([r])
        else:
            self.ingress.record.remote([r])

    async def acall(self, ref: Any, method: str, *args: Any) -> Any:
        if self.local:
            return await asyncio.wrap_future(self.ingress.submit(self._name(ref), method, args))
        return self._answered(await self.ingress.submit.remote(self._name(ref), method, args))

    def call(self, ref: Any, method: str, *args: Any) -> Any:
        if self.local:
            return self.ingress.submit(self._name(ref), method, args).result()
        import ray
        return self._answered(ray.get(self.ingress.submit.remote(self._name(ref), method, args)))

    def send(self, ref: Any, method: str, *args: Any) -> None:
        if self.local:
            self.ingress.submit(self._name(ref), method, args)
        else:
            self.ingress.submit.remote(self._name(ref), method, args)   # its answer, and its failure, unheard

    def block(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def spawn(self, cls: type, *args: Any, **options: Any) -> Any:
        raise RuntimeError("nothing can be started in a running simulation's world from outside it")

    singleton = spawn

    def forget(self, key: Any) -> None:
        pass

    def kill(self, ref: Any) -> None:
        raise RuntimeError("a running simulation's storage cannot be stopped from outside it")


def ingress_world(ingress: Any) -> Any:
    """The `World` of the simulation behind `ingress` (an `Ingress`, or an `IngressActor` handle), as an outside
    caller sees it: storage calls go through the ingress; the clock follows the run's pace (`RunClock`); its
    clients' raw requests are recorded into the ingress for the run's history."""
    import ray

    from lodestore.storage._virtual import cloud_world

    described = ingress.describe() if isinstance(ingress, Ingress) else ray.get(ingress.describe.remote())
    info, (epoch_ms, wall_start_s, time_scale) = described
    # across processes, how far the engine has come already: the clock is never ahead of it from the start
    runtime = IngressRuntime(ingress) if isinstance(ingress, Ingress) else \
        IngressRuntime(ingress, ray.get(ingress.run_ms.remote()))
    clock = RunClock(SimClock(epoch_ms=epoch_ms, real_start_ms=wall_start_s * 1000.0, time_scale=time_scale), runtime)
    world = cloud_world(dataclasses.replace(info, clock=clock), runtime)
    world.recorder = runtime.record   # every server made on it records (`storage._clients`)
    return world
