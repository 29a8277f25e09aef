"""How lodestore's actors are reached: one protocol, an in-process and a Ray implementation, and one coalescer.

A *runtime* spawns an actor from a plain class (`spawn(cls, *args, **options)`), calls a method and waits for the
answer (`call`, blocking, or `acall`, a coroutine), sends without waiting (`send`), ends one (`kill`) and runs a
coroutine to its end from blocking code (`block`). `World` makes the runtime of its kind and passes it down; nothing
else asks whether it runs on Ray. A reference to an actor is hashable and compares by identity on both (Ray's
handles compare by actor id), so it can key a dict.

- `LocalRuntime`: actors are plain objects living on one event loop of this process, the loop the runtime was made
  on (`LocalRuntime.here`), or a background loop it starts on first use. A blocking call from another thread runs
  on that loop; from the loop itself only the coroutine calls can be used.
- `RayRuntime`: actors are Ray actors with the options given (the factory is `lodestore.storage.actor_options`).

`Coalescer` is the one loop-turn batcher: what coroutines of one event loop submit in one loop turn travels as one
message, and each gets its own reply. It never retries (a batch that may have been applied must not be applied
twice) and never raises: a failed send becomes every item's reply, as the owner maps it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, Protocol

import ray

__all__ = ["Runtime", "LocalRuntime", "RayRuntime", "Coalescer", "ACTOR_FAILURES"]

ACTOR_FAILURES = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                  ray.exceptions.ActorUnschedulableError)
"""What a call to an actor raises when the actor died, is restarting, or cannot be placed (its pinned node is gone)."""


class Runtime(Protocol):
    failures: tuple[type[BaseException], ...]   # what a call raises when its actor is gone

    def spawn(self, cls: type, *args: Any, **options: Any) -> Any: ...
    def singleton(self, key: Any, cls: type, *args: Any, **options: Any) -> Any: ...
    def forget(self, key: Any) -> None: ...
    def call(self, ref: Any, method: str, *args: Any) -> Any: ...
    async def acall(self, ref: Any, method: str, *args: Any) -> Any: ...
    def send(self, ref: Any, method: str, *args: Any) -> None: ...
    def kill(self, ref: Any) -> None: ...
    def block(self, coro: Awaitable) -> Any: ...


_BLOCKING_ON_LOOP = ("a blocking lodestore call from inside the event loop it needs; use its coroutine (the `.aio` "
                     "methods) there")


def _refuse(coro: Awaitable) -> None:
    if asyncio.iscoroutine(coro):
        coro.close()   # it will never run: no "never awaited" warning
    raise RuntimeError(_BLOCKING_ON_LOOP)


class _Loop:
    """The event loop a runtime's actors live on: the one given, or one on a daemon thread started on first use."""

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._name = name
        self._loop = loop
        self._guard = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=self._name, daemon=True).start()
                self._loop = loop
            return self._loop

    def block(self, coro: Awaitable) -> Any:
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            _refuse(coro)
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


async def _invoke(ref: Any, method: str, args: tuple) -> Any:
    result = getattr(ref, method)(*args)
    return await result if asyncio.iscoroutine(result) else result


class LocalRuntime:
    """Actors as plain objects on one event loop of this process (tests, scripts, the in-process simulator)."""

    failures: tuple[type[BaseException], ...] = ()   # a local actor never dies on its own

    def __init__(self, name: str = "lodestore", loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = _Loop(f"lodestore-{name}", loop)
        self._singletons: dict[Any, Any] = {}
        self._guard = threading.Lock()

    @classmethod
    def here(cls, name: str = "lodestore") -> "LocalRuntime":
        """A runtime whose actors live on the running event loop (call it from a coroutine)."""
        return cls(name, asyncio.get_running_loop())

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop.loop

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def block(self, coro: Awaitable) -> Any:
        return self._loop.block(coro)

    def spawn(self, cls: type, *args: Any, **options: Any) -> Any:
        """Build `cls(*args)` on the runtime's loop (it may make asyncio objects); Ray `options` do not apply."""
        if self._on_loop():
            return cls(*args)

        async def make() -> Any:
            return cls(*args)
        return self.block(make())

    def singleton(self, key: Any, cls: type, *args: Any, **options: Any) -> Any:
        """The one actor of this runtime under `key` (a world's coordinator), spawned on first use."""
        with self._guard:
            ref = self._singletons.get(key)
            if ref is None:
                ref = self._singletons[key] = self.spawn(cls, *args)
            return ref

    def forget(self, key: Any) -> None:
        self._singletons.pop(key, None)

    def call(self, ref: Any, method: str, *args: Any) -> Any:
        result = getattr(ref, method)(*args)
        return self.block(result) if asyncio.iscoroutine(result) else result

    async def acall(self, ref: Any, method: str, *args: Any) -> Any:
        if self._on_loop():
            return await _invoke(ref, method, args)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_invoke(ref, method, args), self.loop))

    def send(self, ref: Any, method: str, *args: Any) -> None:
        """A plain method runs now, in this thread; a coroutine method is started on the loop, not waited for."""
        result = getattr(ref, method)(*args)
        if not asyncio.iscoroutine(result):
            return
        if self._on_loop():
            self.loop.create_task(result)
        else:
            asyncio.run_coroutine_threadsafe(result, self.loop)

    def kill(self, ref: Any) -> None:
        """End a local actor as a crash would: its `crash()` runs on the loop (nothing saved, nothing released)."""
        crash = getattr(ref, "crash", None)
        if crash is None:
            return
        if self._on_loop():
            crash()
        else:
            self.loop.call_soon_threadsafe(crash)


_ray_classes: dict[type, Any] = {}
_ray_singletons: dict[Any, Any] = {}


class RayRuntime:
    """Actors as Ray actors. Calls to a dead actor raise one of `ACTOR_FAILURES`; callers map them."""

    failures = ACTOR_FAILURES

    def __init__(self) -> None:
        self._loop = _Loop("lodestore-ray")

    def __reduce__(self):
        return (RayRuntime, ())

    @staticmethod
    def actor_class(cls: type) -> Any:
        """The Ray actor class of a plain class (made once per process)."""
        remote = _ray_classes.get(cls)
        if remote is None:
            remote = _ray_classes[cls] = ray.remote(cls)
        return remote

    def spawn(self, cls: type, *args: Any, **options: Any) -> Any:
        return self.actor_class(cls).options(**options).remote(*args)

    def singleton(self, key: Any, cls: type, *args: Any, **options: Any) -> Any:
        """The named actor of `options` (made if absent: `get_if_exists`), its handle kept per process under `key`:
        looking a named actor up costs a round trip to Ray's control store."""
        ref = _ray_singletons.get(key)
        if ref is None:
            ref = _ray_singletons[key] = self.spawn(cls, *args, get_if_exists=True, **options)
        return ref

    def forget(self, key: Any) -> None:
        """Drop a kept handle (its actor died): the next `singleton` looks it up again."""
        _ray_singletons.pop(key, None)

    def call(self, ref: Any, method: str, *args: Any) -> Any:
        return ray.get(getattr(ref, method).remote(*args))

    async def acall(self, ref: Any, method: str, *args: Any) -> Any:
        return await getattr(ref, method).remote(*args)

    def send(self, ref: Any, method: str, *args: Any) -> None:
        getattr(ref, method).remote(*args)

    def kill(self, ref: Any) -> None:
        ray.kill(ref, no_restart=True)

    def block(self, coro: Awaitable) -> Any:
        return self._loop.block(coro)


class Coalescer:
    """What one event loop submits in one loop turn travels as one list: `send(items)` is awaited once for them and
    answers one reply per item, in order. When `send` raises, every item of that batch gets `failed(exc)` as its
    reply. `submit` never raises on the batch's behalf: the owner decides what a failure reply means.

    >>> batcher = Coalescer(lambda items: runtime.acall(actor, "handle", items), failed=lambda exc: exc)
    >>> reply = await batcher.submit(request)
    """

    def __init__(self, send: Callable[[list], Awaitable[list]],
                 failed: Callable[[BaseException], Any] = lambda exc: exc) -> None:
        self._send = send
        self._failed = failed
        self._pending: dict[asyncio.AbstractEventLoop, list] = {}

    async def submit(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        batch = self._pending.get(loop)
        if batch is None:
            batch = self._pending[loop] = []
            loop.call_soon(self._flush, loop)   # after every coroutine that is ready now has had its turn
        future = loop.create_future()
        batch.append((item, future))
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, [])
        if batch:
            loop.create_task(self._deliver(batch))

    async def _deliver(self, batch: list) -> None:
        try:
            replies = await self._send([item for item, _ in batch])
        except Exception as exc:  # the actor died, or the message could not travel: every caller hears it
            replies = [self._failed(exc)] * len(batch)
        for (_, future), reply in zip(batch, replies):
            if not future.done():
                future.set_result(reply)
