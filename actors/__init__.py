"""lodestore's key actors and Store API: session-locked player data, as Lyra keeps it, on Ray.

    >>> from storage import World
    >>> from actors import GameServer
    >>> world = World.start("demo")
    >>> server = GameServer(world, players=10)                  # one simulated game server
    >>> players = server.create_store("players", template={"coins": 0, "items": []})
    >>> players.load("user_1")                                  # locks the key for this server
    >>> players.update("user_1", lambda data: data.update(coins=data["coins"] + 5) or True)
    True
    >>> players.get("user_1")
    {'coins': 5, 'items': []}
    >>> server.shutdown()                                       # final saves, locks released

Everything public is exported here; the `_`-prefixed modules are private.
"""

from actors._config import LogMessage, Migration, Placement, StoreConfig
from actors._errors import (KeyClosedError, KeyNotLoadedError, LoadInProgressError, LockLostError, LockTimeoutError,
                            MigrationError, RecordError, SchemaError, StoreClosedError, StoreError, TxLockedError)
from actors._host import KeyHost, Request, StoreStatistics
from actors._scheduler import Scheduler
from actors._session import SessionState, StoreCounters
from actors._store import AsyncStore, GameServer, Store, advance

__all__ = [
    "GameServer", "Store", "AsyncStore", "advance",
    "StoreConfig", "Migration", "Placement", "LogMessage",
    "KeyHost", "Request", "Scheduler", "SessionState", "StoreStatistics", "StoreCounters",
    "StoreError", "KeyNotLoadedError", "LoadInProgressError", "StoreClosedError", "KeyClosedError", "LockLostError",
    "LockTimeoutError", "SchemaError", "MigrationError", "TxLockedError", "RecordError",
]
