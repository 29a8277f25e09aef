"""Virtual time across processes: a simulated world as *nodes* that exchange timestamped messages.

A `Node` is one logical process of a simulation: its own event loop, its own `ManualClock`, its own timer scheduler,
the objects it hosts by name (DataStore shards, the MemoryStore, the budget ledger, the coordinator; or a simulator
host's game servers), and its own seeded source of ids (`storage._ids`). Nothing in a node reads the wall clock.
Objects reach objects on other nodes through the node's `VirtualRuntime`: `await runtime.acall(Address(node, name),
method, *args)` posts a message that is delivered `hop_ms` of simulated time later, and the answer comes back as
another message `hop_ms` after the call ends. The rest of lodestore cannot tell: a `VirtualRuntime` is a `Runtime`
like `LocalRuntime` and `RayRuntime`, and an `Address` is the reference it hands out.

The engine (the simulator's driver) moves every node through *windows* of simulated time: `node.step(until_ms,
inbox, starts)` delivers the messages due in the window, starts the tasks it was given, runs every timer due up to
`until_ms` (letting what each starts settle, as `Scheduler.advance` does), and answers the messages the node sent,
when its next timer is due, and the results of tasks that ended. It is a conservative synchronous scheme (windows
of parallel discrete-event simulation, with the hop as lookahead): since no message takes less than `hop_ms`, the
engine can choose windows in which no node ever sees a message from its past (`sim._runner` explains its choice).
A message to the node's own objects stays in the node, due a hop later.

A node's step is a function of its state and its inputs: the inbox is delivered in canonical order (simulated time,
then sender, then the sender's sequence number), whatever order Ray brought the messages in, so the same inputs give
the same outputs on any machine at any load. `step` runs the same code in this process and in a Ray actor.

Never does: decide what a window is (the engine does), or know what the objects it hosts are.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from lodestore.storage._clock import ManualClock
from lodestore.storage._errors import LodestoreError
from lodestore.storage._ids import seeded
from lodestore.storage._scheduler import Scheduler
from lodestore.storage._shards import WorldInfo

__all__ = ["Address", "Message", "Node", "NodeActor", "NodeLost", "VirtualRuntime", "CALL", "REPLY", "SEND",
           "EPOCH_MS", "CLOUD", "canonical_order", "host_storage", "virtual_world", "cloud_addresses", "cloud_world",
           "WorldInfo", "ensure_ray", "this_node"]

EPOCH_MS = 1_700_000_000_000
"""Where every virtual world's clock starts (simulated ms since the Unix epoch): runs are comparable."""

CALL, REPLY, SEND = "call", "reply", "send"


@dataclass(frozen=True, slots=True)
class Address:
    """An object hosted on a node, by name: what a `VirtualRuntime` uses as an actor reference."""

    node: int
    name: str

    def __repr__(self) -> str:
        return f"<{self.name}@{self.node}>"


class Message(NamedTuple):
    """One message between nodes. `at` is when it is delivered (simulated ms); (at, src, seq) orders every message
    of a run canonically. A CALL names `target` and `method` and expects a REPLY carrying `call`; a REPLY's `args` is
    (ok, value or exception)."""

    at: int
    src: int
    seq: int
    dst: int
    kind: str
    target: str
    method: str
    args: tuple
    call: int = 0


def canonical_order(msg: Message) -> tuple[int, int, int]:
    return msg.at, msg.src, msg.seq


class NodeLost(LodestoreError):
    """The node an object lives on is gone (its Ray actor died with its machine): the call may or may not have run."""

    def __init__(self, address: Any, detail: str = "") -> None:
        super().__init__(f"{address!r}: its node was lost{': ' + detail if detail else ''}")
        self.address = address

    def __reduce__(self):
        return (NodeLost, (self.address,))


class VirtualRuntime:
    """The `Runtime` of objects on a node: calls to an `Address` travel as messages in simulated time; anything
    else (an object made on this node with `spawn`) is called directly. There is no blocking call: simulated time
    only moves between the engine's windows, so code in a virtual world uses the coroutine twins (`.aio`)."""

    failures: tuple[type[BaseException], ...] = (NodeLost,)

    def __init__(self, node: "Node") -> None:
        self.node = node

    def spawn(self, cls: type, *args: Any, **options: Any) -> Any:
        return cls(*args)

    def singleton(self, key: Any, cls: type, *args: Any, **options: Any) -> Any:
        """The node's directory entry for the actor's name (the world's coordinator lives on the cloud node)."""
        name = options.get("name")
        address = self.node.directory.get(name)
        if address is None:
            raise LookupError(f"no {name!r} in this virtual world (known: {', '.join(self.node.directory)})")
        return address

    def forget(self, key: Any) -> None:
        pass

    def call(self, ref: Any, method: str, *args: Any) -> Any:
        if isinstance(ref, Address):
            raise RuntimeError(f"a blocking call to {ref!r}.{method} in a virtual-time world: simulated time moves "
                               f"only between windows; use the coroutine (the `.aio` methods)")
        return getattr(ref, method)(*args)

    async def acall(self, ref: Any, method: str, *args: Any) -> Any:
        if isinstance(ref, Address):
            return await self.node.call(ref, method, args)
        result = getattr(ref, method)(*args)
        return await result if asyncio.iscoroutine(result) else result

    def send(self, ref: Any, method: str, *args: Any) -> None:
        if isinstance(ref, Address):
            self.node.post(ref.node, SEND, ref.name, method, args)
            return
        result = getattr(ref, method)(*args)
        if asyncio.iscoroutine(result):
            self.node.scheduler.spawn(result)

    def kill(self, ref: Any) -> None:
        crash = getattr(ref, "crash", None)
        if crash is not None and not isinstance(ref, Address):
            crash()

    def block(self, coro: Any) -> Any:
        if asyncio.iscoroutine(coro):
            coro.close()
        raise RuntimeError("a blocking call in a virtual-time world; use the coroutine (the `.aio` methods)")


class Node:
    """One logical process of a simulation. Build it, `host` its objects (with `run` for what must be made on its
    loop), then let the engine `step` it. Not thread-safe: one caller at a time (a Ray actor runs one call at a time).
    """

    def __init__(self, index: int, *, hop_ms: int, seed: int, epoch_ms: int = EPOCH_MS,
                 directory: dict[str, Address] | None = None) -> None:
        if isinstance(hop_ms, bool) or not isinstance(hop_ms, int) or hop_ms < 1:
            raise ValueError(f"hop_ms must be an int >= 1, got {hop_ms!r}")
        self.index = index
        self.hop_ms = hop_ms
        self.clock = ManualClock(epoch_ms)
        self.directory = dict(directory or {})
        self.objects: dict[str, Any] = {}
        self.runtime = VirtualRuntime(self)
        self.errors: list[str] = []          # what failed in a task no one awaited (kept for the engine to show)
        self.busy_s = 0.0                    # wall seconds spent stepping (a benchmark figure, never an input)
        self._rng = random.Random(f"lodestore-node/{seed}/{index}")
        self._loop = asyncio.new_event_loop()
        self._outbox: list[Message] = []
        self._seq = 0
        self._calls: dict[int, asyncio.Future] = {}
        self._done: dict[Any, tuple[bool, Any]] = {}
        self.scheduler: Scheduler = self.run(self._make_scheduler())

    async def _make_scheduler(self) -> Scheduler:
        scheduler = Scheduler(self.clock, on_error=self._failed)
        scheduler.bind(asyncio.get_running_loop())
        return scheduler

    def _failed(self, exc: BaseException) -> None:
        self.errors.append(f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------------- building

    def run(self, coro: Any) -> Any:
        """Run `coro` on this node's loop to its end, now (no simulated time passes): for building objects that
        must be made on the loop. Only before or between steps."""
        with seeded(self._rng):
            return self._loop.run_until_complete(coro)

    def host(self, name: str, obj: Any) -> Address:
        """Make `obj` reachable as `Address(self.index, name)`."""
        self.objects[name] = obj
        return Address(self.index, name)

    def now(self) -> int:
        return self.clock.now()

    # ------------------------------------------------------------------------------------------------- stepping

    def step(self, until_ms: int, inbox: list[Message] = (), starts: list[tuple] = ()) -> tuple:
        """Run the window up to `until_ms` (inclusive): deliver `inbox` (each at its time, canonically ordered), start
        each of `starts` ((time, task id, object name, method, args)) at its time, run every timer due. Answers
        (messages sent, next due timer in ms or None, {task id: (ok, result)} of tasks that ended)."""
        started = time.perf_counter()
        now = self.clock.now()
        if until_ms < now:
            raise ValueError(f"node {self.index}: a window must not end in its past ({until_ms} < {now})")
        with seeded(self._rng):
            for msg in sorted(inbox, key=canonical_order):
                if msg.at <= now:
                    raise RuntimeError(f"node {self.index}: message {msg.kind} {msg.target}.{msg.method} due at "
                                       f"{msg.at} arrived at {now}: the engine let a window outrun its lookahead")
                self.scheduler.call_at(msg.at, functools.partial(self._deliver, msg))
            for at, task_id, name, method, args in starts:
                if at <= now:
                    raise RuntimeError(f"node {self.index}: task {name}.{method} to start at {at}, in its past ({now})")
                self.scheduler.call_at(at, functools.partial(self._start, task_id, name, method, args))
            self._loop.run_until_complete(self.scheduler.advance_to(until_ms))
        out, self._outbox = self._outbox, []
        done, self._done = self._done, {}
        self.busy_s += time.perf_counter() - started
        return out, self.scheduler.next_due(), done

    def close(self) -> None:
        """End the node's loop (its tasks are dropped: the run is over)."""
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        try:
            self._loop.run_until_complete(asyncio.sleep(0))
        finally:
            self._loop.close()

    # ------------------------------------------------------------------------------------------------ messages

    def post(self, dst: int, kind: str, target: str, method: str, args: tuple, call: int = 0) -> None:
        self._seq += 1
        self._send(Message(self.clock.now() + self.hop_ms, self.index, self._seq, dst, kind, target, method, args,
                           call))

    def _send(self, msg: Message) -> None:
        """Into the outbox; a message to this node's own objects (the coordinator's writes to the shards beside it)
        never leaves it: it is due a hop later, perhaps within the window that sent it."""
        if msg.dst == self.index:
            self.scheduler.call_at(msg.at, functools.partial(self._deliver, msg))
        else:
            self._outbox.append(msg)

    async def call(self, address: Address, method: str, args: tuple) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._seq += 1
        call_id = self._seq
        self._calls[call_id] = future
        self._send(Message(self.clock.now() + self.hop_ms, self.index, call_id, address.node, CALL, address.name,
                           method, args, call_id))
        try:
            return await future
        finally:
            self._calls.pop(call_id, None)

    def _deliver(self, msg: Message) -> None:
        if msg.kind == REPLY:
            future = self._calls.pop(msg.call, None)
            if future is not None and not future.done():
                ok, value = msg.args
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
            return
        self.scheduler.spawn(self._serve(msg))

    async def _serve(self, msg: Message) -> None:
        try:
            result = await self._invoke(msg.target, msg.method, msg.args)
            answer: tuple = (True, result)
        except Exception as exc:   # the caller gets the error, as a Ray call would raise it
            answer = (False, exc)
        if msg.kind == CALL:
            self.post(msg.src, REPLY, "", "", answer, msg.call)
        elif not answer[0]:
            self._failed(answer[1])

    async def _invoke(self, name: str, method: str, args: tuple) -> Any:
        obj = self.objects.get(name)
        if obj is None:
            raise LookupError(f"node {self.index} hosts no {name!r}")
        result = getattr(obj, method)(*args)
        return await result if asyncio.iscoroutine(result) else result

    def _start(self, task_id: Any, name: str, method: str, args: tuple) -> None:
        async def run() -> None:
            try:
                self._done[task_id] = (True, await self._invoke(name, method, args))
            except Exception as exc:
                self._done[task_id] = (False, exc)
        self.scheduler.spawn(run())


class NodeActor:
    """A `Node` as a Ray actor (synchronous: one step at a time, in order): `build(node)` hosts its objects."""

    def __init__(self, index: int, hop_ms: int, seed: int, directory: dict, build: Callable[[Node], Any]) -> None:
        self.node = Node(index, hop_ms=hop_ms, seed=seed, directory=directory)
        build(self.node)

    def step_packed(self, packed: tuple | None) -> tuple | None:
        """`step` with its arguments as one value, for a compiled Ray graph that calls every node each round:
        (round, until, inbox, starts), or None (nothing to do this round). The last answer is kept (`last`)."""
        if packed is None:
            return None
        seq, until_ms, inbox, starts = packed
        self._last = (seq, self.node.step(until_ms, inbox, starts))
        return self._last[1]

    def last(self, seq: int) -> tuple | None:
        """The answer of round `seq` if this node stepped it (the graph that carried it broke on the way back)."""
        last = getattr(self, "_last", None)
        return last[1] if last is not None and last[0] == seq else None

    def errors(self) -> list[str]:
        return list(self.node.errors)

    def busy_s(self) -> float:
        return self.node.busy_s


# ------------------------------------------------------------------------------------------------ a virtual world

CLOUD = 0
"""The node that hosts a virtual world's storage (DataStore shards, MemoryStore, budget ledger)."""


def host_storage(node: Node, info: Any) -> Any:
    """Host a world's storage on `node` (it becomes the cloud node: `CLOUD`), every engine reading the node's clock:
    DataStore shards, MemoryStore, budget ledger and MessagingService (a message between two game servers hops to
    the cloud node and on, arriving when its modelled delay is over). Answers the world as seen from that node."""
    import dataclasses

    from lodestore.storage._shards import (BUDGET_NAME, MEMORYSTORE_NAME, BudgetServiceActor, DataStoreShardActor,
                                          MemoryStoreShardActor, datastore_name)
    from lodestore.storage.messaging._engine import MESSAGING_NAME, MessagingActor
    info = dataclasses.replace(info, clock=node.clock)
    for i in range(info.shards):
        node.host(datastore_name(i), DataStoreShardActor(info, i))
    node.host(MEMORYSTORE_NAME, MemoryStoreShardActor(info))
    node.host(MESSAGING_NAME, MessagingActor(info))
    if info.budget is not None:
        node.host(BUDGET_NAME, BudgetServiceActor(info))
    return virtual_world(node, info)


def virtual_world(node: Node, info: Any) -> Any:
    """The `World` of `info` as objects on `node` reach it: its storage at addresses on the cloud node, its clock
    the node's."""
    import dataclasses
    return cloud_world(dataclasses.replace(info, clock=node.clock), node.runtime)


def cloud_addresses(info: Any) -> tuple[dict[str, list[Address]], Address | None]:
    """Where a virtual world's storage lives on the cloud node: each service's shard addresses, and the budget
    ledger's (None without request budgets)."""
    from lodestore.storage._shards import BUDGET_NAME, MEMORYSTORE_NAME, datastore_name
    from lodestore.storage._transport import DATASTORE, MEMORYSTORE
    from lodestore.storage.messaging._engine import MESSAGING, MESSAGING_NAME
    shards = {DATASTORE: [Address(CLOUD, datastore_name(i)) for i in range(info.shards)],
              MEMORYSTORE: [Address(CLOUD, MEMORYSTORE_NAME)], MESSAGING: [Address(CLOUD, MESSAGING_NAME)]}
    return shards, Address(CLOUD, BUDGET_NAME) if info.budget is not None else None


def cloud_world(info: Any, runtime: Any) -> Any:
    """The `World` of `info` whose calls to the cloud node's storage go through `runtime` (a node's own, or an
    outside caller's: `storage._ingress`)."""
    from lodestore.storage._world import World
    shards, budget = cloud_addresses(info)
    return World(info, runtime, shards, budget, None)


def ensure_ray(address: str | None, dashboard: bool = False) -> str | None:
    """Join the Ray cluster at `address`, or start a Ray of this process's own (loopback only), as `World.start`
    does; nothing when Ray is up. With `dashboard`, that local Ray has its dashboard on 127.0.0.1: its URL is
    returned (see `storage._world._ensure_ray`)."""
    from lodestore.storage._world import _ensure_ray
    return _ensure_ray(address, dashboard)


def this_node() -> str:
    """The Ray node id of this process (where a cloud node beside its world file runs)."""
    from lodestore.storage._placement import here
    return here()
