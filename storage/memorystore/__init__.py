"""The emulated MemoryStore service: the client a game server calls, the engine the world's MemoryStore actor runs.

    >>> locks = server.memorystores.get_hash_map("locks")       # a MemoryStoreService, from `World.server`
    >>> locks.update("user_1", lambda old: old or "my-lock-id", expiration=90)

`_client` checks and encodes values and runs the optimistic `update` loops in the caller; `_engine` holds every hash
map, sorted map and queue of the experience and enforces Roblox's MemoryStore limits and quotas. Everything public
is exported here and from `lodestore.storage`; the `_`-prefixed modules are private.
"""

from lodestore.storage.memorystore._client import HashMap, MemoryStoreService, Queue, SortedMap
from lodestore.storage.memorystore._engine import MemoryStoreEngine, MemoryStoreStatistics

__all__ = ["MemoryStoreService", "HashMap", "SortedMap", "Queue", "MemoryStoreEngine", "MemoryStoreStatistics"]
