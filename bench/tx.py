"""Transactions: 2-key two-phase commits per second through the coordinator actor, against the raw 1:1 Ray call rate.

Every transaction moves coins between two players loaded on one server (`per-server` placement), so both records
change and the whole protocol runs: prepare, marker, two fenced record writes, commit point, finish, marker removal.
Many run at once (`in_flight`), on disjoint pairs; calls from the coordinator to one key actor in one loop turn share
a message, and so do its marker writes to one storage shard. Budgets off (`budget=None`). Target: >= 1x.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time

from lodestore import GameServer
from lodestore.bench._common import ensure_ray, raw_call_rate
from lodestore.storage import World

TARGET = 1.0


def _transfer(src: str, dst: str):
    def fn(state):
        state[src]["coins"] -= 1
        state[dst]["coins"] += 1
        return True
    return fn


def run(quick: bool = False) -> dict:
    pairs_per_server, n_servers, rounds = (250, 2, 2) if quick else (1_000, 2, 3)
    ensure_ray()
    raw = raw_call_rate(300 if quick else 1000)
    with tempfile.TemporaryDirectory() as tmp:
        world = World.start("bench-tx", backend="sqlite", path=os.path.join(tmp, "tx.db"), budget=None, shards=2)
        try:
            # one player per loaded key: MemoryStore quotas (the locks) grow with the players online
            servers = [GameServer(world, f"tx-{i}", players=2 * pairs_per_server) for i in range(n_servers)]
            stores = [s.create_store("bank", {"coins": 1_000}) for s in servers]
            pairs = [(store, f"s{i}-a{j}", f"s{i}-b{j}") for j in range(pairs_per_server)
                     for i, store in enumerate(stores)]

            async def load() -> None:
                await asyncio.gather(*(store.aio.load(k) for store, a, b in pairs for k in (a, b)))

            asyncio.run(load())
            stores[0].tx([pairs[0][1], pairs[0][2]], _transfer(pairs[0][1], pairs[0][2]))   # start the coordinator

            async def one_round() -> tuple[float, int]:
                t0 = time.perf_counter()
                results = await asyncio.gather(*(store.aio.tx([a, b], _transfer(a, b)) for store, a, b in pairs),
                                               return_exceptions=True)
                elapsed = time.perf_counter() - t0
                return sum(1 for r in results if r is True) / elapsed, sum(1 for r in results if r is not True)

            measured = [asyncio.run(one_round()) for _ in range(rounds)]
            total = sum(store.get(k)["coins"] for store, a, b in pairs for k in (a, b))
            for server in servers:
                server.crash()
        finally:
            world.shutdown()
    rate = statistics.median(r for r, _ in measured)
    return {
        "benchmark": "tx",
        "quick": quick,
        "transactions_per_round": len(pairs),
        "in_flight": len(pairs),
        "tx_per_s": round(rate, 1),
        "not_committed": sum(f for _, f in measured),
        "coins_conserved": total == 2_000 * len(pairs),
        "raw_call_rate": round(raw, 1),
        "baseline": "raw_call_rate",
        "ratio": round(rate / raw, 2),
        "target": TARGET,
        "meets_target": rate / raw >= TARGET,
    }
