"""Virtual time: a run is a function of its scenario, seed and host count, on Ray as in process and whatever the
machine's load; replay; modelled latency; the nodes' canonical message order."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest

from lodestore.sim import RunOptions, main, parse_scenario, simulate
from lodestore.storage import virtual

SMALL = """
[world]
name = "virtual"
backend = "sqlite"
duration = 240
seed = 3

[servers]
count = 3
max_players = 12
crash_rate = 0.002
step = 5

[players]
population = 24
join_rate = 0.3
leave_rate = 0.02
teleport_rate = 0.02

[players.actions_per_minute]
coins = 6
grant_item = 1
purchase = 0.5
trade = 2

[store]
autosave_interval = 30
lock_ttl = 30
lock_refresh = 10

[[faults]]
start = 60
end = 120
error_rate = { StandardWrite = 0.1 }
ambiguous_write_rate = 0.05
"""


def _run(tmp_path, name, engine="in-process", text=SMALL, **options):
    result = simulate(parse_scenario(text), RunOptions(out=tmp_path / name, engine=engine, progress=False,
                                                       stream=io.StringIO(), **options))
    assert result.ok, [(c.name, c.counterexample) for c in result.checks if not c.ok]
    return result


def _busy() -> subprocess.Popen:
    """Another process keeping both cores of this machine busy."""
    code = "import multiprocessing as m\nif __name__ == '__main__':\n" \
           "    ps = [m.Process(target=lambda: [0 for _ in iter(int, 1)]) for _ in range(2)]\n" \
           "    [p.start() for p in ps]; [p.join() for p in ps]\n"
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


@pytest.mark.ray
def test_two_runs_on_ray_one_on_a_busy_machine_and_one_in_process_give_the_same_history(ray_session, tmp_path):
    quiet = _run(tmp_path, "quiet", engine="ray")
    burner = _busy()
    try:
        busy = _run(tmp_path, "busy", engine="ray")
    finally:
        os.killpg(burner.pid, signal.SIGKILL)   # only the burner we started, and its children
        burner.wait()
    local = _run(tmp_path, "local")
    assert quiet.report["digest"] == busy.report["digest"] == local.report["digest"]
    assert quiet.report["totals"]["ops_by_kind"] == busy.report["totals"]["ops_by_kind"]
    # and the run did something worth comparing: trades, failures from the fault window, locks
    totals = quiet.report["totals"]
    assert totals["tx"]["committed"] > 0 and totals["locks"]["acquired"] > 10
    assert sum(v["failed"] + v["unknown"] for v in totals["ops_by_kind"].values()) > 0
    assert quiet.report["health"]["events_late"] == 0 and totals["locks"]["lost"] == 0


def test_another_seed_or_host_count_gives_another_history(tmp_path):
    base = _run(tmp_path, "base").report["digest"]
    other_seed = _run(tmp_path, "seed", text=SMALL.replace("seed = 3", "seed = 4")).report["digest"]
    other_hosts = _run(tmp_path, "hosts", hosts=1).report["digest"]
    assert len({base, other_seed, other_hosts}) == 3


def test_replay_matches_and_a_changed_history_does_not(tmp_path, capsys):
    run = _run(tmp_path, "run")
    assert main(["replay", str(run.out), "--in-process", "--no-progress"]) == 0
    assert f"replay matches: digest {run.report['digest']}" in capsys.readouterr().out
    report = json.loads((run.out / "report.json").read_text())
    report["digest"] = "0" * 64
    (run.out / "report.json").write_text(json.dumps(report))
    assert main(["replay", str(run.out), "--in-process", "--no-progress"]) == 1
    assert "replay differs" in capsys.readouterr().err


def test_replay_until_leaves_the_world_of_that_moment_for_inspect(tmp_path, capsys):
    run = _run(tmp_path, "run")
    assert main(["replay", str(run.out), "--in-process", "--until", "90", "--out", str(tmp_path / "at90"),
                 "--no-progress"]) == 0
    world = tmp_path / "at90" / "world.db"
    assert world.exists() and not (tmp_path / "at90" / "report.json").exists()
    capsys.readouterr()
    assert main(["inspect", "--json", str(world), "keys", "players"]) == 0
    early = set(json.loads(capsys.readouterr().out))
    assert main(["inspect", "--json", str(run.out / "world.db"), "keys", "players"]) == 0
    late = set(json.loads(capsys.readouterr().out))
    assert early and early <= late   # some players had saved by then; every one of them is in the final world


def test_replay_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["replay", str(tmp_path)]) == 2
    assert "lodestore replay" in capsys.readouterr().err


def test_a_two_second_datastore_latency_shows_in_the_latency_percentiles(tmp_path):
    slow = SMALL + '\n[latency]\nhop_ms = 50\n[latency.datastore]\ndefault = {fixed = 2000}\n'
    fast = _run(tmp_path, "fast").report["latency_ms"]
    modelled = _run(tmp_path, "slow", text=slow).report["latency_ms"]
    # a load reads the record (one DataStore request at least): 2 s of service time and two 50 ms hops
    assert modelled["load"]["p50"] >= 2100 > fast["load"]["p50"]
    assert modelled["purchase_save"]["p50"] >= 2100   # a forced save writes once
    assert fast["load"]["p50"] >= 100                 # even the defaults take two hops


def test_a_paced_run_has_the_history_of_an_unpaced_one(tmp_path):
    text = SMALL.replace("duration = 240", "duration = 20").split("[[faults]]")[0]
    unpaced = _run(tmp_path, "unpaced", text=text).report["digest"]
    paced = _run(tmp_path, "paced", text=text.replace("seed = 3", "seed = 3\ntime_scale = 40")).report["digest"]
    assert paced == unpaced


# ------------------------------------------------------------------------------------------------ the nodes

class _Echo:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def note(self, what: str) -> str:
        self.seen.append(what)
        return what.upper()


def test_a_node_delivers_its_inbox_in_canonical_order_whatever_order_it_came_in():
    orders = []
    for reverse in (False, True):
        node = virtual.Node(1, hop_ms=10, seed=1)
        echo = _Echo()
        node.host("echo", echo)
        inbox = [virtual.Message(virtual.EPOCH_MS + 5, src, seq, 1, virtual.SEND, "echo", "note", (f"{src}.{seq}",))
                 for src in (3, 2) for seq in (2, 1)]
        node.step(virtual.EPOCH_MS + 9, list(reversed(inbox)) if reverse else inbox)
        orders.append(echo.seen)
    assert orders[0] == orders[1] == ["2.1", "2.2", "3.1", "3.2"]


def test_a_call_is_answered_a_hop_after_it_ran_and_a_late_message_is_refused():
    caller, callee = virtual.Node(1, hop_ms=10, seed=1), virtual.Node(2, hop_ms=10, seed=1)
    callee.host("echo", _Echo())

    class Asker:
        async def ask(self) -> tuple:
            answer = await caller.runtime.acall(virtual.Address(2, "echo"), "note", "hi")
            return answer, caller.now()
    caller.host("asker", Asker())
    t = virtual.EPOCH_MS
    out, _, _ = caller.step(t + 9, [], [(t + 1, 1, "asker", "ask", ())])
    assert [(m.at, m.dst, m.method) for m in out] == [(t + 11, 2, "note")]
    replies, _, _ = callee.step(t + 19, out)
    assert replies[0].at == t + 21 and replies[0].args == (True, "HI")
    _, _, done = caller.step(t + 29, replies)
    assert done == {1: (True, ("HI", t + 21))}
    with pytest.raises(RuntimeError, match="outrun its lookahead"):
        callee.step(t + 40, [replies[0]._replace(dst=2, at=t + 15)])   # due before the callee's now (t + 19)


def test_a_sent_message_that_fails_is_kept_among_the_node_errors_and_a_clean_run_has_none(tmp_path):
    node = virtual.Node(2, hop_ms=10, seed=1)
    node.host("echo", _Echo())
    t = virtual.EPOCH_MS
    node.step(t + 19, [virtual.Message(t + 5, 1, 1, 2, virtual.SEND, "echo", "note", (1, 2))])   # wrong arity
    assert len(node.errors) == 1 and node.errors[0].startswith("TypeError")
    assert _run(tmp_path, "clean").report["run"]["node_errors"] == {"count": 0, "first": []}


def test_a_blocking_call_in_a_virtual_world_is_refused_with_a_clear_error():
    node = virtual.Node(1, hop_ms=10, seed=1)
    with pytest.raises(RuntimeError, match="coroutine"):
        node.runtime.call(virtual.Address(0, "datastore-0"), "execute", [])


def test_ids_are_a_function_of_the_node_seed():
    def ids(seed: int) -> list[str]:
        node = virtual.Node(1, hop_ms=10, seed=seed)

        async def draw() -> list[str]:
            from lodestore.storage import new_id
            return [new_id() for _ in range(3)]
        return node.run(draw())
    assert ids(1) == ids(1) != ids(2)
