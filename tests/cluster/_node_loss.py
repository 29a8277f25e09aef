"""A simulation on a 3-node local Ray cluster that loses a node mid-run: `python -m tests.cluster._node_loss OUT`.

Run in a subprocess by `test_cluster.py` (a test session's own Ray cannot also be a cluster). It starts a head and
two workers (`ray.cluster_utils.Cluster`, one machine), plays `SCENARIO` with three simulator hosts spread over the
nodes, and meanwhile:
- kills the budget actor's process (Ray restarts it; its ledger must rebuild without a fresh burst);
- kills the coordinator's process (Ray restarts it; it settles what was in flight from its markers);
- removes the worker node that runs host 0 (its game servers crash with it: their sessions end unsaved, their locks
  expire, their players reconnect to servers on other nodes).
It prints one JSON line: the run's report figures, the checkers' verdicts and what it observed of the singletons.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path

import ray

from tests.cluster._common import actor_context, start_cluster

SCENARIO = """
[world]
name = "node-loss"
backend = "sqlite"
time_scale = 15
duration = 300
seed = 11

[servers]
count = 6
max_players = 25

[players]
population = 60
join_rate = 0.3
leave_rate = 0.01
teleport_rate = 0.01

[players.actions_per_minute]
coins = 6
grant_item = 2
purchase = 1
trade = 4

[store]
autosave_interval = 10
lock_ttl = 30
lock_refresh = 10
"""

KILL_BUDGET_AFTER_S = 3.0     # wall seconds after the world is up
KILL_COORDINATOR_AFTER_S = 5.0
REMOVE_NODE_AFTER_S = 7.0


def _retry(fn, seconds: float = 30.0):
    """`fn()` once the actor it calls has come back from its restart."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(out: Path) -> dict:
    from lodestore.sim import RunOptions, parse_scenario, simulate
    from lodestore.storage import spread_nodes

    cluster, workers = start_cluster()
    seen: dict = {"nodes": len(ray.nodes())}
    try:
        victim_id = spread_nodes(3)[0]          # where host 0 goes
        victim = next(w for w in workers if w.node_id == victim_id)
        seen["victim_is_head"] = victim_id == ray.get_runtime_context().get_node_id()

        events: list = []

        def chaos() -> None:
            namespace = None
            deadline = time.monotonic() + 120
            while namespace is None and time.monotonic() < deadline:
                for entry in ray.util.list_named_actors(all_namespaces=True):
                    if entry["name"] == "coordinator" and entry["namespace"].startswith("lodestore-sim-"):
                        namespace = entry["namespace"]
                time.sleep(0.2)
            coord = ray.get_actor("coordinator", namespace=namespace)
            budget = ray.get_actor("budget", namespace=namespace)
            time.sleep(KILL_BUDGET_AFTER_S)
            ray.kill(budget, no_restart=False)
            events.append("budget_killed")
            time.sleep(KILL_COORDINATOR_AFTER_S - KILL_BUDGET_AFTER_S)
            ray.kill(coord, no_restart=False)
            events.append("coordinator_killed")
            time.sleep(REMOVE_NODE_AFTER_S - KILL_COORDINATOR_AFTER_S)
            cluster.remove_node(victim)
            events.append("node_removed")
            seen["coordinator_restarted"] = _retry(lambda: actor_context(coord)[1])
            seen["budget_restarted"] = _retry(lambda: ray.get(budget.statistics.remote()).restarted)

        thread = threading.Thread(target=chaos, daemon=True)
        thread.start()
        scenario = parse_scenario(SCENARIO)
        result = simulate(scenario, RunOptions(out=out, address=cluster.address, hosts=3, progress=False,
                                               stream=io.StringIO()))
        thread.join(timeout=60)
        seen["events"] = events
        history = result.history
        lost_servers = {s for h in result.report["run"]["hosts_lost"] for s in h["servers"]}
        vanished = [e for e in history.lock_events() if e.kind == "vanished"]
        # keys whose lock vanished with the node and that another server took later (after the TTL)
        taken_over = {e.key for e in vanished
                      for later in history.lock_events()
                      if later.key == e.key and later.kind == "acquired" and later.t > e.t
                      and later.server not in lost_servers}
        report = result.report
        return {"seen": seen, "run": {k: report["run"][k] for k in ("hosts_lost", "host_nodes", "simulated_s")},
                "totals": report["totals"], "verdict": report["verdict"],
                "checks": {c.name: [c.ok, c.counterexample] for c in result.checks},
                "vanished": len(vanished), "taken_over": len(taken_over),
                "unknown_node_lost": sum(1 for e in history.op_events() if e.outcome == "unknown")}
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), default=str))
