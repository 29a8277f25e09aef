"""What the DataStore and MemoryStore clients share: the asyncio twin of a client class, and the call of a user's
transform.

A client class writes each operation once, as a generator `_op_<name>` planned by `_plan`, and runs it blocking
through its service's `_run`; `async_twin` builds the class of `.aio` coroutines over the same generators (its
service's `_arun`). `call_transform` runs the function an `update` was given and turns whatever it raises into a
`TransformError` naming the key. This module holds no state, sends nothing and never catches a storage error.
"""

from __future__ import annotations

from typing import Any, Callable

from lodestore.storage._errors import TransformError

__all__ = ["async_twin", "call_transform"]


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
