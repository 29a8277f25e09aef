"""`python -m bench sim`: simulated player-hours per real second, Lyra's chaos scenario at 1,000 players on local Ray.

The scenario is `examples/scenarios/lyra_chaos.toml` with its population raised to 1,000 (its per-step chances of
join 0.1, leave 0.01, server stop 0.005 and crash 0.001, 6 simulated hours; `--quick`: 1 hour). A run counts only
if every checker passes. Player-hours are the planned players online integrated over simulated time; the rate
divides them by the wall time of the whole run (hosts' start, final BindToClose and reads included). The baseline,
measured in the same run, is the raw 1:1 Ray call rate; the target is 100 player-hours per second.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

from bench._common import ensure_ray, raw_call_rate
from sim import RunOptions, load_scenario, simulate

TARGET = 100.0
SCENARIO = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "lyra_chaos.toml"


class _Quiet:
    def write(self, _text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def run(quick: bool = False) -> dict:
    ensure_ray()
    baseline = raw_call_rate()
    scenario = load_scenario(SCENARIO)
    world = dataclasses.replace(scenario.world, duration=3600.0 if quick else scenario.world.duration)
    players = dataclasses.replace(scenario.players, population=1000)
    servers = dataclasses.replace(scenario.servers, count=max(scenario.servers.count, 1000 // scenario.servers.max_players))
    scenario = dataclasses.replace(scenario, world=world, players=players, servers=servers)
    with tempfile.TemporaryDirectory() as tmp:
        result = simulate(scenario, RunOptions(out=Path(tmp) / "run", progress=False, stream=_Quiet()))
    report = result.report
    run_info, totals = report["run"], report["totals"]
    rate = run_info["player_hours_per_s"]
    return {
        "benchmark": "sim",
        "scenario": str(SCENARIO.name), "players": 1000, "simulated_hours": round(run_info["simulated_s"] / 3600, 2),
        "time_scale": scenario.world.time_scale,
        "verdict": report["verdict"],
        "failed_checks": {c.name: c.counterexample for c in result.checks if not c.ok},
        "player_hours": run_info["player_hours"], "wall_s": run_info["wall_s"],
        "player_hours_per_s": rate,
        "ops": {k: v for k, v in totals["ops_by_kind"].items()},
        "tx": totals["tx"], "locks": totals["locks"], "servers": totals["servers"],
        "peak_players_online": totals["players"]["peak_online"],
        "latency_ms": {k: report["latency_ms"][k] for k in ("load", "unload", "mint", "trade", "purchase_save")
                       if k in report["latency_ms"]},
        "baseline_raw_calls_per_s": round(baseline, 1),
        "ratio": round(rate / TARGET, 3),
        "target": f">= {TARGET:g} player-hours per second, every checker passing",
    }
