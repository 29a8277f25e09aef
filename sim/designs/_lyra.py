"""The lyra design: lodestore's own Store (Lyra's, made stronger), as a data layer of the simulator.

Where its behaviour comes from: `../shared/reference/seeds/lyra-store.md` and `paradoxum-games/lyra` (the
`lodestore.Store` API and `actors` say what it does in detail): a MemoryStore session lock with a TTL, refreshed,
fenced writes, dirty-tracked autosave, records with shards for large values, migrations, and two-phase commit
transactions through the world's coordinator. Lyra's own open choices are its settings here:
- `lock_partitions` (Lyra PR #20): how many MemoryStore hash maps share the locks; 1 is Lyra's single map.
- `lock_steal_after`: take over a lock whose holder stopped refreshing it (ProfileStore's force-load), or never.
- `lock_store` (Lyra PR #17, `useDSSLocking`): keep the locks in a MemoryStore hash map (default) or in a DataStore,
  where they spend the server's DataStore budget and expire `lock_ttl` after the time written in them.

Owns: `LyraLayer`, a thin adapter from the `DataLayer` contract to a `Store` on one `GameServer`, and the design's
entry. Never does: anything the Store does not; its figures are the Store's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from lodestore import GameServer, Store, store_options
from lodestore.actors import LOCK_STORES, KeyHost, Peek, StoreConfig
from lodestore.storage import ConfigError, Scheduler, Server
from lodestore.sim.designs._base import DataLayer, Design

__all__ = ["LyraOptions", "LyraLayer", "LYRA"]


@dataclass(frozen=True)
class LyraOptions:
    """`[store.lyra]`: `lock_partitions` (1..1024, default 16), `lock_steal_after` (seconds; 0 = never steal),
    `lock_store` ("memorystore", the default, or "datastore")."""

    lock_partitions: int = 16
    lock_steal_after: float = 0.0
    lock_store: str = "memorystore"

    def __post_init__(self) -> None:
        if not 1 <= self.lock_partitions <= 1024:
            raise ConfigError(f"must be from 1 to 1024, got {self.lock_partitions!r}", field="lock_partitions")
        if not 0 <= self.lock_steal_after < float("inf"):
            raise ConfigError(f"must be seconds >= 0 (0: never), got {self.lock_steal_after!r}",
                              field="lock_steal_after")
        if self.lock_store not in LOCK_STORES:
            raise ConfigError(f"must be one of {', '.join(map(repr, LOCK_STORES))}, got {self.lock_store!r}",
                              field="lock_store")

    def lock_kind(self) -> str:
        """How these settings keep two servers off one key, in a few words (the comparison's "lock" row)."""
        return "DataStore lock" if self.lock_store == "datastore" else "MemoryStore lease"

    def apply(self, config: StoreConfig) -> StoreConfig:
        return dataclasses.replace(config, lock_partitions=self.lock_partitions,
                                   lock_steal_after=self.lock_steal_after or None, lock_store=self.lock_store)


class LyraLayer(DataLayer):
    """One server's `Store`: every call is the Store's own."""

    transactions = True
    cancels_loads = True

    def __init__(self, game: GameServer, store: Store, scheduler: Scheduler, config: StoreConfig) -> None:
        super().__init__(game.storage, scheduler, config)
        self.game = game
        self.store = store

    async def load(self, key: str) -> None:
        await self.store.aio.load(key)

    async def update(self, key: str, fn: Callable[[dict], bool]) -> bool:
        changed = await self.store.aio.update(key, fn)
        if changed:
            self.changed(key)
        return changed

    async def save(self, key: str) -> None:
        await self.store.aio.save(key)

    async def unload(self, key: str) -> bool:
        try:
            return await self.store.aio.unload(key)
        finally:
            self.forget(key)

    async def is_loaded(self, key: str) -> bool:
        return await self.store.aio.is_loaded(key)

    def crash(self) -> None:
        self.forget_all()   # the game server's crash (`GameServer.crash`) ends the key actors

    async def stall(self, seconds: float) -> None:
        await self.game.aio.stall_locks(seconds)

    async def totals(self) -> dict[str, int]:
        totals = await self.store.aio.totals()
        return {**vars(totals.counters), "throttled": totals.throttled, "key_actors": totals.key_actors,
                "at_risk_ms": self.statistics().at_risk_ms}

    async def live(self) -> tuple[int, list[str]]:
        snapshots = await self.store.aio.statistics()
        tokens = sum(sum(s.gate.tokens.values()) for s in snapshots if s.gate is not None)
        return tokens, [e for s in snapshots for e in s.errors]

    def on_saved(self, key: str, taken: int) -> None:
        """The Store's `save_callback`: a save that landed (or found nothing to write) at `taken`; the Store counts
        its saves itself."""
        self.durable(key, taken)


async def _open(game: GameServer, scheduler: Scheduler, config: StoreConfig, options: LyraOptions) -> LyraLayer:
    holder: list[LyraLayer] = []
    config = dataclasses.replace(options.apply(config), save_callback=lambda key, taken: holder[0].on_saved(key, taken))
    store = await game.aio.create_store(config.name, config.template, **store_options(config))
    layer = LyraLayer(game, store, scheduler, config)
    holder.append(layer)
    return layer


async def _read(reader: Server, scheduler: Scheduler, config: StoreConfig, options: LyraOptions,
                keys: list[str]) -> dict[str, Any]:
    """The stored data (transactions resolved) through a key host outside every budget."""
    host = KeyHost(reader.world, reader.job_id, scheduler, budgeted=False)
    host.open_store(options.apply(config))
    results = await host.handle([Peek(config.name, k) for k in keys])
    out = {}
    for key, value in zip(keys, results):
        if isinstance(value, BaseException):
            raise value
        out[key] = value
    return out


LYRA = Design("lyra", "lodestore's Store (Lyra's): a session lock with a TTL (a MemoryStore lease, or a DataStore "
              "lock), fenced writes, autosave, 2PC trades", LyraOptions, _open, _read, transactions=True,
              lock="MemoryStore lease", leased=True)
