"""Typed errors of the Store API, with Lyra's messages first so users of Lyra recognise them.

Every class takes one plain message argument, so it pickles through Ray unchanged (raised in a key actor, re-raised
in the caller). Storage failures keep their own types (`storage.DataStoreError`, `storage.MemoryStoreError`).
"""

from __future__ import annotations

from lodestore.storage import LodestoreError

__all__ = ["StoreError", "KeyNotLoadedError", "LoadInProgressError", "StoreClosedError", "KeyClosedError",
           "LockLostError", "LockTimeoutError", "SchemaError", "MigrationError", "TxLockedError", "RecordError"]


class StoreError(LodestoreError):
    """Base of the Store API's errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class KeyNotLoadedError(StoreError):
    """"Key not loaded": the key has no session on this server (never loaded, or unloaded)."""


class LoadInProgressError(StoreError):
    """"Load already in progress": a second `load` of a key while the first still waits."""


class StoreClosedError(StoreError):
    """"Store is closed": the store was closed; nothing more can be loaded, read or changed through it."""


class KeyClosedError(StoreError):
    """"Key is closed": the key's session is closing or closed (unloaded, or its lock was lost)."""


class LockLostError(KeyClosedError):
    """The session's lock expired or was taken over; the session closed without writing again."""


class LockTimeoutError(StoreError):
    """"Failed to acquire lock": another session held the key for longer than the store's `lock_wait`."""


class SchemaError(StoreError):
    """"Schema validation failed": the data does not satisfy the store's schema; nothing changed."""


class MigrationError(StoreError):
    """A migration step raised or returned no data; the load failed and wrote nothing."""


class TxLockedError(StoreError):
    """"Key is already locked by another transaction"."""


class RecordError(StoreError):
    """A stored record, shard or transaction marker is malformed or missing a part."""
