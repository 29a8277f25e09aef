"""sim: simulated game servers, contention scenarios, invariant checkers and reports (in progress).

Today it holds the scenario model of `lodestore simulate SCENARIO.toml` (`load_scenario(path)` and
`parse_scenario(text)` validate a TOML file into frozen dataclasses, refusing every bad field with a
`storage.ConfigError` that names it by its dotted path), and the recorded history of a run with its invariant
checkers (`History`, `run_checks`: currency conserved, acknowledged writes present, one lock holder at a time, no
item duplicated). The runner and the reports come next.

Everything public is exported here; the `_`-prefixed modules are private.
"""

from sim._scenario import (REQUEST_TYPES, ActionRates, FaultWindow, HotKeys, LatencyRange, Players, Scenario,
                           Servers, StoreSection, WorldSection, load_scenario, parse_scenario)

from sim._checkers import (CheckResult, History, LockEvent, OpEvent, check_acknowledged_writes, check_conservation,
                           check_no_duplicate_items, check_single_holder, run_checks)

__all__ = ["History", "LockEvent", "OpEvent", "CheckResult", "run_checks", "check_conservation",
           "check_acknowledged_writes", "check_single_holder", "check_no_duplicate_items",
           "load_scenario", "parse_scenario", "Scenario", "WorldSection", "Servers", "Players", "ActionRates",
           "StoreSection", "HotKeys", "FaultWindow", "LatencyRange", "REQUEST_TYPES"]
