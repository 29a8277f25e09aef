"""The figures of one run that a scenario's `[thresholds]` bound and `lodestore compare` sets side by side.

Owns: `metrics` (from a run's checkers and report) and `check_thresholds`. Never does: run anything, or read
files; a figure is measured the same way for every design.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lodestore.sim._checkers import CheckResult
from lodestore.sim._scenario import THRESHOLDS

__all__ = ["metrics", "check_thresholds"]


def _check(checks: Sequence[CheckResult], name: str) -> dict[str, Any]:
    for c in checks:
        if c.name == name:
            return c.details
    return {}


def _latency(report: Mapping[str, Any], op: str, p: str) -> float | None:
    value = report.get("latency_ms", {}).get(op, {}).get(p)
    return None if value is None else float(value)


def metrics(checks: Sequence[CheckResult], report: Mapping[str, Any]) -> dict[str, float | None]:
    """One run's figures, by the names `[thresholds]` takes (`THRESHOLDS`); None where nothing was measured (no
    trade ran: no trade latency).

    - failed_checks: checkers that failed. lost_writes: acknowledged actions missing from a ledger.
      duplicated_writes: actions applied twice, failed ones applied, and ledger entries no action made.
    - duplicated_items: item ids held twice. coins_created / coins_destroyed: how far the final coin total lies
      outside what the acknowledged and unknown mints and purchases allow. negative_balances: players below 0.
    - overlapping_sessions: pairs of sessions that held one key at once (for a design without a lock: servers
      that held the player's data in memory at once).
    - load_failures, data_at_risk_player_s (changes not yet saved, summed over players), throttled (requests the
      budget made wait), datastore_requests, memorystore_requests (the verifier's final read excluded).
    - p50/p99 of load, save (a forced save or an unload's final save) and trade, in simulated ms.
    """
    acked = _check(checks, "acknowledged_writes")
    conservation = _check(checks, "conservation")
    final, low, high = (conservation.get(k) for k in ("final_total", "low", "high"))
    totals = report.get("totals", {})
    requests = report.get("requests", {})
    out: dict[str, float | None] = {
        "failed_checks": sum(1 for c in checks if not c.ok),
        "lost_writes": acked.get("missing", 0),
        "duplicated_writes": acked.get("duplicated", 0) + acked.get("failed_applied", 0) + acked.get("phantom", 0),
        "duplicated_items": len(_check(checks, "no_duplicate_items").get("duplicated", {})),
        "coins_created": max(0, final - high) if final is not None else 0,
        "coins_destroyed": max(0, low - final) if final is not None else 0,
        "negative_balances": len(conservation.get("negative", ())),
        "overlapping_sessions": len(_check(checks, "single_holder").get("overlaps", ())),
        "load_failures": totals.get("players", {}).get("load_failures", 0),
        "data_at_risk_player_s": totals.get("data_at_risk_player_s", 0.0),
        "throttled": totals.get("throttled", 0),
        "datastore_requests": requests.get("datastore_total", 0),
        "memorystore_requests": requests.get("memorystore_total", 0),
    }
    for op in ("load", "save", "trade"):
        for p in ("p50", "p99"):
            out[f"{p}_{op}_ms"] = _latency(report, op, p)
    assert set(out) == set(THRESHOLDS)
    return out


def check_thresholds(thresholds: Mapping[str, float], figures: Mapping[str, float | None]) -> list[dict[str, Any]]:
    """Each threshold with the figure it bounds and whether it held ("at most"; a figure not measured holds)."""
    return [{"metric": name, "at_most": limit, "value": figures.get(name),
             "ok": figures.get(name) is None or figures[name] <= limit}
            for name, limit in thresholds.items()]
