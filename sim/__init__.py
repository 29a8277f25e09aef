"""sim: simulated game servers, contention scenarios, invariant checkers and reports (in progress).

Today it holds the scenario model of `lodestore simulate SCENARIO.toml`: `load_scenario(path)` and
`parse_scenario(text)` validate a TOML file into frozen dataclasses, refusing every bad field with a
`storage.ConfigError` that names it by its dotted path. The runner, the checkers and the reports come next.

Everything public is exported here; the `_`-prefixed modules are private.
"""

from sim._scenario import (REQUEST_TYPES, ActionRates, FaultWindow, HotKeys, LatencyRange, Players, Scenario,
                           Servers, StoreSection, WorldSection, load_scenario, parse_scenario)

__all__ = ["load_scenario", "parse_scenario", "Scenario", "WorldSection", "Servers", "Players", "ActionRates",
           "StoreSection", "HotKeys", "FaultWindow", "LatencyRange", "REQUEST_TYPES"]
