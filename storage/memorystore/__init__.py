"""The emulated MemoryStore service: the client a game server calls, the engine the world's MemoryStore actor runs,
and the messages between them.

    >>> locks = server.memorystores.get_hash_map("locks")       # a MemoryStoreService, from `World.server`
    >>> locks.update("user_1", lambda old: old or "my-lock-id", expiration=90)

`_client` checks and encodes values and runs the optimistic `update` loops in the caller; `_engine` applies Roblox's
MemoryStore rules (versions, expiry, invisibility, item and structure limits, the experience's quotas) to every
structure of the experience; `_structures` is how the engine holds hash maps, sorted maps and queues; `_messages`
holds the frozen requests, results and error names. What the DataStore shares with it (`ANY`, `SortDirection`) is
defined once in `storage._types`. Everything public is exported here; a game server's names are exported from
`lodestore.storage` too. The `_`-prefixed modules are private.
"""

from lodestore.storage.memorystore._client import HashMap, MemoryStoreService, Queue, SortedMap
from lodestore.storage.memorystore._engine import MemoryStoreEngine
from lodestore.storage.memorystore._messages import (ANY, DATA_STRUCTURE_ITEMS_OVER_LIMIT,
                                                     DATA_STRUCTURE_MEMORY_OVER_LIMIT,
                                                     DATA_STRUCTURE_REQUESTS_OVER_LIMIT, INTERNAL_ERROR,
                                                     INVALID_EXPIRATION_TIME, INVALID_REQUEST,
                                                     ITEM_VALUE_SIZE_TOO_LARGE, NO_ITEM_FOUND,
                                                     PARTITION_REQUESTS_OVER_LIMIT, SUCCESS, TOTAL_MEMORY_OVER_LIMIT,
                                                     TOTAL_REQUESTS_OVER_LIMIT, TRANSFORM_CALLBACK_FAILED,
                                                     UPDATE_CONFLICT, AnyVersion, Conflict, HashMapGet, HashMapList,
                                                     HashMapPage, HashMapRemove, HashMapSet, Item, MemoryStoreFlushed,
                                                     MemoryStoreStatistics, QueueAdd, QueueBatch, QueueGetSize,
                                                     QueueRead, QueueRemove, QueueRemoved, SortDirection,
                                                     SortedMapGet, SortedMapGetRange, SortedMapGetSize,
                                                     SortedMapRemove, SortedMapSet, Written)

__all__ = [
    # the client
    "MemoryStoreService", "HashMap", "SortedMap", "Queue",
    # the engine and its snapshot
    "MemoryStoreEngine", "MemoryStoreStatistics", "MemoryStoreFlushed",
    # requests, results and error names
    "ANY", "AnyVersion", "SortDirection",
    "HashMapGet", "HashMapSet", "HashMapRemove", "HashMapList",
    "SortedMapGet", "SortedMapSet", "SortedMapRemove", "SortedMapGetRange", "SortedMapGetSize",
    "QueueAdd", "QueueRead", "QueueRemove", "QueueGetSize",
    "Item", "Written", "Conflict", "HashMapPage", "QueueBatch", "QueueRemoved",
    "INVALID_REQUEST", "ITEM_VALUE_SIZE_TOO_LARGE", "INVALID_EXPIRATION_TIME", "TOTAL_REQUESTS_OVER_LIMIT",
    "TOTAL_MEMORY_OVER_LIMIT", "DATA_STRUCTURE_MEMORY_OVER_LIMIT", "DATA_STRUCTURE_ITEMS_OVER_LIMIT",
    "DATA_STRUCTURE_REQUESTS_OVER_LIMIT", "PARTITION_REQUESTS_OVER_LIMIT", "NO_ITEM_FOUND", "TRANSFORM_CALLBACK_FAILED",
    "INTERNAL_ERROR", "UPDATE_CONFLICT", "SUCCESS",
]
