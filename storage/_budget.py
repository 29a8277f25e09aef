"""The budget ledger: the DataStore request budgets of every simulated game server of one world.

Owns, per registered game server and request type, the token bucket of Roblox's per-server formulas (the `current`
limits by default, the `legacy` ones as a profile), the four experience-wide buckets fed by the world's CCU, and the
leases through which clients take tokens in batches and spend them locally. The world's one budget actor (elsewhere)
holds a `BudgetLedger` and calls its methods; tests drive it directly with a `ManualClock`.

It must never import Ray, read the wall clock (time is the injected clock's), sleep, or grant a token that is not in
both the server's bucket and the experience bucket at that moment. Tokens leave both buckets when a lease is
granted, not when they are spent, and come back only when the holder says, once and in time, that it left them
unused; so no order or number of deliveries of these messages lets a server spend more than its budget.

Also here: a server's own lowered limits (`set_rate_limit`, Roblox's SetRateLimitForRequestType) and the requests
that spend only the experience buckets (`take_experience`: Open Cloud v2, which shares them with game servers). The
per-key throughput windows live in the shard that owns the key, the throttle queues in the server (`_throttle`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ._clock import Clock
from ._errors import ConfigError
from ._ids import new_id
from ._limits import RequestType

__all__ = [
    "BudgetLedger", "BudgetProfile", "bucket_map", "ExperienceCategory", "Lease", "ReleaseOutcome", "Rate",
    "BudgetStatistics", "ServerBudgetStatistics", "ExperienceBucketStatistics",
    "CURRENT_RATES", "LEGACY_RATES", "LEGACY_SHARED_BUCKETS", "STARTUP_BURST", "EXPERIENCE_RATES",
    "EXPERIENCE_CATEGORY", "BUCKET_CAP_MINUTES", "SHUTDOWN_BOOST_SECONDS", "EXPERIENCE_CAP_MINUTES",
    "DEFAULT_LEASE_TTL_MS", "DEFAULT_RELEASE_GRACE_MS", "RATE_LIMIT_MAX_BASE", "RATE_LIMIT_MAX_PER_PLAYER",
    "check_rate_limit",
]

_RT = RequestType


# ---------------------------------------------------------------------------------------------------------------------
# Roblox's numbers (reference/roblox-datastores.md, "Request budgets per game server")


class BudgetProfile(str, Enum):
    """Which per-server formulas a world uses: today's limits, or the legacy ones."""

    CURRENT = "current"
    LEGACY = "legacy"


class ExperienceCategory(str, Enum):
    """The four experience-wide limits; every request type counts against exactly one."""

    READ = "read"
    WRITE = "write"
    LIST = "list"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class Rate:
    """`base + per_player x n` requests per minute.

    >>> Rate(60, 40).per_minute(2)
    140
    """

    base: int
    per_player: int

    def per_minute(self, players: int) -> int:
        return self.base + self.per_player * players


CURRENT_RATES: dict[RequestType, Rate] = {
    _RT.STANDARD_READ: Rate(60, 40),
    _RT.STANDARD_WRITE: Rate(60, 40),
    _RT.STANDARD_LIST: Rate(5, 2),
    _RT.STANDARD_REMOVE: Rate(60, 40),
    _RT.REMOVE_VERSION: Rate(5, 2),
    _RT.ORDERED_READ: Rate(60, 40),
    _RT.ORDERED_WRITE: Rate(30, 5),
    _RT.ORDERED_LIST: Rate(5, 2),
    _RT.ORDERED_REMOVE: Rate(30, 5),
}

# Legacy Roblox had one budget per *call family*, not per request type: GetAsync (standard and ordered stores alike)
# 60 + 10n, SetIncrementAsync (Set/Increment/Update/Remove) 60 + 10n, GetSortedAsync 5 + 2n, SetIncrementSortedAsync
# (every ordered write, RemoveAsync included) 30 + 5n. So in this profile OrderedRead spends StandardRead's bucket and
# OrderedRemove spends OrderedWrite's, as StandardRemove spends StandardWrite's.
LEGACY_RATES: dict[RequestType, Rate] = {
    _RT.STANDARD_READ: Rate(60, 10),
    _RT.STANDARD_WRITE: Rate(60, 10),
    _RT.STANDARD_LIST: Rate(5, 2),
    _RT.STANDARD_REMOVE: Rate(60, 10),
    _RT.REMOVE_VERSION: Rate(5, 2),
    _RT.ORDERED_READ: Rate(60, 10),
    _RT.ORDERED_WRITE: Rate(30, 5),
    _RT.ORDERED_LIST: Rate(5, 2),
    _RT.ORDERED_REMOVE: Rate(30, 5),
}

# Legacy: request type -> the request type whose bucket it spends (types not named here own their bucket).
LEGACY_SHARED_BUCKETS: dict[RequestType, RequestType] = {
    _RT.STANDARD_REMOVE: _RT.STANDARD_WRITE,
    _RT.ORDERED_READ: _RT.STANDARD_READ,
    _RT.ORDERED_REMOVE: _RT.ORDERED_WRITE,
}

# A new server's buckets start with these tokens (Get 100, Set 100, sorted 10 / 50); every other bucket starts with one
# minute's worth at its rate for the players the server registers with. Always below the 3-minute cap.
STARTUP_BURST: dict[RequestType, int] = {
    _RT.STANDARD_READ: 100,
    _RT.STANDARD_WRITE: 100,
    _RT.ORDERED_LIST: 10,
    _RT.ORDERED_WRITE: 50,
}

BUCKET_CAP_MINUTES = 3           # a server's bucket holds at most 3 x its per-minute rate
SHUTDOWN_BOOST_SECONDS = 150     # BindToClose: each bucket becomes max(current, 150 x rate / 60) once
EXPERIENCE_CAP_MINUTES = 1       # an experience bucket holds at most one minute's worth

EXPERIENCE_RATES: dict[ExperienceCategory, Rate] = {       # per minute, n = the world's CCU
    ExperienceCategory.READ: Rate(300, 40),
    ExperienceCategory.WRITE: Rate(300, 20),
    ExperienceCategory.LIST: Rate(300, 2),
    ExperienceCategory.REMOVE: Rate(300, 40),
}

EXPERIENCE_CATEGORY: dict[RequestType, ExperienceCategory] = {
    _RT.STANDARD_READ: ExperienceCategory.READ,
    _RT.ORDERED_READ: ExperienceCategory.READ,
    _RT.STANDARD_WRITE: ExperienceCategory.WRITE,
    _RT.ORDERED_WRITE: ExperienceCategory.WRITE,
    _RT.STANDARD_LIST: ExperienceCategory.LIST,
    _RT.ORDERED_LIST: ExperienceCategory.LIST,
    _RT.STANDARD_REMOVE: ExperienceCategory.REMOVE,
    _RT.ORDERED_REMOVE: ExperienceCategory.REMOVE,
    _RT.REMOVE_VERSION: ExperienceCategory.REMOVE,
}

# SetRateLimitForRequestType's bounds for the request types of 2025 (the creator docs of 2026-08).
RATE_LIMIT_MAX_BASE = 10_000
RATE_LIMIT_MAX_PER_PLAYER = 200

DEFAULT_LEASE_TTL_MS = 10_000      # a lease's tokens may be spent for 10 simulated seconds
DEFAULT_RELEASE_GRACE_MS = 5_000   # a release is still honoured up to 5 s after its lease expired

# Tokens are held as integers in units of 1/60,000 token: a bucket of `rate` per minute gains exactly `rate` units per
# simulated millisecond, so refill is exact integer arithmetic (fractional tokens kept, no float drift).
_UNITS = 60_000


def bucket_map(profile: str | BudgetProfile) -> dict[RequestType, RequestType]:
    """Which request type's bucket each request type spends from under `profile` (itself, unless shared)."""
    return _profile_tables(_check_profile(profile))[1]


def _profile_tables(profile: BudgetProfile) -> tuple[dict[RequestType, Rate], dict[RequestType, RequestType]]:
    if profile is BudgetProfile.CURRENT:
        return CURRENT_RATES, {t: t for t in RequestType}
    return LEGACY_RATES, {t: LEGACY_SHARED_BUCKETS.get(t, t) for t in RequestType}


# ---------------------------------------------------------------------------------------------------------------------
# Messages and snapshots


@dataclass(frozen=True, slots=True)
class Lease:
    """Tokens handed to one server for one request type, already taken from its buckets.

    Spend at most `granted` requests, only while the clock is before `expires_at` (simulated ms), then
    `release(lease_id, unused)`. `granted == 0` means nothing was available: wait `retry_after_ms` and ask again
    (an estimate: player counts may change meanwhile); such a lease is not recorded and needs no release.
    """

    lease_id: str
    server_id: str
    request_type: RequestType
    granted: int
    expires_at: int
    retry_after_ms: int
    limited_by: str = ""      # on a zero grant: "GameServer" (the server's bucket was empty) or "Experience"


class ReleaseOutcome(str, Enum):
    """What `release` did."""

    CREDITED = "credited"                  # first delivery, in time: the unused tokens went back to both buckets
    ALREADY_RELEASED = "already_released"  # a second delivery of a release: nothing changed
    TOO_LATE = "too_late"                  # at or after expires_at + grace: nothing changed, the tokens count as spent
    UNKNOWN = "unknown"                    # no such lease (a zero grant, forgotten by expire(), server removed)


@dataclass(frozen=True, slots=True)
class ExperienceBucketStatistics:
    category: ExperienceCategory
    tokens: float
    rate_per_minute: int
    cap: int


@dataclass(frozen=True, slots=True)
class ServerBudgetStatistics:
    """One server's budget. Dicts are keyed by every `RequestType`; under the legacy profile the types that share a
    bucket show the same tokens, rate and cap. `granted`, `returned` and `denied` count per request type asked."""

    server_id: str
    players: int
    shutting_down: bool
    tokens: dict[RequestType, float]
    rates: dict[RequestType, int]
    caps: dict[RequestType, int]
    leases_outstanding: int
    granted: dict[RequestType, int]
    returned: dict[RequestType, int]
    denied: dict[RequestType, int]


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    """A snapshot of the ledger (fresh dicts each call: changing them changes nothing).

    `leases_outstanding` counts recorded, unreleased leases whose release would still be honoured. `granted` and
    `returned` are tokens; `denied` counts lease calls that got none. The `*_releases` count ignored releases.
    `restarted` is True for a ledger built with `restarted=True` (whose buckets all started empty).
    """

    profile: BudgetProfile
    now_ms: int
    ccu: int
    enforce_experience_limits: bool
    servers: dict[str, ServerBudgetStatistics]
    experience: dict[ExperienceCategory, ExperienceBucketStatistics]
    leases_outstanding: int
    granted: int
    returned: int
    denied: int
    duplicate_releases: int
    late_releases: int
    unknown_releases: int
    restarted: bool = False


# ---------------------------------------------------------------------------------------------------------------------
# Internal state


class _Bucket:
    """A token bucket of `rate` per minute, capped at `cap_minutes` x rate; `units` are 1/60,000 tokens."""

    __slots__ = ("rate", "cap_minutes", "units")

    def __init__(self, rate: int, cap_minutes: int, tokens: int) -> None:
        self.rate = rate
        self.cap_minutes = cap_minutes
        self.units = min(tokens * _UNITS, self.cap_units)

    @property
    def cap_units(self) -> int:
        return self.cap_minutes * self.rate * _UNITS

    @property
    def whole(self) -> int:
        return self.units // _UNITS

    def refill(self, elapsed_ms: int) -> None:
        if elapsed_ms > 0 and self.units < self.cap_units:
            self.units = min(self.cap_units, self.units + self.rate * elapsed_ms)

    def set_rate(self, rate: int) -> None:
        self.rate = rate
        self.units = min(self.units, self.cap_units)

    def credit(self, tokens: int) -> None:
        self.units = min(self.cap_units, self.units + tokens * _UNITS)

    def raise_to(self, units: int) -> None:
        self.units = max(self.units, min(units, self.cap_units))

    def ms_until_one(self) -> int:
        """Simulated ms until the bucket holds a whole token; a bucket set to 0 per minute never refills, so the
        answer is then one minute (when to look again: its rate may have been raised meanwhile)."""
        deficit = _UNITS - self.units
        if deficit <= 0:
            return 0
        return -(-deficit // self.rate) if self.rate else 60_000


class _Server:
    __slots__ = ("players", "buckets", "settled_at", "shutting_down", "granted", "returned", "denied", "lease_ids",
                 "limits")

    def __init__(self, players: int, buckets: dict[RequestType, _Bucket], now: int) -> None:
        self.limits: dict[RequestType, Rate] = {}   # bucket owner -> the server's own lowered rate (set_rate_limit)
        self.players = players
        self.buckets = buckets                      # keyed by the request type that owns the bucket
        self.settled_at = now
        self.shutting_down = False
        self.granted = dict.fromkeys(RequestType, 0)
        self.returned = dict.fromkeys(RequestType, 0)
        self.denied = dict.fromkeys(RequestType, 0)
        self.lease_ids: set[str] = set()


@dataclass(slots=True)
class _LeaseRecord:
    server_id: str
    request_type: RequestType
    granted: int
    expires_at: int
    released: bool = False


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def check_rate_limit(request_type: Any, base: Any, per_player: Any) -> tuple[RequestType, Rate]:
    """SetRateLimitForRequestType's arguments, checked: (request type, Rate), or ConfigError naming the problem.

    The request types are lodestore's `RequestType`s (Roblox's request types of 2025). UpdateAsync and OnUpdate
    cannot be set on Roblox; in lodestore an update spends StandardRead and StandardWrite (lower those) and OnUpdate
    does not exist, so both names are refused with a message that says so.
    """
    if request_type in ("UpdateAsync", "OnUpdate"):
        raise ConfigError(f"the rate limit of {request_type} cannot be set (Roblox refuses it too); an update spends "
                          f"StandardRead and StandardWrite: lower those instead", field="request_type")
    request_type = _check_request_type(request_type)
    for what, value, top in (("base", base, RATE_LIMIT_MAX_BASE), ("per_player", per_player,
                                                                  RATE_LIMIT_MAX_PER_PLAYER)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            raise ConfigError(f"rate limit {what} of {request_type.value} must be an int from 0 to {top}, "
                              f"got {value!r}", field=what)
    return request_type, Rate(base, per_player)


def _check_server_id(server_id: Any) -> str:
    if not isinstance(server_id, str) or not server_id:
        raise ConfigError(f"server_id must be a non-empty str, got {server_id!r}")
    return server_id


def _check_request_type(request_type: Any) -> RequestType:
    if isinstance(request_type, RequestType):
        return request_type
    if isinstance(request_type, str):
        try:
            return RequestType(request_type)
        except ValueError:
            pass
    raise ConfigError(f"unknown request type {request_type!r}: expected one of "
                      f"{', '.join(t.value for t in RequestType)}")


def _check_profile(profile: Any) -> BudgetProfile:
    if isinstance(profile, BudgetProfile):
        return profile
    if isinstance(profile, str):
        try:
            return BudgetProfile(profile)
        except ValueError:
            pass
    raise ConfigError(f"unknown budget profile {profile!r}: expected 'current' or 'legacy'")


# ---------------------------------------------------------------------------------------------------------------------
# The ledger


class BudgetLedger:
    """Every game server's DataStore budget in one world, and the leases that hand it out.

    >>> ledger = BudgetLedger(ManualClock())                  # storage._clock.ManualClock
    >>> ledger.register_server("job-1", players=10)
    True
    >>> lease = ledger.lease("job-1", RequestType.STANDARD_WRITE, 30)
    >>> lease.granted, ledger.available("job-1", RequestType.STANDARD_WRITE)
    (30, 70)
    >>> ledger.release(lease.lease_id, unused=5).value        # the client made 25 requests
    'credited'

    Per server: one bucket per request type (under `legacy`, StandardRemove shares StandardWrite's, OrderedRead
    StandardRead's and OrderedRemove OrderedWrite's), starting at `STARTUP_BURST` or one minute's worth, refilled
    continuously at rate/60 per simulated second, capped at 3 x the per-minute rate. Per experience: one bucket per
    `ExperienceCategory`, rate from the CCU (the sum of players over registered servers), capped at one minute's worth;
    it starts at one minute's worth for the CCU at construction (0: 300 tokens) and capacity added by a rising CCU
    fills by refill, never at once. `enforce_experience_limits=False` stops the experience buckets from binding (they
    are still kept and reported).

    A grant takes from both buckets at once. Lease ids carry a random tag of this ledger, so a release meant for a
    previous ledger (a restarted actor) never matches a lease of this one.

    `restarted=True` builds the ledger of a restarted budget actor, which knows nothing of what was spent before:
    every server it registers (known before or not, and again after `remove_server`) starts with 0 tokens in every
    bucket, no startup burst and no minute's worth, and the experience buckets start at 0; all refill at the normal
    rates from then on. Why this is safe: when the old ledger died, each of a server's buckets held some B >= 0, and
    the server's outstanding leases held L tokens already taken from it, which the client may still spend until
    they expire. Had the actor not died, the server could spend at most B + L + the refill from then on (releases
    only give back what was leased). After the restart it can spend at most L + the refill: the old leases are
    still spent locally, their releases are UNKNOWN here (the tag) and credit nothing, and the new bucket starts at
    0 <= B, so it never holds more than the old one would have. The same holds for the experience buckets. A fresh
    startup burst instead would let every server spend up to B + L + burst + refill, over its budget. The cost:
    right after a restart every server, and every server that joins then, is throttled until refill catches up
    (Get/Set: 100 tokens of burst missing; the rest: a minute's worth). Not covered: `begin_shutdown` boosts once
    per ledger, so a server that began shutting down before the restart and is told so again gets a second boost.

    >>> ledger = BudgetLedger(ManualClock(), restarted=True)
    >>> ledger.register_server("job-1", players=10)
    True
    >>> ledger.available("job-1", RequestType.STANDARD_WRITE)
    0
    """

    def __init__(self, clock: Clock, profile: str | BudgetProfile = "current", *,
                 lease_ttl_ms: int = DEFAULT_LEASE_TTL_MS, release_grace_ms: int = DEFAULT_RELEASE_GRACE_MS,
                 enforce_experience_limits: bool = True, restarted: bool = False) -> None:
        self._profile = _check_profile(profile)
        self._lease_ttl_ms = _check_int(lease_ttl_ms, "lease_ttl_ms", 1)
        self._release_grace_ms = _check_int(release_grace_ms, "release_grace_ms", 0)
        self._clock = clock
        self._rates, self._bucket_of = _profile_tables(self._profile)
        self._enforce_experience = bool(enforce_experience_limits)
        self._restarted = bool(restarted)
        self._servers: dict[str, _Server] = {}
        self._ccu = 0
        now = clock.now()
        self._experience = {c: _Bucket(r.per_minute(0), EXPERIENCE_CAP_MINUTES,
                                       0 if self._restarted else r.per_minute(0))
                            for c, r in EXPERIENCE_RATES.items()}
        self._experience_settled_at = now
        self._leases: dict[str, _LeaseRecord] = {}
        self._deadlines: deque[tuple[int, str]] = deque()    # (expires_at + grace, lease_id), in grant order
        self._tag = new_id(12)
        self._next_lease = 0
        self._granted = self._returned = self._denied = 0
        self._duplicate_releases = self._late_releases = self._unknown_releases = 0

    # -- servers ------------------------------------------------------------------------------------------------------

    @property
    def profile(self) -> BudgetProfile:
        return self._profile

    @property
    def restarted(self) -> bool:
        """True if this ledger replaces one that died: its buckets all start empty (see the class docstring)."""
        return self._restarted

    @property
    def ccu(self) -> int:
        """Players online in the experience: the sum over registered servers."""
        return self._ccu

    def register_server(self, server_id: str, players: int = 0) -> bool:
        """Start a server's budget with its startup burst (nothing on a `restarted` ledger); True if it is new.

        Delivered twice: the second call finds the server and changes nothing (not even its players: use
        `set_players`), returning False. A removed server's id registers again as a new server, with a fresh burst
        (again nothing on a `restarted` ledger).
        """
        _check_server_id(server_id)
        _check_int(players, "players", 0)
        if server_id in self._servers:
            return False
        now = self._clock.now()
        buckets = {}
        for request_type in RequestType:
            owner = self._bucket_of[request_type]
            if owner is request_type:
                rate = self._rates[owner].per_minute(players)
                start = 0 if self._restarted else STARTUP_BURST.get(owner, rate)
                buckets[owner] = _Bucket(rate, BUCKET_CAP_MINUTES, start)
        self._settle_experience(now)
        self._servers[server_id] = _Server(players, buckets, now)
        self._set_ccu(self._ccu + players)
        return True

    def set_players(self, server_id: str, players: int) -> None:
        """Change a server's players: its rates (and the experience's, through the CCU) change from now on.

        Buckets first refill up to now at the old rates; a lower rate also lowers the cap, and tokens above the new
        cap are dropped. Delivered twice: the second call sets the same count again, which changes nothing.
        """
        _check_int(players, "players", 0)
        server = self._server(server_id)
        now = self._clock.now()
        self._settle_server(server, now)
        self._settle_experience(now)
        server.players, old = players, server.players
        for owner, bucket in server.buckets.items():
            bucket.set_rate(self._rate(server, owner))
        self._set_ccu(self._ccu - old + players)

    def set_rate_limit(self, server_id: str, request_type: RequestType | str, base: int, per_player: int) -> int:
        """SetRateLimitForRequestType: lower one server's own limit of `request_type` to `base + per_player x n`
        per minute (bounds [0, 10000] and [0, 200], see `check_rate_limit`); the server's rate becomes the lower of
        Roblox's and this one, so it never rises above Roblox's. Returns the new per-minute rate.

        Setting it again replaces the previous setting (Roblox's own limit again: set it at or above Roblox's
        numbers). Under `legacy`, a type that shares a bucket sets the shared bucket (StandardRemove sets
        StandardWrite's). The bucket first refills at the old rate; a lower rate lowers its cap and drops the tokens
        above it. The experience-wide buckets are not changed. Delivered twice: the same setting again, no change.
        An unknown server is registered first (with 0 players), so a limit set before the first request holds.
        Forgotten with the server (`remove_server`) and by a restarted ledger.
        """
        request_type, rate = check_rate_limit(request_type, base, per_player)
        self.register_server(server_id, 0)
        server = self._server(server_id)
        self._settle_server(server, self._clock.now())
        owner = self._bucket_of[request_type]
        server.limits[owner] = rate
        bucket = server.buckets[owner]
        bucket.set_rate(self._rate(server, owner))
        return bucket.rate

    def _rate(self, server: _Server, owner: RequestType) -> int:
        """A server's per-minute rate for the bucket `owner`: Roblox's, or its own lower limit."""
        rate = self._rates[owner].per_minute(server.players)
        limit = server.limits.get(owner)
        return rate if limit is None else min(rate, limit.per_minute(server.players))

    def take_experience(self, request_type: RequestType | str, count: int = 1) -> int:
        """Spend `count` tokens of the experience-wide bucket of `request_type` for a request that no game server
        makes (Open Cloud v2 shares these buckets with the game servers): 0 when taken, otherwise the simulated ms
        until they will be there (nothing is taken). With `enforce_experience_limits=False` it always takes
        (the bucket may then run dry but never below 0). Delivered twice: the tokens are taken twice (the budget
        is under-used, never over-used).
        """
        request_type = _check_request_type(request_type)
        count = _check_int(count, "count", 1)
        self._settle_experience(self._clock.now())
        shared = self._experience[EXPERIENCE_CATEGORY[request_type]]
        if self._enforce_experience and shared.whole < count:
            missing = count * _UNITS - shared.units
            return max(1, -(-missing // shared.rate))
        shared.units = max(0, shared.units - count * _UNITS)
        return 0

    def begin_shutdown(self, server_id: str) -> bool:
        """BindToClose: raise each of the server's buckets to max(current, 150 x rate / 60) tokens, once.

        The boost (2.5 minutes' worth) is always below the 3-minute cap, so the cap never cuts it. The experience
        buckets get no boost. Returns True the first time; delivered twice (or called again) it changes nothing and
        returns False, also after `set_players` has changed the rates. A server the ledger does not know (it never
        had players nor leased anything, or it was removed) has no budget to boost: nothing changes and it returns
        False, as `remove_server` does for it; a lease it takes later registers it, unboosted.
        """
        server = self._servers.get(_check_server_id(server_id))
        if server is None or server.shutting_down:
            return False
        self._settle_server(server, self._clock.now())
        for bucket in server.buckets.values():
            bucket.raise_to(SHUTDOWN_BOOST_SECONDS * bucket.rate * (_UNITS // 60))
        server.shutting_down = True
        return True

    def remove_server(self, server_id: str) -> bool:
        """Forget a server: its players leave the CCU, its leases are dropped (their releases become UNKNOWN and are
        ignored; their tokens count as spent). True if it was registered; delivered twice, the second call finds
        nothing and returns False."""
        _check_server_id(server_id)
        server = self._servers.get(server_id)
        if server is None:
            return False
        self._settle_experience(self._clock.now())
        for lease_id in server.lease_ids:
            self._leases.pop(lease_id, None)
        del self._servers[server_id]
        self._set_ccu(self._ccu - server.players)
        return True

    def available(self, server_id: str, request_type: RequestType | str) -> int:
        """Whole tokens in the server's bucket now (GetRequestBudgetForRequestType): tokens already leased out are
        not included (the client adds the unspent ones it holds). Reads only."""
        request_type = _check_request_type(request_type)
        server = self._server(server_id)
        self._settle_server(server, self._clock.now())
        return server.buckets[self._bucket_of[request_type]].whole

    # -- leases -------------------------------------------------------------------------------------------------------

    def lease(self, server_id: str, request_type: RequestType | str, want: int) -> Lease:
        """Take up to `want` tokens (>= 1) for one server and request type: min(want, whole tokens of the server's
        bucket, whole tokens of the experience bucket), deducted from both at once.

        Delivered twice: a second, independent lease; the duplicate's tokens are unused by anyone, so they count as
        spent unless released (the budget is under-used, never over-used).
        """
        request_type = _check_request_type(request_type)
        want = _check_int(want, "want", 1)
        server = self._server(server_id)
        now = self._clock.now()
        self.expire()
        self._settle_server(server, now)
        self._settle_experience(now)
        bucket = server.buckets[self._bucket_of[request_type]]
        shared = self._experience[EXPERIENCE_CATEGORY[request_type]]
        granted = min(want, bucket.whole)
        if self._enforce_experience:
            granted = min(granted, shared.whole)
        lease_id = f"{self._tag}-{self._next_lease}"
        self._next_lease += 1
        expires_at = now + self._lease_ttl_ms
        if granted == 0:
            server.denied[request_type] += 1
            self._denied += 1
            wait = bucket.ms_until_one()
            if self._enforce_experience:
                wait = max(wait, shared.ms_until_one())
            limited_by = "GameServer" if bucket.whole == 0 else "Experience"
            return Lease(lease_id, server_id, request_type, 0, expires_at, max(wait, 1), limited_by)
        bucket.units -= granted * _UNITS
        shared.units = max(0, shared.units - granted * _UNITS)
        self._leases[lease_id] = _LeaseRecord(server_id, request_type, granted, expires_at)
        self._deadlines.append((expires_at + self._release_grace_ms, lease_id))
        server.lease_ids.add(lease_id)
        server.granted[request_type] += granted
        self._granted += granted
        return Lease(lease_id, server_id, request_type, granted, expires_at, 0)

    def release(self, lease_id: str, unused: int) -> ReleaseOutcome:
        """Give back the `unused` tokens of a lease (0 <= unused <= granted) to the server's and the experience
        bucket, each capped at its cap.

        Honoured once, and only before `expires_at + grace`; otherwise ignored. Delivered twice: the second finds
        the lease released and returns ALREADY_RELEASED, changing nothing. Why no server can overspend: its tokens
        left its buckets when granted; the only way back is this call, which returns at most what the holder says
        it did not use, at most once per lease, so spent <= granted - returned <= what the buckets held.
        """
        if not isinstance(lease_id, str):
            raise ConfigError(f"lease_id must be a str, got {lease_id!r}")
        _check_int(unused, "unused", 0)
        record = self._leases.get(lease_id)
        if record is None:
            self._unknown_releases += 1
            return ReleaseOutcome.UNKNOWN
        if unused > record.granted:
            raise ConfigError(f"release of lease {lease_id!r} gives back {unused} tokens, "
                              f"but it granted only {record.granted}")
        if record.released:
            self._duplicate_releases += 1
            return ReleaseOutcome.ALREADY_RELEASED
        now = self._clock.now()
        if now >= record.expires_at + self._release_grace_ms:
            self._late_releases += 1
            return ReleaseOutcome.TOO_LATE
        record.released = True
        server = self._servers[record.server_id]
        if unused:
            self._settle_server(server, now)
            self._settle_experience(now)
            server.buckets[self._bucket_of[record.request_type]].credit(unused)
            self._experience[EXPERIENCE_CATEGORY[record.request_type]].credit(unused)
            server.returned[record.request_type] += unused
            self._returned += unused
        return ReleaseOutcome.CREDITED

    def expire(self) -> int:
        """Forget leases whose release would no longer be honoured (now >= expires_at + grace); how many went.

        Housekeeping only (`lease` runs it too), so memory stays bounded by the leases of the last TTL + grace. A
        release arriving afterwards finds nothing (UNKNOWN) and is ignored, as it would have been anyway. Delivered
        twice: the second finds nothing more to forget.
        """
        now = self._clock.now()
        forgotten = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, lease_id = self._deadlines.popleft()
            record = self._leases.pop(lease_id, None)
            if record is not None:
                forgotten += 1
                server = self._servers.get(record.server_id)
                if server is not None:
                    server.lease_ids.discard(lease_id)
        return forgotten

    # -- snapshot -----------------------------------------------------------------------------------------------------

    def statistics(self) -> BudgetStatistics:
        """A snapshot of every bucket, lease and counter, as of now."""
        now = self._clock.now()
        self._settle_experience(now)
        outstanding: dict[str, int] = {}
        for record in self._leases.values():
            if not record.released and now < record.expires_at + self._release_grace_ms:
                outstanding[record.server_id] = outstanding.get(record.server_id, 0) + 1
        servers = {}
        for server_id, server in self._servers.items():
            self._settle_server(server, now)
            per_type = {t: server.buckets[self._bucket_of[t]] for t in RequestType}
            servers[server_id] = ServerBudgetStatistics(
                server_id=server_id,
                players=server.players,
                shutting_down=server.shutting_down,
                tokens={t: b.units / _UNITS for t, b in per_type.items()},
                rates={t: b.rate for t, b in per_type.items()},
                caps={t: b.cap_units // _UNITS for t, b in per_type.items()},
                leases_outstanding=outstanding.get(server_id, 0),
                granted=dict(server.granted),
                returned=dict(server.returned),
                denied=dict(server.denied),
            )
        experience = {c: ExperienceBucketStatistics(c, b.units / _UNITS, b.rate, b.cap_units // _UNITS)
                      for c, b in self._experience.items()}
        return BudgetStatistics(
            profile=self._profile, now_ms=now, ccu=self._ccu, enforce_experience_limits=self._enforce_experience,
            servers=servers, experience=experience, leases_outstanding=sum(outstanding.values()),
            granted=self._granted, returned=self._returned, denied=self._denied,
            duplicate_releases=self._duplicate_releases, late_releases=self._late_releases,
            unknown_releases=self._unknown_releases, restarted=self._restarted,
        )

    # -- internals ----------------------------------------------------------------------------------------------------

    def _server(self, server_id: str) -> _Server:
        server = self._servers.get(_check_server_id(server_id))
        if server is None:
            raise ConfigError(f"unknown game server {server_id!r}: register_server({server_id!r}, players) first")
        return server

    def _settle_server(self, server: _Server, now: int) -> None:
        elapsed = now - server.settled_at
        if elapsed > 0:
            for bucket in server.buckets.values():
                bucket.refill(elapsed)
            server.settled_at = now

    def _settle_experience(self, now: int) -> None:
        elapsed = now - self._experience_settled_at
        if elapsed > 0:
            for bucket in self._experience.values():
                bucket.refill(elapsed)
            self._experience_settled_at = now

    def _set_ccu(self, ccu: int) -> None:
        """Call after `_settle_experience(now)`: the old CCU's refill is in, the new rates apply from now."""
        self._ccu = ccu
        for category, bucket in self._experience.items():
            bucket.set_rate(EXPERIENCE_RATES[category].per_minute(ccu))
