"""Typed errors of the emulated Roblox cloud.

Every error a caller of `storage` can see is defined here. Exceptions travel through Ray (raised in an actor,
re-raised in the caller), so every class keeps plain constructor arguments and pickles by them.
"""

from __future__ import annotations

__all__ = ["LodestoreError", "ConfigError", "DataStoreError", "MemoryStoreError", "TransformError",
           "ServerClosedError"]


class LodestoreError(Exception):
    """Base of every error lodestore raises on purpose."""


class ConfigError(LodestoreError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range; the message names it.

    `field` is the name of the bad setting when the raiser knows it (a `StoreConfig` field such as "lock_ttl"),
    so a caller that took the value from elsewhere (a scenario file) can say where it came from.

    >>> ConfigError("lock_ttl must be at most 3888000 s", field="lock_ttl").field
    'lock_ttl'
    """

    def __init__(self, message: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self):
        return (type(self), (str(self), self.field))


class DataStoreError(LodestoreError):
    """A DataStore request failed, with Roblox's numeric `code` and error `name`.

    >>> DataStoreError(105, "ValueTooLarge", "value is 4194305 characters").code
    105
    """

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(code, name, message)
        self.code = code
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.code} {self.name}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Throttling (301-306, 429 KeyThrottled) and server-side failures (5xx) may succeed when retried."""
        return 301 <= self.code <= 306 or self.code == 429 or 500 <= self.code <= 599


class MemoryStoreError(LodestoreError):
    """A MemoryStore request failed; `name` is Roblox's error name (TotalMemoryOverLimit, InternalError, ...)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name, message)
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


class TransformError(LodestoreError):
    """A user's transform function raised; nothing was written. The original exception is `__cause__`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerClosedError(LodestoreError):
    """The game server was closed (`Server.close`): it has no players, budget or quota any more, and nothing more can
    be done through it."""
