"""Typed errors of the emulated Roblox cloud.

Every error a caller of `storage` can see is defined here. Exceptions travel through Ray (raised in an actor,
re-raised in the caller), so every class keeps plain constructor arguments and pickles by them.
"""

from __future__ import annotations

__all__ = ["LodestoreError", "ConfigError", "DataStoreError", "MemoryStoreError", "TransformError",
           "ServerClosedError", "THROTTLE_NAMES", "DATASTORE_DELETED", "REQUEST_DROPPED", "KEY_THROTTLED",
           "DATASTORE_THROTTLED", "THROTTLED_CODE", "INVALID_EXCLUSIVE_START_KEY", "throttled_name"]

# Roblox's names for 301-306, "request dropped: throttled and the queue was full", by the call that was dropped
# (the creator docs' error table of 2026: UpdateAsync's is TransformThrottle, IncrementAsync's IncreAsyncThrottle).
THROTTLE_NAMES: dict[int, str] = {301: "GetAsyncThrottle", 302: "SetAsyncThrottle", 303: "IncreAsyncThrottle",
                                  304: "TransformThrottle", 305: "GetSortedThrottle", 306: "RemoveAsyncThrottle"}

DATASTORE_DELETED = (404, "DatastoreDeleted")
"""(code, name) of a request to a data store that was deleted (`World.delete_data_store`). Roblox names the error
but gives it no number; lodestore chose 404 (Roblox's 404 row is about a resource the caller cannot reach, and Open
Cloud answers a deleted store with 404 NOT_FOUND). Not retryable: only undeleting the store makes it reachable."""

REQUEST_DROPPED = (509, "RequestDropped")
"""(code, name) of a request the server dropped without applying it (Roblox's 509): a DataStore shard that was
closed (its world shut down) drops every request it receives."""

KEY_THROTTLED = (429, "KeyThrottled")
"""One key's throughput (25 MB read / 4 MB written per sliding minute) is spent."""

DATASTORE_THROTTLED = (429, "DatastoreThrottled")
"""One data store's throughput as a whole is spent (see `storage.DataStoreLimits`)."""

THROTTLED_CODE = 429
"""The code of every `<RequestType>ExperienceThrottled` / `<RequestType>GameServerThrottled` error (see
`throttled_name`): Roblox names them without a number; 429 is what Open Cloud answers (RESOURCE_EXHAUSTED)."""

INVALID_EXCLUSIVE_START_KEY = (400, "InvalidExclusiveStartKey")
"""A listing's cursor (its exclusive start key) that this kind of listing did not hand out."""


def throttled_name(request_type, scope: str) -> str:
    """Roblox's name of a request refused because a budget of `request_type` is spent: `scope` "Experience" (the
    experience-wide budget, shared by every game server and Open Cloud) or "GameServer" (one server's own).

    >>> throttled_name(RequestType.STANDARD_READ, "Experience")
    'StandardReadExperienceThrottled'
    """
    if scope not in ("Experience", "GameServer"):
        raise ValueError(f"scope must be 'Experience' or 'GameServer', got {scope!r}")
    return f"{getattr(request_type, 'value', request_type)}{scope}Throttled"


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

    `retry_after_ms` (an int, or None) is set on throttling errors that know when trying again can succeed: simulated
    milliseconds until the budget or throughput window that refused the request has room again.
    """

    def __init__(self, code: int, name: str, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(code, name, message)
        self.code = code
        self.name = name
        self.message = message
        self.retry_after_ms = retry_after_ms

    def __reduce__(self):
        return (type(self), (self.code, self.name, self.message, self.retry_after_ms))

    def __str__(self) -> str:
        return f"{self.code} {self.name}: {self.message}"

    @property
    def retryable(self) -> bool:
        """Throttling (301-306; 429: KeyThrottled, DatastoreThrottled, `...ExperienceThrottled`) and server-side
        failures (5xx, 509 RequestDropped included) may succeed when retried; DatastoreDeleted (404) and bad requests
        never do."""
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
