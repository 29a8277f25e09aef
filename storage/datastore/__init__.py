"""The emulated DataStore service: the client a game server calls, the engine a shard runs, the messages between.

    >>> store = server.datastores.get_data_store("players")     # a DataStoreService, from `World.server`
    >>> store.set("user_1", {"coins": 10})

`_client` checks arguments, keeps the 4-second read cache and runs UpdateAsync's loop in the caller; `_engine`
applies Roblox's rules (versions, hourly backups, tombstones, compare-and-set, per-key throughput) to one shard's
entries; `_messages` holds the frozen requests and results they exchange; `_backends` keeps a shard's entries in
memory or in SQLite; `_lifecycle` keeps data stores' deletion and snapshots and answers a World's operator requests.
What the MemoryStore shares with it (`ANY`, `SortDirection`, `BatchReply`) is defined once in `storage._types`.
Everything public is exported here; a game server's names are exported from `lodestore.storage` too. The
`_`-prefixed modules are private.
"""

from lodestore.storage._types import ANY, BatchReply, SortDirection
from lodestore.storage.datastore._backends import Backend, MemoryBackend, SqliteBackend
from lodestore.storage.datastore._client import (DataStore, DataStoreService, DataStoreStatistics, OrderedDataStore,
                                                 RetryPolicy, UpdateResult)
from lodestore.storage.datastore._engine import DataStoreEngine, DataStoreLimits
from lodestore.storage._errors import DATASTORE_DELETED
from lodestore.storage.datastore._lifecycle import (DataStoreInfo, DataStoreState, DeleteStore, GetMeta, ListAllKeys,
                                                    ListStores, PurgeKey, PutMeta, ReadVersions, Snapshot,
                                                    SnapshotResult, UndeleteStore)
from lodestore.storage.datastore._messages import (MISSING, Conflict, Entry, Get, GetVersion, GetVersionAtTime,
                                                   Increment, KeyInfo, ListKeys, ListVersions, OrderedConflict,
                                                   OrderedGet, OrderedIncrement, OrderedRange, OrderedRemove,
                                                   OrderedSet, OrderedValue, Page, Remove, RemoveVersion, Set, Sweep,
                                                   VersionInfo, Written)

__all__ = [
    # the client
    "DataStoreService", "DataStore", "OrderedDataStore", "UpdateResult", "SortDirection", "DataStoreStatistics",
    "RetryPolicy", "KeyInfo", "VersionInfo", "Page",
    # the engine and where it keeps entries
    "DataStoreEngine", "DataStoreLimits", "Backend", "MemoryBackend", "SqliteBackend",
    # requests and results
    "ANY", "Get", "Set", "Increment", "Remove", "ListKeys", "ListVersions", "GetVersion", "GetVersionAtTime",
    "RemoveVersion", "OrderedGet", "OrderedSet", "OrderedIncrement", "OrderedRemove", "OrderedRange", "Sweep",
    "Entry", "MISSING", "Written", "Conflict", "OrderedValue", "OrderedConflict", "BatchReply",
    # data stores' lifecycle: what a listing and an operator call answer, and the operator requests a shard runs
    "DataStoreInfo", "DataStoreState", "SnapshotResult", "DATASTORE_DELETED", "ListStores", "DeleteStore",
    "UndeleteStore", "Snapshot", "GetMeta", "PutMeta", "ReadVersions", "PurgeKey", "ListAllKeys",
]
