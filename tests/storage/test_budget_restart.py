"""BudgetLedger(restarted=True): the ledger a restarted budget actor builds. It knows nothing of what was spent before,
so every bucket starts empty; the property that a crash of the budget actor never lets a server or the experience
spend more than one uninterrupted ledger would have let it."""

from __future__ import annotations

import pickle
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lodestore.storage._budget import BudgetLedger, ExperienceCategory, ReleaseOutcome
from lodestore.storage._clock import ManualClock
from lodestore.storage._limits import RequestType
# the formulas, written out in the budget tests (the tests do not trust the module's tables)
from tests.storage.test_budget import BURST, CATEGORY, EXPERIENCE, RATES

RT = RequestType
T0 = 1_700_000_000_000
TTL, GRACE = 10_000, 5_000


def rate(request_type: RequestType, players: int, profile: str = "current") -> int:
    base, per = RATES[profile][request_type]
    return base + per * players


def experience_rate(category: str, ccu: int) -> int:
    base, per = EXPERIENCE[category]
    return base + per * ccu


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def crash_and_restart(clock: ManualClock, **options) -> BudgetLedger:
    """The ledger a restarted budget actor builds; the old one is simply never called again."""
    return BudgetLedger(clock, restarted=True, **options)


# ---------------------------------------------------------------------------------------------------------------------
# Servers start empty


@pytest.mark.parametrize("profile", ["current", "legacy"])
def test_restarted_ledger_grants_nothing_at_once_to_a_server_known_before(clock, profile) -> None:
    old = BudgetLedger(clock, profile)
    old.register_server("s", 10)
    assert old.lease("s", RT.STANDARD_WRITE, 30).granted == 30
    clock.advance(seconds=1)
    ledger = crash_and_restart(clock, profile=profile)
    assert ledger.register_server("s", 10) is True       # new to this ledger, but no startup burst
    for request_type in RT:
        assert ledger.available("s", request_type) == 0, request_type
        lease = ledger.lease("s", request_type, 1)
        assert lease.granted == 0, request_type
        assert lease.retry_after_ms == -(-60_000 // rate(request_type, 10, profile)), request_type


def test_restarted_ledger_grants_exactly_the_refill(clock) -> None:
    ledger = crash_and_restart(clock)
    ledger.register_server("s", 10)                         # StandardWrite: 460 per minute, no burst
    clock.advance(seconds=30)
    assert ledger.lease("s", RT.STANDARD_WRITE, 10**9).granted == 230
    clock.advance(seconds=3)
    assert ledger.available("s", RT.STANDARD_WRITE) == 23
    clock.advance(seconds=10 * 60)                          # then refill stops at the usual 3-minute cap
    assert ledger.available("s", RT.STANDARD_WRITE) == 3 * 460


def test_implicit_registration_through_a_lease_also_starts_empty(clock) -> None:
    # What the budget actor does on every lease: register (a no-op when known), then lease.
    ledger = crash_and_restart(clock)
    ledger.register_server("s", 0)
    assert ledger.lease("s", RT.STANDARD_READ, 10**9).granted == 0
    clock.advance(seconds=1)
    ledger.register_server("s", 0)                          # delivered again: changes nothing
    assert ledger.lease("s", RT.STANDARD_READ, 10**9).granted == 1


def test_servers_joining_or_rejoining_after_a_restart_also_start_empty(clock) -> None:
    ledger = crash_and_restart(clock)
    ledger.register_server("s", 5)
    clock.advance(seconds=3600)
    assert ledger.register_server("late", 5) is True      # the ledger cannot tell it from one known before
    assert ledger.available("late", RT.STANDARD_READ) == 0
    assert ledger.available("s", RT.STANDARD_READ) == 3 * rate(RT.STANDARD_READ, 5)
    assert ledger.remove_server("s") and ledger.register_server("s", 5)
    assert ledger.available("s", RT.STANDARD_READ) == 0


def test_shutdown_boost_still_applies_after_a_restart(clock) -> None:
    ledger = crash_and_restart(clock)
    ledger.register_server("s", 10)
    assert ledger.available("s", RT.STANDARD_WRITE) == 0
    assert ledger.begin_shutdown("s") is True
    for request_type in RT:
        assert ledger.available("s", request_type) == 150 * rate(request_type, 10) // 60, request_type
    assert ledger.begin_shutdown("s") is False             # delivered twice: no second boost
    assert ledger.statistics().servers["s"].shutting_down


# ---------------------------------------------------------------------------------------------------------------------
# The experience starts empty


def test_experience_buckets_start_empty_after_a_restart(clock) -> None:
    ledger = crash_and_restart(clock)
    assert all(bucket.tokens == 0 for bucket in ledger.statistics().experience.values())
    ledger.register_server("s", 50)                         # CCU 50
    clock.advance(seconds=6)
    for category, bucket in ledger.statistics().experience.items():
        assert bucket.tokens == experience_rate(category.value, 50) / 10, category
    # StandardWrite: the server holds 2060 / 10 = 206, the experience 1300 / 10 = 130, so the experience binds.
    assert ledger.available("s", RT.STANDARD_WRITE) == 206
    assert ledger.lease("s", RT.STANDARD_WRITE, 10**9).granted == 130


# ---------------------------------------------------------------------------------------------------------------------
# Old leases


def test_releases_of_old_ledger_leases_are_ignored_and_credit_nothing(clock) -> None:
    old = BudgetLedger(clock)
    old.register_server("s", 0)
    old_lease = old.lease("s", RT.STANDARD_WRITE, 100)
    assert old_lease.granted == 100
    ledger = crash_and_restart(clock)
    ledger.register_server("s", 0)
    clock.advance(seconds=60)                               # StandardWrite: 60 per minute
    own = ledger.lease("s", RT.STANDARD_WRITE, 10)
    assert own.granted == 10
    assert own.lease_id != old_lease.lease_id               # same counter, different tag

    assert ledger.release(old_lease.lease_id, unused=100) is ReleaseOutcome.UNKNOWN
    assert ledger.available("s", RT.STANDARD_WRITE) == 50
    stats = ledger.statistics()
    assert stats.returned == 0 and stats.unknown_releases == 1
    assert stats.leases_outstanding == 1                    # its own lease is untouched
    assert stats.experience[ExperienceCategory.WRITE].tokens == 300 - 10

    assert ledger.release(own.lease_id, unused=10) is ReleaseOutcome.CREDITED
    assert ledger.available("s", RT.STANDARD_WRITE) == 60


# ---------------------------------------------------------------------------------------------------------------------
# Statistics


def test_statistics_report_a_restarted_ledger(clock) -> None:
    assert BudgetLedger(clock).statistics().restarted is False
    assert BudgetLedger(clock).restarted is False
    ledger = crash_and_restart(clock)
    ledger.register_server("s", 1)
    stats = ledger.statistics()
    assert ledger.restarted is True and stats.restarted is True
    assert stats.servers["s"].tokens[RT.STANDARD_READ] == 0
    assert pickle.loads(pickle.dumps(stats)) == stats


# ---------------------------------------------------------------------------------------------------------------------
# The property: a crash and restart of the ledger at any point never lets a server or the experience be granted more
# tokens than one uninterrupted ledger could have granted.
#
# For a bucket of rate r per minute, cap C and starting tokens S, an uninterrupted ledger's grants minus honoured
# releases ("net") satisfy, for every time t and window [a, b]:
#     net over [T0, t] <= S + r x (t - T0)          net over [a, b] <= C + r x (b - a)
# The test checks both over the grants of the old and the new ledger together; the client keeps its old leases and
# releases them (to the new ledger, the only one it can reach) after the restart.

SERVERS = ("a", "b")

_ops = st.one_of(
    st.tuples(st.just("lease"), st.sampled_from(SERVERS), st.sampled_from(list(RT)),
              st.one_of(st.integers(1, 300), st.just(10**9))),
    st.tuples(st.just("greedy")),                   # every server leases all it can of every request type
    st.tuples(st.just("release"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("advance"), st.one_of(st.integers(0, 2_000), st.integers(0, 60_000), st.integers(0, 400_000))),
)


@st.composite
def _histories(draw) -> tuple[list[tuple], int]:
    """A stream of client operations and the index of the op before which the budget actor restarts."""
    ops = draw(st.lists(_ops, max_size=50))
    return ops, draw(st.integers(0, len(ops)))


def _check_net(events: list[tuple[int, int]], start: int, cap: int, per_minute: int, key) -> None:
    """events: (ms, tokens granted (+) or credited back (-)), in time order."""
    prefix: list[tuple[int, int]] = []                   # (time, net of all events up to and including it)
    net = 0
    for at, delta in events:
        net += delta
        if prefix and prefix[-1][0] == at:
            prefix[-1] = (at, net)
        else:
            prefix.append((at, net))
    for j, (b, net_b) in enumerate(prefix):
        assert net_b <= start + Fraction(per_minute * (b - T0), 60_000), (key, b - T0, net_b)
        for i in range(j + 1):
            before = prefix[i - 1][1] if i else 0
            a = prefix[i][0]
            assert net_b - before <= cap + Fraction(per_minute * (b - a), 60_000), (key, a - T0, b - T0)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(players=st.lists(st.integers(0, 50), min_size=len(SERVERS), max_size=len(SERVERS)),
       history=_histories())
def test_a_restart_never_grants_more_than_one_uninterrupted_ledger(players, history) -> None:
    ops, restart_at = history
    clock = ManualClock(T0)
    players_of = dict(zip(SERVERS, players))
    ledger = BudgetLedger(clock, lease_ttl_ms=TTL, release_grace_ms=GRACE)
    for server in SERVERS:
        ledger.register_server(server, players_of[server])
    generation = 0                                       # which ledger the client's messages reach
    held: list[tuple[int, object]] = []                  # (generation, Lease) the client was granted
    events: dict[tuple, list[tuple[int, int]]] = {}

    def record(lease, tokens: int) -> None:
        for key in (("server", lease.server_id, lease.request_type), ("experience", CATEGORY[lease.request_type])):
            events.setdefault(key, []).append((clock.now(), tokens))

    for index, op in enumerate(ops + [None]):
        if index == restart_at:
            ledger = BudgetLedger(clock, lease_ttl_ms=TTL, release_grace_ms=GRACE, restarted=True)
            generation += 1
        if op is None:
            break
        if op[0] in ("lease", "greedy"):
            wants = [op[1:]] if op[0] == "lease" else [(s, t, 10**9) for s in SERVERS for t in RT]
            for server, request_type, want in wants:
                ledger.register_server(server, players_of[server])   # as the budget actor does before every lease
                lease = ledger.lease(server, request_type, want)
                if lease.granted:
                    record(lease, lease.granted)
                    held.append((generation, lease))
        elif op[0] == "release" and held:
            granted_by, lease = held[op[1] % len(held)]
            unused = op[2] % (lease.granted + 1)
            outcome = ledger.release(lease.lease_id, unused)
            if granted_by != generation:
                assert outcome is ReleaseOutcome.UNKNOWN
            if outcome is ReleaseOutcome.CREDITED:
                record(lease, -unused)
        elif op[0] == "advance":
            clock.advance(ms=op[1])

    ccu = sum(players)
    for key, timeline in events.items():
        if key[0] == "server":
            per_minute = rate(key[2], players_of[key[1]])
            _check_net(timeline, BURST.get(key[2], per_minute), 3 * per_minute, per_minute, key)
        else:
            per_minute = experience_rate(key[1], ccu)
            _check_net(timeline, 300, per_minute, per_minute, key)


def test_a_closed_server_never_comes_back_into_the_ledger():
    # issue 18 (15), the storage layer: set_players after close() put the dead server back into the world's CCU
    import asyncio

    from lodestore.storage import ManualClock, ServerClosedError, World

    world = World.in_process("closed-server", clock=ManualClock())
    server = world.server("job-1", 10)
    assert world.budget_statistics().ccu == 10
    server.close()
    before = world.budget_statistics()
    assert before.ccu == 0 and "job-1" not in before.servers
    for call in (lambda: server.set_players(1000), server.begin_shutdown,
                 lambda: asyncio.run(server.aio.set_players(1000)), lambda: asyncio.run(server.aio.begin_shutdown())):
        with pytest.raises(ServerClosedError, match="job-1"):
            call()
    after = world.budget_statistics()
    assert after.ccu == 0 and after.servers == before.servers
    server.close()   # closing again changes nothing
    world.shutdown()
