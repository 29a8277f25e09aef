"""The simulator's report says how much DataStore storage a run left, as Roblox counts it."""

from __future__ import annotations

from tests.sim.test_simulate import QUICK, run_in_process

MB = 1024 * 1024


def test_the_report_gives_the_storage_against_roblox_s_limit():
    storage = run_in_process(QUICK).report["storage"]
    assert storage["lifetime_users"] == 20                           # the scenario's population
    assert storage["storage_limit_bytes"] == 500 * MB + 20 * MB
    assert 0 < storage["storage_bytes"] and storage["over_limit"] is False
    assert storage["estimated_monthly_cost_usd"] == 0.0
    assert storage["datastore_bytes"] > 0 and "memorystore_bytes" in storage
