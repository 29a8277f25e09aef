"""MemoryStore faults in a scenario: the `[[faults]]` keys that set them, how they become the world's FaultConfig,
and a small in-process run whose lock service fails requests and still passes every checker."""

from __future__ import annotations

import io

import pytest

from lodestore.sim import RunOptions, parse_scenario, simulate
from lodestore.sim._runner import fault_config_at
from lodestore.storage import ConfigError
from lodestore.storage import MEMORYSTORE_FAULT_KEYS
from tests.sim.test_simulate import QUICK

FAULTY_LOCKS = QUICK + """
[store]
lock_ttl = 30
lock_refresh = 10

[[faults]]
start = 60
end = 400
memorystore_error_rate = { HashMap = 0.3 }

[[faults]]
start = 450
end = 465
memorystore_outage = true
"""


def test_fault_windows_set_memorystore_rates_and_outages():
    scenario = parse_scenario(FAULTY_LOCKS)
    first, second = scenario.faults
    assert first.memorystore_error_rate == {"HashMap": 0.3} and not first.memorystore_outage
    assert second.memorystore_outage and second.memorystore_error_rate == {}
    t0 = 1_000_000
    assert fault_config_at(scenario, 100, t0).memorystore_error_rate == {"HashMap": pytest.approx(0.3)}
    assert fault_config_at(scenario, 455, t0).memorystore_error_rate == dict.fromkeys(MEMORYSTORE_FAULT_KEYS, 1.0)
    assert fault_config_at(scenario, 420, t0).memorystore_error_rate == {}
    assert fault_config_at(scenario, 100, t0).error_rate == {}                  # the DataStore is not touched


@pytest.mark.parametrize("fault, words", [
    ("memorystore_error_rate = { Hashmap = 0.1 }", ["faults[0].memorystore_error_rate.Hashmap", "HashMap"]),
    ("memorystore_error_rate = { Queue = 1.5 }", ["faults[0].memorystore_error_rate.Queue"]),
    ("memorystore_error_rate = 0.5", ["faults[0].memorystore_error_rate"]),
    ("memorystore_outage = 1", ["faults[0].memorystore_outage", "boolean"]),
    ("memorystore_error_rate = { Queue = 0.0 }", ["faults[0]", "sets no fault", "memorystore_outage"]),
])
def test_bad_memorystore_faults_are_refused_naming_the_field(fault, words):
    with pytest.raises(ConfigError) as err:
        parse_scenario(f"[[faults]]\nstart = 0\nend = 10\n{fault}\n")
    for word in words:
        assert word in str(err.value)


def test_a_store_whose_lock_service_fails_requests_still_passes_every_checker():
    result = simulate(parse_scenario(FAULTY_LOCKS), RunOptions(engine="in-process", write_files=False,
                                                               progress=False, stream=io.StringIO()))
    assert result.ok, [(c.name, c.counterexample) for c in result.checks if not c.ok]
    assert {c.name for c in result.checks} >= {"acknowledged_writes", "single_holder", "no_duplicate_items"}
    warnings = result.report["totals"]["store_warnings"]
    assert any("InternalError" in w for w in warnings)                   # the faults reached the lock requests
    assert result.report["totals"]["locks"]["acquired"] > 20
