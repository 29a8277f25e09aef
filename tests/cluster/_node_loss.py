"""A simulation on a 3-node local Ray cluster that loses a node mid-run: `python -m tests.cluster._node_loss OUT`.

Run in a subprocess by `test_cluster.py` (a test session's own Ray cannot also be a cluster). It starts a head and
two workers (`ray.cluster_utils.Cluster`, one machine), plays `SCENARIO` with three simulator host nodes spread over
the nodes (the cloud node, the world's storage and coordinator, stays in the driver on the head), paced at 15x so
that the loss lands mid-run, and meanwhile removes the worker node that runs host 0 (seconds after the play began,
which the run's ingress opening tells, however long a loaded machine took to start the nodes): its game servers
crash with it (their sessions end unsaved, their locks expire, their players reconnect to servers on other nodes).
A lost node is a wall-clock event, so this run is not a function of its seed; every checker must pass all the same.
It prints one JSON line: the run's report figures, the checkers' verdicts and what it observed.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path

import ray

from tests.cluster._common import start_cluster

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

REMOVE_NODE_AFTER_S = 7.0     # wall seconds of play (about 105 simulated seconds at 15x)


def main(out: Path) -> dict:
    from lodestore.sim import RunOptions, parse_scenario, simulate
    from lodestore.storage import INGRESS_NAME, namespace_of, spread_nodes

    cluster, workers = start_cluster()
    seen: dict = {"nodes": len(ray.nodes())}
    try:
        victim_id = spread_nodes(3)[0]          # where host 0 goes
        victim = next(w for w in workers if w.node_id == victim_id)
        seen["victim_is_head"] = victim_id == ray.get_runtime_context().get_node_id()

        events: list = []

        def chaos() -> None:
            deadline = time.monotonic() + 200
            while time.monotonic() < deadline:   # the play has begun: its hosts are up and the run is open
                try:
                    ray.get_actor(INGRESS_NAME, namespace=namespace_of("node-loss"))
                    break
                except ValueError:
                    time.sleep(0.1)
            time.sleep(REMOVE_NODE_AFTER_S)
            cluster.remove_node(victim)
            events.append("node_removed")

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
