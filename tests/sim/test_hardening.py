"""Issue 18, the simulator's part: runs that ended without a report or with a wrong verdict, and bad paths.

Each test is the one that would have caught the defect: a server that never gets a player, Ctrl-C in process, a
player with no record, a PASS from a harness that could not keep up, path problems that exited 1 with a traceback,
and a bad scenario found only after Ray had started.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lodestore.sim import RunOptions, main, parse_scenario, simulate
from lodestore.sim._collect import Collector
from lodestore.sim._runner import _Engine
from lodestore.sim._workload import player_key

IDLE = """
[world]
name = "idle"
backend = "memory"
duration = 120
budget = "current"

[servers]
count = 3
step = 5

[players]
population = 5
join_rate = 0
leave_rate = 0
"""


def _options(**changes) -> RunOptions:
    return RunOptions(**{"engine": "in-process", "write_files": False, "progress": False,
                         "stream": io.StringIO(), **changes})


# --------------------------------------------------------------------------- runs that ended without a report

def test_servers_that_never_get_a_player_end_the_run_with_a_report(tmp_path):
    result = simulate(parse_scenario(IDLE), _options(write_files=True, out=tmp_path / "run"))
    assert result.exit_status == 0, result.report.get("health")
    assert result.report["totals"]["servers"]["started"] == 3
    assert result.report["totals"]["servers"]["stopped"] == 3   # every one ran BindToClose
    assert json.loads((tmp_path / "run" / "report.json").read_text())["verdict"] == "pass"


def test_a_step_longer_than_the_run_still_reports():
    result = simulate(parse_scenario(IDLE.replace("step = 5", "step = 500")), _options())
    assert result.exit_status == 0 and result.report["verdict"] == "pass"


def test_one_failing_bind_to_close_does_not_end_the_others(monkeypatch):
    from lodestore import AsyncGameServer

    begin = AsyncGameServer.begin_shutdown

    async def fails_for_one(self):
        if self._server.job_id == "server_0001":
            raise RuntimeError("budget service gone")
        await begin(self)

    monkeypatch.setattr(AsyncGameServer, "begin_shutdown", fails_for_one)
    text = IDLE.replace("join_rate = 0\n", "join_rate = 0.5\n")
    result = simulate(parse_scenario(text), _options())
    assert result.ok, [(c.name, c.counterexample) for c in result.checks if not c.ok]
    assert result.report["totals"]["servers"]["stopped"] == 3
    warnings = result.report["totals"]["store_warnings"]
    assert any("stop on server_0001 failed: RuntimeError" in w for w in warnings), warnings


@pytest.mark.parametrize("engine", [["--in-process"], pytest.param([], marks=pytest.mark.ray, id="ray")])
def test_ctrl_c_stops_with_bind_to_close_checks_and_report(tmp_path, engine):
    scenario = tmp_path / "long.toml"
    scenario.write_text(IDLE.replace("duration = 120", "duration = 2000000").replace("step = 5", "step = 1")
                        .replace("join_rate = 0\n", "join_rate = 0.2\n"))
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "lodestore.sim._cli", "simulate", str(scenario), *engine,
                                "--no-progress", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=tmp_path, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        assert process.stdout.readline().startswith("t=")   # it is playing
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["stopped_early"] is True
    assert report["checks"] and all(c["ok"] for c in report["checks"])
    assert report["totals"]["servers"]["stopped"] == 3
    assert "VERDICT" in stdout


# ---------------------------------------------------------------------------------------- wrong verdicts

def test_a_player_with_no_record_counts_as_the_template():
    from lodestore.sim._checkers import OpEvent
    engine = _Engine(parse_scenario(IDLE), _options(), None, io.StringIO())
    # an action whose outcome is unknown (it never ran), on a player who never saved: no record at the end
    engine.collector.history.record(OpEvent(1000, player_key(0), "server_0001", "op-1", "mint", "unknown", 5))
    engine.finish_data({player_key(0): None, player_key(1): None}, {})
    template = {"coins": 100, "items": [], "ledger": []}
    assert engine.final == {player_key(0): template}
    checks = engine.collector.checks(engine.initial, engine.final, {})
    assert all(c.ok for c in checks), [(c.name, c.counterexample) for c in checks if not c.ok]


def _drain(lag=(0, 0, 0), locks=(), events=(), ops=()) -> dict:
    return {"ops": list(ops), "locks": list(locks), "samples": [], "events": list(events), "counters": {},
            "throttled": {}, "servers": 1, "online": [], "tokens": [], "time": 0, "lag": lag}


def test_health_says_a_harness_that_fell_behind_is_inconclusive():
    collector = Collector(600, 60, slack_s=30)
    collector.add(0, _drain(lag=(1000, 5, 2000)))
    assert collector.health(stopped_early=False)["ok"]   # 0.5% late: within tolerance
    collector.add(0, _drain(lag=(1000, 200, 95_000)))
    health = collector.health(stopped_early=False)
    assert not health["ok"] and "fell behind" in health["problems"][0] and "95.0 s" in health["problems"][0]


def test_actions_that_never_ran_make_a_run_inconclusive_unless_it_was_stopped():
    collector = Collector(600, 60, slack_s=30)
    collector.add(0, _drain(lag=(10, 0, 0)))
    collector.add_ops([(t, player_key(0), "server_0001", f"op-{t}", "mint", "unknown", 1, None, None, "NotRun",
                        None) for t in range(5)])
    assert not collector.health(stopped_early=False)["ok"]
    assert collector.health(stopped_early=True)["ok"]   # Ctrl-C: what was planned after the stop never ran


def test_locks_lost_on_servers_no_fault_stalled_are_the_harness():
    def lost(server, key):
        return [(0, key, f"s-{key}", "acquired", 30_000, server), (40_000, key, f"s-{key}", "lost", 30_000, server)]

    stalled = Collector(600, 60, slack_s=30)
    stalled.add(0, _drain(events=[(0, "stall", "server_0001")], locks=lost("server_0001", "a")))
    assert stalled.health(stopped_early=False)["ok"]
    unexplained = Collector(600, 60, slack_s=30)
    unexplained.add(0, _drain(locks=lost("server_0002", "a")))
    health = unexplained.health(stopped_early=False)
    assert not health["ok"] and health["locks_lost_unexplained"] == 1
    assert "lost on servers no fault stalled" in health["problems"][0]
    # a design whose sessions are not leases (datastorer: the newest session takes the key) loses one by its
    # own rules: that is for the checkers to judge, not a harness that fell behind
    by_design = Collector(600, 60, slack_s=30, leased=False)
    by_design.add(0, _drain(locks=lost("server_0002", "a")))
    assert by_design.health(stopped_early=False)["ok"]


def test_an_inconclusive_run_exits_three_and_says_so(tmp_path, capsys, monkeypatch):
    def behind(self, stopped_early):
        return {"ok": False, "problems": ["the harness fell behind: test"], "notes": []}

    monkeypatch.setattr(Collector, "health", behind)
    scenario = tmp_path / "idle.toml"
    scenario.write_text(IDLE)
    assert main(["simulate", str(scenario), "--in-process", "--no-progress", "--out", str(tmp_path / "o")]) == 3
    captured = capsys.readouterr()
    assert "VERDICT: INCONCLUSIVE" in captured.out and "PROBLEM the harness fell behind" in captured.out
    assert "inconclusive: the harness fell behind" in captured.err
    assert "Inconclusive: the harness fell behind" in (tmp_path / "o" / "report.html").read_text()


def test_a_healthy_in_process_run_passes_with_its_health():
    text = IDLE.replace("join_rate = 0\n", "join_rate = 0.3\n")
    report = simulate(parse_scenario(text), _options()).report
    assert report["verdict"] == "pass" and report["health"]["ok"]
    assert report["health"]["events_started"] > 10 and report["health"]["events_late"] == 0


@pytest.mark.ray
def test_a_run_paced_faster_than_the_machine_goes_is_never_late(ray_session, tmp_path):
    # on the wall-clock engine this run fell behind (inconclusive); in virtual time a pace is only a wish
    scenario = parse_scenario(IDLE.replace("join_rate = 0\n", "join_rate = 0.5\n")
                              .replace("[world]\n", "[world]\ntime_scale = 1e9\n"))
    result = simulate(scenario, RunOptions(out=tmp_path / "run", progress=False, stream=io.StringIO()))
    assert result.ok, [(c.name, c.counterexample) for c in result.checks if not c.ok]
    assert result.report["verdict"] == "pass" and result.exit_status == 0
    assert result.report["health"]["events_late"] == 0 and result.report["health"]["events_started"] > 10


# --------------------------------------------------------------------------------------- paths and inputs

def _cli(tmp_path, *args, text=IDLE) -> int:
    scenario = tmp_path / "s.toml"
    scenario.write_text(text)
    return main(["simulate", str(scenario), "--no-progress", *args])


def test_out_naming_a_file_is_bad_input(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("mine")
    assert _cli(tmp_path, "--in-process", "--out", str(target)) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_out_into_a_non_empty_directory_never_overwrites(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.json").write_text("my own file")
    assert _cli(tmp_path, "--in-process", "--out", str(out)) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["report.json"] and (out / "report.json").read_text() == "my own file"


def test_an_impossible_world_path_is_bad_input(tmp_path, capsys):
    text = IDLE.replace('backend = "memory"', 'backend = "sqlite"\npath = "/proc/lodestore/world.db"')
    assert _cli(tmp_path, "--in-process", "--out", str(tmp_path / "o"), text=text) == 2
    err = capsys.readouterr().err
    assert "world.path" in err and "/proc/lodestore/world.db" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()   # bad input leaves nothing behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_out_is_bad_input(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert _cli(tmp_path, "--in-process", "--out", str(locked / "run")) == 2
    assert "cannot" in capsys.readouterr().err


def test_an_unreachable_address_is_bad_input_at_once(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)   # as in a fresh `lodestore simulate`
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray must not start for a bad address"))
    assert _cli(tmp_path, "--address", "127.0.0.1:1", "--out", str(tmp_path / "o")) == 2   # Ray waited 2 minutes
    err = capsys.readouterr().err
    assert "--address 127.0.0.1:1" in err and "no Ray cluster answers" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text, field", [
    ('[store]\nname = "' + "s" * 40 + '"', "store.name"),
    ("[store]\nlock_ttl = 4000000", "store.lock_ttl"),
    ('[world]\nname = "x/../../../../escaped"', "world.name"),
    ("[servers]\nstep = 1e-9", "servers.step"),
    ("[players]\npopulation = 1000000000", "players.population"),
])
def test_a_bad_scenario_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch, text, field):
    from lodestore.storage import World

    monkeypatch.setattr(World, "start", lambda *a, **k: pytest.fail("Ray must not start for a bad scenario"))
    monkeypatch.chdir(tmp_path)
    assert _cli(tmp_path, text=text) == 2
    assert f": {field}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]   # no runs folder, no world file
    assert not (tmp_path.parent / "escaped").exists()


def test_the_default_report_directories_of_two_runs_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scenario = parse_scenario(IDLE.replace("duration = 120", "duration = 10"))
    first = simulate(scenario, _options(write_files=True)).out
    second = simulate(scenario, _options(write_files=True)).out
    assert first != second and (first / "report.json").exists() and (second / "report.json").exists()
    assert Path(first).parent == Path(second).parent == Path("lodestore-runs")


