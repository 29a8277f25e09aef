"""Budget throughput: request tokens granted per second by the budget actor to 20 client servers, leased in batches
through each server's gate, against one token per Ray call (the same servers asking the actor for each token).

Budgets are set so they never bind (1,000 players per server, time_scale 1,000): this measures the protocol's cost,
not Roblox's limits. Target: leased >= 20x one-token-per-call.
"""

from __future__ import annotations

import statistics
import threading
import time

import ray

from lodestore.bench._common import ensure_ray
from lodestore.storage import BUDGET_NAME, Permit, RequestType, World, namespace_of

TARGET = 20.0
SERVERS = 20
W = RequestType.STANDARD_WRITE


def _race(seconds: float, work) -> int:
    """Run `work(i, stop)` on SERVERS threads for `seconds`; total of what they return."""
    stop = threading.Event()
    counts = [0] * SERVERS

    def body(i: int) -> None:
        counts[i] = work(i, stop)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(SERVERS)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts)


def run(quick: bool = False) -> dict:
    seconds, rounds = (1.0, 1) if quick else (3.0, 3)
    ensure_ray()
    world = World.start("bench-budget", backend="memory", time_scale=1000)
    try:
        servers = [world.server(f"bench-{i}", players=1000) for i in range(SERVERS)]
        budget = ray.get_actor(BUDGET_NAME, namespace=namespace_of(world.name))   # one Ray call per token

        def per_call(i: int, stop: threading.Event) -> int:
            n = 0
            while not stop.is_set():
                lease = ray.get(budget.lease.remote(servers[i].job_id, W, 1, 1000))
                n += lease.granted
            return n

        def leased(i: int, stop: threading.Event) -> int:
            datastores, permit, n = servers[i].datastores, Permit(W, "k", 0, "set"), 0
            while not stop.is_set():
                for _ in range(100):
                    datastores.wait_for_budget(permit)
                n += 100
            return n

        per_call_rates = [_race(seconds, per_call) / seconds for _ in range(rounds)]
        leased_rates = [_race(seconds, leased) / seconds for _ in range(rounds)]
        leases = sum(s.datastores.gate_statistics().leases for s in servers)
        granted = sum(s.datastores.gate_statistics().granted for s in servers)
    finally:
        world.shutdown()
    per_call_rate, leased_rate = statistics.median(per_call_rates), statistics.median(leased_rates)
    return {
        "benchmark": "budget",
        "quick": quick,
        "servers": SERVERS,
        "seconds_per_round": seconds,
        "one_token_per_call_per_s": round(per_call_rate, 1),
        "leased_tokens_per_s": round(leased_rate, 1),
        "tokens_per_lease": round(granted / max(leases, 1), 1),
        "baseline": "one_token_per_call_per_s",
        "ratio": round(leased_rate / per_call_rate, 2),
        "target": TARGET,
        "meets_target": leased_rate / per_call_rate >= TARGET,
    }
