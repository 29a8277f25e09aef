"""How clients reach the services: one code path for blocking and asyncio callers, with or without Ray.

A client operation is a generator. It yields `Call(service, shard, ops)` to send a batch to one shard and receives
that batch's results (or a list of Calls, sent at once, and receives a list of result lists); it may yield
`Sleep(seconds)` to wait simulated time (through the world's clock: `storage.sleep`), or `Permit(...)` to wait for a request token from the server's budget gate.
`run` drives such a generator with blocking calls, `arun` with `await`.
A `Transport` delivers a Call to a shard actor through the world's runtime (Ray actors, or engines in this process).
The transport never retries: a batch that may have been applied must not be applied twice.
"""

from __future__ import annotations

import asyncio
import functools
import time
import zlib
from dataclasses import dataclass
from typing import Any, Generator, Protocol

from lodestore.storage._runtime import Coalescer, Runtime
from lodestore.storage._scheduler import sleep
from lodestore.storage._types import BatchReply

__all__ = ["Call", "Sleep", "Permit", "run", "arun", "Transport", "TransportFailure", "shard_of"]

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


class Transport:
    """Delivers Calls to the world's shard actors through its runtime (in this process or on Ray). A dead shard
    becomes `TransportFailure`; the client turns that into its service's typed error.

    Coroutines coalesce: every call made to one shard from one event loop in the same loop iteration travels in one
    message (their requests concatenated, in order) and each caller gets its own slice of the reply. A thousand
    sessions saving at once from one actor cost one message per shard, not a thousand."""

    def __init__(self, runtime: Runtime, shards: dict[str, list], clock) -> None:
        self.runtime = runtime
        self.shards = shards          # service -> the actor reference of each shard
        self.clock = clock
        self._batchers = {(service, i): Coalescer(functools.partial(self._send_joined, service, i),
                                                  functools.partial(self._failure, service, i))
                          for service, refs in shards.items() for i in range(len(refs))}
        self.messages_sent = 0

    def __reduce__(self):
        return (Transport, (self.runtime, self.shards, self.clock))

    def call_many(self, calls: list[Call]) -> list[BatchReply]:
        replies = []
        for c in calls:
            self.messages_sent += 1
            try:
                replies.append(self.runtime.call(self.shards[c.service][c.shard], "execute", c.ops))
            except self.runtime.failures as exc:
                raise self._failure(c.service, c.shard, exc) from exc
        return replies

    async def acall_many(self, calls: list[Call]) -> list[BatchReply]:
        if len(calls) == 1:   # the common case, without gather's task per call
            replies = [await self._batchers[calls[0].service, calls[0].shard].submit(calls[0].ops)]
        else:
            replies = await asyncio.gather(*(self._batchers[c.service, c.shard].submit(c.ops) for c in calls))
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return list(replies)

    async def _send_joined(self, service: str, shard: int, batches: list[list]) -> list[BatchReply]:
        self.messages_sent += 1
        reply = await self.runtime.acall(self.shards[service][shard], "execute", [op for ops in batches for op in ops])
        out, start = [], 0
        for ops in batches:
            end = start + len(ops)
            out.append(BatchReply(reply.results[start:end], reply.delays_ms[start:end] if reply.delays_ms else None))
            start = end
        return out

    def _failure(self, service: str, shard: int, exc: BaseException) -> BaseException:
        if isinstance(exc, self.runtime.failures):
            return TransportFailure(service, shard, type(exc).__name__)
        return exc

    def shard_count(self, service: str) -> int:
        return len(self.shards[service])

    def real_seconds(self, simulated_ms: float) -> float:
        return self.clock.real_seconds(simulated_ms / 1000.0)


def shard_of(parts: tuple[str, ...], shards: int) -> int:
    """The shard that owns an entry: shard i owns the i-th of `shards` equal ranges of a stable 32-bit hash of
    (store, scope, key), the same in every process and on every node."""
    if shards == 1:
        return 0
    digest = zlib.crc32("\x1f".join(parts).encode("utf-8", "surrogatepass"))
    return digest * shards >> 32
