"""What the DataStore and MemoryStore clients share: the asyncio twin of a client class, and the call of a user's
transform.

A client class writes each operation once, as a generator `_op_<name>` planned by `_plan`, and runs it blocking
through its service's `_run`; `async_twin` builds the class of `.aio` coroutines over the same generators (its
service's `_arun`). `call_transform` runs the function an `update` was given and turns whatever it raises into a
`TransformError` naming the key. `recorded` wraps one keyed operation so that a request recorder (installed by the
simulator's hosts, `service.recorder`) hears of it: what was asked, when, its outcome and the versions it read and
wrote. This module holds no state, sends nothing and never swallows a storage error.
"""

from __future__ import annotations

from typing import Any, Callable, Generator

from lodestore.storage._errors import ConfigError, DataStoreError, TransformError

__all__ = ["async_twin", "call_transform", "recorded", "Recorder", "REQUEST_FIELDS"]

Recorder = Callable[[tuple], Any]
"""What a client hands each request record to (`list.append` of a host's buffer): one tuple of `REQUEST_FIELDS`."""

REQUEST_FIELDS = ("service", "store", "scope", "key", "obj", "call", "cache", "invoke", "complete", "outcome",
                  "read", "written")
"""A raw request record: `service` "ds" (DataStore) or "ms" (MemoryStore); `store`, `scope`, `key` name the entry
("hash:NAME"/"sorted:NAME" and scope "" for a MemoryStore item); `obj` the client object it went through (a data
store object holds its own 4 s read cache); `call` get/set/update/increment/remove; `cache` how a get used that
cache: "hit" (served from it), "miss" (it may have been, and was not) or "off" (`use_cache=false`, and every other
call); `invoke`/`complete` simulated ms; `outcome` "ok", "failed" (refused before anything was
sent) or "ambiguous" (it may have landed); `read` the version the call saw (None: no entry) and `written` the version
it wrote (None: unknown or nothing), as per-key increasing integers."""

# Refusals that come before a request is sent: bad names, values and arguments, and a full throttle queue (301-306).
_UNSENT_CODES = frozenset({101, 102, 103, 104, 105, 106, 107, 301, 302, 303, 304, 305, 306, 400, 511, 512, 513})


def _unsent(exc: BaseException) -> bool:
    if isinstance(exc, DataStoreError):
        return exc.code in _UNSENT_CODES
    return isinstance(exc, (TypeError, ValueError, ConfigError, TransformError))


def recorded(recorder: Recorder, head: tuple, clock: Any, write: bool, make: Callable[[dict], Generator],
             cache: str = "off") -> Generator:
    """Run the operation generator `make(note)` and hand `recorder` its record: `head` (service .. call, see
    `REQUEST_FIELDS`), `note["cache"]` (`cache` unless the operation changed it), the simulated ms it began and
    ended, its outcome and `note["read"]`/`note["written"]` as the operation left them. A write that raised after
    it may have been sent (an error from the shard, a lost transport, a cancelled task) is "ambiguous": Roblox's "a
    failed write does not prove nothing was written". The operation's result or exception passes through
    unchanged."""
    note: dict = {"read": None, "written": None, "cache": cache}
    start = clock.now()
    try:
        result = yield from make(note)
    except BaseException as exc:
        outcome = "ambiguous" if write and not _unsent(exc) else "failed"
        recorder(head + (note["cache"], start, clock.now(), outcome, note["read"], note["written"]))
        raise
    recorder(head + (note["cache"], start, clock.now(), "ok", note["read"], note["written"]))
    return result


def async_twin(cls: type, names: tuple[str, ...]) -> type:
    """Build the asyncio flavour of a client class: the same methods, as coroutines over the same generators."""

    def make(name: str):
        async def method(self, *args, **kwargs):
            return await self._target._service._arun(*self._target._plan(name, *args, **kwargs))

        method.__name__ = name
        method.__doc__ = f"Coroutine version of `{cls.__name__}.{name}`."
        return method

    namespace = {"__init__": lambda self, target: setattr(self, "_target", target),
                 "__doc__": f"The asyncio flavour of `{cls.__name__}`: every method is a coroutine."}
    namespace.update({name: make(name) for name in names})
    return type(f"Async{cls.__name__}", (), namespace)


def call_transform(fn: Callable, key: str, *args: Any) -> Any:
    """`fn(*args)`; an exception it raises becomes a `TransformError` for `key` (the original is `__cause__`)."""
    try:
        return fn(*args)
    except Exception as exc:
        raise TransformError(f"transform for key {key!r} raised {type(exc).__name__}: {exc}") from exc
