"""Transactions through Ray: the named coordinator actor, both placements, a coordinator killed mid-transaction."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from lodestore import GameServer
from lodestore.coordinator import TxAbortedError, TxUnknownError

pytestmark = pytest.mark.ray

TEMPLATE = {"coins": 100, "items": []}


@pytest.fixture
def world(ray_world):
    return ray_world


def transfer(src, dst, amount):
    def fn(state):
        state[src]["coins"] -= amount
        state[dst]["coins"] += amount
        return True
    return fn


@pytest.mark.parametrize("placement", ["per-server", "per-key"])
def test_transactions_through_the_coordinator_actor(world, placement):
    server = GameServer(world, "job-tx", players=10)
    bank = server.create_store("bank", TEMPLATE, placement=placement)
    keys = [f"p{i}" for i in range(8)]
    for key in keys:
        bank.load(key)
    assert bank.tx(["p0", "p1"], transfer("p0", "p1", 25)) is True
    assert bank.tx_immutable(["p2", "p3"], lambda s: {"p2": {**s["p2"], "items": ["gem"]}, "p3": s["p3"]}) is True

    async def many():
        pairs = [("p4", "p5"), ("p5", "p6"), ("p6", "p7"), ("p7", "p4")] * 3
        results = await asyncio.gather(*(bank.aio.tx([a, b], transfer(a, b, 1)) for a, b in pairs),
                                       return_exceptions=True)
        return results

    results = asyncio.run(many())
    assert all(r is True or isinstance(r, TxAbortedError) for r in results)  # busy keys abort; nothing is lost
    coins = [bank.get(k)["coins"] for k in keys]
    assert coins[:2] == [75, 125] and sum(coins) == 800
    other = GameServer(world, "job-reader").create_store("bank", TEMPLATE)
    assert [other.peek(k)["coins"] for k in keys] == coins
    assert bank.get("p2")["items"] == ["gem"] and other.peek("p2")["items"] == []   # one key changed: an update
    bank.save("p2")
    fresh = GameServer(world, "job-reader-2").create_store("bank", TEMPLATE)   # (peek reads through a 4 s cache)
    assert fresh.peek("p2")["items"] == ["gem"]
    server.shutdown()


def test_a_coordinator_killed_mid_transaction_is_restarted_and_nothing_half_happens(world, ray_session):
    ray = ray_session
    server = GameServer(world, "job-kill", players=2)
    bank = server.create_store("bank", TEMPLATE, tx_timeout=3)
    bank.load("a")
    bank.load("b")
    bank.tx(["a", "b"], transfer("a", "b", 1))            # the coordinator actor exists now
    coordinator = ray.get_actor("coordinator", namespace=f"lodestore-{world.name}")

    def slow(state):
        time.sleep(3)
        return transfer("a", "b", 50)(state)

    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("error", _catch(lambda: bank.tx(["a", "b"], slow))))
    thread.start()
    time.sleep(1.5)
    ray.kill(coordinator, no_restart=False)               # dies while the transform runs; Ray restarts it
    thread.join(30)
    assert isinstance(outcome["error"], TxUnknownError)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:                    # the sessions settle it after tx_timeout
        try:
            assert bank.update("a", lambda d: True) is True
            break
        except Exception:
            time.sleep(0.5)
    assert (bank.get("a")["coins"], bank.get("b")["coins"]) == (99, 101)
    assert bank.tx(["a", "b"], transfer("a", "b", 9)) is True   # the restarted coordinator serves
    assert (bank.peek("a")["coins"], bank.peek("b")["coins"]) == (90, 110)
    server.shutdown()


def _catch(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def test_a_transaction_with_unstorable_data_raises_what_update_raises_on_ray(world):
    # issue 18 (13): on Ray too, the coordinator's error is the DataStoreError update gives, and nothing changes
    from lodestore.storage import DataStoreError

    server = GameServer(world, "job-bad-tx", players=2)
    bank = server.create_store("bank", TEMPLATE)
    for key in ("p0", "p1"):
        bank.load(key)
    with pytest.raises(DataStoreError) as by_update:
        bank.update("p1", lambda d: d.__setitem__("coins", float("nan")) or True)
    with pytest.raises(DataStoreError) as by_tx:
        bank.tx(["p0", "p1"], lambda s: s["p0"].update(coins=0) or s["p1"].update(coins=float("nan")) or True)
    assert (by_tx.value.code, by_tx.value.message) == (by_update.value.code, by_update.value.message)
    assert [bank.get(k)["coins"] for k in ("p0", "p1")] == [100, 100]
    assert bank.tx(["p0", "p1"], transfer("p0", "p1", 10)) is True
    server.shutdown()
