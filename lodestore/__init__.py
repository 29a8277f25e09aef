"""lodestore: Roblox-style session-locked player data, over an emulated DataStore and MemoryStore, on Ray.

    >>> import lodestore
    >>> world = lodestore.World.start("demo")                 # local Ray + SQLite at lodestore-data/demo.db
    >>> server = lodestore.GameServer(world, players=10)       # one simulated game server
    >>> players = server.create_store("players", template={"coins": 0})
    >>> players.load("user_1")
    >>> server.shutdown(); world.shutdown()

The names a user needs first live here; each layer has its own public face: `lodestore.storage` (the emulated
cloud), `lodestore.actors` (key actors, sessions), `lodestore.coordinator` (transactions), `lodestore.sim` (the
simulator), `lodestore.bench` (`python -m lodestore.bench NAME`). The simulator's names load on first use, so that
importing the storage layer never imports the simulator above it.
"""

from __future__ import annotations

import importlib
from typing import Any

from lodestore._store import (AsyncGameServer, AsyncStore, GameServer, Store, StoreTotals, advance, store_options,
                             tx_batcher)
from lodestore.actors import Migration
from lodestore.storage import (ConfigError, DataStoreError, FaultConfig, LodestoreError, ManualClock, MemoryStoreError,
                               World)

__all__ = [
    "World", "GameServer", "AsyncGameServer", "Store", "AsyncStore", "StoreTotals", "store_options", "Migration",
    "advance", "tx_batcher", "ManualClock", "FaultConfig",
    "LodestoreError", "ConfigError", "DataStoreError", "MemoryStoreError",
    "simulate", "load_scenario", "RunOptions",
]

_FROM_SIM = frozenset({"simulate", "load_scenario", "RunOptions"})


def __getattr__(name: str) -> Any:
    if name in _FROM_SIM:
        value = getattr(importlib.import_module("lodestore.sim"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lodestore' has no attribute {name!r}")
