"""Who may call the served API, and how much: API keys with their permissions, Data Stores v1's per-universe limits,
and the count of requests by endpoint and status.

Owns `ApiKey` / `parse_api_keys` (the key spec given at start), `V1Limits` (300 requests a minute per operation
class, 10 MB a minute written, 20 MB a minute read, per universe, on the world's simulated clock) and
`RequestStatistics`. Plain Python: no HTTP, no world calls. v2 requests are limited by the world itself (they spend
the experience budget Open Cloud shares with game servers), not here.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Iterable

from lodestore.storage import ConfigError

__all__ = ["PERMISSIONS", "DEFAULT_API_KEY", "ApiKey", "parse_api_keys", "V1Limits", "LimitVerdict",
           "RequestStatistics", "OpenCloudStatistics"]

PERMISSIONS = ("datastores.read", "datastores.write", "datastores.manage", "memorystore.read", "memorystore.write",
               "memorystore.flush", "messaging.publish")
"""What a key may be allowed. `datastores.*` covers standard and ordered data stores (entries, versions, listings);
`datastores.manage` is for the data stores themselves (list, delete, undelete, snapshot) and erasure;
`memorystore.write` adds, changes and removes sorted-map items and queue items (reading a queue hides items, so it
is a write too); `memorystore.flush` empties the experience's memory stores. Roblox's own scopes are finer
(`universe-datastores.objects:create`, ...); these group them the way a tool's key is usually made."""

DEFAULT_API_KEY = "lodestore-test-key"
"""The key accepted, with every permission, when none is given at start."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API key and what it may do."""

    key: str
    permissions: frozenset[str]

    def allows(self, permission: str) -> bool:
        return permission in self.permissions


def _parse_one(spec: object) -> ApiKey:
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"an API key spec is KEY or KEY:PERMISSION,..., got {spec!r}", field="api_key")
    key, sep, perms = spec.strip().partition(":")
    if not key or any(c.isspace() for c in key):
        raise ConfigError(f"API key {spec!r}: the key must be non-empty and hold no spaces", field="api_key")
    if not sep:
        return ApiKey(key, frozenset(PERMISSIONS))
    wanted = [p.strip() for p in perms.split(",")]
    unknown = [p for p in wanted if p not in PERMISSIONS]
    if not perms.strip() or unknown:
        raise ConfigError(f"API key {key[:4]}...: unknown permission(s) {', '.join(map(repr, unknown or ['']))}; "
                          f"known: {', '.join(PERMISSIONS)}", field="api_key")
    return ApiKey(key, frozenset(wanted))


def parse_api_keys(specs: Iterable[str] | None) -> dict[str, ApiKey]:
    """The keys of `specs`, each `KEY` (every permission) or `KEY:perm,perm` (those only, from `PERMISSIONS`), by
    key; None or empty gives `DEFAULT_API_KEY` with every permission. A bad spec or a key given twice raises
    ConfigError naming it.

    >>> sorted(parse_api_keys(["admin", "viewer:datastores.read"])["viewer"].permissions)
    ['datastores.read']
    """
    if specs is None or isinstance(specs, str):
        specs = [specs] if isinstance(specs, str) else []
    keys: dict[str, ApiKey] = {}
    for spec in specs:
        key = _parse_one(spec)
        if key.key in keys:
            raise ConfigError(f"API key {key.key[:4]}... is given twice", field="api_key")
        keys[key.key] = key
    return keys or {DEFAULT_API_KEY: ApiKey(DEFAULT_API_KEY, frozenset(PERMISSIONS))}


WINDOW_MS = 60_000
V1_REQUESTS_PER_MINUTE = 300
V1_WRITE_BYTES_PER_MINUTE = 10 * 1024 * 1024
V1_READ_BYTES_PER_MINUTE = 20 * 1024 * 1024
V1_CLASSES = ("read", "write", "list")
"""Data Stores v1's operation classes, each with its own 300 requests a minute per universe: read (get an entry or
a version), write (set, increment, delete), list (entries, versions). Roblox names the limit per endpoint group;
these three are how its v1 table groups them."""


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """Whether a v1 request may go now; when not, `retry_after_s`. `limit`, `remaining` and `reset_s` are the
    x-ratelimit-* figures of its class."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0
    what: str = ""

    def headers(self) -> dict[str, str]:
        out = {"x-ratelimit-limit": str(self.limit), "x-ratelimit-remaining": str(self.remaining),
               "x-ratelimit-reset": str(max(0, round(self.reset_s)))}
        if not self.allowed:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


class _Window:
    """Amounts spent in the sliding minute before now, as (time, amount) in arrival order."""

    def __init__(self) -> None:
        self.spent: deque[tuple[int, int]] = deque()

    def total(self, now: int) -> int:
        while self.spent and self.spent[0][0] <= now - WINDOW_MS:
            self.spent.popleft()
        return sum(a for _, a in self.spent)

    def wait_ms(self, now: int, room: int) -> int:
        """How long until at most `room` is spent in the window (the oldest amounts leave it first)."""
        total = self.total(now)
        if total <= room:
            return 0
        for t, a in self.spent:
            total -= a
            if total <= room:
                return t + WINDOW_MS - now
        return WINDOW_MS   # room < 0: more than the whole minute's allowance, at no time


class V1Limits:
    """Data Stores v1's per-universe limits on a clock of simulated milliseconds (`now`): a sliding minute per
    operation class (`V1_REQUESTS_PER_MINUTE`), and the bytes written (request bodies) and read (answers) in it."""

    def __init__(self, now: Callable[[], int], requests_per_minute: int = V1_REQUESTS_PER_MINUTE,
                 write_bytes: int = V1_WRITE_BYTES_PER_MINUTE, read_bytes: int = V1_READ_BYTES_PER_MINUTE) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._rate = requests_per_minute
        self._write_limit, self._read_limit = write_bytes, read_bytes
        self._requests = {c: _Window() for c in V1_CLASSES}
        self._written, self._read = _Window(), _Window()

    def admit(self, op_class: str, write_bytes: int = 0) -> LimitVerdict:
        """Spend one request of `op_class` (and `write_bytes` written) if the minute has room; else a verdict with
        the wait. A refused request spends nothing. Bytes read are counted once answered (`count_read`): reads are
        refused while the minute's read bytes are spent."""
        with self._lock:
            now = self._now()
            window = self._requests[op_class]
            used = window.total(now)
            reset_s = ((window.spent[0][0] + WINDOW_MS - now) if window.spent else WINDOW_MS) / 1000
            checks = [(window, self._rate - 1, f"{self._rate} {op_class} requests a minute")]
            if write_bytes:
                checks.append((self._written, self._write_limit - write_bytes,
                               f"{self._write_limit} bytes written a minute"))
            if op_class != "write":
                checks.append((self._read, self._read_limit - 1, f"{self._read_limit} bytes read a minute"))
            for spent, room, what in checks:
                if spent.total(now) > room:
                    return LimitVerdict(False, self._rate, max(0, self._rate - used), reset_s,
                                        spent.wait_ms(now, room) / 1000, what)
            window.spent.append((now, 1))
            if write_bytes:
                self._written.spent.append((now, write_bytes))
            return LimitVerdict(True, self._rate, self._rate - used - 1, reset_s)

    def count_read(self, nbytes: int) -> None:
        with self._lock:
            self._read.spent.append((self._now(), nbytes))


@dataclass(frozen=True, slots=True)
class OpenCloudStatistics:
    """Requests the served API answered: `requests[endpoint][status]`, the endpoint as "METHOD route-template"
    (e.g. "GET /datastores/v1/universes/{universe}/standard-datastores/datastore/entries/entry"); unknown paths
    count under "unknown"."""

    requests: dict[str, dict[int, int]]

    @property
    def total(self) -> int:
        return sum(sum(by_status.values()) for by_status in self.requests.values())


class RequestStatistics:
    """The running count behind `OpenCloudStatistics` (safe from any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def count(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._counts[(endpoint, status)] += 1

    def snapshot(self) -> OpenCloudStatistics:
        with self._lock:
            out: dict[str, dict[int, int]] = {}
            for (endpoint, status), n in sorted(self._counts.items()):
                out.setdefault(endpoint, {})[status] = n
            return OpenCloudStatistics(out)
