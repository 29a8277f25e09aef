"""`python -m lodestore.bench check`: what the consistency checker (`sim._consistency`) costs per million recorded
requests, against merely reading the same records in the same run.

It plays `examples/scenarios/lyra_chaos.toml` (100 players for 30 simulated minutes; `--quick`: 40 players, 5
minutes) in process with raw requests recorded, then makes a history of about a million requests (`--quick`: 100,000)
from copies of that one, each copy's keys renamed (so every key's history keeps its real size and shape: the checker
works key by key, and this is what a longer run of more players gives it). Per million requests: the checker's
seconds (median of 3) and the baseline's, which reads every record into its named tuple and groups it by key (what
any checker of these records must do) and checks nothing; and their ratio. There is no target: the figures say what
the check costs.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from lodestore.bench._common import lyra_chaos
from lodestore.sim import RawRequest, RunOptions, check_consistency, simulate

ROUNDS = 3


def _recorded(players: int, duration_s: float) -> tuple[list[tuple], float]:
    """The raw requests of one in-process lyra_chaos run, and its wall seconds."""
    scenario = lyra_chaos(players, duration_s)
    with tempfile.TemporaryDirectory() as tmp:
        result = simulate(scenario, RunOptions(out=Path(tmp) / "run", engine="in-process", progress=False,
                                               stream=io.StringIO()))
    return list(result.history.requests), result.report["run"]["wall_s"]


def _copies(requests: list[tuple], target: int) -> list[tuple]:
    """About `target` requests: copies of `requests`, copy n's keys suffixed "~n" (3 is the key's field)."""
    out = list(requests)
    n = 0
    while len(out) < target:
        n += 1
        out.extend(r[:3] + (f"{r[3]}~{n}",) + r[4:] for r in requests)
    return out


def _parse_and_group(requests: list[tuple]) -> int:
    by_key: dict[tuple, list[RawRequest]] = {}
    for raw in requests:
        r = RawRequest._make(raw)
        by_key.setdefault((r.service, r.store, r.scope, r.key), []).append(r)
    return len(by_key)


def _median_s(fn, requests: list[tuple]) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn(requests)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = False) -> dict:
    players, duration, target = (40, 300.0, 100_000) if quick else (100, 1800.0, 1_000_000)
    recorded, wall = _recorded(players, duration)
    if not recorded:
        raise RuntimeError("the lyra_chaos run recorded no raw requests: nothing to check")
    history = _copies(recorded, target)
    verdict = check_consistency(history)
    per_million = 1_000_000 / len(history)
    check_s = _median_s(check_consistency, history) * per_million
    base_s = _median_s(_parse_and_group, history) * per_million
    return {"benchmark": "check", "scenario": "lyra_chaos", "players": players, "duration_s": duration,
            "engine": "in-process", "baseline": "parse_and_group",
            "recorded_requests": len(recorded), "recording_run_wall_s": wall,
            "recorded_by_call": dict(Counter(f"{r[0]}.{r[5]}" for r in recorded).most_common()),
            "checked_requests": len(history), "keys": verdict.details["keys"], "consistent": verdict.ok,
            "check_s_per_million": round(check_s, 3), "baseline_s_per_million": round(base_s, 3),
            "check_vs_baseline": round(check_s / base_s, 2) if base_s else None}
