"""lodestore's emulated Roblox cloud: DataStore, MemoryStore and MessagingService shared by simulated game servers.

    >>> from lodestore.storage import World
    >>> world = World.start("demo")                       # local Ray + SQLite at lodestore-data/demo.db
    >>> server = world.server("job-1", players=12)
    >>> store = server.datastores.get_data_store("players")
    >>> store.set("user_1", {"coins": 10})
    >>> store.update("user_1", lambda old, info: {**old, "coins": old["coins"] + 5})
    >>> world.shutdown()

Each service has the same shape: `lodestore.storage.datastore`, `lodestore.storage.memorystore` and
`lodestore.storage.messaging` each hold a client, an engine and the messages between them, with their own public
face. What both use (`SortDirection`, the
`ANY` write condition, argument checks) is defined once in `_types`; the world, its actors, budgets and transport
live beside them. Everything a game server, another lodestore layer or a tool needs is exported here: the clients,
the value rules (`check_value`, `canonical`, `encode`, ...) and Roblox's limits other layers enforce too. A world's
actors are named in its Ray namespace (`namespace_of(world)`: `datastore_name(i)`, `MEMORYSTORE_NAME`,
`BUDGET_NAME`), and `shard_of` says which DataStore shard owns a key, for tools that reach them directly (benchmarks,
cluster tests). The `_`-prefixed modules are private.
"""

from lodestore.storage._backoff import Backoff, retry
from lodestore.storage._clock import Clock, ManualClock, SimClock
from lodestore.storage._errors import (DATASTORE_DELETED, DATASTORE_THROTTLED, INVALID_EXCLUSIVE_START_KEY,
                                       KEY_THROTTLED, REQUEST_DROPPED, THROTTLE_NAMES, THROTTLED_CODE, ConfigError,
                                       DataStoreError, LodestoreError, MemoryStoreError, ServerClosedError,
                                       TransformError, throttled_name)
from lodestore.storage._faults import MEMORYSTORE_FAULT_KEYS, FaultConfig, Outage
from lodestore.storage._ingress import (INGRESS_NAME, OUTSIDE_PREFIX, Ingress, IngressActor, SimulationEnded,
                                       ingress_world)
from lodestore.storage._latency import Latency
from lodestore.storage._ids import new_id, new_rng, seeded
from lodestore.storage._limits import (DEFAULT_SCOPE, HOUR_MS, MAX_KEY_NAME, MAX_LIST_PAGE, MAX_VALUE_CHARS,
                                       MS_MAX_EXPIRATION_S, READ_CACHE_MS, RequestType)
from lodestore.storage._clients import REQUEST_FIELDS, Recorder
from lodestore.storage._placement import actor_options, namespace_of, pinned, spread_nodes
from lodestore.storage._scheduler import Scheduler, Timer, sleep
from lodestore.storage._runtime import ACTOR_FAILURES, Coalescer, LocalRuntime, RayRuntime, Runtime
from lodestore.storage._shards import (BUDGET_NAME, MEMORYSTORE_NAME, ShardStatistics, StorageUsage, WorldStatistics,
                                      datastore_name)
from lodestore.storage._throttle import GateStatistics, emergency
from lodestore.storage._transport import Permit, shard_of
from lodestore.storage._types import SortDirection
from lodestore.storage._values import (MAX_DEPTH, canonical, check_key, check_metadata, check_store_name,
                                       check_user_ids, check_value, decode, encode)
from lodestore.storage._erasure import DeletionTemplate, ErasedKey, ErasureReport, Rewrite, register_eraser
from lodestore.storage._world import OPEN_CLOUD_JOB_ID, AsyncServer, AsyncWorld, Server, World, metrics_url
from lodestore.storage import _virtual as virtual
from lodestore.storage.datastore import (DataStore, DataStoreEngine, DataStoreInfo, DataStoreLimits, DataStoreService,
                                         DataStoreState, DataStoreStatistics, KeyInfo, OrderedDataStore, Page,
                                         RetryPolicy, SnapshotResult, SqliteBackend, UpdateResult, VersionInfo)
from lodestore.storage.memorystore import HashMap, MemoryStoreService, MemoryStoreStatistics, Queue, SortedMap
from lodestore.storage.messaging import (MESSAGING_NAME, MessagingService, MessagingServiceError, MessagingStatistics,
                                         Subscription)

__all__ = [
    "World", "AsyncWorld", "Server", "AsyncServer", "ShardStatistics", "WorldStatistics", "StorageUsage",
    "DataStoreLimits", "metrics_url", "OPEN_CLOUD_JOB_ID",
    "Clock", "SimClock", "ManualClock", "Scheduler", "Timer", "sleep", "Backoff", "retry",
    "DataStoreService", "DataStore", "OrderedDataStore", "KeyInfo", "VersionInfo", "Page", "UpdateResult",
    "SortDirection", "DataStoreStatistics", "RequestType", "RetryPolicy", "GateStatistics", "emergency", "Permit",
    "MemoryStoreService", "HashMap", "SortedMap", "Queue", "MemoryStoreStatistics",
    "MessagingService", "Subscription", "MessagingStatistics", "MessagingServiceError",
    "FaultConfig", "Latency", "Outage", "MEMORYSTORE_FAULT_KEYS", "actor_options", "pinned", "spread_nodes",
    "Runtime", "LocalRuntime", "RayRuntime", "Coalescer",
    # virtual time: a simulated world as nodes exchanging timestamped messages (`virtual.Node`, `virtual.Address`)
    "virtual",
    # calls from outside a running simulation into its world (an Open Cloud server's door: `storage._ingress`)
    "Ingress", "IngressActor", "SimulationEnded", "INGRESS_NAME", "OUTSIDE_PREFIX", "ingress_world",
    # a world's actors by name, and which DataStore shard owns a key, for tools that reach the actors directly
    "namespace_of", "datastore_name", "MEMORYSTORE_NAME", "BUDGET_NAME", "MESSAGING_NAME", "shard_of",
    "ACTOR_FAILURES", "LodestoreError", "ConfigError", "DataStoreError", "MemoryStoreError", "TransformError",
    "ServerClosedError",
    # Roblox's error names and codes other layers raise or recognise (part of them chosen where Roblox gives none)
    "THROTTLE_NAMES", "THROTTLED_CODE", "throttled_name", "DATASTORE_DELETED", "DATASTORE_THROTTLED", "KEY_THROTTLED",
    "REQUEST_DROPPED", "INVALID_EXCLUSIVE_START_KEY",
    # ids and random sources: random outside a simulation, seeded inside one
    "new_id", "new_rng", "seeded",
    # what a DataStore may hold, and the bytes kept for it (other layers check and encode values the same way)
    "check_key", "check_store_name", "check_value", "check_metadata", "check_user_ids", "MAX_DEPTH",
    "canonical", "encode", "decode",
    # Roblox's documented limits other layers enforce too
    "MAX_KEY_NAME", "MAX_VALUE_CHARS", "MAX_LIST_PAGE", "DEFAULT_SCOPE", "HOUR_MS", "MS_MAX_EXPIRATION_S",
    "READ_CACHE_MS",
    # raw request records the clients hand a recorder (`World.recorder`), for the simulator's consistency checker
    "REQUEST_FIELDS", "Recorder",
    # data stores' lifecycle (list, delete, undelete, snapshot) and the right to erasure
    "DataStoreInfo", "DataStoreState", "SnapshotResult", "DeletionTemplate", "ErasureReport",
    "ErasedKey", "Rewrite", "register_eraser",
    # the engine and backend of one shard, for tools that drive it directly (bench)
    "DataStoreEngine", "SqliteBackend",
]
