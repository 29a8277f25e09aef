"""The scenario model of `lodestore simulate SCENARIO.toml`: parse and validate one TOML file into frozen dataclasses.

Owns: the shape of a scenario file (its sections, keys, types, ranges and defaults) and every check on it.
Every bad input raises `storage.ConfigError` whose message starts with the source, then the dotted TOML path of
the bad field, then what was expected and what was received, e.g.
``quickstart.toml: players.actions_per_minute.trade: must be a number >= 0, got -1``.
Unknown sections and keys are refused and the message lists the known ones. The `[store]` section is checked by
building the player store's `StoreConfig` (`store_config`), so a scenario is refused for exactly what
`GameServer.create_store` would refuse, under the field's dotted path, before anything starts.

Bounds (`LIMITS`) keep a run within what one machine can hold: a scenario beyond them is refused, naming the field,
the bound and why, rather than started and left to hang or eat memory.

Never does: start Ray, touch a store, read any file but the scenario itself, or resolve `world.path`
(it is kept exactly as written; the runner decides what it is relative to).

Sections and defaults (every key is optional; an empty file is a valid scenario):

``[world]``
    name = "sim" (1-40 letters, digits, '_', '.', '-'; not starting with '.'; it names the world and the run's
    directory, never a path); backend = "sqlite" ("sqlite" | "memory"); path = absent (None);
    time_scale = absent (None: the run goes as fast as the machine allows, its outcome the same either way; a
    number > 0 paces it at that many simulated seconds per wall second, for someone watching live); duration = 600 (simulated seconds, > 0, at most
    30 days);
    seed = 1 (int); budget = "current" ("current" | "legacy" | "none");
    placement = "per-server" ("per-server" | "per-key"); shards = 1 (int 1..64);
    storage = "driver" ("driver": every shard on the driver's node, one file | "spread": shard i on the i-th node).
``[servers]``
    count = 4 (1..10,000); max_players = 50 (1..700, Roblox's largest server); start_rate = 0, stop_rate = 0,
    crash_rate = 0 (per-step probabilities); shutdown_window = 30 (seconds 0..30, Roblox's BindToClose limit);
    step = 1 (simulated seconds per step, >= 0.1; at most 2,000,000 steps in a run).
``[players]``
    population = 100 (1..1,000,000); join_rate = 0.1, leave_rate = 0.01, teleport_rate = 0 (per-step probabilities).
``[players.actions_per_minute]``
    coins = 6, grant_item = 1, purchase = 0.2, trade = 0.5, hot_key = 0 (numbers 0..600, per player per
    simulated minute). hot_key > 0 needs hot_keys.count > 0. population x their sum x duration (the most actions
    the run can plan) is at most 10,000,000: the history keeps every action for the checkers.
``[store]``
    name = "players" (1-32 characters, no '/'); template = {coins = 100, items = []} (a table of
    JSON-like values, storable as a record; `coins` an integer >= 0, `items` and `ledger` arrays, when given);
    migrations = [] (unique names); autosave_interval = 300, lock_ttl = 90, lock_refresh = 60 (seconds,
    lock_refresh < lock_ttl, within `StoreConfig`'s bounds); design = "lyra" (a name in `sim.designs.DESIGNS`:
    lyra, naive, datastorer, elite, atomicstore, profilestore).
``[store.<design>]``
    that design's own options (its options dataclass in `sim.designs`: unknown keys and wrong types are refused);
    tables for designs other than the one chosen are kept, checked, and used by `lodestore compare`.
``[hot_keys]``
    count = 0 (0..10,000); kinds = ["counter"] (non-empty, unique, each "guild" | "counter").
``[[faults]]`` (zero to 1,000 windows, each must set at least one fault)
    start, end (required; simulated seconds, 0 <= start < end, start < world.duration);
    error_rate = {} (request type -> probability; types in `REQUEST_TYPES`); latency_ms = absent
    ({min, max}, 0 <= min <= max <= 600,000); outage = false; ambiguous_write_rate = 0, server_crash_rate = 0,
    lock_stall_rate = 0 (probabilities); memorystore_error_rate = {} (MemoryStore structure kind or operation ->
    probability; keys in `storage.MEMORYSTORE_FAULT_KEYS`: "HashMap", "SortedMap", "Queue", "HashMapSet", ...; a
    failed operation gets Roblox's InternalError); memorystore_outage = false (the MemoryStore fails every operation
    in the window).
``[latency]``
    hop_ms = 50 (one-way network time of every message between a game server and the cloud, simulated ms 1..10,000).
``[latency.datastore]``
    the modelled service time of every DataStore request, whatever the faults (a fault window's latency adds to it):
    keys "default" or a request type (`RequestType` values: `REQUEST_TYPES` and RemoveVersion), "default" applying
    to every type not named; each value exactly one shape: {fixed = ms}, {min = ms, max = ms} (uniform, min <= max)
    or {median = ms, sigma = 0..3} (lognormal), every number finite, >= 0 and <= 600,000 ms. Defaults (roughly
    Roblox's): the read types (StandardRead, StandardList, OrderedRead, OrderedList) {median = 60, sigma = 0.5},
    the write and remove types {median = 120, sigma = 0.5}.
``[latency.memorystore]``
    default = {min = 0, max = 10} (the service time of every MemoryStore operation; one shape as above; "default" is
    its only key).
    Every draw is capped at 10,000 ms, or at the latency's own fixed or max when that is longer (a lognormal whose
    median is longer, at 600,000 ms). `datastore_latency` and `memorystore_latency` give the resolved latencies.
``[messaging]``
    delay = {min = 1000, max = 2000} (how long a MessagingService message takes to reach one subscribing server,
    simulated ms, one latency shape as in `[latency.datastore]`; Roblox says "typically within 1-2 seconds");
    drop_rate = 0 (the probability that a message is lost on its way to one server: delivery is best effort).
``[thresholds]``
    metric = at most (numbers >= 0; metrics in `THRESHOLDS`, e.g. lost_writes = 0, p99_load_ms = 2000): a run or a
    comparison that exceeds one exits 1, as a load tester's thresholds do.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lodestore.actors import MAX_LOCK_TTL_S, MIN_PERIOD_S, StoreConfig
from lodestore.sim.designs import DESIGNS, check_options, design
from lodestore.storage import MEMORYSTORE_FAULT_KEYS, ConfigError, Latency, RequestType

__all__ = [
    "REQUEST_TYPES",
    "THRESHOLDS",
    "design_summary",
    "WorldSection",
    "Servers",
    "ActionRates",
    "Players",
    "StoreSection",
    "HotKeys",
    "LatencyRange",
    "FaultWindow",
    "LatencySection",
    "MessagingSection",
    "Scenario",
    "load_scenario",
    "parse_scenario",
    "store_config",
    "datastore_latency",
    "memorystore_latency",
    "LIMITS",
    "scenario_toml",
]

REQUEST_TYPES: tuple[str, ...] = (
    "StandardRead", "StandardWrite", "StandardRemove", "StandardList",
    "OrderedRead", "OrderedWrite", "OrderedRemove", "OrderedList",
)
"""DataStore request types a fault window's `error_rate` may name."""

LIMITS: dict[str, tuple[float, str]] = {
    "world.duration": (30 * 86_400, "30 days of simulated time; longer is a typo, not a study"),
    "servers.count": (10_000, "each server is a GameServer with its own store and budget in a host's memory"),
    "servers.max_players": (700, "Roblox's largest server size"),
    "servers.shutdown_window": (30, "Roblox gives BindToClose 30 seconds"),
    "players.population": (1_000_000, "every player is planned, and read back from storage for the checks"),
    "players.actions_per_minute": (600, "ten actions a second per player, per kind"),
    "hot_keys.count": (10_000, "every hot key is read back from storage for the checks"),
    "faults": (1_000, "fault windows are looked up on every step"),
    "latency_ms": (600_000, "ten minutes added to one request"),
    "latency": (600_000, "ten minutes for one request"),
    "latency.hop_ms": (10_000, "ten seconds each way between a game server and the cloud"),
    "steps": (2_000_000, "each step is a turn of the planner and of every host, even when nothing happens"),
    "actions": (10_000_000, "the history keeps every action for the checkers, about 200 bytes each"),
}
"""Upper bounds of a scenario, by what they bound: (bound, why)."""

MIN_STEP_S = MIN_PERIOD_S
"""The shortest `servers.step`, the store's shortest period (0.1 s): timers run in whole milliseconds, and at 100 ms
rounding moves a step by at most 1%."""

_WORLD_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,39}$")


def _default_template() -> dict[str, Any]:
    return {"coins": 100, "items": []}


@dataclass(frozen=True)
class WorldSection:
    """`[world]`: identity, backend, clock, randomness and placement of the whole simulation."""

    name: str = "sim"
    backend: str = "sqlite"
    path: str | None = None
    time_scale: float | None = None   # None: as fast as the machine goes; a number paces the run to wall time
    duration: float = 600.0
    seed: int = 1
    budget: str = "current"
    placement: str = "per-server"
    shards: int = 1
    storage: str = "driver"


@dataclass(frozen=True)
class Servers:
    """`[servers]`: how many game servers, their size and per-step start/stop/crash probabilities."""

    count: int = 4
    max_players: int = 50
    start_rate: float = 0.0
    stop_rate: float = 0.0
    crash_rate: float = 0.0
    shutdown_window: float = 30.0
    step: float = 1.0


@dataclass(frozen=True)
class ActionRates:
    """`[players.actions_per_minute]`: mean actions per player per simulated minute, by kind."""

    coins: float = 6.0
    grant_item: float = 1.0
    purchase: float = 0.2
    trade: float = 0.5
    hot_key: float = 0.0


@dataclass(frozen=True)
class Players:
    """`[players]`: the player population, per-step join/leave/teleport probabilities and action rates."""

    population: int = 100
    join_rate: float = 0.1
    leave_rate: float = 0.01
    teleport_rate: float = 0.0
    actions_per_minute: ActionRates = field(default_factory=ActionRates)


@dataclass(frozen=True)
class StoreSection:
    """`[store]`: the player profile store: name, template, migrations, autosave and session-lock timing.

    `template` is a fresh copy of the TOML table; treat it as read-only.
    """

    name: str = "players"
    template: dict[str, Any] = field(default_factory=_default_template)
    migrations: tuple[str, ...] = ()
    autosave_interval: float = 300.0
    lock_ttl: float = 90.0
    lock_refresh: float = 60.0
    design: str = "lyra"
    designs: dict[str, dict[str, Any]] = field(default_factory=dict)   # `[store.<design>]` tables, as written

    def design_options(self, name: str | None = None) -> Any:
        """The options of design `name` (default: this scenario's design) from its `[store.<name>]` table."""
        name = name or self.design
        return check_options(design(name), self.designs.get(name), f"store.{name}")


THRESHOLDS = ("failed_checks", "lost_writes", "duplicated_writes", "duplicated_items", "coins_created",
              "coins_destroyed", "negative_balances", "overlapping_sessions", "load_failures",
              "data_at_risk_player_s", "throttled", "datastore_requests", "memorystore_requests",
              "p50_load_ms", "p99_load_ms", "p50_save_ms", "p99_save_ms", "p50_trade_ms", "p99_trade_ms")
"""What `[thresholds]` may bound (each "at most"): see `sim._metrics.metrics` for how each is measured."""


@dataclass(frozen=True)
class HotKeys:
    """`[hot_keys]`: how many shared, heavily written keys exist and which kinds they cycle through."""

    count: int = 0
    kinds: tuple[str, ...] = ("counter",)


@dataclass(frozen=True)
class LatencyRange:
    """`latency_ms` of a fault window: added latency drawn uniformly from [min, max] milliseconds."""

    min: float
    max: float


@dataclass(frozen=True)
class FaultWindow:
    """One `[[faults]]` entry: faults active for simulated time `start <= t < end`.

    `error_rate` maps a request type (see `REQUEST_TYPES`) to a failure probability; treat it as read-only.
    `lock_stall_rate` is the probability a session-lock holder stops refreshing but keeps running.
    `memorystore_error_rate` maps a MemoryStore structure kind or operation (`storage.MEMORYSTORE_FAULT_KEYS`) to a
    failure probability; `memorystore_outage` fails every MemoryStore operation of the window.
    """

    start: float
    end: float
    error_rate: dict[str, float] = field(default_factory=dict)
    latency_ms: LatencyRange | None = None
    outage: bool = False
    ambiguous_write_rate: float = 0.0
    server_crash_rate: float = 0.0
    lock_stall_rate: float = 0.0
    memorystore_error_rate: dict[str, float] = field(default_factory=dict)
    memorystore_outage: bool = False


_READ_TYPES: tuple[str, ...] = ("StandardRead", "StandardList", "OrderedRead", "OrderedList")
"""DataStore request types that only read (a Get, a version, a listing); every other type writes or removes."""

_LATENCY_CAP_MS = 10_000.0
"""The longest draw of a modelled latency, unless the scenario's own fixed, max or median is longer (then that)."""


def _default_datastore_latency() -> dict[str, Latency]:
    """Roughly Roblox's service times: reads about 60 ms, writes and removes about 120 ms (lognormal, sigma 0.5)."""
    return {t.value: Latency.lognormal(60.0 if t.value in _READ_TYPES else 120.0, 0.5, _LATENCY_CAP_MS)
            for t in RequestType}


_DEFAULT_MEMORYSTORE_LATENCY = Latency.uniform(0.0, 10.0, _LATENCY_CAP_MS)


@dataclass(frozen=True)
class LatencySection:
    """`[latency]`: how long messages and requests take, in simulated milliseconds.

    `hop_ms` is the one-way network time of every message between a game server and the cloud; `datastore` maps
    every DataStore request type (`RequestType` values) to its service time, defaults filled in; `memorystore` is
    the service time of every MemoryStore operation. Treat `datastore` as read-only.
    """

    hop_ms: float = 50.0
    datastore: dict[str, Latency] = field(default_factory=_default_datastore_latency)
    memorystore: Latency = _DEFAULT_MEMORYSTORE_LATENCY


@dataclass(frozen=True)
class ServeSection:
    """`[serve]`: the run serves Roblox's Open Cloud API over its world while it plays (`lodestore serve`'s server,
    from a thread of the driver, where the world is). Off unless `port` is given; a served run must be paced
    (`world.time_scale`), since its clients live on the wall clock."""

    port: int | None = None
    host: str = "127.0.0.1"
    api_keys: tuple[str, ...] = ()    # each `KEY` or `KEY:permission,...` as `lodestore serve --api-key` takes them
    universe_id: int = 1


@dataclass(frozen=True)
class MessagingSection:
    """`[messaging]`: MessagingService's best-effort delivery, what `FaultConfig.messaging_delay` and
    `messaging_drop_rate` take (a steady model of the service, not a fault window: it holds the whole run)."""

    delay: Latency = Latency.uniform(1_000.0, 2_000.0, _LATENCY_CAP_MS)
    drop_rate: float = 0.0


@dataclass(frozen=True)
class Scenario:
    """A whole validated scenario; `source` is the file path, or "<string>" for `parse_scenario` text."""

    world: WorldSection = field(default_factory=WorldSection)
    servers: Servers = field(default_factory=Servers)
    players: Players = field(default_factory=Players)
    store: StoreSection = field(default_factory=StoreSection)
    hot_keys: HotKeys = field(default_factory=HotKeys)
    faults: tuple[FaultWindow, ...] = ()
    latency: LatencySection = field(default_factory=LatencySection)
    messaging: MessagingSection = field(default_factory=MessagingSection)
    thresholds: dict[str, float] = field(default_factory=dict)   # `[thresholds]`: metric -> at most
    serve: ServeSection = field(default_factory=ServeSection)
    source: str = "<string>"

    def faults_at(self, t: float) -> list[FaultWindow]:
        """The fault windows active at simulated time `t` (start <= t < end), in file order."""
        return [w for w in self.faults if w.start <= t < w.end]


# ---------------------------------------------------------------------------------------------------- parsing


class _Bad(Exception):
    """Internal: a bad field at `path`; turned into ConfigError (with the source) by `parse_scenario`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _known(table: dict[str, Any], path: str, cls: type, what: str = "key") -> None:
    known = sorted(f.name for f in dataclasses.fields(cls) if f.name != "source")
    for key in table:
        if key not in known:
            raise _Bad(_join(path, key), f"unknown {what}; known {what}s: {', '.join(known)}")


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(path, f"must be a table, {_got(value)}")
    return value


def _number(table: dict[str, Any], path: str, key: str, default: Any, *, low: float | None = None,
            low_open: bool = False, high: float | None = None) -> float:
    p = _join(path, key)
    if key not in table:
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Bad(p, f"must be a number, {_got(v)}")
    if not math.isfinite(v):
        raise _Bad(p, f"must be a finite number, got {v!r}")
    bound = ""
    if low is not None:
        bound = f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        bound = f"in {low:g}..{high:g}" if low is not None and not low_open else f"<= {high:g}"
    if (low is not None and (v <= low if low_open else v < low)) or (high is not None and v > high):
        raise _Bad(p, f"must be a number {bound}, got {v!r}")
    return float(v)


def _bound(what: str) -> tuple[str, str]:
    """The bound of `what` in `LIMITS` as text ("10,000"), and why it is there."""
    bound, why = LIMITS[what]
    return f"{int(bound):,}" if float(bound).is_integer() else f"{bound:g}", why


def _over(path: str, value: Any, what: str | None = None) -> None:
    """Refuse `value` above the bound of `what` (default `path`) in `LIMITS`, saying the bound and why."""
    if value > LIMITS[what or path][0]:
        bound, why = _bound(what or path)
        raise _Bad(path, f"must be at most {bound} ({why}), got {value!r}")


def _prob(table: dict[str, Any], path: str, key: str, default: float) -> float:
    return _number(table, path, key, default, low=0.0, high=1.0)


def _rates(t: dict[str, Any], path: str, key: str, known: tuple[str, ...], what: str, whats: str) -> dict[str, float]:
    """`t[key]`: a table of names (each one of `known`, a `what`) to probabilities; {} when absent."""
    rates: dict[str, float] = {}
    if key in t:
        p = f"{path}.{key}"
        table = _table(t[key], p)
        for name in table:
            if name not in known:
                raise _Bad(_join(p, name), f"unknown {what}; known {whats}: {', '.join(known)}")
            rates[name] = _prob(table, p, name, 0.0)
    return rates


def _bool(t: dict[str, Any], path: str, key: str) -> bool:
    value = t.get(key, False)
    if not isinstance(value, bool):
        raise _Bad(f"{path}.{key}", f"must be a boolean, {_got(value)}")
    return value


def _int(table: dict[str, Any], path: str, key: str, default: int, *, low: int | None = None,
         high: int | None = None) -> int:
    p = _join(path, key)
    if key not in table:
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Bad(p, f"must be an integer, {_got(v)}")
    if (low is not None and v < low) or (high is not None and v > high):
        bound = f"in {low}..{high}" if low is not None and high is not None else f">= {low}" if low is not None \
            else f"<= {high}"
        raise _Bad(p, f"must be an integer {bound}, got {v!r}")
    return v


def _str(table: dict[str, Any], path: str, key: str, default: Any, choices: tuple[str, ...] = ()) -> Any:
    p = _join(path, key)
    if key not in table:
        return default
    v = table[key]
    if not isinstance(v, str):
        raise _Bad(p, f"must be a string, {_got(v)}")
    if choices and v not in choices:
        raise _Bad(p, f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}")
    if not v:
        raise _Bad(p, "must be a non-empty string, got ''")
    return v


def _str_list(table: dict[str, Any], path: str, key: str, default: tuple[str, ...],
              choices: tuple[str, ...] = (), non_empty: bool = False) -> tuple[str, ...]:
    p = _join(path, key)
    if key not in table:
        return default
    v = table[key]
    if not isinstance(v, list):
        raise _Bad(p, f"must be a list of strings, {_got(v)}")
    if non_empty and not v:
        raise _Bad(p, "must be a non-empty list, got []")
    seen: list[str] = []
    for i, item in enumerate(v):
        ip = f"{p}[{i}]"
        if not isinstance(item, str) or not item:
            raise _Bad(ip, f"must be a non-empty string, {_got(item)}")
        if choices and item not in choices:
            raise _Bad(ip, f"must be one of {', '.join(repr(c) for c in choices)}, got {item!r}")
        if item in seen:
            raise _Bad(ip, f"duplicate entry {item!r}")
        seen.append(item)
    return tuple(seen)


def _json_like(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _json_like(v, _join(path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _json_like(v, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise _Bad(path, f"must be a finite number, got {value!r}")
    elif not isinstance(value, (str, int, float, bool)):
        raise _Bad(path, f"must be a string, number, boolean, array or table, {_got(value)}")


def _world_name(t: dict[str, Any]) -> str:
    name = _str(t, "world", "name", WorldSection.name)
    if not _WORLD_NAME.match(name):
        raise _Bad("world.name", f"must be 1-40 letters, digits, '_', '.' or '-', not starting with '.' (it names the "
                                 f"world and the run's directory), got {name!r}")
    return name


def _world(t: dict[str, Any]) -> WorldSection:
    _known(t, "world", WorldSection)
    d = WorldSection()
    world = WorldSection(
        name=_world_name(t),
        backend=_str(t, "world", "backend", d.backend, ("sqlite", "memory")),
        path=_str(t, "world", "path", d.path),
        time_scale=_number(t, "world", "time_scale", d.time_scale, low=0, low_open=True),
        duration=_number(t, "world", "duration", d.duration, low=0, low_open=True),
        seed=_int(t, "world", "seed", d.seed),
        budget=_str(t, "world", "budget", d.budget, ("current", "legacy", "none")),
        placement=_str(t, "world", "placement", d.placement, ("per-server", "per-key")),
        shards=_int(t, "world", "shards", d.shards, low=1, high=64),
        storage=_str(t, "world", "storage", d.storage, ("driver", "spread")),
    )
    _over("world.duration", world.duration)
    return world


def _servers(t: dict[str, Any]) -> Servers:
    _known(t, "servers", Servers)
    d = Servers()
    servers = Servers(
        count=_int(t, "servers", "count", d.count, low=1),
        max_players=_int(t, "servers", "max_players", d.max_players, low=1),
        start_rate=_prob(t, "servers", "start_rate", d.start_rate),
        stop_rate=_prob(t, "servers", "stop_rate", d.stop_rate),
        crash_rate=_prob(t, "servers", "crash_rate", d.crash_rate),
        shutdown_window=_number(t, "servers", "shutdown_window", d.shutdown_window, low=0),
        step=_number(t, "servers", "step", d.step, low=MIN_STEP_S),
    )
    for key in ("count", "max_players", "shutdown_window"):
        _over(f"servers.{key}", getattr(servers, key))
    return servers


def _players(t: dict[str, Any]) -> Players:
    _known(t, "players", Players)
    d = Players()
    apm = ActionRates()
    if "actions_per_minute" in t:
        p = "players.actions_per_minute"
        a = _table(t["actions_per_minute"], p)
        _known(a, p, ActionRates)
        apm = ActionRates(**{f.name: _number(a, p, f.name, getattr(apm, f.name), low=0)
                             for f in dataclasses.fields(ActionRates)})
        for f in dataclasses.fields(ActionRates):
            _over(f"{p}.{f.name}", getattr(apm, f.name), "players.actions_per_minute")
    _over("players.population", _int(t, "players", "population", d.population, low=1))
    return Players(
        population=_int(t, "players", "population", d.population, low=1),
        join_rate=_prob(t, "players", "join_rate", d.join_rate),
        leave_rate=_prob(t, "players", "leave_rate", d.leave_rate),
        teleport_rate=_prob(t, "players", "teleport_rate", d.teleport_rate),
        actions_per_minute=apm,
    )


_GAME_FIELDS = {"coins": int, "items": list, "ledger": list}   # what the simulated game reads in a profile


def _template(t: dict[str, Any]) -> dict[str, Any]:
    if "template" not in t:
        return _default_template()
    template = copy.deepcopy(_table(t["template"], "store.template"))
    _json_like(template, "store.template")
    for key, kind in _GAME_FIELDS.items():
        if key in template and (isinstance(template[key], bool) or not isinstance(template[key], kind)
                                or (kind is int and template[key] < 0)):
            what = "an integer >= 0" if kind is int else "an array"
            raise _Bad(f"store.template.{key}", f"must be {what} (the simulated game plays with it), "
                                                f"{_got(template[key])}")
    return template


def _store(t: dict[str, Any]) -> StoreSection:
    tables = {k: v for k, v in t.items() if k in DESIGNS}
    t = {k: v for k, v in t.items() if k not in DESIGNS}
    _known({k: v for k, v in t.items() if k != "designs"}, "store", StoreSection)
    if "designs" in t:
        raise _Bad("store.designs", f"unknown key; a design's options go in [store.<design>] ({', '.join(DESIGNS)})")
    d = StoreSection()
    name = _str(t, "store", "design", d.design)
    if name not in DESIGNS:
        raise _Bad("store.design", f"must be one of {', '.join(DESIGNS)}, got {name!r}")
    for key, table in tables.items():
        _table(table, f"store.{key}")
        try:
            check_options(DESIGNS[key], table, f"store.{key}")
        except ConfigError as exc:
            where = exc.field or f"store.{key}"
            raise _Bad(where, str(exc).removeprefix(f"{where}: ")) from None
    lock_ttl = _number(t, "store", "lock_ttl", d.lock_ttl, low=0, low_open=True)
    lock_refresh = _number(t, "store", "lock_refresh", d.lock_refresh, low=0, low_open=True)
    if lock_refresh >= lock_ttl:
        raise _Bad("store.lock_refresh", f"must be < store.lock_ttl ({lock_ttl:g}), got {lock_refresh:g}")
    return StoreSection(
        name=_str(t, "store", "name", d.name),
        template=_template(t),
        migrations=_str_list(t, "store", "migrations", d.migrations),
        autosave_interval=_number(t, "store", "autosave_interval", d.autosave_interval, low=0, low_open=True),
        lock_ttl=lock_ttl,
        lock_refresh=lock_refresh,
        design=name,
        designs={k: dict(v) for k, v in tables.items()},
    )


def _thresholds(t: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key in t:
        if key not in THRESHOLDS:
            raise _Bad(f"thresholds.{key}", f"unknown threshold; known: {', '.join(THRESHOLDS)}")
        out[key] = _number(t, "thresholds", key, None, low=0)
    return out


def _serve(t: dict[str, Any], world: WorldSection) -> ServeSection:
    _known(t, "serve", ServeSection)
    d = ServeSection()
    serve = ServeSection(port=_int(t, "serve", "port", d.port, low=1, high=65535),
                         host=_str(t, "serve", "host", d.host),
                         api_keys=_str_list(t, "serve", "api_keys", d.api_keys),
                         universe_id=_int(t, "serve", "universe_id", d.universe_id, low=1))
    if serve.port is None and len(t) > 0:
        raise _Bad("serve.port", "must be given for the run to serve (the other [serve] keys apply to it)")
    if serve.port is not None and world.time_scale is None:
        raise _Bad("serve.port", "needs world.time_scale: a served run is paced, since its Open Cloud clients live "
                                 "on the wall clock (time_scale = 1 is real time)")
    return serve


def design_summary(scenario: "Scenario") -> dict[str, Any]:
    """The design a scenario runs, for its report: name, options, whether trades are atomic, how it locks."""
    chosen = design(scenario.store.design)
    options = scenario.store.design_options()
    lock_kind = getattr(options, "lock_kind", None)
    return {"name": chosen.name, "summary": chosen.summary, "options": dataclasses.asdict(options),
            "transactions": chosen.transactions, "lock": lock_kind() if callable(lock_kind) else chosen.lock,
            "trades": "one transaction (2PC)" if chosen.transactions else
                      "two separate updates, each saved by its own server (no transactions)"}


# StoreConfig's field -> where the scenario sets it
_STORE_PATHS = {"name": "store.name", "template": "store.template", "migrations": "store.migrations",
                "autosave_interval": "store.autosave_interval", "lock_ttl": "store.lock_ttl",
                "lock_refresh": "store.lock_refresh", "lock_wait": "store.lock_ttl", "placement": "world.placement"}


def store_config(scenario: "Scenario", **extra: Any) -> StoreConfig:
    """The player store's configuration from the scenario's `[store]` section. Migrations named in the scenario are
    steps that mark the data with their name (they prove migrations run under load; TOML carries no code)."""
    st = scenario.store
    template = {"coins": 0, "items": [], "ledger": [], **st.template}
    migrations = tuple((name, _MarkMigrated(name)) for name in st.migrations)
    return StoreConfig(st.name, template, migrations=migrations, autosave_interval=st.autosave_interval,
                       lock_ttl=st.lock_ttl, lock_refresh=st.lock_refresh,
                       lock_wait=min(st.lock_ttl + st.lock_refresh, MAX_LOCK_TTL_S),
                       placement=scenario.world.placement, **extra)


@dataclass(frozen=True)
class _MarkMigrated:
    name: str

    def __call__(self, data: Any) -> Any:
        return {**data, "migrated": sorted(set(data.get("migrated", [])) | {self.name})}


def _check_store(scenario: "Scenario") -> None:
    """Refuse what `create_store` would refuse, under the scenario's own name for the field."""
    try:
        store_config(scenario)
    except ConfigError as exc:
        raise _Bad(_STORE_PATHS.get(exc.field or "", "store"), str(exc)) from None


def _hot_keys(t: dict[str, Any]) -> HotKeys:
    _known(t, "hot_keys", HotKeys)
    d = HotKeys()
    hot_keys = HotKeys(
        count=_int(t, "hot_keys", "count", d.count, low=0),
        kinds=_str_list(t, "hot_keys", "kinds", d.kinds, ("guild", "counter"), non_empty=True),
    )
    _over("hot_keys.count", hot_keys.count)
    return hot_keys


def _fault(t: dict[str, Any], path: str, duration: float) -> FaultWindow:
    _known(t, path, FaultWindow)
    for key in ("start", "end"):
        if key not in t:
            raise _Bad(_join(path, key), "is required")
    start = _number(t, path, "start", 0.0, low=0)
    end = _number(t, path, "end", 0.0, low=0)
    if start >= end:
        raise _Bad(f"{path}.start", f"must be < {path}.end ({end:g}), got {start:g}")
    if start >= duration:
        raise _Bad(f"{path}.start", f"must be < world.duration ({duration:g}), got {start:g}")
    error_rate = _rates(t, path, "error_rate", REQUEST_TYPES, "request type", "request types")
    latency = None
    if "latency_ms" in t:
        lp = f"{path}.latency_ms"
        lt = _table(t["latency_ms"], lp)
        _known(lt, lp, LatencyRange)
        for key in ("min", "max"):
            if key not in lt:
                raise _Bad(_join(lp, key), "is required")
        lo = _number(lt, lp, "min", 0.0, low=0)
        hi = _number(lt, lp, "max", 0.0, low=0)
        if lo > hi:
            raise _Bad(f"{lp}.min", f"must be <= {lp}.max ({hi:g}), got {lo:g}")
        _over(f"{lp}.max", hi, "latency_ms")
        latency = LatencyRange(lo, hi)
    outage, memorystore_outage = (_bool(t, path, key) for key in ("outage", "memorystore_outage"))
    memorystore_error_rate = _rates(t, path, "memorystore_error_rate", MEMORYSTORE_FAULT_KEYS,
                                    "MemoryStore structure kind or operation", "kinds and operations")
    window = FaultWindow(
        start=start, end=end, error_rate=error_rate, latency_ms=latency, outage=outage,
        ambiguous_write_rate=_prob(t, path, "ambiguous_write_rate", 0.0),
        server_crash_rate=_prob(t, path, "server_crash_rate", 0.0),
        lock_stall_rate=_prob(t, path, "lock_stall_rate", 0.0),
        memorystore_error_rate=memorystore_error_rate, memorystore_outage=memorystore_outage,
    )
    if not (window.outage or window.latency_ms or any(window.error_rate.values()) or window.ambiguous_write_rate
            or window.server_crash_rate or window.lock_stall_rate or any(window.memorystore_error_rate.values())
            or window.memorystore_outage):
        raise _Bad(path, "sets no fault; give at least one of error_rate, latency_ms, outage, "
                         "ambiguous_write_rate, server_crash_rate, lock_stall_rate, memorystore_error_rate, "
                         "memorystore_outage")
    return window



_LATENCY_SHAPES = (("fixed",), ("min", "max"), ("median", "sigma"))
_LATENCY_KEYS = sorted(k for shape in _LATENCY_SHAPES for k in shape)
_SHAPES_TEXT = "{fixed}, {min, max} or {median, sigma}"


def _latency(value: Any, path: str) -> Latency:
    """One latency of `[latency]`: exactly one of {fixed}, {min, max} (uniform), {median, sigma} (lognormal)."""
    t = _table(value, path)
    for key in t:
        if key not in _LATENCY_KEYS:
            raise _Bad(_join(path, key), f"unknown key; known keys: {', '.join(_LATENCY_KEYS)} (one shape of "
                                         f"{_SHAPES_TEXT})")
    shapes = [shape for shape in _LATENCY_SHAPES if any(k in t for k in shape)]
    if len(shapes) != 1:
        given = f"got {', '.join(sorted(t))}" if t else "got an empty table"
        raise _Bad(path, f"must be exactly one shape of {_SHAPES_TEXT}, {given}")
    shape = shapes[0]
    for key in shape:
        if key not in t:
            raise _Bad(_join(path, key), f"is required with {', '.join(k for k in shape if k != key)}")
    if shape == ("fixed",):
        ms = _ms(t, path, "fixed")
        return Latency.fixed(ms, max(_LATENCY_CAP_MS, ms))
    if shape == ("median", "sigma"):
        median = _ms(t, path, "median")
        # a cap at a longer median would turn half the draws into the median: cap at the bound instead
        cap = _LATENCY_CAP_MS if median <= _LATENCY_CAP_MS else float(LIMITS["latency"][0])
        return Latency.lognormal(median, _number(t, path, "sigma", 0.0, low=0, high=3), cap)
    lo, hi = _ms(t, path, "min"), _ms(t, path, "max")
    if lo > hi:
        raise _Bad(_join(path, "min"), f"must be <= {_join(path, 'max')} ({hi:g}), got {lo:g}")
    return Latency.uniform(lo, hi, max(_LATENCY_CAP_MS, hi))


def _ms(t: dict[str, Any], path: str, key: str) -> float:
    """A service time in simulated ms: a finite number >= 0, at most `LIMITS["latency"]`."""
    ms = _number(t, path, key, 0.0, low=0)
    _over(_join(path, key), ms, "latency")
    return ms


def _latencies(value: Any, path: str, known: tuple[str, ...]) -> dict[str, Latency]:
    """A table of `[latency]` whose keys are "default" or one of `known`, each a latency."""
    t = _table(value, path)
    for key in t:
        if key != "default" and key not in known:
            what = "request type" if known else "key"
            raise _Bad(_join(path, key), f"unknown {what}; known {what}s: {', '.join(('default',) + known)}")
    return {key: _latency(v, _join(path, key)) for key, v in t.items()}


def _latency_section(t: dict[str, Any]) -> LatencySection:
    _known(t, "latency", LatencySection)
    d = LatencySection()
    hop_ms = _number(t, "latency", "hop_ms", d.hop_ms, low=1)
    _over("latency.hop_ms", hop_ms)
    datastore = dict(d.datastore)
    if "datastore" in t:
        given = _latencies(t["datastore"], "latency.datastore", tuple(r.value for r in RequestType))
        default = given.pop("default", None)
        datastore = {name: given.get(name, default or built_in) for name, built_in in d.datastore.items()}
    memorystore = d.memorystore
    if "memorystore" in t:
        memorystore = _latencies(t["memorystore"], "latency.memorystore", ()).get("default", memorystore)
    return LatencySection(hop_ms=hop_ms, datastore=datastore, memorystore=memorystore)


def datastore_latency(scenario: "Scenario") -> dict[str, Latency]:
    """The modelled service time of every DataStore request type (`RequestType` value -> Latency): the scenario's
    `[latency.datastore]`, its "default" for the types it does not name, the built-in defaults for the rest. It is
    what `FaultConfig.base_latency` takes.

    >>> datastore_latency(parse_scenario(""))["StandardWrite"]
    Latency(kind='lognormal', a=120.0, b=0.5, max_ms=10000.0)
    """
    return dict(scenario.latency.datastore)


def memorystore_latency(scenario: "Scenario") -> Latency:
    """The modelled service time of every MemoryStore operation: `[latency.memorystore]`'s "default", or uniform
    0..10 ms. It is what the MemoryStore shard's `set_latency` takes."""
    return scenario.latency.memorystore


def _messaging(t: dict[str, Any]) -> MessagingSection:
    _known(t, "messaging", MessagingSection)
    d = MessagingSection()
    delay = _latency(t["delay"], "messaging.delay") if "delay" in t else d.delay
    return MessagingSection(delay=delay, drop_rate=_prob(t, "messaging", "drop_rate", d.drop_rate))


def _scenario(data: dict[str, Any], source: str) -> Scenario:
    _known(data, "", Scenario, "section")
    sections = {name: _table(data[name], name)
                for name in ("world", "servers", "players", "store", "hot_keys", "latency", "messaging", "thresholds",
                             "serve")
                if name in data}
    world = _world(sections.get("world", {}))
    servers = _servers(sections.get("servers", {}))
    players = _players(sections.get("players", {}))
    store = _store(sections.get("store", {}))
    hot_keys = _hot_keys(sections.get("hot_keys", {}))
    if players.actions_per_minute.hot_key > 0 and hot_keys.count == 0:
        raise _Bad("players.actions_per_minute.hot_key",
                   f"must be 0 when hot_keys.count is 0, got {players.actions_per_minute.hot_key:g}")
    faults: list[FaultWindow] = []
    if "faults" in data:
        raw = data["faults"]
        if not isinstance(raw, list):
            raise _Bad("faults", f"must be an array of tables ([[faults]]), {_got(raw)}")
        _over("faults", len(raw))
        for i, item in enumerate(raw):
            faults.append(_fault(_table(item, f"faults[{i}]"), f"faults[{i}]", world.duration))
    latency = _latency_section(sections.get("latency", {}))
    messaging = _messaging(sections.get("messaging", {}))
    thresholds = _thresholds(sections.get("thresholds", {}))
    serve = _serve(sections.get("serve", {}), world)
    scenario = Scenario(world=world, servers=servers, players=players, store=store, hot_keys=hot_keys,
                        faults=tuple(faults), latency=latency, messaging=messaging, thresholds=thresholds,
                        serve=serve, source=source)
    _check_store(scenario)
    _check_size(scenario)
    return scenario


def _check_size(scenario: Scenario) -> None:
    """The bounds that come from several fields at once: steps in the run, and the most actions it can plan."""
    world, players = scenario.world, scenario.players
    steps = world.duration / scenario.servers.step
    if steps > LIMITS["steps"][0]:
        bound, why = _bound("steps")
        raise _Bad("servers.step", f"world.duration / servers.step is {steps:,.0f} steps, at most {bound} "
                                   f"({why}): make the step longer or the run shorter")
    per_minute = sum(getattr(players.actions_per_minute, f.name) for f in dataclasses.fields(ActionRates))
    actions = players.population * per_minute * world.duration / 60
    if actions > LIMITS["actions"][0]:
        bound, why = _bound("actions")
        raise _Bad("players.actions_per_minute", f"players.population x actions per minute x world.duration allows "
                                                 f"{actions:,.0f} actions, at most {bound} ({why}): fewer players, "
                                                 f"fewer actions or a shorter run")


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    """Parse and validate scenario TOML `text`; `source` names it in error messages and in `Scenario.source`.

    Raises ConfigError (message: ``source: dotted.path: what was expected, got what``) on any bad input,
    including TOML syntax errors (the message carries the line and column).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    try:
        return _scenario(data, source)
    except _Bad as e:
        raise ConfigError(f"{source}: {e.path}: {e.message}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read the UTF-8 TOML file at `path` and return its validated Scenario (`source` is `str(path)`).

    A missing or unreadable file raises ConfigError too.
    """
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{source}: cannot read scenario file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source}: not UTF-8 text: {e}") from None
    return parse_scenario(text, source)


# ---------------------------------------------------------------------------------------------------- writing

def scenario_toml(scenario: Scenario) -> str:
    """The scenario as TOML text that `parse_scenario` reads back to an equal scenario (its `source` aside): what a
    run keeps beside its report (`scenario.toml`), so that `lodestore replay` runs exactly it again, command-line
    overrides included."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any], array: bool = False) -> None:
        lines.append(f"[[{name}]]" if array else f"[{name}]")
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items() if v is not None)
        lines.append("")

    world = dataclasses.asdict(scenario.world)
    table("world", world)
    table("servers", dataclasses.asdict(scenario.servers))
    players = dataclasses.asdict(scenario.players)
    table("players.actions_per_minute", players.pop("actions_per_minute"))
    table("players", players)
    store = dataclasses.asdict(scenario.store)
    tables = store.pop("designs")
    table("store", store)
    for name, options in sorted(tables.items()):
        table(f"store.{name}", options)
    table("hot_keys", dataclasses.asdict(scenario.hot_keys))
    for window in scenario.faults:
        table("faults", dataclasses.asdict(window), array=True)
    latency = scenario.latency
    table("latency", {"hop_ms": latency.hop_ms})
    table("latency.datastore", {k: _latency_shape(v) for k, v in sorted(latency.datastore.items())})
    table("latency.memorystore", {"default": _latency_shape(latency.memorystore)})
    table("messaging", {"delay": _latency_shape(scenario.messaging.delay), "drop_rate": scenario.messaging.drop_rate})
    if scenario.thresholds:
        table("thresholds", dict(scenario.thresholds))
    if scenario.serve.port is not None:
        table("serve", dataclasses.asdict(scenario.serve))
    return "\n".join(lines)


def _latency_shape(latency: Latency) -> dict[str, float]:
    if latency.kind == "fixed":
        return {"fixed": latency.a}
    if latency.kind == "uniform":
        return {"min": latency.a, "max": latency.b}
    return {"median": latency.a, "sigma": latency.b}


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)   # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"no TOML for {value!r}")
