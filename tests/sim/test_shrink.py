"""`lodestore shrink`: a run of a deliberately broken store (one that drops a write, one that double-applies a
trade, one that grants two locks: made by these tests only) shrinks to a few players, a few minutes and a handful of
events that still fail the same checker the same way, the same every time; its output replays to the same digest; a
run that passed, and a directory that is not a run, are refused."""

from __future__ import annotations

import importlib
import io
import json

import pytest

from lodestore.sim import (Planner, RunOptions, Script, ShrinkTarget, events_from_json, events_to_json, failure_shape,
                           main, parse_scenario, playable, shrink, simulate)
from lodestore.sim.designs import DESIGNS, Design, NaiveLayer, NaiveOptions, read_values
from lodestore.storage import ConfigError

SCENARIO = """
[world]
name = "shrink"
backend = "sqlite"
duration = 240
seed = 7

[servers]
count = 2
max_players = 10
step = 5

[players]
population = 8
join_rate = 0.3
leave_rate = 0.02
teleport_rate = {teleport}

[players.actions_per_minute]
coins = 4
grant_item = 1
purchase = 0.5
trade = {trade}

[store]
design = "{design}"
autosave_interval = 60
lock_ttl = 30
lock_refresh = 10

[[faults]]
start = 60
end = 120
error_rate = {{ StandardRead = 0.05 }}
"""


class _DropsFirstWrite(NaiveLayer):
    """Acknowledges the first save of each key without writing it: a store that drops a write."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self._written: set[str] = set()

    async def save(self, key: str) -> None:
        if key in self._written:
            return await super().save(key)
        self._written.add(key)
        self._player(key)
        self.saved(key, self.now())


class _DoubleCredit(NaiveLayer):
    """Applies the taker's half of a trade twice: a store that double-applies a trade."""

    async def update(self, key, fn) -> bool:
        changed = await super().update(key, fn)
        if changed and type(fn).__name__ == "_Credit":
            await super().update(key, fn)
        return changed


def _design(name: str, layer: type) -> Design:
    async def open_(game, scheduler, config, options):
        return layer(game.storage, scheduler, config, options)
    return Design(name, f"test-only: {layer.__doc__}", NaiveOptions, open_, read_values)


@pytest.fixture(autouse=True)
def no_plots(monkeypatch):
    """Reports without their PNG plots (matplotlib's seconds per report are not what these tests are about)."""
    monkeypatch.setattr("lodestore.sim._report._write_plots", lambda series, out: {})


def _grants_held_locks(monkeypatch) -> None:
    """Lyra's lock items (a MemoryStore hash map) hand a lock another session holds to whoever claims it: a store
    that grants two locks."""
    items = importlib.import_module("lodestore.actors._lease")._HashMapItems
    update = items.update

    async def blind(self, key, fn):
        def claim(old):
            new = fn(old)
            return fn(None) if new is None and old is not None else new
        return await update(self, key, claim)
    monkeypatch.setattr(items, "update", blind)


@pytest.fixture
def broken(monkeypatch):
    """The broken stores, registered for one test: two designs of their own, and lyra over lock items that grant
    two locks (the design "two-locks")."""
    monkeypatch.setitem(DESIGNS, "drops-write", _design("drops-write", _DropsFirstWrite))
    monkeypatch.setitem(DESIGNS, "double-trade", _design("double-trade", _DoubleCredit))
    monkeypatch.setitem(DESIGNS, "two-locks", DESIGNS["lyra"])
    _grants_held_locks(monkeypatch)


def _scenario(design: str, teleport: float = 0.0, trade: float = 0.0):
    return parse_scenario(SCENARIO.format(design=design, teleport=teleport, trade=trade))


def _quiet_run(scenario, out, **options):
    return simulate(scenario, RunOptions(out=out, engine="in-process", progress=False, stream=io.StringIO(),
                                         **options))


def _failed_run(tmp_path, scenario, name="run"):
    result = _quiet_run(scenario, tmp_path / name)
    assert not result.ok
    return result


def test_the_plan_played_as_a_list_is_the_same_run_and_is_written_beside_it(broken, tmp_path):
    # stalls, crashes, teleports: the plan's quirks (a stalled server's late leave) are played as they are
    text = SCENARIO.format(design="double-trade", teleport=0.03, trade=2).replace(
        "error_rate = {", "server_crash_rate = 0.02\nlock_stall_rate = 0.05\nerror_rate = {").replace(
        "step = 5", "step = 5\nstart_rate = 0.02\nstop_rate = 0.01\ncrash_rate = 0.005")
    scenario = parse_scenario(text)
    events = tuple(Planner(scenario))
    assert {"stall", "crash", "teleport"} <= {ev.kind for ev in events}
    assert playable(events, scenario.players.population) == list(events)
    planned = _quiet_run(scenario, tmp_path / "planned")
    scripted = _quiet_run(scenario, tmp_path / "scripted", events=events)
    assert scripted.report["digest"] == planned.report["digest"]
    assert scripted.report["run"]["scripted"] and not planned.report["run"]["scripted"]
    assert not (tmp_path / "planned" / "events.json").exists()
    saved = json.loads((tmp_path / "scripted" / "events.json").read_text())
    assert events_from_json(saved) == list(events)
    assert events_to_json(events) == saved


# (the broken design, the checker to keep, the counterexample's shape, scenario knobs)
STORES = {
    "drops-write": (None, "coins destroyed", {}),
    "double-trade": (None, "coins created", {"trade": 2}),
    "two-locks": ("single_holder", "double lock on '…'", {"teleport": 0.05}),
}


@pytest.mark.parametrize("store, sound", [("drops-write", "naive"), ("double-trade", "naive"),
                                          ("two-locks", "lyra")])
def test_the_same_storm_passes_the_kept_checker_on_the_store_left_unbroken(tmp_path, store, sound):
    checker, _, knobs = STORES[store]
    result = _quiet_run(_scenario(sound, **knobs), tmp_path / "run")
    assert next(c for c in result.checks if c.name == (checker or "conservation")).ok


@pytest.mark.parametrize("store", sorted(STORES))
def test_a_broken_store_shrinks_to_a_few_players_and_minutes_that_still_fail_the_same_way(broken, tmp_path, store):
    checker, shape, knobs = STORES[store]
    run = _failed_run(tmp_path, _scenario(store, **knobs))
    progress = io.StringIO()
    result = shrink(tmp_path / "run", budget=80, checker=checker, stream=progress)
    kept = checker or "conservation"
    assert result.target == ShrinkTarget(kept, shape, next(c.counterexample for c in run.checks if c.name == kept))
    assert result.reproduced
    assert result.scenario.players.population <= 3
    assert result.scenario.world.duration <= 180
    assert len(result.events) <= 8 < run.report["run"]["events_planned"]
    out = tmp_path / "run" / "shrunk"
    assert result.out == out
    report = json.loads((out / "report.json").read_text())
    failed = next(c for c in report["checks"] if c["name"] == kept)
    assert not failed["ok"] and failure_shape(failed["counterexample"]) == shape
    # the log: every try with its verdict and wall time, one progress line each
    log = json.loads((out / "shrink.json").read_text())
    assert log["reproduced"] and log["digest"] == report["digest"] == result.final.report["digest"]
    assert len(log["tries"]) == len(result.tries) <= 80
    assert {t["verdict"] for t in log["tries"]} <= {"fails the same way", "passes", "fails otherwise", "error"}
    assert all(t["wall_s"] >= 0 for t in log["tries"])
    tries = [line for line in progress.getvalue().splitlines() if line.startswith("try ")]
    assert len(tries) == len(result.tries)
    assert (out / "shrink.log").read_text().splitlines() == progress.getvalue().splitlines()
    # the output is a run `lodestore replay` plays: scenario.toml and events.json, the same digest
    assert events_from_json(json.loads((out / "events.json").read_text())) == list(result.events)
    assert main(["replay", str(out), "--in-process", "--no-progress", "--out", str(tmp_path / "replay")]) == 0


def test_lodestore_shrink_on_the_command_line(broken, tmp_path, capsys):
    _failed_run(tmp_path, _scenario("drops-write"))
    out = tmp_path / "small"
    assert main(["shrink", str(tmp_path / "run"), "--budget", "30", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"shrunk: {out}" in printed and "try   1" in printed
    assert {"report.json", "scenario.toml", "events.json", "history.json", "shrink.json", "shrink.log"} <= {
        p.name for p in out.iterdir()}
    assert main(["shrink", str(tmp_path / "run"), "--budget", "30", "--out", str(out)]) == 2   # not empty now
    assert "not an empty directory" in capsys.readouterr().err


def test_a_budget_of_seconds_spent_at_once_keeps_the_run_as_it_was(broken, tmp_path):
    run = _failed_run(tmp_path, _scenario("drops-write"))
    result = shrink(tmp_path / "run", budget_seconds=1e-9, stream=io.StringIO())
    assert result.tries == () and result.budget_spent and result.reproduced
    assert result.scenario.players.population == run.report["scenario"]["players"]["population"]
    assert len(result.events) == run.report["run"]["events_planned"]


def test_the_same_run_shrinks_to_the_same_result(broken, tmp_path):
    _failed_run(tmp_path, _scenario("double-trade", trade=2))
    first = shrink(tmp_path / "run", budget=40, out=tmp_path / "one", stream=io.StringIO())
    second = shrink(tmp_path / "run", budget=40, out=tmp_path / "two", stream=io.StringIO())
    assert first.events == second.events and first.scenario == second.scenario
    assert [(t.change, t.verdict) for t in first.tries] == [(t.change, t.verdict) for t in second.tries]
    assert first.final.report["digest"] == second.final.report["digest"]
    assert (tmp_path / "one" / "scenario.toml").read_text() == (tmp_path / "two" / "scenario.toml").read_text()


def test_the_budget_bounds_the_tries_and_keeps_the_smallest_failure_so_far(broken, tmp_path):
    run = _failed_run(tmp_path, _scenario("drops-write"))
    result = shrink(tmp_path / "run", budget=3, stream=io.StringIO())
    assert len(result.tries) == 3 and result.budget_spent
    assert result.reproduced
    assert result.scenario.world.duration < run.report["scenario"]["duration_s"]   # what the tries kept


def test_a_shrunk_run_shrinks_further_within_its_own_events(broken, tmp_path):
    _failed_run(tmp_path, _scenario("double-trade", trade=2))
    first = shrink(tmp_path / "run", budget=10, out=tmp_path / "first", stream=io.StringIO())
    again = shrink(tmp_path / "first", budget=60, stream=io.StringIO())
    assert again.reproduced and len(again.events) <= len(first.events)
    assert again.scenario.world.seed == first.scenario.world.seed


def test_shrink_refuses_a_run_that_passed(tmp_path, capsys):
    passed = _quiet_run(_scenario("lyra"), tmp_path / "passed")
    assert passed.ok
    assert main(["shrink", str(tmp_path / "passed")]) == 2
    err = capsys.readouterr().err
    assert "passed every checker" in err and "nothing to shrink" in err
    assert not (tmp_path / "passed" / "shrunk").exists()


def test_shrink_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["shrink", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "report.json").write_text("{not json")
    (tmp_path / "scenario.toml").write_text("")
    assert main(["shrink", str(tmp_path)]) == 2
    assert "not a run's report" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="budget"):
        shrink(tmp_path, budget=0)


def test_shrink_refuses_a_checker_that_did_not_fail(broken, tmp_path, capsys):
    _failed_run(tmp_path, _scenario("drops-write"))
    assert main(["shrink", str(tmp_path / "run"), "--checker", "no_duplicate_items", "--budget", "5"]) == 2
    err = capsys.readouterr().err
    assert "--checker no_duplicate_items" in err and "conservation" in err


def test_the_shape_of_a_failure_keeps_how_it_failed_not_its_particulars():
    destroyed = failure_shape("coins destroyed: final total 2469 outside expected [2480, 2480] (initial total 800)")
    assert destroyed == "coins destroyed"
    assert failure_shape("coins created: final total 9 outside expected [1, 2] (initial total 1)") != destroyed
    assert failure_shape("double lock on 'player_00001': session 'a' ...") == \
        failure_shape("double lock on 'player_00007': session 'b' ...") == "double lock on '…'"
    assert failure_shape("duplicated item 'item-op1' held by ['a', 'b']") == "duplicated item '…' held by […]"


def test_playable_drops_what_depends_on_a_removed_event():
    from lodestore.sim import Planned
    start, other = Planned(0, "start", "s1"), Planned(0, "start", "s2")
    join_a, join_b = Planned(10, "join", "s1", "player_00000"), Planned(10, "join", "s2", "player_00001")
    mint = Planned(20, "mint", "s1", "player_00000", "op1", 5)
    trade = Planned(30, "trade", "s1", "player_00000", "op2", 3, target="player_00001", target_server="s2")
    ghost = Planned(40, "mint", "s3", "player_00000", "op3", 5)
    stranger = Planned(40, "join", "s1", "player_00009")
    full = [start, other, join_a, join_b, mint, trade, ghost, stranger]
    assert playable(full, population=2) == [start, other, join_a, join_b, mint, trade]
    assert playable([start, other, join_b, mint, trade], population=2) == [start, other, join_b]   # no join of a
    assert playable([start, join_a, mint, trade], population=2) == [start, join_a, mint]          # no taker
    crash = Planned(15, "crash", "s1")   # the player joined s1: its mint is played (and fails as not loaded)
    assert playable([start, join_a, crash, mint], population=2) == [start, join_a, crash, mint]
    teleport = Planned(12, "teleport", "s1", "player_00000", target_server="s2")
    after = Planned(20, "mint", "s2", "player_00000", "op4", 1)
    assert playable([start, other, join_a, teleport, after], population=2) == [start, other, join_a, teleport, after]
    assert playable([start, other, teleport, after], population=2) == [start, other]   # no join: no teleport


def test_a_script_plays_only_what_is_playable(tmp_path):
    from lodestore.sim import Planned
    scenario = _scenario("lyra")
    events = (Planned(0, "start", "s1"), Planned(10, "mint", "s1", "player_00000", "op1", 5),
              Planned(5000, "join", "s1", "player_00000"), Planned(9000, "mint", "s1", "player_00000", "op2", 5))
    assert Script(scenario, events).events == [events[0], events[2], events[3]]
    result = _quiet_run(scenario, tmp_path / "run", events=events)
    assert result.ok
    assert result.report["totals"]["ops_by_kind"]["mint"]["ok"] == 1


def test_a_script_crashes_the_servers_of_a_lost_host_and_drops_their_later_events():
    from lodestore.sim import Planned
    events = (Planned(0, "start", "s1"), Planned(0, "start", "s2"), Planned(10, "join", "s1", "player_00000"),
              Planned(20, "join", "s2", "player_00001"), Planned(900, "mint", "s1", "player_00000", "op1", 5),
              Planned(900, "mint", "s2", "player_00001", "op2", 5))
    script = Script(_scenario("lyra"), events)
    assert script.until(100) == list(events[:4]) and script.online == 2
    assert script.lose(["s1", "s9"]) == ["s1"]
    assert script.next_at() == 100
    assert script.until(1000) == [Planned(100, "crash", "s1"), events[5]]
    assert script.online == 1 and script.next_at() is None


def test_bad_event_lists_are_refused_by_name():
    with pytest.raises(ConfigError, match="not an event list"):
        events_from_json([])
    with pytest.raises(ConfigError, match=r"events\[0\]\.kind: must be one of"):
        events_from_json({"format": 1, "events": [{"t": 0, "kind": "explode", "server": "s"}]})
    with pytest.raises(ConfigError, match=r"events\[0\]\.t: must be int"):
        events_from_json({"format": 1, "events": [{"t": "soon", "kind": "start", "server": "s"}]})
    with pytest.raises(ConfigError, match=r"events\[0\]\.colour: unknown field"):
        events_from_json({"format": 1, "events": [{"t": 0, "kind": "start", "server": "s", "colour": 1}]})
    with pytest.raises(ConfigError, match="events must be a tuple of Planned"):
        RunOptions(events=[{"t": 0}])
