"""`python -m lodestore.bench compare`: what each design costs per simulated player-hour, the lyra design the baseline
of the same run.

Every design plays `examples/scenarios/lyra_chaos.toml` (Lyra's chaos: joins, leaves, server stops and crashes, a
light economy with trades) at 300 players for 1 simulated hour (`--quick`: 100 players, 10 minutes), in process
(one core; the engine is the same on Ray), the same seed for all. Per design: wall seconds and DataStore and
MemoryStore requests per simulated player-hour, each as a ratio to lyra's in this run, and what it lost (its
checkers' verdicts and the comparison's figures). There is no target: the figures say what a choice costs.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from lodestore.bench._common import lyra_chaos
from lodestore.sim import RunOptions, compare
from lodestore.sim.designs import DESIGNS


def _ratio(value: float | None, base: float | None) -> float | None:
    return round(value / base, 3) if value is not None and base else None


def run(quick: bool = False) -> dict:
    players, duration = (100, 600.0) if quick else (300, 3600.0)
    scenario = lyra_chaos(players, duration)
    with tempfile.TemporaryDirectory() as tmp:
        result = compare(scenario, list(DESIGNS), RunOptions(out=Path(tmp) / "cmp", engine="in-process",
                                                             progress=False), stream=io.StringIO())
    rows = {}
    for d in result.report["designs"]:
        hours = d["player_hours"] or None
        rows[d["name"]] = {
            "verdict": d["verdict"],
            "failed_checks": [c["name"] for c in d["checks"] if not c["ok"]],
            "player_hours": d["player_hours"],
            "wall_s": d["wall_s"],
            "wall_s_per_player_hour": round(d["wall_s"] / hours, 4) if hours else None,
            "datastore_requests_per_player_hour": round(d["metrics"]["datastore_requests"] / hours, 1)
            if hours else None,
            "memorystore_requests_per_player_hour": round(d["metrics"]["memorystore_requests"] / hours, 1)
            if hours else None,
            "lost_writes": d["metrics"]["lost_writes"],
            "duplicated_items": d["metrics"]["duplicated_items"],
            "overlapping_sessions": d["metrics"]["overlapping_sessions"],
            "data_at_risk_player_s": d["metrics"]["data_at_risk_player_s"],
            "p99_load_ms": d["metrics"]["p99_load_ms"],
        }
    base = rows["lyra"]
    for row in rows.values():
        row["wall_vs_lyra"] = _ratio(row["wall_s_per_player_hour"], base["wall_s_per_player_hour"])
        row["datastore_requests_vs_lyra"] = _ratio(row["datastore_requests_per_player_hour"],
                                                   base["datastore_requests_per_player_hour"])
    return {"benchmark": "compare", "scenario": "lyra_chaos", "players": players, "duration_s": duration,
            "engine": "in-process", "baseline": "lyra", "designs": rows}
