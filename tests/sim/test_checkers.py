"""The run history and its checkers: good runs pass, each kind of broken run fails naming the problem."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestore.sim._checkers import (
    History, LockEvent, OpEvent, check_acknowledged_writes, check_conservation, check_no_duplicate_items,
    check_single_holder, run_checks,
)

TTL = 90_000


def _player(coins=100, items=(), ledger=()):
    return {"coins": coins, "items": list(items), "ledger": list(ledger)}


def _good_run():
    """Two players: a mint, a grant, a trade of coins and the item, a failed mint; clean lock hand-off."""
    h = History()
    h.lock(0, "p1", "s1", "s1:a", "acquired", ttl_ms=TTL)
    h.lock(0, "p2", "s1", "s1:b", "acquired", ttl_ms=TTL)
    h.op(10, "p1", "s1", "op1", "mint", "ok", amount=50)
    h.op(20, "p1", "s1", "op2", "grant", "ok", item="sword#1")
    h.op(30, "p1", "s1", "op3", "trade", "ok", amount=30, item="sword#1", counterparty="p2")
    h.op(40, "p2", "s1", "op4", "mint", "failed", amount=999)
    h.lock(60_000, "p1", "s1", "s1:a", "refreshed")
    h.lock(100_000, "p1", "s1", "s1:a", "released")
    h.lock(100_000, "p1", "s2", "s2:a", "acquired", ttl_ms=TTL)  # touching ends are fine
    h.lock(120_000, "p1", "s2", "s2:a", "released")
    h.lock(120_000, "p2", "s1", "s1:b", "released")
    initial = {"p1": _player(100), "p2": _player(100)}
    final = {"p1": _player(120, [], ["op1", "op2", "op3"]), "p2": _player(130, ["sword#1"], ["op3"])}
    return h, initial, final


def _by_name(results):
    return {r.name: r for r in results}


def test_good_run_passes_every_checker():
    h, initial, final = _good_run()
    results = run_checks(h, initial, final)
    assert [r.name for r in results] == ["conservation", "acknowledged_writes", "single_holder",
                                         "no_duplicate_items"]
    assert all(r.ok and r.counterexample is None for r in results), results


def test_events_are_frozen_and_validated():
    e = LockEvent(0, "k", "s", "x", "acquired", ttl_ms=1)
    with pytest.raises(AttributeError):
        e.t = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="ttl_ms"):
        LockEvent(0, "k", "s", "x", "acquired")
    with pytest.raises(ValueError, match="kind"):
        OpEvent(0, "k", "s", "o", "steal", "ok")
    with pytest.raises(ValueError, match="counterparty"):
        OpEvent(0, "k", "s", "o", "trade", "ok", amount=1, counterparty="k")
    h = History()
    h.op(0, "k", "s", "o", "mint", "ok", amount=1)
    with pytest.raises(ValueError, match="recorded twice"):
        h.op(1, "k", "s", "o", "mint", "ok", amount=1)


# -- conservation ---------------------------------------------------------------------------------------------

def test_unbalanced_transfer_creating_coins_fails():
    h, initial, final = _good_run()
    final["p2"]["coins"] += 30  # the trade credited p2 but never debited... twice
    r = check_conservation(h, initial, final)
    assert not r.ok
    assert "coins created" in r.counterexample and "280" in r.counterexample and "[250, 250]" in r.counterexample


def test_negative_balance_fails_naming_the_key():
    h, initial, final = _good_run()
    final["p1"]["coins"], final["p2"]["coins"] = -10, 260
    r = check_conservation(h, initial, final)
    assert not r.ok and "negative balance" in r.counterexample and "'p1'" in r.counterexample
    assert r.details["negative"] == ["p1"]


@pytest.mark.parametrize("applied", [False, True])
def test_unknown_mint_accepted_either_way(applied):
    h, initial, final = _good_run()
    h.op(50, "p2", "s1", "op5", "mint", "unknown", amount=7)
    if applied:
        final["p2"]["coins"] += 7
        final["p2"]["ledger"].append("op5")
    assert all(r.ok for r in run_checks(h, initial, final))
    final["p2"]["coins"] += 8  # but never more than every unknown mint together
    assert not check_conservation(h, initial, final).ok


def test_purchase_destroys_coins():
    h, initial, final = _good_run()
    h.op(50, "p2", "s1", "op5", "purchase", "ok", amount=20, item="hat#1")
    final["p2"]["coins"] -= 20
    final["p2"]["items"].append("hat#1")
    final["p2"]["ledger"].append("op5")
    assert all(r.ok for r in run_checks(h, initial, final))


# -- acknowledged writes --------------------------------------------------------------------------------------

def test_lost_acknowledged_write_fails():
    h, initial, final = _good_run()
    final["p2"]["ledger"].remove("op3")
    r = check_acknowledged_writes(h, final)
    assert not r.ok and "lost acknowledged write" in r.counterexample
    assert "'op3'" in r.counterexample and "'p2'" in r.counterexample


def test_failed_op_that_shows_up_fails():
    h, initial, final = _good_run()
    final["p2"]["ledger"].append("op4")
    r = check_acknowledged_writes(h, final)
    assert not r.ok and "failed op applied" in r.counterexample and "'op4'" in r.counterexample


def test_duplicated_op_fails():
    h, initial, final = _good_run()
    final["p1"]["ledger"].append("op1")
    r = check_acknowledged_writes(h, final)
    assert not r.ok and "duplicated op" in r.counterexample and "'op1'" in r.counterexample


def test_phantom_op_fails():
    h, initial, final = _good_run()
    final["p1"]["ledger"].append("op-ghost")
    r = check_acknowledged_writes(h, final)
    assert not r.ok and "phantom op" in r.counterexample and "'op-ghost'" in r.counterexample
    final["p1"]["ledger"].remove("op-ghost")
    final["p2"]["ledger"].append("op1")  # a real op, but not p2's
    r = check_acknowledged_writes(h, final)
    assert not r.ok and "phantom op" in r.counterexample and "'p2'" in r.counterexample


# -- single holder --------------------------------------------------------------------------------------------

def test_two_sessions_overlapping_fail():
    h, _, _ = _good_run()
    h.lock(110_000, "p1", "s3", "s3:a", "acquired", ttl_ms=TTL)  # s2:a holds p1 until 120_000
    h.lock(130_000, "p1", "s3", "s3:a", "released")
    r = check_single_holder(h)
    assert not r.ok and "double lock on 'p1'" in r.counterexample
    assert "'s2:a'" in r.counterexample and "'s3:a'" in r.counterexample and "110000..120000" in r.counterexample


def test_crashed_holder_within_ttl_fails():
    h = History()
    h.lock(0, "k", "s1", "A", "acquired", ttl_ms=TTL)
    h.lock(30_000, "k", "s1", "A", "refreshed")
    h.lock(40_000, "k", "s1", "A", "crashed")  # lock lapses at 30_000 + TTL = 120_000
    h.lock(100_000, "k", "s2", "B", "acquired", ttl_ms=TTL)
    r = check_single_holder(h)
    assert not r.ok and "'A'" in r.counterexample and "'B'" in r.counterexample
    assert "100000..120000" in r.counterexample


def test_crashed_holder_then_acquire_after_ttl_passes():
    h = History()
    h.lock(0, "k", "s1", "A", "acquired", ttl_ms=TTL)
    h.lock(30_000, "k", "s1", "A", "refreshed")
    h.lock(40_000, "k", "s1", "A", "crashed")
    h.lock(120_000, "k", "s2", "B", "acquired", ttl_ms=TTL)
    h.lock(150_000, "k", "s2", "B", "lost")
    h.lock(150_000, "k", "s3", "C", "acquired", ttl_ms=TTL)  # open hold: ends at 150_000 + TTL
    assert check_single_holder(h).ok
    h.lock(200_000, "k", "s4", "D", "acquired", ttl_ms=TTL)
    assert not check_single_holder(h).ok


# -- duplicate items ------------------------------------------------------------------------------------------

def test_duplicated_item_fails():
    _, _, final = _good_run()
    final["p1"]["items"].append("sword#1")
    r = check_no_duplicate_items(final)
    assert not r.ok and "'sword#1'" in r.counterexample and "'p1'" in r.counterexample and "'p2'" in r.counterexample
    _, _, final = _good_run()
    final["p2"]["items"].append("sword#1")  # twice in one inventory
    assert not check_no_duplicate_items(final).ok


# -- JSON -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("break_it", [False, True])
def test_json_round_trip_gives_equal_results(break_it):
    h, initial, final = _good_run()
    h.lock(110_000, "p1", "s3", "s3:a", "acquired", ttl_ms=TTL)
    if break_it:
        final["p1"]["ledger"].remove("op1")
    back = History.from_json(json.loads(json.dumps(h.to_json())))
    assert back == h and back.events == h.events
    assert run_checks(back, initial, final) == run_checks(h, initial, final)
    with pytest.raises(ValueError, match="type"):
        History.from_json({"format": 1, "events": [{"type": "pickle"}]})


# -- property: valid runs pass --------------------------------------------------------------------------------

KEYS = ["p0", "p1", "p2", "p3"]

_step = st.one_of(
    st.tuples(st.just("mint"), st.sampled_from(KEYS), st.integers(0, 50), st.sampled_from(["ok", "failed", "unknown"]),
              st.booleans()),
    st.tuples(st.just("grant"), st.sampled_from(KEYS), st.just(0), st.sampled_from(["ok", "failed", "unknown"]),
              st.booleans()),
    st.tuples(st.just("trade"), st.permutations(KEYS).map(lambda p: (p[0], p[1])), st.integers(0, 80),
              st.sampled_from(["ok", "failed", "unknown"]), st.booleans()),
)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_step, max_size=40), handoffs=st.lists(st.sampled_from(KEYS), max_size=8))
def test_random_valid_runs_pass_every_checker(steps, handoffs):
    initial = {k: _player(100) for k in KEYS}
    model = copy.deepcopy(initial)
    h = History()
    session = {k: f"{k}:0" for k in KEYS}
    for k in KEYS:
        h.lock(0, k, "s0", session[k], "acquired", ttl_ms=TTL)
    t = 0
    for n, (kind, key, amount, outcome, happened) in enumerate(steps):
        t += 10
        op_id, item = f"op{n}", f"item{n}"
        if kind == "trade":
            src, dst = key
            owned = [i for i in model[src]["items"]]
            moved = owned[0] if owned and amount % 2 else None
            if model[src]["coins"] < amount:
                outcome = "failed"  # the store refuses an overdraft
            applies = outcome == "ok" or (outcome == "unknown" and happened)
            h.op(t, src, "s0", op_id, "trade", outcome, amount=amount, item=moved, counterparty=dst)
            if applies:
                model[src]["coins"] -= amount
                model[dst]["coins"] += amount
                if moved:
                    model[src]["items"].remove(moved)
                    model[dst]["items"].append(moved)
                model[src]["ledger"].append(op_id)
                model[dst]["ledger"].append(op_id)
            continue
        applies = outcome == "ok" or (outcome == "unknown" and happened)
        if kind == "mint":
            h.op(t, key, "s0", op_id, "mint", outcome, amount=amount)
            if applies:
                model[key]["coins"] += amount
        else:
            h.op(t, key, "s0", op_id, "grant", outcome, item=item)
            if applies:
                model[key]["items"].append(item)
        if applies:
            model[key]["ledger"].append(op_id)
    for n, k in enumerate(handoffs):  # clean hand-offs to a new session on another server
        t += 10
        h.lock(t, k, "s0", session[k], "released")
        session[k] = f"{k}:{n + 1}"
        h.lock(t, k, f"s{n + 1}", session[k], "acquired", ttl_ms=TTL)
    back = History.from_json(json.loads(json.dumps(h.to_json())))
    results = run_checks(back, initial, model)
    assert all(r.ok for r in results), [r.counterexample for r in results if not r.ok]
