"""The emulated DataStore service: the client a game server calls, the engine a shard runs, the messages between.

    >>> store = server.datastores.get_data_store("players")     # a DataStoreService, from `World.server`
    >>> store.set("user_1", {"coins": 10})

`_client` checks arguments and runs UpdateAsync's loop in the caller; `_engine` applies Roblox's rules (versions,
backups, compare-and-set, per-key throughput) to one shard's entries; `_messages` holds the frozen requests and
results they exchange; `_backends` keeps a shard's entries in memory or SQLite. Everything public is exported here
and from `lodestore.storage`; the `_`-prefixed modules are private.
"""

from lodestore.storage.datastore._backends import MemoryBackend, SqliteBackend
from lodestore.storage.datastore._client import (DataStore, DataStoreService, DataStoreStatistics, OrderedDataStore,
                                                 RetryPolicy, SortDirection, UpdateResult)
from lodestore.storage.datastore._engine import DataStoreEngine
from lodestore.storage.datastore._messages import KeyInfo, Page, VersionInfo

__all__ = [
    "DataStoreService", "DataStore", "OrderedDataStore", "UpdateResult", "SortDirection", "DataStoreStatistics",
    "RetryPolicy", "KeyInfo", "VersionInfo", "Page",
    "DataStoreEngine", "MemoryBackend", "SqliteBackend",
]
