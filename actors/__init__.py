"""lodestore's key actors: sessions of session-locked player data, as Lyra keeps it, and the hosts that hold them.

The Store API above them (`GameServer`, `Store`) is `lodestore`'s own, since it also reaches the coordinator:

    >>> from lodestore import GameServer, World
    >>> world = World.start("demo")
    >>> server = GameServer(world, players=10)                  # one simulated game server
    >>> players = server.create_store("players", template={"coins": 0, "items": []})
    >>> players.load("user_1")                                  # locks the key for this server
    >>> players.update("user_1", lambda data: data.update(coins=data["coins"] + 5) or True)
    True
    >>> players.get("user_1")
    {'coins': 5, 'items': []}
    >>> server.shutdown()                                       # final saves, locks released

Everything public is exported here; the `_`-prefixed modules are private. Besides the Store API's pieces:
- the requests a key host answers, one frozen dataclass per operation (`Load`, `Get`, `Update`, ..., and a
  coordinator's `TxPrepare`, `TxWrite`, `TxFinish`), for `KeyHost.handle` / `KeyHost.tx_calls`;
- the transaction vocabulary the coordinator and `lodestore inspect` share with sessions (`TX_STORE`,
  `records_store`, `marker_committed`, `commit_if_pending`, `abort_if_pending`, `without_tx`, `ABSENT`, ...);
- `records`, the record layout (make, read and patch records; frozen views).
"""

from lodestore.actors import records
from lodestore.actors._config import (LOCK_STORES, MAX_LOCK_TTL_S, MIN_PERIOD_S, LogMessage, Migration, Placement,
                                      StoreConfig, check_schema, check_seconds)
from lodestore.actors._errors import (KeyClosedError, KeyNotLoadedError, LoadInProgressError, LockLostError,
                                      LockTimeoutError, MigrationError, RecordError, SchemaError, StoreClosedError,
                                      StoreError, TxLockedError)
from lodestore.actors._host import KeyHost, StoreStatistics
from lodestore.actors._requests import (Close, Get, HostRequest, IsLoaded, KeyRequest, ListVersions, Load, LoadedKeys,
                                        Peek, ProbeLockActive, ReadVersion, Save, Statistics, TxCall, TxFinish,
                                        TxPrepare, TxWrite, Unload, Update, UpdateImmutable)
from lodestore.actors._session import SessionState, StoreCounters
from lodestore.actors._txn import (ABSENT, MAX_STORE_NAME, RECORDS_PREFIX, SHARDS_PREFIX, TX_STORE, abort_if_pending,
                                   commit_if_pending, lock_map_name, marker_committed, records_store, shards_store,
                                   without_tx)
from lodestore.actors._actor import KeyActor, key_actor_options
from lodestore.actors._erasure import erase_records

__all__ = [
    "KeyActor", "key_actor_options",
    "StoreConfig", "Migration", "Placement", "LogMessage", "check_schema", "check_seconds", "MIN_PERIOD_S",
    "MAX_LOCK_TTL_S", "LOCK_STORES",
    "KeyHost", "SessionState", "StoreStatistics", "StoreCounters",
    "HostRequest", "KeyRequest", "Load", "Get", "Update", "UpdateImmutable", "Save", "Unload", "Close", "Peek",
    "ProbeLockActive", "ListVersions", "ReadVersion", "IsLoaded", "LoadedKeys", "Statistics",
    "TxCall", "TxPrepare", "TxWrite", "TxFinish",
    "TX_STORE", "RECORDS_PREFIX", "SHARDS_PREFIX", "MAX_STORE_NAME", "ABSENT", "records_store", "shards_store",
    "lock_map_name", "marker_committed", "abort_if_pending", "commit_if_pending", "without_tx",
    "records",
    # the erasure of a user's records, shard chunks and transaction markers (registered with `World.erase_user`)
    "erase_records",
    "StoreError", "KeyNotLoadedError", "LoadInProgressError", "StoreClosedError", "KeyClosedError", "LockLostError",
    "LockTimeoutError", "SchemaError", "MigrationError", "TxLockedError", "RecordError",
]
