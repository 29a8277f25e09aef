"""A store's configuration: template, schema, migrations, callbacks, timings and placement, checked once.

`StoreConfig` is frozen and travels to key actors with Ray's serializer (it holds user callables); stored values
never do. Every bad field is refused with a `storage.ConfigError` whose `field` is the field's name and whose message
says what was received. Timings lie between `MIN_PERIOD_S` and `MAX_LOCK_TTL_S` (`check_seconds`, also for
`KeyHost.stall_locks`). `check_schema` says what a `schema` verdict means, for sessions and the coordinator alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from lodestore.actors._errors import SchemaError
from lodestore.actors._records import _show, check_data
from lodestore.actors._txn import MAX_STORE_NAME
from lodestore.storage import MS_MAX_EXPIRATION_S, ConfigError, DataStoreError, check_metadata

__all__ = ["StoreConfig", "Migration", "Placement", "LogMessage", "check_schema", "check_seconds", "MIN_PERIOD_S",
           "MAX_LOCK_TTL_S", "LOCK_STORES"]

MIN_PERIOD_S = 0.1
"""The shortest period a store runs anything at (autosave, lock refresh, lock TTL, transaction timeout, steal time),
in simulated seconds. Timers run in whole milliseconds: at 100 ms that rounding moves a period by at most 1%, where a
period under 1 ms would round to a 0 ms timer firing without end. Nothing in Roblox runs a data cadence faster than
a few frames anyway."""

MAX_LOCK_TTL_S = MS_MAX_EXPIRATION_S
"""The longest lock TTL, in seconds: the lock is a MemoryStore item, whose expiration is at most 45 days
(3,888,000 s). It bounds every other timing of a store too: nothing a store does waits longer than its lock can live.
A lock kept in a DataStore (`lock_store="datastore"`) has no TTL of its own, but keeps the same bound."""

LOCK_STORES = ("memorystore", "datastore")
"""Where a store keeps its session locks (`StoreConfig.lock_store`): a MemoryStore hash map item with a TTL (Lyra's
default), or a DataStore value whose expiry is read from the time written in it (Lyra PR #17, `useDSSLocking`)."""


class Placement(str, Enum):
    """How sessions map to Ray actors: one actor per simulated server (default) or one per loaded key."""

    PER_SERVER = "per-server"
    PER_KEY = "per-key"


@dataclass(frozen=True)
class Migration:
    """One named migration step: `apply(data) -> data`. Published steps are never changed, reordered or removed."""

    name: str
    apply: Callable[[Any], Any]


@dataclass(frozen=True)
class LogMessage:
    """What a store tells its `log_callback`: level ("debug", "info", "warn", "error"), text, and context."""

    level: str
    message: str
    context: dict = field(default_factory=dict)


def check_seconds(name: str, value: Any, minimum: float = MIN_PERIOD_S, maximum: float = MAX_LOCK_TTL_S) -> float:
    """`value` as float seconds when it is a real number from `minimum` to `maximum`; else ConfigError naming
    `name` (as its `field`), the bounds and what was received."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= maximum:  # NaN too
        raise ConfigError(f"{name} must be a number of seconds from {minimum:.15g} to {maximum:.15g}, got {value!r}",
                          field=name)
    return float(value)


def _callable_or_none(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be callable or None, got {type(value).__name__}", field=name)


@dataclass(frozen=True)
class StoreConfig:
    """Everything `GameServer.create_store` takes. Times are simulated seconds.

    - `template`: the data a new key starts with (JSON-compatible, and storable inside its record: see
      `records.check_data`).
    - `schema(data)`: answers exactly True, None or `(True, ...)` when data is valid; False, `(False, message...)`
      or an exception means invalid, and so does any other answer (0, "", "no", an object that is merely falsy or
      truthy): the answer is read strictly, as an update transform's is (`check_schema`).
    - `migrations`: `Migration`s or `(name, apply)` pairs, applied once each, in order.
    - `import_legacy_data(key)`: data for a key with no record yet (all migrations then run on it), or None.
    - `changed_callbacks`: each `fn(key, new_data, old_data)` after a change (on load, old_data is None).
    - `log_callback(LogMessage)`, `on_lock_lost(key)`: called where the session lives (the key actor).
    - `lock_callback(kind, key, session_id, at_ms, until_ms)`: an observer of the session lock, called where the
      session lives with kind "acquired", "refreshed", "released", "lost" or "crashed" (`KeyHost.crash`).
      `until_ms` is the time up to which the session counts itself the holder (the send time of its last landed
      lock write + `lock_ttl`); "released" and "lost" are reported at `min(now, until_ms)`. A simulator records
      lock history with it.
    - `save_callback(key, taken_at_ms)`: after a save of a session landed, or was skipped because the data equals
      what was saved last, with the time its copy of the data was taken: every change made before then is durable.
    - `metadata_template`: KeyInfo metadata written with every record; user ids come from `load(key, user_ids)`.
    - `lock_ttl`, `lock_refresh`, `lock_wait`: the lock's TTL, how often it is refreshed, and how long `load` waits
      for another holder before giving up. `lock_steal_after`: take over a lock whose holder has not refreshed it
      for that long (ProfileStore's force-load); None (default) never steals.
    - `autosave_interval`: how often a changed session is saved. `retry_attempts`: storage attempts per write.
    - `lock_partitions`: how many MemoryStore hash maps share the locks (1 is Lyra's single map). One structure
      serves 100,000 request units a minute, about 33,000 lock updates: 16 maps carry ~500,000 sessions.
    - `lock_store`: where the locks live. "memorystore" (default, Lyra's): an item of a MemoryStore hash map with TTL
      `lock_ttl`. "datastore" (Lyra PR #17): a value in DataStore `lodestore/locks/<name>` under the player's key,
      written by UpdateAsync (compare-and-set); a DataStore has no TTL, so a lock counts as expired `lock_ttl` after
      the time written in it, and a release overwrites it with a free marker. Each lock write (acquire, refresh,
      release) is a read and a write of the server's DataStore budget, a waiting acquire a read;
      `lock_partitions` does not apply (one DataStore holds every lock of the store).
    - `tx_timeout`: how long a session waits in a transaction for its coordinator before settling it itself.

    Every timing is from `MIN_PERIOD_S` (0.1 s) to `MAX_LOCK_TTL_S` (45 days, MemoryStore's longest expiration),
    except `lock_wait`, which may be 0 (try the lock once, never wait). A bad field raises ConfigError with
    `field` set to the field's name.
    """

    name: str
    template: Any
    schema: Callable[[Any], Any] | None = None
    migrations: tuple = ()
    import_legacy_data: Callable[[str], Any] | None = None
    changed_callbacks: tuple = ()
    log_callback: Callable[[LogMessage], Any] | None = None
    on_lock_lost: Callable[[str], Any] | None = None
    lock_callback: Callable[[str, str, str, int, int], Any] | None = None
    save_callback: Callable[[str, int], Any] | None = None
    metadata_template: dict | None = None
    autosave_interval: float = 300.0
    lock_ttl: float = 90.0
    lock_refresh: float = 60.0
    lock_wait: float = 90.0
    lock_steal_after: float | None = None
    retry_attempts: int = 5
    lock_partitions: int = 16
    tx_timeout: float = 60.0
    placement: Placement = Placement.PER_SERVER
    lock_store: str = "memorystore"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= MAX_STORE_NAME or "/" in self.name:
            raise ConfigError(f"store name must be 1-{MAX_STORE_NAME} characters without '/', got {self.name!r}",
                              field="name")
        try:
            check_data(self.template, what="template")
        except DataStoreError as exc:
            raise ConfigError(f"template is not storable: {exc.message}", field="template") from None
        for name in ("schema", "import_legacy_data", "log_callback", "on_lock_lost", "lock_callback", "save_callback"):
            _callable_or_none(name, getattr(self, name))
        object.__setattr__(self, "migrations", _migrations(self.migrations))
        if callable(self.changed_callbacks):
            object.__setattr__(self, "changed_callbacks", (self.changed_callbacks,))
        if not isinstance(self.changed_callbacks, (tuple, list)) or not all(map(callable, self.changed_callbacks)):
            raise ConfigError(f"changed_callbacks must be a sequence of callables, got {self.changed_callbacks!r:.80}",
                              field="changed_callbacks")
        object.__setattr__(self, "changed_callbacks", tuple(self.changed_callbacks))
        if self.metadata_template is not None:
            try:
                check_metadata(self.metadata_template)
            except DataStoreError as exc:
                raise ConfigError(f"metadata_template: {exc.message}", field="metadata_template") from None
        for name in ("autosave_interval", "lock_ttl", "lock_refresh", "tx_timeout"):
            object.__setattr__(self, name, check_seconds(name, getattr(self, name)))
        object.__setattr__(self, "lock_wait", check_seconds("lock_wait", self.lock_wait, minimum=0))
        if self.lock_refresh >= self.lock_ttl:
            raise ConfigError(f"lock_refresh ({self.lock_refresh:g} s) must be shorter than lock_ttl "
                              f"({self.lock_ttl:g} s), or the lock expires between refreshes", field="lock_refresh")
        if self.lock_steal_after is not None:
            object.__setattr__(self, "lock_steal_after", check_seconds("lock_steal_after", self.lock_steal_after))
        _check_int("retry_attempts", self.retry_attempts, 1, 20)
        _check_int("lock_partitions", self.lock_partitions, 1, 1024)
        try:
            object.__setattr__(self, "placement", Placement(self.placement))
        except ValueError:
            raise ConfigError(f"placement must be 'per-server' or 'per-key', got {self.placement!r}",
                              field="placement") from None
        if not isinstance(self.lock_store, str) or self.lock_store not in LOCK_STORES:
            raise ConfigError(f"lock_store must be one of {', '.join(map(repr, LOCK_STORES))}, got "
                              f"{self.lock_store!r}", field="lock_store")

    @property
    def migration_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.migrations)


def check_schema(schema: Callable[[Any], Any] | None, key: str, data: Any) -> None:
    """Raise SchemaError unless `schema(data)` accepts. Accepting is exactly True, None or a tuple starting with
    True; False, `(False, message...)` or an exception mean invalid, and any other answer is refused as invalid too
    (a schema answering 0, "" or a merely falsy object must not pass data that breaks it)."""
    if schema is None:
        return
    try:
        verdict = schema(data)
    except Exception as exc:
        raise SchemaError(f"Schema validation failed for key {key!r}: {type(exc).__name__}: {exc}") from None
    told = isinstance(verdict, tuple) and len(verdict) > 0 and isinstance(verdict[0], bool)  # (bool, message...)
    answer = verdict[0] if told else verdict
    if answer is True or answer is None:
        return
    if answer is False:
        detail = ": " + " ".join(str(x) for x in verdict[1:]) if told else ""
        raise SchemaError(f"Schema validation failed for key {key!r}{detail}")
    raise SchemaError(f"Schema validation failed for key {key!r}: the schema returned a non-boolean, "
                      f"{_show(verdict)} ({type(verdict).__name__}); it must answer True, None, False or "
                      f"(True or False, message...)")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an int from {low} to {high}, got {value!r}", field=name)


def _migrations(steps: Any) -> tuple[Migration, ...]:
    def bad(message: str) -> ConfigError:
        return ConfigError(message, field="migrations")

    if not isinstance(steps, (tuple, list)):
        raise bad(f"migrations must be a sequence of Migration or (name, apply) pairs, got {type(steps).__name__}")
    out: list[Migration] = []
    for i, step in enumerate(steps):
        if isinstance(step, (tuple, list)) and len(step) == 2:
            step = Migration(*step)
        if not isinstance(step, Migration):
            raise bad(f"migrations[{i}] must be a Migration or a (name, apply) pair, got {step!r:.80}")
        if not isinstance(step.name, str) or not step.name:
            raise bad(f"migrations[{i}] needs a non-empty string name, got {step.name!r}")
        if not callable(step.apply):
            raise bad(f"migration {step.name!r}: apply must be callable, got {type(step.apply).__name__}")
        if any(s.name == step.name for s in out):
            raise bad(f"migration name {step.name!r} appears twice; each step needs its own name")
        out.append(step)
    return tuple(out)
