"""`python -m lodestore.bench cluster`: the cost of distribution, the quickstart scenario on 1 node vs 3 nodes of one machine.

The scenario is `examples/scenarios/quickstart.toml` (4 servers, 60 players, 5 simulated minutes in virtual time;
`--quick`: 2 minutes) played with 3 host nodes on two local Ray clusters of the same 3 logical CPUs: one node of 3 CPUs, and
a head plus two worker nodes of 1 CPU each (`ray.cluster_utils.Cluster`: separate raylets and object stores on this
machine, so scheduling and object transfers between nodes go as they would between machines, minus the network). Each
configuration runs in a fresh subprocess, so each has a clean Ray; the 1-node run is the baseline, measured in the same
invocation. The figure is player-hours per wall second, as in `bench sim` (the whole run: hosts' start, final
BindToClose and reads included). In virtual time the playing phase itself goes as fast as the nodes' window round trips
allow, so distribution shows in `wall_s_playing` as well as in the rest (the latencies are modelled: the same in both). Beside it: load and mint latencies,
transactions, the node each actor ran on, and the raw 1:1 Ray call rate from the driver to a do-nothing actor pinned
on the head node and, in the 3-node cluster, on a worker node (the cross-node hop). The ratio is 3-node rate / 1-node
rate (medians over rounds; full: 3 rounds each, alternating); the target is 0.8: on one machine, distribution should
cost at most 20%, and it is met only when every checker passed in both configurations.

Never does: change how `sim` places its actors (it measures whatever `simulate` does on the cluster it is given).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.8
SCENARIO = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "quickstart.toml"
CONFIGS = {"1-node": (3,), "3-node": (1, 1, 1)}   # logical CPUs per node, head first: the same 3 in total
HOSTS = 3
QUICK_DURATION_S = 120.0
CALLS = 500
CHILD_TIMEOUT_S = 900


# --------------------------------------------------------------------------------------- inside the subprocess

def _call_rate(node_id: str) -> float:
    """Sequential 1:1 calls per second from the driver to a do-nothing actor pinned on `node_id` (median of 3)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from lodestore.bench._common import _Echo, median_rate
    actor = _Echo.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
    try:
        ray.get(actor.echo.remote(0))
        return median_rate(lambda _: [ray.get(actor.echo.remote(i)) for i in range(CALLS)], CALLS, rounds=3)
    finally:
        ray.kill(actor)


def _placement(labels: dict[str, str]) -> dict[str, list[str]] | None:
    """Which node each of the run's actors ran on, by class ("head", "worker-1", ...); None when unavailable.

    Uses Ray's private GCS actor table: `ray.util.state` needs the dashboard, which these clusters do not start.
    """
    import ray
    try:
        table = ray._private.state.actors()
    except Exception:
        return None
    out: dict[str, list[str]] = {}
    for info in table.values():
        name = info.get("ActorClassName", "?")
        if name == "_Echo":
            continue
        out.setdefault(name, []).append(labels.get(info.get("Address", {}).get("NodeID"), "?"))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _latency(report: dict, op: str) -> dict:
    figures = report["latency_ms"].get(op, {})
    return {k: figures.get(k) for k in ("count", "p50", "p99")}


def measure(config: str, quick: bool) -> dict:
    """Start the `config` cluster, measure it, print the result as one JSON line, shut the cluster down."""
    import ray
    from ray.cluster_utils import Cluster
    from lodestore.sim import RunOptions, load_scenario, simulate
    cpus = CONFIGS[config]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus[0], "include_dashboard": False})
    try:
        for n in cpus[1:]:
            cluster.add_node(num_cpus=n)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
        head = ray.get_runtime_context().get_node_id()
        workers = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
        labels = {head: "head", **{w: f"worker-{i}" for i, w in enumerate(workers, 1)}}
        call_rates = {"head": round(_call_rate(head), 1)}
        if workers:
            call_rates["worker"] = round(_call_rate(workers[0]), 1)

        scenario = load_scenario(SCENARIO)
        if quick:
            scenario = dataclasses.replace(scenario, world=dataclasses.replace(scenario.world,
                                                                               duration=QUICK_DURATION_S))
        with tempfile.TemporaryDirectory() as tmp:
            result = simulate(scenario, RunOptions(out=Path(tmp) / "run", address=cluster.address, hosts=HOSTS,
                                                   progress=False, stream=io.StringIO()))
        report = result.report
        run_info, totals = report["run"], report["totals"]
        figures = {
            "config": config, "nodes": len(cpus), "cpus_per_node": list(cpus),
            "player_hours_per_s": run_info["player_hours_per_s"], "player_hours": run_info["player_hours"],
            "simulated_s": run_info["simulated_s"],
            "wall_s": run_info["wall_s"], "wall_s_playing": run_info["wall_s_playing"],
            "verdict": report["verdict"], "ok": result.ok,
            "failed_checks": {c.name: c.counterexample for c in result.checks if not c.ok},
            "ops": sum(sum(v.values()) for v in totals["ops_by_kind"].values()),
            "ops_by_kind": {k: sum(v.values()) for k, v in totals["ops_by_kind"].items()},
            "load_ms": _latency(report, "load"), "mint_ms": _latency(report, "mint"),
            "tx": totals["tx"], "locks": totals["locks"],
            "raw_calls_per_s": call_rates,
            "placement": _placement(labels),
            # sim's own record of its hosts' nodes, in versions that keep one
            "host_nodes": [labels.get(n, n) for n in run_info.get("host_nodes") or []] or None,
        }
        sys.stdout.write(json.dumps(figures, default=str) + "\n")
        sys.stdout.flush()
        return figures
    finally:
        ray.shutdown()
        cluster.shutdown()


# --------------------------------------------------------------------------------------- in the parent

def _one(config: str, quick: bool) -> dict:
    """Measure `config` in a fresh Python process and return what it printed last."""
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    argv = [sys.executable, "-m", "lodestore.bench.cluster", "--one", config] + (["--quick"] if quick else [])
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S,
                          cwd=Path(__file__).resolve().parent.parent)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        figures = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = "\n".join(proc.stderr.splitlines()[-40:])
        raise RuntimeError(f"bench cluster: the {config} run exited {proc.returncode} without its JSON line; "
                           f"stderr ends:\n{tail}") from None
    figures["process_s"] = round(time.monotonic() - started, 1)
    return figures


def _median(runs: list[dict], *path: str) -> float | None:
    values = []
    for r in runs:
        for key in path:
            r = r.get(key) if isinstance(r, dict) else None
        if r is not None:
            values.append(r)
    return statistics.median(values) if values else None


def _summary(runs: list[dict]) -> dict:
    return {
        "rounds": len(runs), "ok": all(r["ok"] for r in runs),
        "player_hours_per_s": _median(runs, "player_hours_per_s"),
        "wall_s": _median(runs, "wall_s"), "wall_s_playing": _median(runs, "wall_s_playing"),
        "load_ms": {k: _median(runs, "load_ms", k) for k in ("p50", "p99")},
        "mint_ms": {k: _median(runs, "mint_ms", k) for k in ("p50", "p99")},
        "raw_calls_per_s": {k: _median(runs, "raw_calls_per_s", k) for k in runs[0]["raw_calls_per_s"]},
    }


def run(quick: bool = False) -> dict:
    rounds = 1 if quick else 3
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(rounds):   # alternating, so that a slow spell of the machine hits both configurations
        for name in CONFIGS:
            runs[name].append(_one(name, quick))
    base, dist = _summary(runs["1-node"]), _summary(runs["3-node"])
    ratio = (dist["player_hours_per_s"] / base["player_hours_per_s"]
             if base["player_hours_per_s"] and dist["player_hours_per_s"] is not None else 0.0)
    return {
        "benchmark": "cluster",
        "scenario": SCENARIO.name, "hosts": HOSTS,
        "simulated_s": runs["1-node"][0]["simulated_s"],
        "rounds": rounds,
        "configs": {"1-node": base, "3-node": dist},
        "runs": runs,
        "baseline": {"config": "1-node", "player_hours_per_s": base["player_hours_per_s"]},
        "player_hours_per_s": dist["player_hours_per_s"],
        "ratio": round(ratio, 3),
        "target": TARGET,
        "met": bool(ratio >= TARGET and base["ok"] and dist["ok"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lodestore.bench.cluster",
                                     description="one configuration of `python -m lodestore.bench cluster` (its subprocess)")
    parser.add_argument("--one", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    measure(args.one, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
