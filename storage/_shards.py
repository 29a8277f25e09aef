"""The Ray actors that serve the emulated cloud: DataStore shards and the MemoryStore.

Each actor is a thin shell: it builds a plain-Python engine at start-up and answers batches with it. Options for
every actor come from one factory. Delivered twice (Ray retried a call that had in fact run), `execute` would apply
a batch twice, so these actors are created with `max_task_retries=0` and a caller sees a failed call as ambiguous;
`set_faults`, `set_limits`, `set_players`, the MemoryStore's `set_latency`, `set_hash_map_request_limit` and
`flush`, and a DataStore shard's `close` are idempotent.

A DataStore shard that opens a SQLite file another world holds (see `storage.datastore._backends`) raises
ConfigError: in process from its constructor, on Ray from every call (a constructor that raises would only read
as a dead actor), so that `World.start` can report it.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from lodestore.storage._budget import BudgetLedger
from lodestore.storage._clock import Clock
from lodestore.storage._errors import ConfigError
from lodestore.storage._faults import FaultConfig
from lodestore.storage._latency import Latency, ServiceTimes
from lodestore.storage._limits import STORAGE_BASE_BYTES, STORAGE_PER_USER_BYTES, STORAGE_USD_PER_GB_MONTH
from lodestore.storage._placement import actor_options, namespace_of
from lodestore.storage._types import BatchReply
from lodestore.storage.datastore._backends import open_backend
from lodestore.storage.datastore._engine import DataStoreEngine, DataStoreLimits
from lodestore.storage.memorystore._engine import MemoryStoreEngine, latency_key

__all__ = ["WorldInfo", "ShardStatistics", "StorageUsage", "WorldStatistics", "actor_options", "DataStoreShardActor",
           "MemoryStoreShardActor",
           "BudgetServiceActor",
           "datastore_name", "namespace_of", "MEMORYSTORE_NAME", "BUDGET_NAME"]

MEMORYSTORE_NAME = "memorystore"
"""The Ray name of a world's MemoryStore actor, in the world's namespace (`namespace_of`)."""
BUDGET_NAME = "budget"
"""The Ray name of a world's budget actor (absent when the world has no request budgets)."""


def datastore_name(shard: int) -> str:
    """The Ray name of a world's DataStore shard `shard`, in the world's namespace.

    >>> ray.get_actor(datastore_name(0), namespace=namespace_of("demo"))
    """
    return f"datastore-{shard}"


@dataclass(frozen=True)
class WorldInfo:
    """What every participant of a world must agree on; shard 0 keeps it for `World.connect`."""

    name: str
    backend: str
    path: str | None
    shards: int
    clock: Clock
    faults: FaultConfig
    budget: str | None = "current"  # budget profile, or None: no request budgets
    storage: str = "driver"         # where the shards run: "driver" (one node, one file) or "spread"
    nodes: tuple[str, ...] = ()     # the node id each shard is pinned to (empty in process)

    def shard_path(self, shard: int) -> str | None:
        """The SQLite file of `shard`: the world's file, or under "spread" one file per shard beside it (each on
        its shard's node, so two shards never share a file across machines)."""
        if self.path is None or self.storage != "spread" or self.shards == 1:
            return self.path
        stem, ext = os.path.splitext(self.path)
        return f"{stem}-shard{shard}{ext or '.db'}"

    def holds_file(self, shard: int) -> bool:
        """Whether `shard` holds its SQLite file's lock: the first shard of a shared file (the others join it and
        close before it), every shard of its own file."""
        return shard == 0 or not self.shared_file

    @property
    def shared_file(self) -> bool:
        """Every shard reads one SQLite file (so one shard can answer a listing for all)."""
        return self.backend == "sqlite" and (self.storage != "spread" or self.shards == 1)


@dataclass(frozen=True, slots=True)
class ShardStatistics:
    """A snapshot of one DataStore shard (`World.statistics()` gives one per shard), counted since its actor started.

    >>> [s.requests for s in world.statistics()]
    [120, 97]
    """

    shard: int
    requests: int            # requests the engine ran (an injected failure counts too)
    conflicts: int           # compare-and-sets that lost: an update's write, an ordered store's conditional set
    injected_errors: int     # requests the fault injector failed before they ran (error rates and outages)
    ambiguous_writes: int    # writes the fault injector let apply and then reported as failed
    requests_by_type: dict = dataclasses.field(default_factory=dict)   # RequestType value -> requests
    stored_bytes: int = 0    # bytes of the current values written since the shard started (a fresh world: all)
    key_throttled: int = 0        # requests a hot key's throughput window refused (the client waits, then resends)
    datastore_throttled: int = 0  # requests a hot data store's throughput window refused (DatastoreThrottled)


@dataclass(frozen=True)
class StorageUsage:
    """An experience's DataStore storage against Roblox's limit (2025): `storage_limit_bytes` is 500 MB + 1 MB x
    `lifetime_users` (binary MB), counted on `storage_bytes`, the compressed size of every key's latest version.
    Going over is not refused; `estimated_monthly_cost_usd` is what Data Stores Manager shows for it: only the
    storage above the limit is priced (the limit itself is free), at $0.12 per GB-month (binary GB).

    >>> StorageUsage.of(storage_bytes=600 * 2**20, lifetime_users=0).estimated_monthly_cost_usd
    0.01171875
    """

    storage_bytes: int
    lifetime_users: int
    storage_limit_bytes: int
    over_limit: bool
    estimated_monthly_cost_usd: float

    @staticmethod
    def figures(storage_bytes: int, lifetime_users: int) -> dict:
        """The fields of a `StorageUsage` for these two numbers (a dict: report-ready, and for subclasses)."""
        limit = STORAGE_BASE_BYTES + STORAGE_PER_USER_BYTES * lifetime_users
        excess = max(0, storage_bytes - limit)
        return {"storage_bytes": storage_bytes, "lifetime_users": lifetime_users, "storage_limit_bytes": limit,
                "over_limit": storage_bytes > limit,
                "estimated_monthly_cost_usd": excess / 2**30 * STORAGE_USD_PER_GB_MONTH}

    @classmethod
    def of(cls, storage_bytes: int, lifetime_users: int) -> "StorageUsage":
        return cls(**cls.figures(storage_bytes, lifetime_users))


@dataclass(frozen=True)
class WorldStatistics(StorageUsage, Sequence):
    """`World.statistics()`: the world's storage (see `StorageUsage`) and one `ShardStatistics` per DataStore shard,
    in shard order. It iterates, indexes and has a length as that list of shards does, so callers that took the
    list go on working.

    >>> stats = world.statistics()
    >>> [s.requests for s in stats], stats.storage_bytes, stats.over_limit
    ([120, 97], 5120, False)
    """

    shards: tuple[ShardStatistics, ...] = ()

    def __getitem__(self, index):
        return self.shards[index]

    def __len__(self) -> int:
        return len(self.shards)

    def __iter__(self):
        return iter(self.shards)


class DataStoreShardActor:
    """Serves one hash range of DataStore entries."""

    def __init__(self, info: WorldInfo, shard: int) -> None:
        self.info = info
        self.shard = shard
        path = info.shard_path(shard)
        if path is not None:  # on a node other than the starting one, the directory may not exist yet
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._engine: DataStoreEngine | None = None
        self._refusal: ConfigError | None = None   # on Ray: the file is another world's
        try:
            backend = open_backend(info.backend, path, hold=info.holds_file(shard))
        except ConfigError as exc:
            if not _in_actor():
                raise
            self._refusal = exc
        else:
            self._engine = DataStoreEngine(backend, info.clock, info.faults, DataStoreLimits().share(info.shards))
        # One batch at a time, as a Ray actor with max_concurrency=1 runs them: in process, clients on several
        # threads share this object, and the engine is not thread-safe.
        self._one_at_a_time = threading.Lock()

    @property
    def engine(self) -> DataStoreEngine:
        """The shard's engine; ConfigError when the shard could not have its file (another world holds it)."""
        if self._refusal is not None:
            raise self._refusal
        return self._engine

    def execute(self, ops: list):
        with self._one_at_a_time:
            return self.engine.execute(ops)

    def set_faults(self, faults: FaultConfig) -> None:
        self.engine.set_faults(faults)

    def administer(self, ops: list) -> list:
        """A World's operator requests (see `DataStoreEngine.administer`); what a repeated delivery does is said
        per request in `storage.datastore._lifecycle`."""
        with self._one_at_a_time:
            return self.engine.administer(ops)

    def set_limits(self, limits: DataStoreLimits) -> None:
        """This shard's share of a data store's throughput limits (`DataStoreLimits.share`). Idempotent."""
        with self._one_at_a_time:
            self.engine.set_limits(limits.share(self.info.shards))

    def describe(self) -> WorldInfo:
        """The world's info; ConfigError when this shard could not have its file (another world holds it)."""
        if self._refusal is not None:
            raise self._refusal
        return self.info

    def statistics(self) -> ShardStatistics:
        return ShardStatistics(shard=self.shard, requests=self.engine.requests, conflicts=self.engine.conflicts,
                               injected_errors=self.engine.faults.injected_errors,
                               ambiguous_writes=self.engine.faults.ambiguous_writes,
                               requests_by_type=dict(self.engine.requests_by_type),
                               stored_bytes=self.engine.stored_bytes,
                               key_throttled=self.engine.throughput.key_throttled,
                               datastore_throttled=self.engine.throughput.datastore_throttled)

    def storage_bytes(self) -> int:
        """The compressed size of the latest versions this shard's backend holds (`DataStoreEngine.storage_bytes`);
        the shards of one shared SQLite file each see all of it. Reads only."""
        with self._one_at_a_time:
            return self.engine.storage_bytes()

    def close(self) -> None:
        """Close the engine and its file (see `DataStoreEngine.close`); later batches are refused. Delivered twice:
        the second close does nothing; a shard that never had its file has nothing to close. Never while a batch
        runs on another thread (closing under it crashes SQLite)."""
        with self._one_at_a_time:
            if self._engine is not None:
                self._engine.close()


class MemoryStoreShardActor:
    """Serves every MemoryStore structure of the world, counts the players its quotas grow with, and models how long
    each operation takes once `set_latency` is given one (until then its replies carry no delays)."""

    def __init__(self, info: WorldInfo) -> None:
        self.engine = MemoryStoreEngine(info.clock, faults=info.faults)
        self.players: dict[str, int] = {}
        self.peak_players = 0       # the most players online at once: a floor under the lifetime users
        self.lifetime_users_set = 0  # what `set_lifetime_users` said
        self.service_times = ServiceTimes()
        self._one_at_a_time = threading.Lock()   # see DataStoreShardActor

    def execute(self, ops: list) -> BatchReply:
        """The engine's answers, each delayed by its modelled service time plus what the faults add."""
        with self._one_at_a_time:
            reply = self.engine.execute_batch(ops)
            service = self.service_times.delays(ops, latency_key)
            if reply.delays_ms is None or service is None:
                return BatchReply(reply.results, service if reply.delays_ms is None else reply.delays_ms)
            return BatchReply(reply.results, [a + b for a, b in zip(service, reply.delays_ms)])

    def set_faults(self, faults: FaultConfig) -> None:
        """The MemoryStore fields of `faults` apply from now on."""
        with self._one_at_a_time:
            self.engine.set_faults(faults)

    def set_hash_map_request_limit(self, limit: int | None) -> None:
        with self._one_at_a_time:
            self.engine.set_hash_map_request_limit(limit)

    def flush(self):
        """Empty every structure (`MemoryStoreEngine.flush`)."""
        with self._one_at_a_time:
            return self.engine.flush()

    def set_latency(self, latency: Latency | None, seed: int = 0) -> None:
        """From now on every operation takes a draw of `latency` (simulated ms, in `BatchReply.delays_ms`): one
        deterministic draw per operation from (seed, its type, its structure and key, how many operations that key
        has seen). None: no delays. Delivered twice: the same setting, set again (the per-key counts carry on).

        >>> runtime.call(memorystore, "set_latency", Latency.uniform(0, 10), 7)
        """
        with self._one_at_a_time:
            self.service_times.configure(latency, seed)

    def set_players(self, job_id: str, players: int) -> None:
        if players:
            self.players[job_id] = players
        else:
            self.players.pop(job_id, None)
        total = sum(self.players.values())
        self.peak_players = max(self.peak_players, total)
        self.engine.set_population(users=total, ccu=total)

    def set_lifetime_users(self, users: int) -> None:
        """How many distinct users ever played the experience (the simulator knows its population). Idempotent."""
        self.lifetime_users_set = users

    def lifetime_users(self) -> int:
        """The experience's lifetime users: what `set_lifetime_users` said, and at least the peak of players online
        at once (that many distinct users were seen). Reads only."""
        return max(self.lifetime_users_set, self.peak_players)

    def statistics(self):
        return self.engine.statistics()


class BudgetServiceActor:
    """The world's one budget actor: a thin shell over `BudgetLedger`.

    Delivered twice: `register_server`, `set_players`, `set_rate_limit`, `remove_server` and `release` are
    idempotent; a duplicated `take_experience` takes its tokens twice (under-use, never over-use); a duplicated
    `lease` takes tokens twice and the caller learns of one lease only, so the extra tokens are lost to it (never
    spent twice); a duplicated `begin_shutdown` is a no-op (the boost applies once). `begin_shutdown` and
    `remove_server` of a server the ledger does not know (it never had players nor leased) change nothing and
    answer False, so a server that never used its budget still shuts down."""

    HOUSEKEEPING_EVERY = 256

    def __init__(self, info: WorldInfo) -> None:
        # A restarted actor cannot know what its previous life granted: it starts every bucket empty (safe, see
        # `BudgetLedger`), where a first start gives the startup burst.
        self.ledger = BudgetLedger(info.clock, info.budget or "current", restarted=_restarted())
        self._calls = 0

    def register_server(self, server_id: str, players: int) -> bool:
        return self.ledger.register_server(server_id, players)

    def set_players(self, server_id: str, players: int) -> None:
        if not self.ledger.register_server(server_id, players):
            self.ledger.set_players(server_id, players)

    def begin_shutdown(self, server_id: str) -> bool:
        return self.ledger.begin_shutdown(server_id)

    def remove_server(self, server_id: str) -> bool:
        return self.ledger.remove_server(server_id)

    def available(self, server_id: str, request_type) -> int:
        return self.ledger.available(server_id, request_type)

    def lease(self, server_id: str, request_type, want: int, players: int = 0):
        self._calls += 1
        if self._calls % self.HOUSEKEEPING_EVERY == 0:
            self.ledger.expire()
        self.ledger.register_server(server_id, players)  # no-op when known; re-creates it after a restart
        return self.ledger.lease(server_id, request_type, want)

    def release(self, lease_id: str, unused: int):
        return self.ledger.release(lease_id, unused)

    def set_rate_limit(self, server_id: str, request_type, base: int, per_player: int) -> int:
        return self.ledger.set_rate_limit(server_id, request_type, base, per_player)

    def take_experience(self, request_type, count: int = 1) -> int:
        return self.ledger.take_experience(request_type, count)

    def statistics(self):
        return self.ledger.statistics()


def _in_actor() -> bool:
    """True in a Ray actor; False in a driver, a task, or without Ray."""
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


def _restarted() -> bool:
    """True in a Ray actor that Ray restarted after it died; False in its first life and outside Ray."""
    return _in_actor() and ray.get_runtime_context().was_current_actor_reconstructed

