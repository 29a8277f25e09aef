"""A store's configuration: template, schema, migrations, callbacks, timings and placement, checked once.

`StoreConfig` is frozen and travels to key actors with Ray's serializer (it holds user callables); stored values
never do. Every bad field is refused with a `storage.ConfigError` that names it and says what was received.
`check_schema` says what a `schema` verdict means, for sessions and the coordinator alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from lodestore.actors._errors import SchemaError
from lodestore.actors._txn import MAX_STORE_NAME
from lodestore.storage import ConfigError, DataStoreError, check_metadata, check_value

__all__ = ["StoreConfig", "Migration", "Placement", "LogMessage", "check_schema"]


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


def _seconds(name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= minimum:
        raise ConfigError(f"{name} must be a finite number of seconds > {minimum:g}, got {value!r}")
    return float(value)


def _callable_or_none(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be callable or None, got {type(value).__name__}")


@dataclass(frozen=True)
class StoreConfig:
    """Everything `GameServer.create_store` takes. Times are simulated seconds.

    - `template`: the data a new key starts with (JSON-compatible).
    - `schema(data)`: returns True (or None) when data is valid; False or an exception means invalid.
    - `migrations`: `Migration`s or `(name, apply)` pairs, applied once each, in order.
    - `import_legacy_data(key)`: data for a key with no record yet (all migrations then run on it), or None.
    - `changed_callbacks`: each `fn(key, new_data, old_data)` after a change (on load, old_data is None).
    - `log_callback(LogMessage)`, `on_lock_lost(key)`: called where the session lives (the key actor).
    - `lock_callback(kind, key, session_id, at_ms, until_ms)`: an observer of the session lock, called where the
      session lives with kind "acquired", "refreshed", "released", "lost" or "crashed" (`KeyHost.crash`). `until_ms` is the time up to which the
      session counts itself the holder (the send time of its last landed lock write + `lock_ttl`); "released" and
      "lost" are reported at `min(now, until_ms)`. A simulator records lock history with it.
    - `metadata_template`: KeyInfo metadata written with every record; user ids come from `load(key, user_ids)`.
    - `lock_ttl`, `lock_refresh`, `lock_wait`: the lock's TTL, how often it is refreshed, and how long `load` waits
      for another holder before giving up. `lock_steal_after`: take over a lock whose holder has not refreshed it
      for that long (ProfileStore's force-load); None (default) never steals.
    - `autosave_interval`: how often a changed session is saved. `retry_attempts`: storage attempts per write.
    - `lock_partitions`: how many MemoryStore hash maps share the locks (1 is Lyra's single map). One structure
      serves 100,000 request units a minute, about 33,000 lock updates: 16 maps carry ~500,000 sessions.
    - `tx_timeout`: how long a session waits in a transaction for its coordinator before settling it itself.
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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= MAX_STORE_NAME or "/" in self.name:
            raise ConfigError(f"store name must be 1-{MAX_STORE_NAME} characters without '/', got {self.name!r}")
        try:
            check_value(self.template, what="template")
        except DataStoreError as exc:
            raise ConfigError(f"template is not storable: {exc.message}") from None
        _callable_or_none("schema", self.schema)
        _callable_or_none("import_legacy_data", self.import_legacy_data)
        _callable_or_none("log_callback", self.log_callback)
        _callable_or_none("on_lock_lost", self.on_lock_lost)
        _callable_or_none("lock_callback", self.lock_callback)
        object.__setattr__(self, "migrations", _migrations(self.migrations))
        if callable(self.changed_callbacks):
            object.__setattr__(self, "changed_callbacks", (self.changed_callbacks,))
        if not isinstance(self.changed_callbacks, (tuple, list)) or not all(map(callable, self.changed_callbacks)):
            raise ConfigError(f"changed_callbacks must be a sequence of callables, got {self.changed_callbacks!r:.80}")
        object.__setattr__(self, "changed_callbacks", tuple(self.changed_callbacks))
        if self.metadata_template is not None:
            try:
                check_metadata(self.metadata_template)
            except DataStoreError as exc:
                raise ConfigError(f"metadata_template: {exc.message}") from None
        for name in ("autosave_interval", "lock_ttl", "lock_refresh", "lock_wait", "tx_timeout"):
            object.__setattr__(self, name, _seconds(name, getattr(self, name)))
        if self.lock_refresh >= self.lock_ttl:
            raise ConfigError(f"lock_refresh ({self.lock_refresh:g} s) must be shorter than lock_ttl "
                              f"({self.lock_ttl:g} s), or the lock expires between refreshes")
        if self.lock_steal_after is not None:
            object.__setattr__(self, "lock_steal_after", _seconds("lock_steal_after", self.lock_steal_after))
        if isinstance(self.retry_attempts, bool) or not isinstance(self.retry_attempts, int) \
                or not 1 <= self.retry_attempts <= 20:
            raise ConfigError(f"retry_attempts must be an int from 1 to 20, got {self.retry_attempts!r}")
        if isinstance(self.lock_partitions, bool) or not isinstance(self.lock_partitions, int) \
                or not 1 <= self.lock_partitions <= 1024:
            raise ConfigError(f"lock_partitions must be an int from 1 to 1024, got {self.lock_partitions!r}")
        try:
            object.__setattr__(self, "placement", Placement(self.placement))
        except ValueError:
            raise ConfigError(f"placement must be 'per-server' or 'per-key', got {self.placement!r}") from None

    @property
    def migration_names(self) -> tuple[str, ...]:
        return tuple(step.name for step in self.migrations)


def check_schema(schema: Callable[[Any], Any] | None, key: str, data: Any) -> None:
    """Raise SchemaError unless `schema(data)` accepts: True or None; False, (False, message...) or an exception
    mean invalid."""
    if schema is None:
        return
    try:
        verdict = schema(data)
    except Exception as exc:
        raise SchemaError(f"Schema validation failed for key {key!r}: {type(exc).__name__}: {exc}") from None
    detail = ""
    if isinstance(verdict, tuple) and verdict:
        verdict, detail = verdict[0], ": " + " ".join(str(x) for x in verdict[1:])
    if verdict is False:
        raise SchemaError(f"Schema validation failed for key {key!r}{detail}")


def _migrations(steps: Any) -> tuple[Migration, ...]:
    if not isinstance(steps, (tuple, list)):
        raise ConfigError(f"migrations must be a sequence of Migration or (name, apply) pairs, got "
                          f"{type(steps).__name__}")
    out: list[Migration] = []
    for i, step in enumerate(steps):
        if isinstance(step, (tuple, list)) and len(step) == 2:
            step = Migration(*step)
        if not isinstance(step, Migration):
            raise ConfigError(f"migrations[{i}] must be a Migration or a (name, apply) pair, got {step!r:.80}")
        if not isinstance(step.name, str) or not step.name:
            raise ConfigError(f"migrations[{i}] needs a non-empty string name, got {step.name!r}")
        if not callable(step.apply):
            raise ConfigError(f"migration {step.name!r}: apply must be callable, got {type(step.apply).__name__}")
        if any(s.name == step.name for s in out):
            raise ConfigError(f"migration name {step.name!r} appears twice; each step needs its own name")
        out.append(step)
    return tuple(out)
