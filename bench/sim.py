"""`python -m lodestore.bench sim`: simulated player-hours per real second, Lyra's chaos scenario at 1,000 players on local Ray.

The scenario is `examples/scenarios/lyra_chaos.toml` with its population raised to 1,000 (its per-step chances of
join 0.1, leave 0.01, server stop 0.005 and crash 0.001, 6 simulated hours; `--quick`: 30 minutes). It runs at three time
scales; a run counts only when it is healthy (its verdict is "pass": every checker passed and the harness kept up; and
not one lock was lost), and the best healthy rate is the figure. Player-hours are the planned players online integrated over simulated time; the rate
divides them by the wall time of the whole run (hosts' start, final BindToClose and reads included). The baseline,
measured in the same run, is the raw 1:1 Ray call rate; the target is 100 player-hours per second.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path

from lodestore.bench._common import ensure_ray, raw_call_rate
from lodestore.sim import RunOptions, load_scenario, simulate

TARGET = 100.0
SCENARIO = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "lyra_chaos.toml"



def _one(scenario, time_scale: float) -> dict:
    scenario = dataclasses.replace(scenario, world=dataclasses.replace(scenario.world, time_scale=time_scale))
    with tempfile.TemporaryDirectory() as tmp:
        result = simulate(scenario, RunOptions(out=Path(tmp) / "run", progress=False, stream=io.StringIO()))
    report = result.report
    run_info, totals = report["run"], report["totals"]
    load = report["latency_ms"].get("load", {})
    # healthy: a "pass" verdict (every checker passed, the harness kept up), and not one lock lost
    healthy = report["verdict"] == "pass" and totals["locks"]["lost"] == 0
    return {
        "time_scale": time_scale, "healthy": healthy, "verdict": report["verdict"],
        "failed_checks": {c.name: c.counterexample for c in result.checks if not c.ok},
        "player_hours": run_info["player_hours"], "wall_s": run_info["wall_s"],
        "player_hours_per_s": run_info["player_hours_per_s"],
        "locks": totals["locks"], "tx": totals["tx"], "servers": totals["servers"],
        "ops": {k: sum(v.values()) for k, v in totals["ops_by_kind"].items()},
        "ops_ok": {k: v["ok"] for k, v in totals["ops_by_kind"].items()},
        "load_ms": {k: load.get(k) for k in ("p50", "p99")},
    }


def run(quick: bool = False) -> dict:
    ensure_ray()
    baseline = raw_call_rate()
    scenario = load_scenario(SCENARIO)
    world = dataclasses.replace(scenario.world, duration=1800.0 if quick else scenario.world.duration)
    players = dataclasses.replace(scenario.players, population=1000)
    servers = dataclasses.replace(scenario.servers, count=max(scenario.servers.count,
                                                              1000 // scenario.servers.max_players))
    scenario = dataclasses.replace(scenario, world=world, players=players, servers=servers)
    runs = [_one(scenario, scale) for scale in (25.0, 50.0, 100.0)]
    healthy = [r for r in runs if r["healthy"]]
    best = max(healthy, key=lambda r: r["player_hours_per_s"]) if healthy else None
    rate = best["player_hours_per_s"] if best else 0.0
    return {
        "benchmark": "sim",
        "scenario": SCENARIO.name, "players": 1000, "simulated_hours": world.duration / 3600,
        "runs": runs,
        "player_hours_per_s": rate,
        "best_time_scale": best["time_scale"] if best else None,
        "baseline_raw_calls_per_s": round(baseline, 1),
        "ratio": round(rate / TARGET, 3),
        "target": f">= {TARGET:g} player-hours per second in a healthy run (every checker passing, no lock lost)",
    }
