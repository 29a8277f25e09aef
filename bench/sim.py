"""`python -m lodestore.bench sim`: simulated player-hours per wall second of Lyra's chaos scenario, on Ray and in
process, in virtual time.

The scenario is `examples/scenarios/lyra_chaos.toml` (per-step chances of join 0.1, leave 0.01, server stop 0.005 and
crash 0.001; a light economy) with its population raised to 1,000 players, 6 simulated hours (`--quick`: 10 simulated
minutes). It runs on local Ray (the cloud node in the driver, two host nodes), then in process as the baseline measured
in the same run; then 20 simulated minutes (`--quick`: 5) at 1,000 and at 10,000 players on Ray, and at 10,000 in
process: cost per player-hour at 10,000 over that at 1,000 says how the cost grows with players. A run counts only when
every checker passed; it cannot lose a lock for want of time (virtual time), so "locks lost" must be 0. Player-hours are
the planned players online integrated over simulated time, over the wall time of the whole run (nodes' start, final
BindToClose and reads included). Targets: >= 100 player-hours per wall second on Ray; Ray >= 1.7x in process; cost per
player-hour at 10,000 players <= 1.5x that at 1,000.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from lodestore.bench._common import LYRA_CHAOS, ensure_ray, lyra_chaos
from lodestore.sim import RunOptions, simulate

TARGET = 100.0


def _one(scenario, engine: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = simulate(scenario, RunOptions(out=Path(tmp) / "run", engine=engine, progress=False,
                                               stream=io.StringIO()))
    report = result.report
    run, totals = report["run"], report["totals"]
    return {
        "engine": engine, "players": scenario.players.population, "verdict": report["verdict"],
        "failed_checks": {c.name: c.counterexample for c in result.checks if not c.ok},
        "player_hours": run["player_hours"], "wall_s": run["wall_s"], "wall_s_playing": run["wall_s_playing"],
        "player_hours_per_s": run["player_hours_per_s"],
        "wall_s_per_player_hour": round(run["wall_s"] / run["player_hours"], 4) if run["player_hours"] else None,
        "windows": run["windows"], "node_steps": run["node_steps"], "messages": run["messages"],
        "hop_ms": run["hop_ms"], "locks": totals["locks"], "tx": totals["tx"], "digest": report["digest"],
        "load_ms": {k: report["latency_ms"].get("load", {}).get(k) for k in ("p50", "p99")},
    }


def run(quick: bool = False) -> dict:
    ensure_ray()
    duration = 600.0 if quick else 21600.0
    ray_1k = _one(lyra_chaos(1000, duration), "ray")
    local_1k = _one(lyra_chaos(1000, duration), "in-process")
    # the growth pair: the same (shorter) simulated time at 1,000 and 10,000 players, and 10,000 in process too
    short = 300.0 if quick else 1200.0
    growth_1k = _one(lyra_chaos(1000, short), "ray")
    ray_10k = _one(lyra_chaos(10_000, short), "ray")
    local_10k = _one(lyra_chaos(10_000, short), "in-process")
    rate = ray_1k["player_hours_per_s"] if ray_1k["verdict"] == "pass" else 0.0
    growth = (ray_10k["wall_s_per_player_hour"] / growth_1k["wall_s_per_player_hour"]
              if ray_10k["wall_s_per_player_hour"] and growth_1k["wall_s_per_player_hour"] else None)
    runs = [ray_1k, local_1k, growth_1k, ray_10k, local_10k]
    return {
        "benchmark": "sim", "scenario": LYRA_CHAOS.name, "simulated_hours": duration / 3600,
        "growth_simulated_hours": short / 3600, "runs": runs,
        "every_checker_passed": all(r["verdict"] == "pass" for r in runs),
        "locks_lost": sum(r["locks"]["lost"] for r in runs),
        "player_hours_per_s": rate,
        "baseline_in_process_player_hours_per_s": local_1k["player_hours_per_s"],
        "ray_over_in_process": (round(rate / local_1k["player_hours_per_s"], 3) if local_1k["player_hours_per_s"]
                                else None),
        "ray_over_in_process_at_10k": (round(ray_10k["player_hours_per_s"] / local_10k["player_hours_per_s"], 3)
                                       if local_10k["player_hours_per_s"] else None),
        "same_history_on_ray_and_in_process": ray_1k["digest"] == local_1k["digest"]
                                              and ray_10k["digest"] == local_10k["digest"],
        "cost_per_player_hour_10k_over_1k": round(growth, 3) if growth is not None else None,
        "ratio": round(rate / TARGET, 3),
        "target": f">= {TARGET:g} player-hours per second on Ray (every checker passing); Ray >= 1.7x in process; "
                  f"cost per player-hour at 10,000 players <= 1.5x that at 1,000",
    }
