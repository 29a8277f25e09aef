"""How clients reach the services: one code path for blocking and asyncio callers, with or without Ray.

A client operation is a generator. It yields `Call(service, shard, ops)` to send a batch to one shard and receives
that batch's results (or a list of Calls, sent at once, and receives a list of result lists); it may yield
`Sleep(seconds)` to wait simulated time (through the world's clock: `storage.sleep`), or `Permit(...)` to wait for a request token from the server's budget gate.
`run` drives such a generator with blocking calls, `arun` with `await`.
A transport delivers a Call: `RayTransport` to the world's actors, `LocalTransport` to engines in this process (tests,
scripts). The transport never retries: a batch that may have been applied must not be applied twice.
"""

from __future__ import annotations

import asyncio
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, Generator, Protocol

import ray

from lodestore.storage._scheduler import sleep
from lodestore.storage._types import BatchReply

__all__ = ["ACTOR_FAILURES", "Call", "Sleep", "Permit", "run", "arun", "Transport", "LocalTransport", "RayTransport"]

DATASTORE = "datastore"
MEMORYSTORE = "memorystore"


@dataclass(frozen=True, slots=True)
class Call:
    service: str
    shard: int
    ops: list


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Permit:
    """Ask for budget before a request: `request_type` of `RequestType`, the key, its size in characters."""

    request_type: Any
    key: str | None = None
    size: int = 0
    call: str = ""          # the client method ("get", "set", "update", ...): names the error if it is dropped
    emergency: bool = False


class TransportFailure(Exception):
    """The shard could not be reached or died during the call; the batch may or may not have been applied."""

    def __init__(self, service: str, shard: int, detail: str) -> None:
        super().__init__(service, shard, detail)
        self.service, self.shard, self.detail = service, shard, detail

    def __str__(self) -> str:
        return f"{self.service} shard {self.shard} failed during the request ({self.detail})"


class Transport(Protocol):
    def call_many(self, calls: list[Call]) -> list[BatchReply]: ...
    async def acall_many(self, calls: list[Call]) -> list[BatchReply]: ...
    def shard_count(self, service: str) -> int: ...
    clock: Any
    def real_seconds(self, simulated_ms: float) -> float: ...


class Gate(Protocol):
    """Where a Permit is granted: a server's `BudgetGate`, or `OpenGate` (grants everything at once)."""

    def acquire(self, permit: Permit) -> None: ...
    async def aacquire(self, permit: Permit) -> None: ...


Operation = Generator[Any, Any, Any]


def _calls(request: Call | list[Call]) -> list[Call]:
    return request if isinstance(request, list) else [request]


def _replies(request: Call | list[Call], batches: list[BatchReply]) -> tuple[Any, float]:
    """What the operation gets back for its request, and the longest injected latency (simulated ms) to wait."""
    delay_ms = max((max(b.delays_ms) for b in batches if b.delays_ms), default=0.0)
    reply = [b.results for b in batches] if isinstance(request, list) else batches[0].results
    return reply, delay_ms


def run(op: Operation, transport: Transport, gate: Gate) -> Any:
    """Drive a client operation to its end with blocking calls."""
    reply: Any = None
    while True:
        try:
            request = op.send(reply)
        except StopIteration as stop:
            return stop.value
        if isinstance(request, (Call, list)):
            reply, delay_ms = _replies(request, transport.call_many(_calls(request)))
            if delay_ms:
                time.sleep(transport.real_seconds(delay_ms))
        elif isinstance(request, Permit):
            reply = gate.acquire(request)
        else:
            time.sleep(transport.real_seconds(request.seconds * 1000.0))
            reply = None


async def arun(op: Operation, transport: Transport, gate: Gate) -> Any:
    """Drive a client operation to its end, awaiting instead of blocking."""
    reply: Any = None
    while True:
        try:
            request = op.send(reply)
        except StopIteration as stop:
            return stop.value
        if isinstance(request, (Call, list)):
            reply, delay_ms = _replies(request, await transport.acall_many(_calls(request)))
            if delay_ms:
                await sleep(transport.clock, delay_ms / 1000.0)
        elif isinstance(request, Permit):
            reply = await gate.aacquire(request)
        else:
            await sleep(transport.clock, request.seconds)
            reply = None


class LocalTransport:
    """Calls engines living in this process. Every result crosses no process boundary, so values stay msgpack
    bytes exactly as through Ray, and the rest is immutable or rebuilt per call."""

    def __init__(self, services: dict[str, list], clock) -> None:
        self._services = services
        self.clock = clock
        # One batch at a time per shard, as a Ray actor with max_concurrency=1 runs them: the engines are not
        # thread-safe, and clients on several threads share them.
        self._locks = {service: [threading.Lock() for _ in shards] for service, shards in services.items()}

    def call_many(self, calls: list[Call]) -> list[BatchReply]:
        replies = []
        for c in calls:
            with self._locks[c.service][c.shard]:
                replies.append(self._services[c.service][c.shard].execute(c.ops))
        return replies

    async def acall_many(self, calls: list[Call]) -> list[BatchReply]:
        return self.call_many(calls)

    def shard_count(self, service: str) -> int:
        return len(self._services[service])

    def real_seconds(self, simulated_ms: float) -> float:
        return self.clock.real_seconds(simulated_ms / 1000.0)


class RayTransport:
    """Calls the world's Ray actors. Ray errors become `TransportFailure`; the client turns that into its
    service's typed error.

    Coroutines coalesce: every call made to one shard from one event loop in the same loop iteration travels in one
    Ray call (their requests concatenated, in order) and each caller gets its own slice of the reply. A thousand
    sessions saving at once from one actor cost one message per shard, not a thousand."""

    def __init__(self, handles: dict[str, list], clock) -> None:
        self._handles = handles
        self.clock = clock
        self._pending: dict[tuple, list[tuple[list, asyncio.Future]]] = {}
        self.messages_sent = 0

    def __reduce__(self):
        return (RayTransport, (self._handles, self.clock))

    def _submit(self, calls: list[Call]) -> list:
        self.messages_sent += len(calls)
        return [self._handles[c.service][c.shard].execute.remote(c.ops) for c in calls]

    def call_many(self, calls: list[Call]) -> list[BatchReply]:
        refs = self._submit(calls)
        return [_unwrap(ref, call, ray.get) for ref, call in zip(refs, calls)]

    async def acall_many(self, calls: list[Call]) -> list[BatchReply]:
        return list(await asyncio.gather(*(self._enqueue(c) for c in calls)))

    def _enqueue(self, call: Call) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        key = (loop, call.service, call.shard)
        future = loop.create_future()
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = []
            loop.call_soon(self._flush, key)  # after every coroutine that is ready now has had its turn
        pending.append((call.ops, future))
        return future

    def _flush(self, key: tuple) -> None:
        loop, service, shard = key
        batch = self._pending.pop(key)
        call = Call(service, shard, [op for ops, _ in batch for op in ops])
        [ref] = self._submit([call])
        loop.create_task(self._deliver(ref, call, batch))

    @staticmethod
    async def _deliver(ref, call: Call, batch: list[tuple[list, asyncio.Future]]) -> None:
        try:
            reply = await _aunwrap(ref, call)
        except TransportFailure as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(TransportFailure(exc.service, exc.shard, exc.detail))
            return
        start = 0
        for ops, future in batch:
            end = start + len(ops)
            delays = reply.delays_ms[start:end] if reply.delays_ms else None
            if not future.done():
                future.set_result(BatchReply(reply.results[start:end], delays))
            start = end

    def shard_count(self, service: str) -> int:
        return len(self._handles[service])

    def real_seconds(self, simulated_ms: float) -> float:
        return self.clock.real_seconds(simulated_ms / 1000.0)


ACTOR_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                  ray.exceptions.ActorUnschedulableError)
"""What a call to an actor raises when the actor died, is restarting, or cannot be placed (its pinned node is gone)."""


def _unwrap(ref, call: Call, get) -> BatchReply:
    try:
        return get(ref)
    except ACTOR_FAILURES as exc:
        raise TransportFailure(call.service, call.shard, type(exc).__name__) from exc


async def _aunwrap(ref, call: Call) -> BatchReply:
    try:
        return await ref
    except ACTOR_FAILURES as exc:
        raise TransportFailure(call.service, call.shard, type(exc).__name__) from exc


def shard_of(parts: tuple[str, ...], shards: int) -> int:
    """The shard that owns an entry: shard i owns the i-th of `shards` equal ranges of a stable 32-bit hash of
    (store, scope, key), the same in every process and on every node."""
    if shards == 1:
        return 0
    digest = zlib.crc32("\x1f".join(parts).encode("utf-8", "surrogatepass"))
    return digest * shards >> 32
