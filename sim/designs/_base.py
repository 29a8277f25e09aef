"""What every design is to the simulator: one game server's player data (`DataLayer`), and how a design is named,
configured, opened and read back (`Design`).

Owns: the `DataLayer` contract the simulated game servers (`sim._host.SimHost`) play every design through, the
bookkeeping every layer shares (its counters, data at risk, lock reports), `DesignError` for what a design refuses or
fails to do, and `Design`, a design's entry in the registry (`sim.designs.DESIGNS`).

The contract, as game code meets it (every method a coroutine on the host's event loop, times on its scheduler):
- `is_loaded(key)`: whether the key's session is live here.
- `load(key)`: the player's data is in memory once it returns; raises (a `LodestoreError`) when it cannot be.
- `update(key, fn)`: `fn(data) -> bool` changes the data in memory in place; True when it changed something. The
  change is durable only once a save of it returns.
- `save(key)`: a forced save of what is in memory now; returns once it is durable, raises when it is not.
- `unload(key)`: the player leaves: a final save and the end of the session; True when the final save landed. The
  game changes nothing of the player's after it. During a `load(key)` it stops that load (which then raises) when
  the layer says it can (`cancels_loads`); otherwise the game waits for the load to end first.
- `close()`: BindToClose's end, after every player left (queues drained). `crash()`: the server died; nothing runs
  or is written any more.
A layer reports each session it holds to `config.lock_callback(kind, key, session, at_ms, until_ms)` ("acquired",
"refreshed", "released", "lost", "crashed"), whether its design has a lock or not: a design without a lock reports
the span its server held the data in memory, from the read its load starts with (a lock that keeps no one out, too),
so the single-holder checker counts overlapping sessions for all.

Never does: decide what a player does (the planner), judge the outcome (the checkers), or keep stored data in any
form but the storage layer's (msgpack values; transforms never travel in stored data).
"""

from __future__ import annotations

import abc
import asyncio
import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from lodestore.actors import LogMessage, StoreConfig
from lodestore.storage import ConfigError, LodestoreError, Scheduler, Server, Timer

__all__ = ["DataLayer", "Design", "DesignError", "LayerCounters", "ReplayChanges", "check_options", "read_values",
           "FOREVER_MS"]

FOREVER_MS = 10 ** 12
"""How long a hold with no lock behind it lasts (`report`'s default): until its server lets go of it."""


class DesignError(LodestoreError):
    """A design could not do what was asked: `reason` is a short stable name ("NotLoaded", "SaveFailed",
    "LockHeld", "QueueFull", ...) the simulator's report counts by; the message says which key and why."""

    def __init__(self, message: str = "", reason: str = "DesignError") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (str(self), self.reason))


@dataclass
class LayerCounters:
    """What one layer did over its life; summed over a run's servers in the report."""

    loads: int = 0
    load_failures: int = 0
    saves: int = 0               # writes that landed (forced, autosave, final)
    save_failures: int = 0
    saves_skipped: int = 0       # autosaves with nothing changed
    lock_waits: int = 0          # loads that found the key held and waited or retried
    lock_steals: int = 0         # loads that took the key from another session
    at_risk_ms: int = 0          # player-milliseconds of changes in memory not yet saved (lost on a crash)

    def add(self, other: "LayerCounters") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class DataLayer(abc.ABC):
    """One simulated game server's player data, kept the way one design keeps it (see the module docstring).

    Subclasses call `changed(key)` after an update changed the data, `saved(key, since)` when a save of what was in
    memory at `since` landed, and `report(...)` for session holds; the base keeps the counters and data at risk.
    """

    cancels_loads: bool = False
    """True when `unload(key)` during a `load(key)` stops the load (which then raises); otherwise a player who
    leaves while loading is unloaded once the load ends."""

    down: bool = False
    """The server crashed or closed: nothing runs or is written any more (`check_up` refuses every call)."""

    transactions: bool = False
    """True when trades run as one atomic transaction (the coordinator's 2PC); otherwise the simulator plays a trade
    as its users do: two separate updates, each saved by its own server."""

    def __init__(self, server: Server, scheduler: Scheduler, config: StoreConfig) -> None:
        self.server = server       # the game server's storage clients (`GameServer.storage`)
        self.scheduler = scheduler
        self.config = config
        self.counters = LayerCounters()
        self._dirty: dict[str, int] = {}     # key -> when its oldest unsaved change was made
        self._timer: Timer | None = None     # the background timer armed last (autosave, refresh)
        self._tasks: set[asyncio.Task] = set()   # background work running

    # --------------------------------------------------------------------------------------- the contract

    @abc.abstractmethod
    async def load(self, key: str) -> None: ...

    @abc.abstractmethod
    async def update(self, key: str, fn: Callable[[dict], bool]) -> bool: ...

    @abc.abstractmethod
    async def save(self, key: str) -> None: ...

    @abc.abstractmethod
    async def unload(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def is_loaded(self, key: str) -> bool: ...

    async def close(self) -> None:
        """BindToClose's end, after every player left."""

    @abc.abstractmethod
    def crash(self) -> None: ...

    async def stall(self, seconds: float) -> None:
        """A fault: the server stops renewing what it holds for `seconds` but keeps running. Designs that renew
        nothing (no lock, or a lock renewed only by saves) ignore it."""

    async def totals(self) -> dict[str, int]:
        """The counters over the layer's life (`LayerCounters` fields), plus "throttled" (requests its own budget
        gates throttled, beyond the game server's client) and "key_actors" (actors that held its sessions)."""
        return {**dataclasses.asdict(self.statistics()), "throttled": 0, "key_actors": 0}

    async def live(self) -> tuple[int, list[str]]:
        """Now: the budget tokens the layer's own gates hold, and its latest errors (for the report)."""
        return 0, []

    def statistics(self) -> LayerCounters:
        """The counters so far, data at risk up to now included."""
        out = dataclasses.replace(self.counters)
        now = self.scheduler.now()
        out.at_risk_ms += sum(now - since for since in self._dirty.values())
        return out

    # ------------------------------------------------------------------------------------------ bookkeeping

    def arm(self, seconds: float, fn: Callable[[], Any]) -> None:
        """Run `fn` in `seconds` on the layer's background timer (autosave, refresh); `halt` cancels it."""
        self._timer = self.scheduler.call_later(seconds, fn)

    def spawn(self, coro: Any) -> asyncio.Task:
        """Run `coro` as the layer's background work (an autosave round, a queued request); `halt` cancels it."""
        task = self.scheduler.spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def halt(self, cancel_work: bool = True) -> None:
        """The server is down: nothing more starts (`check_up` refuses), the timer is cancelled, and the background
        work too unless `cancel_work` is False (BindToClose lets it end)."""
        self.down = True
        if self._timer is not None:
            self._timer.cancel()
        if cancel_work:
            for task in list(self._tasks):
                task.cancel()

    def check_up(self) -> None:
        """Refuse a call on a server that is down (reason "ServerGone")."""
        if self.down:
            raise DesignError(f"server {self.server.job_id!r} is down", "ServerGone")

    def not_loaded(self, key: str) -> DesignError:
        """The error for a call on a key this server holds no live session of (reason "NotLoaded")."""
        return DesignError(f"key {key!r} is not loaded on server {self.server.job_id!r}", "NotLoaded")

    def now(self) -> int:
        return self.scheduler.now()

    def changed(self, key: str) -> None:
        """An update changed `key`'s data in memory: it is at risk from now until a save of it lands."""
        self._dirty.setdefault(key, self.now())

    def saved(self, key: str, since: int) -> None:
        """A save holding every change made before `since` (when the saved copy was taken) landed."""
        self.counters.saves += 1
        self.durable(key, since)

    def durable(self, key: str, since: int) -> None:
        """Every change of `key` made before `since` is durable now (a save counted elsewhere landed)."""
        dirty = self._dirty.get(key)
        if dirty is not None and dirty <= since:
            self.counters.at_risk_ms += self.now() - dirty
            del self._dirty[key]

    def forget(self, key: str) -> None:
        """The session ended: changes still unsaved are gone, and were at risk until now."""
        dirty = self._dirty.pop(key, None)
        if dirty is not None:
            self.counters.at_risk_ms += self.now() - dirty

    def forget_all(self) -> None:
        for key in list(self._dirty):
            self.forget(key)

    def report(self, kind: str, key: str, session: str, until_ms: int | None = None,
               at_ms: int | None = None) -> None:
        """Tell the observer about a session's hold on `key` (see `StoreConfig.lock_callback`), as of `at_ms`
        (default now): held up to `until_ms` (default: `FOREVER_MS` on, a hold that ends only when its server
        says so)."""
        callback = self.config.lock_callback
        if callback is not None:
            at = self.now() if at_ms is None else at_ms
            callback(kind, key, session, at, at + FOREVER_MS if until_ms is None else until_ms)

    def log(self, level: str, message: str) -> None:
        """A warning or error for the report's log counts (`StoreConfig.log_callback`)."""
        callback = self.config.log_callback
        if callback is not None:
            callback(LogMessage(level, message))

    def template(self) -> dict:
        """A fresh copy of the data a new key starts with."""
        return copy.deepcopy(self.config.template)


@dataclass(frozen=True)
class Design:
    """A design in the registry: its name, what it is, its own settings (a frozen dataclass built from
    `[store.<name>]` by `check_options`), how a game server opens it, and how a tool reads back what it stored.

    - `open(game, scheduler, config, options) -> DataLayer` (a coroutine): the layer of one game server (a
      `lodestore.GameServer`: most designs use only its storage clients, `game.storage`).
    - `read(reader, scheduler, config, options, keys) -> {key: data or None}` (a coroutine): the stored data of
      `keys` as a load would see it, through `reader`, a server outside every budget (the checkers' final read).
    - `transactions`: whether trades are atomic; `lock`: how it keeps two servers off one key, in a few words.
    """

    name: str
    summary: str
    options: type
    open: Callable[[Any, Scheduler, StoreConfig, Any], Awaitable[DataLayer]]
    read: Callable[[Server, Scheduler, StoreConfig, Any, list[str]], Awaitable[dict[str, Any]]]
    transactions: bool = False
    lock: str = "none"
    leased: bool = False
    """Its locks are leases kept alive by refreshes on a timer: a lock lost where no fault stalled its server is
    a bug of the store or of the harness, and the run is inconclusive. Another design loses a session by its own
    rules (a newer session took it, a steal), which is a result the checkers judge."""


@dataclass(frozen=True)
class ReplayChanges:
    """An UpdateAsync transform that replays one server's changes since its last save (`fn(data) -> bool` each)
    on the stored value, or on `template` when there is none: the basics page's "modify oldData safely", as the
    naive design's and elite's "update" saves write it."""

    changes: tuple
    template: dict

    def __call__(self, old: Any, _info: Any = None) -> Any:
        data = copy.deepcopy(old) if isinstance(old, dict) else copy.deepcopy(self.template)
        for fn in self.changes:
            fn(data)
        return data


async def read_values(reader: Server, scheduler: Scheduler, config: StoreConfig, options: Any,
                      keys: list[str]) -> dict[str, Any]:
    """A `Design.read` for designs that store the player's data as the value itself, under the store's name:
    each key's current value (None when absent), read past the 4 s cache."""
    store = reader.datastores.get_data_store(config.name)
    out = {}
    for key in keys:
        value, _ = await store.aio.get(key, False)
        out[key] = value
    return out


def check_options(design: Design, table: Mapping[str, Any] | None, where: str) -> Any:
    """`design`'s options from a `[store.<name>]` table: unknown keys and wrong types raise ConfigError naming
    `where.key`, the expected type and what was received."""
    table = dict(table or {})
    fields = {f.name: f for f in dataclasses.fields(design.options)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown option of design {design.name!r} (known: "
                          f"{', '.join(sorted(fields)) or 'none'})", field=f"{where}.{unknown[0]}")
    defaults = design.options()
    for name, value in table.items():
        want = type(getattr(defaults, name))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            table[name] = value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(f"{where}.{name}: must be {want.__name__}, got {value!r} ({type(value).__name__})",
                              field=f"{where}.{name}")
    try:
        return design.options(**table)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field or ''}: {exc}", field=f"{where}.{exc.field or ''}") from None
