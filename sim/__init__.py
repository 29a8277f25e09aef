"""sim: simulated game servers, contention scenarios, invariant checkers and reports (`lodestore simulate`).

    >>> from lodestore.sim import load_scenario, simulate, RunOptions
    >>> result = simulate(load_scenario("examples/scenarios/quickstart.toml"), RunOptions(out=Path("run")))
    >>> result.ok, result.report["run"]["player_hours_per_s"]

`load_scenario` / `parse_scenario` validate a TOML scenario (every bad field is named by its dotted path).
`Planner` turns it into a seeded event stream; `simulate` plays it on simulated game servers (Ray actors, or all in
this process with a manual clock), records the history of every operation and lock, runs the checkers (currency
conserved, acknowledged writes present, one lock holder at a time, no item duplicated, hot counters exact, and
`check_consistency` on the raw DataStore/MemoryStore requests the hosts record, each a `RawRequest`) and
writes report.json, report.html and plots (`write_report`, `summary_table`). `sim._inspect` is `lodestore inspect`.
`build_timeline` / `write_timeline` tell one key's story in a finished run (`lodestore timeline`; the report links
the timelines of the keys its checkers name, `keys_named`).
`shrink` (`lodestore shrink`) turns a failed run into a much smaller scenario and event list that fail the same way
(`Script` plays a given list in the planner's place, `playable` cuts one to what the planner could have made).
`compare` runs one scenario once per design (`lodestore.sim.designs`: lyra, datastorer, elite, atomicstore,
profilestore, naive) and reports side by side; `metrics` and `check_thresholds` are what `[thresholds]` bound.

Everything public is exported here; the `_`-prefixed modules are private.
"""

from lodestore.sim._scenario import (REQUEST_TYPES, THRESHOLDS, ActionRates, FaultWindow, HotKeys, LatencyRange,
                                     LatencySection, Players, Scenario, ServeSection, Servers, StoreSection,
                                     WorldSection, datastore_latency, load_scenario, memorystore_latency,
                                     parse_scenario)

from lodestore.sim._cli import main
from lodestore.sim._checkers import (CheckResult, History, LockEvent, OpEvent, check_acknowledged_writes, check_conservation,
                           check_no_duplicate_items, check_single_holder, run_checks)
from lodestore.sim._collect import check_hot_counters
from lodestore.sim._consistency import VIOLATION_KINDS, RawRequest, check_consistency
from lodestore.sim._report import summary_table, write_report
from lodestore.sim._runner import RunOptions, RunResult, simulate
from lodestore.sim._compare import CompareResult, compare, compare_table
from lodestore.sim._metrics import check_thresholds, metrics
from lodestore.sim._workload import Planned, Planner, Script, events_from_json, events_to_json, playable
from lodestore.sim._timeline import TimelineError, build_timeline, keys_named, write_timeline
from lodestore.sim._shrink import DEFAULT_BUDGET, ShrinkResult, ShrinkTarget, ShrinkTry, failure_shape, shrink

__all__ = ["main", "simulate", "RunOptions", "RunResult", "Planner", "Planned", "write_report", "summary_table",
           "History", "LockEvent", "OpEvent", "CheckResult", "run_checks", "check_conservation",
           "check_acknowledged_writes", "check_single_holder", "check_no_duplicate_items", "check_hot_counters",
           "load_scenario", "parse_scenario", "Scenario", "ServeSection", "WorldSection", "Servers", "Players", "ActionRates",
           "StoreSection", "HotKeys", "FaultWindow", "LatencyRange", "LatencySection", "REQUEST_TYPES",
           "datastore_latency", "memorystore_latency", "THRESHOLDS", "compare", "CompareResult", "compare_table",
           "metrics", "check_thresholds", "check_consistency", "RawRequest", "VIOLATION_KINDS",
           "build_timeline", "write_timeline", "keys_named", "TimelineError",
           "Script", "playable", "events_to_json", "events_from_json", "shrink",
           "ShrinkResult", "ShrinkTarget", "ShrinkTry", "failure_shape", "DEFAULT_BUDGET"]
