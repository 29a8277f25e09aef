"""lodestore's emulated Roblox cloud: DataStore and MemoryStore services shared by simulated game servers.

    >>> from storage import World
    >>> world = World.start("demo")                       # local Ray + SQLite at lodestore-data/demo.db
    >>> server = world.server("job-1", players=12)
    >>> store = server.datastores.get_data_store("players")
    >>> store.set("user_1", {"coins": 10})
    >>> store.update("user_1", lambda old, info: {**old, "coins": old["coins"] + 5})
    >>> world.shutdown()

Everything public is exported here; the `_`-prefixed modules are private.
"""

from storage._clock import Clock, ManualClock, SimClock
from storage._datastore import (DataStore, DataStoreService, DataStoreStatistics, OrderedDataStore, RetryPolicy,
                                SortDirection, UpdateResult)
from storage._errors import ConfigError, DataStoreError, LodestoreError, MemoryStoreError, TransformError
from storage._faults import FaultConfig, Latency, Outage
from storage._limits import RequestType
from storage._memorystore import MemoryStoreStatistics
from storage._memorystore_client import HashMap, MemoryStoreService, Queue, SortedMap
from storage._messages import KeyInfo, Page, VersionInfo
from storage._throttle import GateStatistics, emergency
from storage._transport import ACTOR_FAILURES
from storage._world import Server, World

__all__ = [
    "World", "Server",
    "Clock", "SimClock", "ManualClock",
    "DataStoreService", "DataStore", "OrderedDataStore", "KeyInfo", "VersionInfo", "Page", "UpdateResult",
    "SortDirection", "DataStoreStatistics", "RequestType", "RetryPolicy", "GateStatistics", "emergency",
    "MemoryStoreService", "HashMap", "SortedMap", "Queue", "MemoryStoreStatistics",
    "FaultConfig", "Latency", "Outage",
    "ACTOR_FAILURES", "LodestoreError", "ConfigError", "DataStoreError", "MemoryStoreError", "TransformError",
]
