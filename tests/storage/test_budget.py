"""BudgetLedger on a manual clock: Roblox's budget formulas, burst, refill, caps, shutdown, experience limits, leases,
and the property that no stream of lease/spend/release messages lets a server or the experience overspend."""

from __future__ import annotations

import pickle
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lodestore.storage._budget import (
    BudgetLedger,
    BudgetProfile,
    ExperienceCategory,
    Lease,
    ReleaseOutcome,
)
from lodestore.storage._clock import ManualClock
from lodestore.storage._errors import ConfigError
from lodestore.storage._limits import RequestType

RT = RequestType
T0 = 1_700_000_000_000
HOUR_S = 3600

# The formulas, written out again here so the tests do not trust the module's tables.
RATES = {
    "current": {
        RT.STANDARD_READ: (60, 40), RT.STANDARD_WRITE: (60, 40), RT.STANDARD_LIST: (5, 2),
        RT.STANDARD_REMOVE: (60, 40), RT.REMOVE_VERSION: (5, 2), RT.ORDERED_READ: (60, 40),
        RT.ORDERED_WRITE: (30, 5), RT.ORDERED_LIST: (5, 2), RT.ORDERED_REMOVE: (30, 5),
    },
    "legacy": {
        RT.STANDARD_READ: (60, 10), RT.STANDARD_WRITE: (60, 10), RT.STANDARD_LIST: (5, 2),
        RT.STANDARD_REMOVE: (60, 10), RT.REMOVE_VERSION: (5, 2), RT.ORDERED_READ: (60, 10),
        RT.ORDERED_WRITE: (30, 5), RT.ORDERED_LIST: (5, 2), RT.ORDERED_REMOVE: (30, 5),
    },
}
# Which bucket a request type spends (legacy: one budget per call family).
OWNER = {
    "current": {t: t for t in RT},
    "legacy": {**{t: t for t in RT}, RT.STANDARD_REMOVE: RT.STANDARD_WRITE, RT.ORDERED_READ: RT.STANDARD_READ,
               RT.ORDERED_REMOVE: RT.ORDERED_WRITE},
}
BURST = {RT.STANDARD_READ: 100, RT.STANDARD_WRITE: 100, RT.ORDERED_LIST: 10, RT.ORDERED_WRITE: 50}
EXPERIENCE = {"read": (300, 40), "write": (300, 20), "list": (300, 2), "remove": (300, 40)}
CATEGORY = {
    RT.STANDARD_READ: "read", RT.ORDERED_READ: "read", RT.STANDARD_WRITE: "write", RT.ORDERED_WRITE: "write",
    RT.STANDARD_LIST: "list", RT.ORDERED_LIST: "list", RT.STANDARD_REMOVE: "remove", RT.ORDERED_REMOVE: "remove",
    RT.REMOVE_VERSION: "remove",
}
TTL, GRACE = 10_000, 5_000


def rate(profile: str, request_type: RequestType, players: int) -> int:
    base, per = RATES[profile][request_type]
    return base + per * players


def burst(profile: str, request_type: RequestType, players: int) -> int:
    owner = OWNER[profile][request_type]
    return BURST.get(owner, rate(profile, owner, players))


def experience_rate(category: str, ccu: int) -> int:
    base, per = EXPERIENCE[category]
    return base + per * ccu


def drain(ledger: BudgetLedger, server_id: str, request_type: RequestType) -> int:
    return ledger.lease(server_id, request_type, 10**9).granted


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


# ---------------------------------------------------------------------------------------------------------------------
# Per-server formulas


@pytest.mark.parametrize("profile", ["current", "legacy"])
@pytest.mark.parametrize("players", [0, 1, 50])
@pytest.mark.parametrize("request_type", list(RT))
def test_refill_rate_follows_the_formula(clock, profile, players, request_type) -> None:
    ledger = BudgetLedger(clock, profile, enforce_experience_limits=False)
    ledger.register_server("s", players)
    drain(ledger, "s", request_type)
    assert ledger.available("s", request_type) == 0
    clock.advance(seconds=1)
    assert ledger.available("s", request_type) == rate(profile, request_type, players) // 60
    clock.advance(seconds=59)
    assert ledger.available("s", request_type) == rate(profile, request_type, players)
    assert ledger.statistics().servers["s"].rates[request_type] == rate(profile, request_type, players)


@pytest.mark.parametrize("profile", ["current", "legacy"])
@pytest.mark.parametrize("players", [0, 1, 50])
def test_new_server_starts_with_its_burst(clock, profile, players) -> None:
    ledger = BudgetLedger(clock, profile)
    ledger.register_server("s", players)
    for request_type in RT:
        assert ledger.available("s", request_type) == burst(profile, request_type, players), request_type


@pytest.mark.parametrize("profile", ["current", "legacy"])
@pytest.mark.parametrize("players", [0, 1, 50])
def test_bucket_is_capped_at_three_minutes(clock, profile, players) -> None:
    ledger = BudgetLedger(clock, profile)
    ledger.register_server("s", players)
    clock.advance(seconds=HOUR_S)
    stats = ledger.statistics().servers["s"]
    for request_type in RT:
        cap = 3 * rate(profile, request_type, players)
        assert ledger.available("s", request_type) == cap
        assert stats.caps[request_type] == cap and stats.tokens[request_type] == cap


def test_refill_keeps_fractional_tokens(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 0)                 # StandardList: 5 per minute, one token every 12 s
    drain(ledger, "s", RT.STANDARD_LIST)
    for _ in range(11):
        clock.advance(seconds=1)
        assert ledger.available("s", RT.STANDARD_LIST) == 0
    clock.advance(seconds=1)
    assert ledger.available("s", RT.STANDARD_LIST) == 1


def test_current_profile_buckets_are_separate_and_legacy_ones_shared(clock) -> None:
    current = BudgetLedger(clock, "current")
    legacy = BudgetLedger(clock, BudgetProfile.LEGACY)
    for ledger in (current, legacy):
        ledger.register_server("s", 0)
        ledger.lease("s", RT.STANDARD_REMOVE, 40)
        ledger.lease("s", RT.ORDERED_REMOVE, 20)
        ledger.lease("s", RT.ORDERED_READ, 10)
    assert current.available("s", RT.STANDARD_WRITE) == 100
    assert current.available("s", RT.ORDERED_WRITE) == 50
    assert current.available("s", RT.STANDARD_READ) == 100
    assert legacy.available("s", RT.STANDARD_WRITE) == legacy.available("s", RT.STANDARD_REMOVE) == 60
    assert legacy.available("s", RT.ORDERED_WRITE) == legacy.available("s", RT.ORDERED_REMOVE) == 30
    assert legacy.available("s", RT.STANDARD_READ) == legacy.available("s", RT.ORDERED_READ) == 90


def test_set_players_changes_the_rate_from_then_on(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 0)
    drain(ledger, "s", RT.STANDARD_READ)
    clock.advance(seconds=30)                      # 30 s at 60/min
    ledger.set_players("s", 1)
    clock.advance(seconds=30)                      # 30 s at 100/min
    assert ledger.available("s", RT.STANDARD_READ) == 30 + 50
    ledger.set_players("s", 1)                     # delivered twice: nothing changes
    assert ledger.available("s", RT.STANDARD_READ) == 80
    assert ledger.ccu == 1


def test_fewer_players_lower_the_cap_at_once(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 50)
    clock.advance(seconds=HOUR_S)
    assert ledger.available("s", RT.STANDARD_READ) == 3 * 2060
    ledger.set_players("s", 0)
    assert ledger.available("s", RT.STANDARD_READ) == 180


def test_shutdown_boost_raises_each_bucket_once(clock) -> None:
    ledger = BudgetLedger(clock, enforce_experience_limits=False)
    ledger.register_server("s", 1)
    for request_type in RT:
        drain(ledger, "s", request_type)
    assert ledger.begin_shutdown("s") is True
    for request_type in RT:                        # 150 x rate / 60 = 2.5 minutes' worth
        assert ledger.available("s", request_type) == (150 * rate("current", request_type, 1)) // 60
    assert ledger.statistics().servers["s"].tokens[RT.ORDERED_LIST] == 17.5
    drain(ledger, "s", RT.STANDARD_READ)
    assert ledger.begin_shutdown("s") is False     # delivered twice: no second boost
    assert ledger.available("s", RT.STANDARD_READ) == 0
    assert ledger.statistics().servers["s"].shutting_down


def test_shutdown_boost_never_lowers_a_bucket(clock) -> None:
    ledger = BudgetLedger(clock, enforce_experience_limits=False)
    ledger.register_server("s", 0)
    clock.advance(seconds=HOUR_S)                  # StandardRead at its cap, 180 > 150
    ledger.begin_shutdown("s")
    assert ledger.available("s", RT.STANDARD_READ) == 180
    assert ledger.available("s", RT.ORDERED_WRITE) == 90


def test_a_server_the_ledger_never_saw_shuts_down_and_leaves_without_error(clock) -> None:
    # issue 18: a simulated server that never got a player nor leased anything failed its final BindToClose with
    # "unknown game server ...: register_server first"
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 2)
    before = ledger.statistics()
    assert ledger.begin_shutdown("never-seen") is False       # nothing to boost ...
    assert ledger.remove_server("never-seen") is False        # ... and nothing to forget
    assert ledger.statistics() == before
    with pytest.raises(ConfigError, match="server_id must be a non-empty str"):
        ledger.begin_shutdown("")                              # a bad id is still refused


# ---------------------------------------------------------------------------------------------------------------------
# Experience-wide limits


def test_experience_write_limit_binds_before_the_servers_own(clock) -> None:
    ledger = BudgetLedger(clock)
    for i in range(20):
        ledger.register_server(f"s{i}", 0)
    leases = [ledger.lease(f"s{i}", RT.STANDARD_WRITE, 100) for i in range(20)]
    assert [lease.granted for lease in leases] == [100] * 3 + [0] * 17      # 300 per minute for the experience
    assert all(lease.retry_after_ms == 200 for lease in leases[3:])        # one token per 60000/300 ms
    assert ledger.available("s10", RT.STANDARD_WRITE) == 100               # its own bucket is untouched
    clock.advance(ms=200)
    assert ledger.lease("s10", RT.STANDARD_WRITE, 100).granted == 1
    clock.advance(seconds=60)
    assert ledger.lease("s11", RT.STANDARD_WRITE, 1000).granted == 160     # its own bucket (100 + 60.2) binds now
    assert ledger.statistics().experience[ExperienceCategory.WRITE].tokens == 140   # capped at one minute


def test_experience_limit_off_is_still_reported(clock) -> None:
    ledger = BudgetLedger(clock, enforce_experience_limits=False)
    for i in range(5):
        ledger.register_server(f"s{i}", 0)
    assert sum(ledger.lease(f"s{i}", RT.STANDARD_WRITE, 100).granted for i in range(5)) == 500
    stats = ledger.statistics()
    assert not stats.enforce_experience_limits
    assert stats.experience[ExperienceCategory.WRITE].tokens == 0


@pytest.mark.parametrize("ccu", [0, 1, 50])
@pytest.mark.parametrize("category", list(EXPERIENCE))
def test_experience_formulas(clock, ccu, category) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("big", ccu)
    for i in range(39):
        ledger.register_server(f"s{i}", 0)
    assert ledger.ccu == ccu
    clock.advance(seconds=HOUR_S)
    limit = experience_rate(category, ccu)
    bucket = lambda: ledger.statistics().experience[ExperienceCategory(category)]   # noqa: E731
    assert bucket().rate_per_minute == limit and bucket().cap == limit
    assert bucket().tokens == limit                                          # capped at one minute's worth
    spent = 0
    for server_id in ["big"] + [f"s{i}" for i in range(39)]:
        for request_type in (t for t in RT if CATEGORY[t] == category):
            spent += drain(ledger, server_id, request_type)
    assert spent == limit and bucket().tokens == 0
    clock.advance(seconds=30)
    assert bucket().tokens == limit / 2


def test_ccu_follows_players_and_server_removal(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("a", 10)
    ledger.register_server("b", 5)
    ledger.set_players("a", 12)
    assert ledger.ccu == 17
    assert ledger.remove_server("a") is True
    assert ledger.remove_server("a") is False       # delivered twice
    assert ledger.ccu == 5
    assert ledger.statistics().experience[ExperienceCategory.READ].rate_per_minute == 300 + 40 * 5


def test_ccu_change_refills_at_the_old_rate_first(clock) -> None:
    ledger = BudgetLedger(clock)
    read = lambda: ledger.statistics().experience[ExperienceCategory.READ].tokens   # noqa: E731
    for server_id in ("a", "b", "c"):
        ledger.register_server(server_id, 0)
        drain(ledger, server_id, RT.STANDARD_READ)
    assert read() == 0
    clock.advance(seconds=30)
    ledger.register_server("d", 50)                  # 30 s at 300/min, then 2300/min
    clock.advance(seconds=15)
    ledger.set_players("d", 25)                      # 15 s at 2300/min, then 1300/min
    clock.advance(seconds=6)                         # 6 s at 1300/min
    assert read() == 150 + 2300 / 4 + 1300 / 10
    ledger.remove_server("d")
    assert read() == 300                             # the cap follows the CCU down: one minute at 300/min


def test_experience_capacity_added_by_players_fills_by_refill(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 50)                  # read limit 2300/min, but the bucket starts at 300
    read = lambda: ledger.statistics().experience[ExperienceCategory.READ].tokens   # noqa: E731
    assert read() == 300
    clock.advance(seconds=6)
    assert read() == 300 + 2300 / 10


# ---------------------------------------------------------------------------------------------------------------------
# Leases


def test_lease_deducts_from_both_buckets_at_once(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 0)
    lease = ledger.lease("s", RT.STANDARD_READ, 30)
    assert isinstance(lease, Lease)
    assert (lease.server_id, lease.request_type, lease.granted) == ("s", RT.STANDARD_READ, 30)
    assert lease.expires_at == T0 + TTL and lease.retry_after_ms == 0
    assert ledger.available("s", RT.STANDARD_READ) == 70
    stats = ledger.statistics()
    assert stats.experience[ExperienceCategory.READ].tokens == 270
    assert stats.leases_outstanding == 1 and stats.servers["s"].granted[RT.STANDARD_READ] == 30


def test_lease_grants_what_there_is(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 0)
    assert ledger.lease("s", "OrderedList", 25).granted == 10        # a RequestType's value is accepted
    assert ledger.lease("s", RT.ORDERED_LIST, 1).granted == 0


def test_release_credits_unused_once(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 0)
    lease = ledger.lease("s", RT.STANDARD_READ, 30)
    assert ledger.release(lease.lease_id, 10) is ReleaseOutcome.CREDITED
    assert ledger.available("s", RT.STANDARD_READ) == 80
    assert ledger.release(lease.lease_id, 10) is ReleaseOutcome.ALREADY_RELEASED
    assert ledger.release(lease.lease_id, 30) is ReleaseOutcome.ALREADY_RELEASED
    assert ledger.available("s", RT.STANDARD_READ) == 80
    stats = ledger.statistics()
    assert stats.experience[ExperienceCategory.READ].tokens == 280
    assert (stats.returned, stats.duplicate_releases, stats.leases_outstanding) == (10, 2, 0)


def test_release_after_expiry_and_grace_is_ignored(clock) -> None:
    ledger = BudgetLedger(clock, lease_ttl_ms=TTL, release_grace_ms=GRACE)
    ledger.register_server("s", 0)
    on_time = ledger.lease("s", RT.STANDARD_READ, 30)
    late = ledger.lease("s", RT.STANDARD_READ, 30)
    clock.advance(ms=TTL + GRACE - 1)
    assert ledger.release(on_time.lease_id, 30) is ReleaseOutcome.CREDITED
    before = ledger.statistics()
    clock.advance(ms=1)
    assert ledger.release(late.lease_id, 30) is ReleaseOutcome.TOO_LATE
    after = ledger.statistics()
    assert after.returned == before.returned == 30
    assert after.servers["s"].tokens[RT.STANDARD_READ] == pytest.approx(
        before.servers["s"].tokens[RT.STANDARD_READ] + 0.001)             # 1 ms of refill, no credit
    assert ledger.statistics().late_releases == 1


def test_release_is_capped_at_the_bucket_cap(clock) -> None:
    ledger = BudgetLedger(clock, lease_ttl_ms=HOUR_S * 2000)
    ledger.register_server("s", 0)
    lease = ledger.lease("s", RT.STANDARD_READ, 100)
    clock.advance(seconds=HOUR_S)
    assert ledger.release(lease.lease_id, 100) is ReleaseOutcome.CREDITED
    assert ledger.available("s", RT.STANDARD_READ) == 180
    assert ledger.statistics().experience[ExperienceCategory.READ].tokens == 300


def test_retry_after_when_empty(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 0)                   # StandardRead 60/min: a token a second
    drain(ledger, "s", RT.STANDARD_READ)
    empty = ledger.lease("s", RT.STANDARD_READ, 5)
    assert (empty.granted, empty.retry_after_ms) == (0, 1000)
    clock.advance(ms=250)
    assert ledger.lease("s", RT.STANDARD_READ, 5).retry_after_ms == 750
    clock.advance(ms=750)
    assert ledger.lease("s", RT.STANDARD_READ, 5).granted == 1
    stats = ledger.statistics()
    assert stats.denied == 2 and stats.servers["s"].denied[RT.STANDARD_READ] == 2
    assert ledger.release(empty.lease_id, 0) is ReleaseOutcome.UNKNOWN     # a zero grant is not recorded


def test_expire_forgets_old_leases(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 0)
    old = ledger.lease("s", RT.STANDARD_READ, 1)
    clock.advance(ms=TTL)
    young = ledger.lease("s", RT.STANDARD_READ, 1)
    assert ledger.expire() == 0
    clock.advance(ms=GRACE)
    assert ledger.expire() == 1 and ledger.expire() == 0
    assert ledger.release(old.lease_id, 1) is ReleaseOutcome.UNKNOWN
    assert ledger.release(young.lease_id, 1) is ReleaseOutcome.CREDITED
    assert ledger.statistics().unknown_releases == 1


def test_removed_server_forgets_its_leases_and_registers_anew(clock) -> None:
    ledger = BudgetLedger(clock)
    assert ledger.register_server("s", 3) is True
    assert ledger.register_server("s", 7) is False     # delivered twice: nothing changes
    assert ledger.ccu == 3
    lease = ledger.lease("s", RT.STANDARD_READ, 100)
    ledger.remove_server("s")
    assert ledger.release(lease.lease_id, 100) is ReleaseOutcome.UNKNOWN
    with pytest.raises(ConfigError, match="unknown game server 's'"):
        ledger.available("s", RT.STANDARD_READ)
    ledger.register_server("s", 0)
    assert ledger.available("s", RT.STANDARD_READ) == 100


def test_lease_ids_differ_between_ledgers(clock) -> None:
    one, two = BudgetLedger(clock), BudgetLedger(clock)
    for ledger in (one, two):
        ledger.register_server("s", 0)
    lease = one.lease("s", RT.STANDARD_READ, 50)
    two.lease("s", RT.STANDARD_READ, 50)
    assert two.release(lease.lease_id, 50) is ReleaseOutcome.UNKNOWN     # a restarted actor ignores old leases
    assert two.available("s", RT.STANDARD_READ) == 50


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a typed error naming the problem, and nothing changed


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="unknown budget profile 'modern'"):
        BudgetLedger(ManualClock(T0), "modern")


@pytest.mark.parametrize("call, message", [
    (lambda l: l.register_server("t", -1), "players must be an int >= 0, got -1"),
    (lambda l: l.register_server("t", 1.5), "players must be an int >= 0, got 1.5"),
    (lambda l: l.register_server("", 1), "server_id must be a non-empty str"),
    (lambda l: l.set_players("s", True), "players must be an int >= 0, got True"),
    (lambda l: l.set_players("nope", 1), "unknown game server 'nope'"),
    (lambda l: l.lease("s", RT.STANDARD_READ, 0), "want must be an int >= 1, got 0"),
    (lambda l: l.lease("s", RT.STANDARD_READ, -3), "want must be an int >= 1, got -3"),
    (lambda l: l.lease("s", RT.STANDARD_READ, 2.0), "want must be an int >= 1, got 2.0"),
    (lambda l: l.lease("s", "GetAsync", 1), "unknown request type 'GetAsync'"),
    (lambda l: l.lease("nope", RT.STANDARD_READ, 1), "unknown game server 'nope'"),
    (lambda l: l.available("s", 3), "unknown request type 3"),
    (lambda l: l.release("x", -1), "unused must be an int >= 0, got -1"),
])
def test_bad_input_is_refused_and_changes_nothing(clock, call, message) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 2)
    ledger.lease("s", RT.STANDARD_READ, 1)
    before = ledger.statistics()
    with pytest.raises(ConfigError, match=message):
        call(ledger)
    assert ledger.statistics() == before


def test_releasing_more_than_granted_is_refused_and_the_lease_stays_open(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 0)
    lease = ledger.lease("s", RT.STANDARD_READ, 5)
    before = ledger.statistics()
    with pytest.raises(ConfigError, match="gives back 6 tokens, but it granted only 5"):
        ledger.release(lease.lease_id, 6)
    assert ledger.statistics() == before
    assert ledger.release(lease.lease_id, 5) is ReleaseOutcome.CREDITED


def test_messages_and_snapshots_pickle(clock) -> None:
    ledger = BudgetLedger(clock)
    ledger.register_server("s", 1)
    lease = ledger.lease("s", RT.STANDARD_WRITE, 3)
    assert pickle.loads(pickle.dumps(lease)) == lease
    stats = ledger.statistics()
    assert pickle.loads(pickle.dumps(stats)) == stats
    error = ConfigError("unknown game server 'x'")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


# ---------------------------------------------------------------------------------------------------------------------
# The property: whatever the stream of messages, nobody spends more than the budget allows
#
# The test keeps its own record of what the ledger may hand out: per server and bucket, the startup burst, the integral
# of its rate over the history of player counts, and the shutdown boost; per experience category, one minute's worth
# at the start plus the integral of its rate over the CCU history. At every step:
#     requests the client made <= tokens handed out and not honourably returned ("exposure")
#     exposure + tokens the ledger still holds <= that bound        (so exposure <= bound, tightly)
#     0 <= every bucket <= its cap (3 x rate per server, one minute's worth per experience category).

STARTING = ("a", "b", "c")       # registered before the stream starts
JOINING = ("d", "e")             # registered by a "join" op, if one comes
SERVERS = STARTING + JOINING

_ops = st.one_of(
    st.tuples(st.just("lease"), st.sampled_from(SERVERS), st.sampled_from(list(RT)), st.integers(1, 200),
              st.one_of(st.just(10**9), st.integers(0, 200))),
    st.tuples(st.just("spend"), st.integers(0, 10**6), st.integers(1, 200)),
    st.tuples(st.just("release"), st.integers(0, 10**6), st.booleans()),
    st.tuples(st.just("redeliver"), st.integers(0, 10**6)),
    st.tuples(st.just("advance"), st.one_of(st.integers(0, 2_000), st.integers(0, 40_000), st.integers(0, 900_000))),
    st.tuples(st.just("players"), st.sampled_from(SERVERS), st.integers(0, 50)),
    st.tuples(st.just("shutdown"), st.sampled_from(SERVERS)),
    st.tuples(st.just("remove"), st.sampled_from(SERVERS)),
    st.tuples(st.just("join"), st.sampled_from(JOINING), st.integers(0, 50)),
)


class _Model:
    """What the test knows on its own: servers' player-count history, shutdowns, what the client did."""

    def __init__(self, profile: str, start: int) -> None:
        self.profile = profile
        self.history: dict[str, list[tuple[int, int]]] = {}      # server -> [(from ms, players)]
        self.live: set[str] = set()
        self.shutdown_players: dict[str, int] = {}                # server -> players when it began shutting down
        self.ccu_history = [(start, 0)]
        self.spent: dict[tuple, int] = {}                         # (server, owner bucket) or category -> requests
        self.exposure: dict[tuple, int] = {}                      # granted minus honourably returned

    def players(self, server: str) -> int:
        return self.history[server][-1][1]

    def _ccu_changed(self, now: int) -> None:
        self.ccu_history.append((now, sum(self.players(s) for s in self.live)))

    def join(self, server: str, players: int, now: int) -> None:
        self.history[server] = [(now, players)]
        self.live.add(server)
        self._ccu_changed(now)

    def set_players(self, server: str, players: int, now: int) -> None:
        self.history[server].append((now, players))
        self._ccu_changed(now)

    def remove(self, server: str, now: int) -> None:
        self.live.discard(server)
        self._ccu_changed(now)

    def count(self, table: dict, lease: Lease, tokens: int) -> None:
        for key in ((lease.server_id, OWNER[self.profile][lease.request_type]), (CATEGORY[lease.request_type],)):
            table[key] = table.get(key, 0) + tokens

    @staticmethod
    def _integral(segments: list[tuple[int, int]], per_minute, now: int) -> Fraction:
        ends = [start for start, _ in segments[1:]] + [now]
        return sum((Fraction(per_minute(n) * (end - start), 60_000) for (start, n), end in zip(segments, ends)),
                   Fraction(0))

    def bound(self, key: tuple, now: int) -> Fraction:
        if len(key) == 1:
            (category,) = key
            return 300 + self._integral(self.ccu_history, lambda ccu: experience_rate(category, ccu), now)
        server, owner = key
        history = self.history[server]
        total = burst(self.profile, owner, history[0][1])
        total += self._integral(history, lambda n: rate(self.profile, owner, n), now)
        if server in self.shutdown_players:
            total += Fraction(150 * rate(self.profile, owner, self.shutdown_players[server]), 60)
        return total


def _exact(tokens: float) -> Fraction:
    return Fraction(round(tokens * 60_000), 60_000)      # the ledger counts in 1/60,000 tokens


@settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profile=st.sampled_from(["current", "legacy"]),
       players=st.lists(st.integers(0, 50), min_size=len(STARTING), max_size=len(STARTING)),
       ops=st.lists(_ops, max_size=60))
def test_no_stream_of_messages_lets_anyone_overspend(profile, players, ops) -> None:
    clock = ManualClock(T0)
    ledger = BudgetLedger(clock, profile, lease_ttl_ms=TTL, release_grace_ms=GRACE)
    model = _Model(profile, T0)
    for server, n in zip(STARTING, players):
        ledger.register_server(server, n)
        model.join(server, n, T0)
    held: list[dict] = []                      # the client's leases: {"lease", "spent", "released"}
    sent: list[tuple[str, int]] = []           # releases sent, for late re-deliveries

    def spend(entry: dict, k: int) -> None:
        lease: Lease = entry["lease"]
        if entry["released"] or clock.now() >= lease.expires_at or lease.server_id not in model.live:
            return                                                     # the client spends only a live lease
        k = min(k, lease.granted - entry["spent"])
        entry["spent"] += k
        model.count(model.spent, lease, k)

    for op in ops:
        kind, now = op[0], clock.now()
        if kind == "lease":
            _, server, request_type, want, spend_now = op
            if server not in model.live:
                with pytest.raises(ConfigError, match="unknown game server"):
                    ledger.lease(server, request_type, want)
                continue
            lease = ledger.lease(server, request_type, want)
            assert 0 <= lease.granted <= want and lease.expires_at == now + TTL
            assert (lease.retry_after_ms > 0) == (lease.granted == 0)
            if lease.granted:
                model.count(model.exposure, lease, lease.granted)
                held.append({"lease": lease, "spent": 0, "released": False})
                spend(held[-1], spend_now)
        elif kind == "spend" and held:
            spend(held[op[1] % len(held)], op[2])
        elif kind == "release" and held:
            entry = held[op[1] % len(held)]
            lease, unused = entry["lease"], entry["lease"].granted - entry["spent"]
            honoured = not entry["released"] and now < lease.expires_at + GRACE and lease.server_id in model.live
            outcome = ledger.release(lease.lease_id, unused)
            assert (outcome is ReleaseOutcome.CREDITED) == honoured, (outcome, honoured)
            if honoured:
                model.count(model.exposure, lease, -unused)
            entry["released"] = True                                   # the client never spends it again
            sent.append((lease.lease_id, unused))
            if op[2]:                                                  # Ray delivers it twice
                assert ledger.release(lease.lease_id, unused) is not ReleaseOutcome.CREDITED
        elif kind == "redeliver" and sent:
            assert ledger.release(*sent[op[1] % len(sent)]) is not ReleaseOutcome.CREDITED
        elif kind == "advance":
            clock.advance(ms=op[1])
            if op[1] % 3 == 0:
                ledger.expire()
        elif kind == "players" and op[1] in model.live:
            ledger.set_players(op[1], op[2])
            model.set_players(op[1], op[2], now)
        elif kind == "shutdown" and op[1] in model.live:
            assert ledger.begin_shutdown(op[1]) is (op[1] not in model.shutdown_players)
            model.shutdown_players.setdefault(op[1], model.players(op[1]))
        elif kind == "remove" and op[1] in model.live:
            assert ledger.remove_server(op[1])
            model.remove(op[1], now)
        elif kind == "join" and op[1] not in model.history:
            assert ledger.register_server(op[1], op[2])
            model.join(op[1], op[2], now)

        now = clock.now()
        stats = ledger.statistics()
        for key, exposure in model.exposure.items():
            if len(key) == 1:
                held_now = _exact(stats.experience[ExperienceCategory(key[0])].tokens)
            elif key[0] in model.live:
                held_now = _exact(stats.servers[key[0]].tokens[key[1]])
            else:
                held_now = Fraction(0)                                 # a removed server's bucket is gone
            assert model.spent.get(key, 0) <= exposure, key
            assert exposure + held_now <= model.bound(key, now), key
        assert stats.ccu == model.ccu_history[-1][1]
        assert set(stats.servers) == model.live
        for server, server_stats in stats.servers.items():
            n = model.players(server)
            assert server_stats.players == n
            for request_type in RT:
                cap = 3 * rate(profile, request_type, n)
                assert server_stats.caps[request_type] == cap
                assert 0 <= server_stats.tokens[request_type] <= cap
                assert ledger.available(server, request_type) == int(server_stats.tokens[request_type])
        for category, bucket in stats.experience.items():
            cap = experience_rate(category.value, stats.ccu)
            assert bucket.cap == cap and 0 <= bucket.tokens <= cap
