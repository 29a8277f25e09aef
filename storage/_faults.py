"""Fault injection for the emulated DataStore: errors, latency, outages and ambiguous writes, and the modelled
service time every request takes (`FaultConfig.base_latency`; the distributions are `storage._latency`'s); and for
the MemoryStore: errors, latency and outages per structure kind or operation (the `memorystore_*` fields).

A `FaultConfig` is a frozen description a world carries and can swap while running; a `FaultInjector` turns it into
a decision per request. Decisions are deterministic under the seed: each one is drawn from a hash of (seed, request
type, key, how many requests that key has seen), so the same per-key request order gives the same faults and delays
whatever the interleaving between keys. This module never touches stored data; the engine applies its decisions.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Mapping, NamedTuple

from lodestore.storage._errors import ConfigError
from lodestore.storage._latency import Latency, quantile
from lodestore.storage._limits import RequestType

__all__ = ["FaultConfig", "Latency", "Outage", "MEMORYSTORE_FAULT_KEYS", "MESSAGING_DELAY"]

MESSAGING_DELAY = Latency.uniform(1_000, 2_000)
"""How long a MessagingService message takes to arrive by default: Roblox says "typically within 1-2 seconds"."""

WRITE_TYPES = frozenset({RequestType.STANDARD_WRITE, RequestType.STANDARD_REMOVE, RequestType.REMOVE_VERSION,
                         RequestType.ORDERED_WRITE, RequestType.ORDERED_REMOVE})


def _check_rate(what: str, rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0.0 <= rate <= 1.0):
        raise ConfigError(f"{what} must be a number from 0 to 1, got {rate!r}")
    return float(rate)


def _request_type(name: object, what: str) -> RequestType:
    try:
        return RequestType(name)
    except ValueError:
        known = ", ".join(t.value for t in RequestType)
        raise ConfigError(f"{what}: unknown request type {name!r}; known: {known}") from None


MEMORYSTORE_KINDS = ("HashMap", "SortedMap", "Queue")
MEMORYSTORE_OPERATIONS = ("HashMapGet", "HashMapSet", "HashMapRemove", "HashMapList", "SortedMapGet", "SortedMapSet",
                          "SortedMapRemove", "SortedMapGetRange", "SortedMapGetSize", "QueueAdd", "QueueRead",
                          "QueueRemove", "QueueGetSize")
MEMORYSTORE_FAULT_KEYS = MEMORYSTORE_KINDS + MEMORYSTORE_OPERATIONS
"""What a `memorystore_*` fault field is keyed by: a structure kind (every operation on it) or one operation (the
names of `storage.memorystore`'s request messages; an operation's own entry wins over its kind's)."""


def _memorystore_key(name: object, what: str) -> str:
    if name not in MEMORYSTORE_FAULT_KEYS:
        raise ConfigError(f"{what}: unknown MemoryStore structure kind or operation {name!r}; known: "
                          f"{', '.join(MEMORYSTORE_FAULT_KEYS)}", field=what.removeprefix("faults "))
    return name


@dataclass(frozen=True)
class Outage:
    """Every request between `start_ms` and `end_ms` (simulated epoch ms, end exclusive) fails with `code`."""

    start_ms: int
    end_ms: int
    code: int = 502

    def __post_init__(self) -> None:
        if not (isinstance(self.start_ms, int) and isinstance(self.end_ms, int)) or self.end_ms < self.start_ms:
            raise ConfigError(f"an outage needs integer start_ms <= end_ms, got {self.start_ms!r}..{self.end_ms!r}")


@dataclass(frozen=True)
class FaultConfig:
    """What goes wrong in a world's DataStore, and how long its requests take, per request type (names of
    `RequestType`).

    `base_latency` is the modelled service time of every request of a type, whatever the faults: a request's delay
    is its base latency plus its fault `latency`, drawn apart, and a failed request takes it too. A config with only
    `base_latency` is active but injects no errors.

    The MemoryStore's faults are their own fields, keyed by a structure kind ("HashMap", "SortedMap", "Queue") or an
    operation ("HashMapSet", "QueueRead", ...: `MEMORYSTORE_FAULT_KEYS`; an operation's entry wins over its kind's):
    `memorystore_error_rate` fails an operation before it runs (nothing changes, no units are spent) with Roblox's
    `InternalError`, which the client and the session locks treat as retryable; `memorystore_latency` adds a delay
    (on top of the MemoryStore's modelled service time); `memorystore_outages=True` lets every `outages` window fail
    the MemoryStore too (a whole-cloud outage; the window's DataStore `code` does not apply: the name is
    InternalError). The defaults inject nothing.

    >>> FaultConfig(seed=7, memorystore_error_rate={"HashMap": 0.2, "HashMapGet": 0.0},
    ...             memorystore_latency={"Queue": Latency.fixed(40)})
    FaultConfig(...)

    >>> FaultConfig(seed=7, error_rate={"StandardWrite": 0.05}, ambiguous_write_rate=0.01,
    ...             latency={"StandardRead": Latency.uniform(200, 500)},
    ...             base_latency={"StandardRead": Latency.lognormal(60, 0.5)})
    FaultConfig(...)
    """

    seed: int = 0
    error_rate: Mapping[str, float] = field(default_factory=dict)
    error_code: int = 502
    latency: Mapping[str, Latency] = field(default_factory=dict)
    outages: tuple[Outage, ...] = ()
    ambiguous_write_rate: float = 0.0
    base_latency: Mapping[str, Latency] = field(default_factory=dict)
    # -- MemoryStore (see above; every default injects nothing)
    memorystore_error_rate: Mapping[str, float] = field(default_factory=dict)
    memorystore_latency: Mapping[str, Latency] = field(default_factory=dict)
    memorystore_outages: bool = False
    # MessagingService (storage.messaging): delivery is best effort. Each reception (one message reaching one
    # subscribing server) takes a draw of `messaging_delay` and is lost with probability `messaging_drop_rate`,
    # drawn from (seed, topic, server, the topic's publish count). Not DataStore faults: `active` ignores them.
    messaging_delay: Latency = MESSAGING_DELAY
    messaging_drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"faults seed must be an integer, got {self.seed!r}")
        if not isinstance(self.error_rate, Mapping):
            raise ConfigError(f"faults error_rate must be a mapping of request type to rate, got {self.error_rate!r}")
        rates = {_request_type(k, "faults error_rate"): _check_rate(f"faults error_rate[{k!r}]", v)
                 for k, v in self.error_rate.items()}
        object.__setattr__(self, "error_rate", rates)
        object.__setattr__(self, "latency", _latencies("latency", self.latency))
        object.__setattr__(self, "base_latency", _latencies("base_latency", self.base_latency))
        code = self.error_code
        if isinstance(code, bool) or not isinstance(code, int) or not 300 <= code <= 599:
            raise ConfigError(f"faults error_code must be a Roblox error code 300-599, got {self.error_code!r}")
        outages = tuple(self.outages)
        for o in outages:
            if not isinstance(o, Outage):
                raise ConfigError(f"faults outages must hold Outage values, got {o!r}")
        object.__setattr__(self, "outages", outages)
        _check_rate("faults ambiguous_write_rate", self.ambiguous_write_rate)
        if not isinstance(self.messaging_delay, Latency):
            raise ConfigError(f"faults messaging_delay must be a Latency, got {self.messaging_delay!r}",
                              field="messaging_delay")
        _check_rate("faults messaging_drop_rate", self.messaging_drop_rate)
        self._check_memorystore()

    def _check_memorystore(self) -> None:
        if not isinstance(self.memorystore_error_rate, Mapping):
            raise ConfigError(f"faults memorystore_error_rate must be a mapping of structure kind or operation to "
                              f"rate, got {self.memorystore_error_rate!r}", field="memorystore_error_rate")
        rates = {_memorystore_key(k, "faults memorystore_error_rate"):
                 _check_rate(f"faults memorystore_error_rate[{k!r}]", v)
                 for k, v in self.memorystore_error_rate.items()}
        object.__setattr__(self, "memorystore_error_rate", rates)
        latencies = self.memorystore_latency
        if not isinstance(latencies, Mapping):
            raise ConfigError(f"faults memorystore_latency must be a mapping of structure kind or operation to "
                              f"Latency, got {latencies!r}", field="memorystore_latency")
        for k, v in latencies.items():
            _memorystore_key(k, "faults memorystore_latency")
            if not isinstance(v, Latency):
                raise ConfigError(f"faults memorystore_latency[{k!r}] must be a Latency, got {v!r}",
                                  field="memorystore_latency")
        object.__setattr__(self, "memorystore_latency", dict(latencies))
        if not isinstance(self.memorystore_outages, bool):
            raise ConfigError(f"faults memorystore_outages must be a bool, got {self.memorystore_outages!r}",
                              field="memorystore_outages")

    @property
    def active(self) -> bool:
        """Whether anything is injected into, or modelled for, the DataStore."""
        return bool(self.error_rate or self.latency or self.outages or self.ambiguous_write_rate
                    or self.base_latency)

    @property
    def memorystore_active(self) -> bool:
        """Whether anything is injected into the MemoryStore."""
        return bool(self.memorystore_error_rate or self.memorystore_latency
                    or (self.memorystore_outages and self.outages))


def _latencies(name: str, value: object) -> dict[RequestType, Latency]:
    """FaultConfig's `name` (a mapping of request type name to Latency), keyed by RequestType, or ConfigError."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"faults {name} must be a mapping of request type to Latency, got {value!r}", field=name)
    for k, v in value.items():
        if not isinstance(v, Latency):
            raise ConfigError(f"faults {name}[{k!r}] must be a Latency, got {v!r}", field=name)
    return {_request_type(k, f"faults {name}"): v for k, v in value.items()}


_ERROR_NAMES = {500: "InternalServerError", 502: "RequestRejected", 503: "KeyNotFound", 504: "MalformedResponse",
                505: "MalformedResponse", 501: "CorruptedResponse"}


def error_name(code: int) -> str:
    return _ERROR_NAMES.get(code, "InternalServerError" if code >= 500 else "DatastoreThrottled")


class Decision(NamedTuple):
    fail_code: int | None      # fail before doing anything
    fail_message: str
    ambiguous: bool            # do it, then report failure
    delay_ms: float


NO_FAULT = Decision(None, "", False, 0.0)


class MemoryStoreFault(NamedTuple):
    error: str | None      # fail with InternalError and this message, before doing anything
    delay_ms: float


NO_MEMORYSTORE_FAULT = MemoryStoreFault(None, 0.0)


class FaultInjector:
    """Decides, request by request, what the configured faults do to it."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self._counters: dict[tuple, int] = {}
        self.injected_errors = 0
        self.ambiguous_writes = 0

    def reconfigure(self, config: FaultConfig) -> None:
        self.config = config

    def _uniforms(self, request_type: RequestType, k: tuple) -> tuple[int, float, float, float]:
        """How many requests key `k` had seen before this one, and this request's three fault quantiles."""
        n = self._counters.get(k, 0)
        self._counters[k] = n + 1
        digest = hashlib.blake2b(repr((self.config.seed, request_type.value, k, n)).encode(), digest_size=24).digest()
        a, b, c = struct.unpack("<QQQ", digest)
        scale = 2.0 ** -64
        return n, a * scale, b * scale, c * scale

    def decide(self, request_type: RequestType | None, k: tuple, now_ms: int) -> Decision:
        cfg = self.config
        if request_type is None or not cfg.active:
            return NO_FAULT
        n, u_err, u_amb, u_lat = self._uniforms(request_type, k)
        latency = cfg.latency.get(request_type)
        delay = latency.sample(u_lat) if latency is not None else 0.0
        base = cfg.base_latency.get(request_type)
        if base is not None:   # a draw of its own: base and fault latency are independent
            delay += base.sample(quantile(cfg.seed, "base", request_type.value, k, n))
        for outage in cfg.outages:
            if outage.start_ms <= now_ms < outage.end_ms:
                self.injected_errors += 1
                return Decision(outage.code, "DataStore outage (injected): the service is unavailable", False, delay)
        if u_err < cfg.error_rate.get(request_type, 0.0):
            self.injected_errors += 1
            return Decision(cfg.error_code, "API Services rejected request with error: HTTP 500 (injected)",
                            False, delay)
        if request_type in WRITE_TYPES and u_amb < cfg.ambiguous_write_rate:
            self.ambiguous_writes += 1
            return Decision(cfg.error_code, "API Services rejected request with error: HTTP 500 (injected)",
                            True, delay)
        return Decision(None, "", False, delay) if delay else NO_FAULT

    def decide_memorystore(self, operation: str, kind: str, k: tuple, now_ms: int) -> MemoryStoreFault:
        """What the MemoryStore faults do to one operation (`operation`, a message's name, on a structure of `kind`;
        `k` the key its draws count on). Drawn like `decide`: from (seed, operation, k, how many MemoryStore
        operations k had seen), so a run's faults follow its per-key order."""
        cfg = self.config
        if not cfg.memorystore_active:
            return NO_MEMORYSTORE_FAULT
        counted = ("MemoryStore",) + tuple(k)
        n = self._counters.get(counted, 0)
        self._counters[counted] = n + 1
        latency = cfg.memorystore_latency.get(operation, cfg.memorystore_latency.get(kind))
        delay = latency.sample(quantile(cfg.seed, "memorystore latency", operation, k, n)) if latency else 0.0
        if cfg.memorystore_outages and any(o.start_ms <= now_ms < o.end_ms for o in cfg.outages):
            self.injected_errors += 1
            return MemoryStoreFault("MemoryStore outage (injected): the service is unavailable", delay)
        rate = cfg.memorystore_error_rate.get(operation, cfg.memorystore_error_rate.get(kind, 0.0))
        if rate and quantile(cfg.seed, "memorystore error", operation, k, n) < rate:
            self.injected_errors += 1
            return MemoryStoreFault("the MemoryStore failed the request (injected)", delay)
        return MemoryStoreFault(None, delay)
