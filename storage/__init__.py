"""lodestore's emulated Roblox cloud: DataStore and MemoryStore services shared by simulated game servers.

    >>> from lodestore.storage import World
    >>> world = World.start("demo")                       # local Ray + SQLite at lodestore-data/demo.db
    >>> server = world.server("job-1", players=12)
    >>> store = server.datastores.get_data_store("players")
    >>> store.set("user_1", {"coins": 10})
    >>> store.update("user_1", lambda old, info: {**old, "coins": old["coins"] + 5})
    >>> world.shutdown()

Each service has the same shape: `lodestore.storage.datastore` and `lodestore.storage.memorystore` each hold a
client, an engine and the messages between them, with their own public face. What both use (`SortDirection`, the
`ANY` write condition, argument checks) is defined once in `_types`; the world, its actors, budgets and transport
live beside them. Everything public is exported here; the `_`-prefixed modules are private.
"""

from lodestore.storage._clock import Clock, ManualClock, SimClock
from lodestore.storage._errors import ConfigError, DataStoreError, LodestoreError, MemoryStoreError, TransformError
from lodestore.storage._faults import FaultConfig, Latency, Outage
from lodestore.storage._limits import RequestType
from lodestore.storage._shards import ShardStatistics, namespace_of
from lodestore.storage._throttle import GateStatistics, emergency
from lodestore.storage._transport import ACTOR_FAILURES
from lodestore.storage._types import SortDirection
from lodestore.storage._world import Server, World
from lodestore.storage.datastore import (DataStore, DataStoreService, DataStoreStatistics, KeyInfo, OrderedDataStore,
                                         Page, RetryPolicy, UpdateResult, VersionInfo)
from lodestore.storage.memorystore import HashMap, MemoryStoreService, MemoryStoreStatistics, Queue, SortedMap

__all__ = [
    "World", "Server", "ShardStatistics",
    "Clock", "SimClock", "ManualClock",
    "DataStoreService", "DataStore", "OrderedDataStore", "KeyInfo", "VersionInfo", "Page", "UpdateResult",
    "SortDirection", "DataStoreStatistics", "RequestType", "RetryPolicy", "GateStatistics", "emergency",
    "MemoryStoreService", "HashMap", "SortedMap", "Queue", "MemoryStoreStatistics",
    "FaultConfig", "Latency", "Outage", "namespace_of",
    "ACTOR_FAILURES", "LodestoreError", "ConfigError", "DataStoreError", "MemoryStoreError", "TransformError",
]
