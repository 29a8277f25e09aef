"""What the simulator does when a host dies with its node, tested as plain Python: the plan crashes its servers
and sends their players elsewhere, the router stops using it, and the collector records what is known of it."""

from __future__ import annotations

import pytest

from lodestore.sim import Planned, Planner, parse_scenario
from lodestore.sim._checkers import check_single_holder
from lodestore.sim._collect import Collector
from lodestore.sim._runner import _Router

SCENARIO = """
[world]
duration = 600
seed = 5
[servers]
count = 3
max_players = 40
[players]
population = 60
join_rate = 0.5
leave_rate = 0.0
"""

TTL = 30_000


def test_lost_servers_crash_in_the_plan_and_their_players_rejoin_elsewhere():
    planner = Planner(parse_scenario(SCENARIO))
    planner.until(60_000)
    lost = next(s for s, players in planner.servers.items() if players)
    players = set(planner.servers[lost])
    assert planner.lose([lost, "server_9999"]) == [lost]          # an unknown or dead server is skipped
    assert lost not in planner.servers
    assert all(planner.location[p] is None for p in players)
    later = planner.until(600_000)
    assert Planned(60_000, "crash", lost) == later[0]               # the crash comes out first, at the cut
    rejoined = {e.player for e in later if e.kind == "join" and e.player in players}
    assert rejoined == players
    assert all(e.server != lost for e in later[1:])                 # nothing is planned on it again


def test_the_router_gives_no_new_server_and_no_event_to_a_lost_host():
    router = _Router(3)
    router.route([Planned(0, "start", f"s{i}") for i in range(3)])
    router.lost.add(1)
    batches, new = router.route([Planned(1, "start", "s3"), Planned(1, "start", "s4"),
                                 Planned(2, "join", "s1", "p1"), Planned(2, "join", "s0", "p2")])
    assert 1 not in new.values() and set(new) == {"s3", "s4"}
    assert 1 not in batches
    assert [e.player for e in batches[0] if e.kind == "join"] == ["p2"]
    assert router.servers_of(1) == {"s1"}
    router.lost.update({0, 2})
    with pytest.raises(RuntimeError, match="every simulator host was lost"):
        router.route([Planned(3, "start", "s5")])


def _drain(ops=(), locks=()):
    return {"ops": list(ops), "locks": list(locks), "samples": [], "events": [], "time": 0, "counters": {},
            "throttled": {}, "servers": 1, "online": ["p1"], "tokens": []}


def test_a_lost_hold_ends_at_its_last_report_and_its_open_actions_are_unknown():
    c = Collector(600, 60, slack_s=30)
    c.add(0, _drain(locks=[(0, "k", "A", "acquired", TTL, "s1"), (10_000, "k", "A", "refreshed", 10_000 + TTL,
                                                                   "s1"),
                           (0, "j", "C", "acquired", TTL, "s2")]))
    c.lose_host(0, {"s1"}, 1, [(5_000, "k", "s1", "op1", "mint", "unknown", 5, None, None, "NodeLost", None)])
    [op] = c.history.op_events()
    assert (op.op_id, op.outcome) == ("op1", "unknown")
    vanished = [e for e in c.history.lock_events() if e.kind == "vanished"]
    assert [(e.key, e.session, e.t) for e in vanished] == [("k", "A", 10_000)]   # s2's hold is not touched
    assert c.events["host_lost"] == 1 and c.events["lost_with_node"] == 1
    # another server taking the key after the last report is not a double lock (its release went unreported) ...
    c.add(1, _drain(locks=[(20_000, "k", "B", "acquired", 20_000 + TTL, "s3")]))
    c.close_locks()
    assert check_single_holder(c.history).ok
    # ... but taking it before the last report is
    c.add(1, _drain(locks=[(5_000, "k", "D", "acquired", 5_000 + TTL, "s4")]))
    assert not check_single_holder(c.history).ok
