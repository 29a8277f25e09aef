"""lodestore's emulated Roblox cloud: DataStore and MemoryStore services shared by simulated game servers.

    >>> from lodestore.storage import World
    >>> world = World.start("demo")                       # local Ray + SQLite at lodestore-data/demo.db
    >>> server = world.server("job-1", players=12)
    >>> store = server.datastores.get_data_store("players")
    >>> store.set("user_1", {"coins": 10})
    >>> store.update("user_1", lambda old, info: {**old, "coins": old["coins"] + 5})
    >>> world.shutdown()

Everything public is exported here; the `_`-prefixed modules are private.
"""

from lodestore.storage._clock import Clock, ManualClock, SimClock
from lodestore.storage.datastore._client import (DataStore, DataStoreService, DataStoreStatistics, OrderedDataStore, RetryPolicy,
                                SortDirection, UpdateResult)
from lodestore.storage._errors import ConfigError, DataStoreError, LodestoreError, MemoryStoreError, TransformError
from lodestore.storage._faults import FaultConfig, Latency, Outage
from lodestore.storage._limits import RequestType
from lodestore.storage.memorystore._engine import MemoryStoreStatistics
from lodestore.storage.memorystore._client import HashMap, MemoryStoreService, Queue, SortedMap
from lodestore.storage.datastore._messages import KeyInfo, Page, VersionInfo
from lodestore.storage._shards import namespace_of
from lodestore.storage._throttle import GateStatistics, emergency
from lodestore.storage._transport import ACTOR_FAILURES
from lodestore.storage._world import Server, World

__all__ = [
    "World", "Server",
    "Clock", "SimClock", "ManualClock",
    "DataStoreService", "DataStore", "OrderedDataStore", "KeyInfo", "VersionInfo", "Page", "UpdateResult",
    "SortDirection", "DataStoreStatistics", "RequestType", "RetryPolicy", "GateStatistics", "emergency",
    "MemoryStoreService", "HashMap", "SortedMap", "Queue", "MemoryStoreStatistics",
    "FaultConfig", "Latency", "Outage", "namespace_of",
    "ACTOR_FAILURES", "LodestoreError", "ConfigError", "DataStoreError", "MemoryStoreError", "TransformError",
]
