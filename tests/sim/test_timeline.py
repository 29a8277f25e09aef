"""`lodestore timeline`: one key's story in a finished run (lock holders, versions, transactions, faults, actions,
the counterexample), as JSON and HTML; the report's links to the timelines of the keys its checkers name; bad
input refused with exit 2. Tiny in-process runs, written to a temporary directory."""

from __future__ import annotations

import dataclasses
import html
import io
import json
import re

import pytest

from lodestore.sim import (RunOptions, TimelineError, build_timeline, keys_named, main, parse_scenario, simulate,
                           write_timeline)
from lodestore.sim._inspect import show_key

# two servers, four players hopping between them, a short lock TTL and a fault window that stalls lock holders
# (their locks are lost and the other server takes the key over) while a third of the writes fail
TAKEOVER = """
[world]
name = "timeline"
backend = "sqlite"
duration = 180
seed = 7

[servers]
count = 2
max_players = 10

[players]
population = 4
join_rate = 0.2
leave_rate = 0.005
teleport_rate = 0.02

[players.actions_per_minute]
coins = 6
grant_item = 2
trade = 3

[store]
lock_ttl = 20
lock_refresh = 5
autosave_interval = 15

[[faults]]
start = 40
end = 120
lock_stall_rate = 0.05
error_rate = { StandardWrite = 0.3 }
"""


@pytest.fixture(scope="module")
def takeover_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("timeline") / "run"
    result = simulate(parse_scenario(TAKEOVER), RunOptions(engine="in-process", out=out, stream=io.StringIO()))
    assert result.report["verdict"] == "pass"
    return out


@pytest.fixture(scope="module")
def failing_run(tmp_path_factory):
    """The naive design under quick teleports (tests/sim/test_compare.py): it loses writes and duplicates items."""
    from tests.sim.test_compare import TELEPORTS
    scenario = parse_scenario(TELEPORTS)
    scenario = dataclasses.replace(scenario, world=dataclasses.replace(scenario.world, backend="sqlite"),
                                   store=dataclasses.replace(scenario.store, design="naive"))
    out = tmp_path_factory.mktemp("timeline") / "naive"
    result = simulate(scenario, RunOptions(engine="in-process", out=out, stream=io.StringIO()))
    assert result.report["verdict"] == "fail"
    return out, result


def _takeover(tl: dict) -> tuple[dict, dict] | None:
    """A hold that lost its lock and the next hold, by another server."""
    holds = tl["holds"]
    for lost, after in zip(holds, holds[1:]):
        if lost["ended"] == "lost" and after["server"] != lost["server"] and after["start"] >= lost["start"]:
            return lost, after
    return None


def test_a_timeline_shows_the_takeover_the_trade_and_the_faults(takeover_run):
    keys = [f"player_{i:05d}" for i in range(4)]
    timelines = {key: build_timeline(takeover_run, key) for key in keys}
    key = next(k for k, tl in timelines.items() if _takeover(tl) is not None)
    tl = timelines[key]
    lost, after = _takeover(tl)

    # the lock holders: the lost hold, its TTL window and its states, then the other server's hold
    assert lost["expires"] == lost["renewed"] + lost["ttl_ms"] and lost["ttl_ms"] > 0
    assert [s["state"] for s in lost["states"]][0] == "ACTIVE" and lost["states"][-1]["state"] == "LOCK_LOST"
    assert {lost["server"], after["server"]} <= set(tl["servers"])
    stalls = [e for e in tl["server_events"] if e["what"] == "stall" and e["server"] == lost["server"]]
    assert any(e["t"] <= lost["end"] for e in stalls)   # the stall that cost it the lock is on its lane

    # a trade, with its transaction's outcome, on both keys' timelines
    trade = next(o for o in tl["ops"] if o["kind"] == "trade" and o["tx"] == "committed")
    other = trade["counterparty"] if trade["role"] == "actor" else next(
        k for k, t in timelines.items() if k != key and any(o["op_id"] == trade["op_id"] for o in t["ops"]))
    mirrored = next(o for o in timelines[other]["ops"] if o["op_id"] == trade["op_id"])
    assert {trade["role"], mirrored["role"]} == {"actor", "receiver"} and mirrored["tx"] == "committed"

    # the fault window and the errors that reached the player's actions
    assert tl["fault_windows"] == [{"start": 40_000, "end": 120_000,
                                    "what": "StandardWrite errors 0.3, lock stalls 0.05"}]
    failed = next(o for o in tl["ops"] if o["outcome"] == "failed")
    assert failed["why"] is not None and any(f.get("op_id") == failed["op_id"] for f in tl["faults"])
    assert all(f["code"] for f in tl["faults"] if f["source"] == "action")
    # the request-level faults the store retried away: an injected write error on a server that held the key
    injected = [f for f in tl["faults"] if f["source"] == "store" and "(injected)" in f["text"]]
    assert injected and all(f["fault_window"] == 0 and f["server"] in tl["servers"] for f in injected)
    assert any(f["source"] == "store" and f["text"].startswith("lock lost") for f in tl["faults"])
    assert all(o["fault_window"] == (0 if 40_000 <= o["t"] < 120_000 else None) for o in tl["ops"])

    # the versions the world file keeps, the last one the key's current data; every acknowledged action in it
    assert tl["versions"] and tl["final"] == show_key(str(takeover_run / "world.db"), "players", key)["data"]
    assert tl["final_source"] == "world file"
    assert tl["versions"][-1]["server"] in tl["servers"]
    assert all(o["in_final_ledger"] for o in tl["ops"] if o["outcome"] == "ok")
    assert tl["counterexamples"] == []
    # every write of the key, from the raw requests: more than the file kept (it keeps one version an hour), in
    # order, each version once, the faults' ambiguous writes among them, all by servers that held the key
    writes = tl["writes"]
    assert len(writes) > len(tl["versions"])
    assert [w["t"] for w in writes] == sorted(w["t"] for w in writes)
    written = [w["written"] for w in writes if w["outcome"] == "ok"]
    assert written == sorted(written) and len(set(written)) == len(written)
    assert any(w["outcome"] != "ok" for w in writes)
    assert {w["server"] for w in writes} <= set(tl["servers"])

    # the page shows all of it, self-contained
    html_path, json_path = write_timeline(takeover_run, key)
    page = html_path.read_text(encoding="utf-8")
    assert json.loads(json_path.read_text(encoding="utf-8")) == json.loads(json.dumps(tl, default=str))
    for text in (lost["session"], after["session"], "LOCK_LOST", trade["op_id"], "tx committed", failed["why"],
                 html.escape(injected[0]["text"]), "StandardWrite errors 0.3", tl["versions"][-1]["version"],
                 f"Every write of the key ({len(writes)}",
                 'class="hold"', 'class="ttl"', 'class="fault-window"', 'class="server-event"', 'class="fault"'):
        assert text in page, text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<script" not in page


def test_the_diff_of_each_version_says_what_changed(takeover_run):
    from lodestore.sim._timeline import _diff
    before = {"coins": 10, "items": ["a", "b"], "ledger": ["op1"]}
    after = {"coins": 4, "items": ["b", "c", "c"], "ledger": ["op1", "op2"]}
    assert _diff(before, after) == {"coins": -6, "items_added": ["c", "c"], "items_removed": ["a"],
                                    "ops_added": ["op2"], "ops_removed": []}
    tl = build_timeline(takeover_run, "player_00000")
    first = tl["versions"][0]
    assert first["diff"]["coins"] == first["data"]["coins"] and first["diff"]["ops_added"] == first["data"]["ledger"]


def test_a_failing_runs_report_links_the_timelines_of_the_keys_its_checker_names(failing_run):
    out, result = failing_run
    named = keys_named(result.report["checks"])
    assert named and set(named) == set(result.files["timelines"])
    page = (out / "report.html").read_text(encoding="utf-8")
    for key in named:
        assert f'href="timelines/{key}.html"' in page
        assert (out / "timelines" / f"{key}.html").exists()
    # a lost acknowledged write: its timeline marks the op, acknowledged ok, missing from the final ledger
    check = next(c for c in result.report["checks"] if c["name"] == "acknowledged_writes")
    op_id, key = re.search(r"op '([^']+)'.* ledger of '([^']+)'", check["counterexample"]).groups()
    tl = json.loads((out / "timelines" / f"{key}.json").read_text(encoding="utf-8"))
    op = next(o for o in tl["ops"] if o["op_id"] == op_id)
    assert op["outcome"] == "ok" and op["in_final_ledger"] is False
    moment = next(c for c in tl["counterexamples"] if c.get("op_id") == op_id)
    assert moment["check"] == "acknowledged_writes" and moment["from"] == moment["to"] == op["t"]
    html = (out / "timelines" / f"{key}.html").read_text(encoding="utf-8")
    assert 'class="counterexample"' in html and "NOT in the final ledger" in html
    # a duplicated item: the keys holding it are named, and each timeline marks where it came in
    dupes = next(c for c in result.report["checks"] if c["name"] == "no_duplicate_items")["details"]["duplicated"]
    item, holders = next(iter(dupes.items()))
    for holder in set(holders):
        tl = json.loads((out / "timelines" / f"{holder}.json").read_text(encoding="utf-8"))
        assert any(c["check"] == "no_duplicate_items" and c.get("item") == item and c.get("from") is not None
                   for c in tl["counterexamples"])


def test_keys_named_reads_what_each_checker_names():
    from lodestore.sim._timeline import _moments
    checks = [
        {"name": "conservation", "ok": False, "details": {"negative": ["p1"]}},
        {"name": "acknowledged_writes", "ok": False,
         "details": {"problems": ["lost acknowledged write: op 'op7' (mint, ok) missing from ledger of 'p2'",
                                  "duplicated op: 'op8' appears 2 times in ledger of \"p'3\"", "... 4 more"]}},
        {"name": "single_holder", "ok": False, "details": {"overlaps": [
            {"key": "p4", "first": {}, "second": {}, "from": 1, "to": 2}, "... 9 more"]}},
        {"name": "no_duplicate_items", "ok": False, "details": {"duplicated": {"i": ["p5", "p6", "p6"]}}},
        {"name": "no_duplicate_items", "ok": True, "details": {"duplicated": {"i": ["p9"]}}},
    ]
    assert keys_named(checks) == ["p'3", "p1", "p2", "p4", "p5", "p6"]
    assert [m["key"] for m in _moments(checks) if m["check"] == "no_duplicate_items"] == ["p5", "p6"]


def test_the_command_writes_the_page_and_json_where_asked(takeover_run, tmp_path, capsys):
    target = tmp_path / "story.html"
    assert main(["timeline", str(takeover_run), "player_00001", "--out", str(target)]) == 0
    assert target.exists() and json.loads((tmp_path / "story.json").read_text())["key"] == "player_00001"
    assert str(target) in capsys.readouterr().out


def test_a_bad_key_or_directory_is_refused_with_exit_2(takeover_run, tmp_path, capsys):
    assert main(["timeline", str(takeover_run), "player_99999"]) == 2
    assert "no key 'player_99999'" in capsys.readouterr().err
    assert main(["timeline", str(tmp_path / "nowhere"), "player_00000"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(["timeline", str(tmp_path), "player_00000"]) == 2
    assert "no report.json" in capsys.readouterr().err
    with pytest.raises(TimelineError, match="KEY must be a non-empty"):
        build_timeline(takeover_run, "")
    assert not (tmp_path / "timelines").exists()


def test_a_crashed_holder_keeps_the_lock_until_its_ttl_runs_out_as_the_single_holder_checker_counts_it():
    from lodestore.sim import History
    from lodestore.sim._checkers import _holds as checker_holds
    from lodestore.sim._timeline import _holds
    history = History()
    history.lock(0, "k", "server_1", "s1", "acquired", 10_000)
    history.lock(5_000, "k", "server_1", "s1", "refreshed", 12_000)
    history.lock(7_000, "k", "server_1", "s1", "crashed")
    history.lock(17_000, "k", "server_2", "s2", "acquired", 10_000)   # the next load, once the TTL ran out
    history.lock(20_000, "k", "server_2", "s2", "lost")
    history.lock(30_000, "k", "server_3", "s3", "acquired", 1_000)
    history.lock(35_000, "k", "server_3", "s3", "crashed")   # long after its lease ran out: held until then only
    events = [dict(vars(e)) for e in history.lock_events()]
    crashed, taken, late = _holds(events)
    assert late["end"] == 31_000
    assert (crashed["start"], crashed["renewed"], crashed["expires"], crashed["end"]) == (0, 5_000, 17_000, 17_000)
    assert [s["state"] for s in crashed["states"]] == ["ACTIVE", "ACTIVE", "CRASHED"] and crashed["ended"] == "crashed"
    assert (taken["server"], taken["end"], taken["ended"], taken["states"][-1]["state"]) == ("server_2", 20_000,
                                                                                           "lost", "LOCK_LOST")
    assert [(h["session"], h["start"], h["end"]) for h in (crashed, taken, late)] == [
        (h.session, h.start, h.end) for h in checker_holds(history.lock_events())]


def test_without_a_world_file_the_runs_final_read_says_what_is_in_the_ledger(takeover_run, tmp_path):
    import shutil
    from lodestore.sim import write_report
    from lodestore.sim._timeline import write_timelines
    for name in ("history.json", "scenario.toml"):
        shutil.copy(takeover_run / name, tmp_path / name)
    key = "player_00000"
    final = show_key(str(takeover_run / "world.db"), "players", key)["data"]
    dropped = final["ledger"][0]   # as if the store had lost it
    final = {**final, "ledger": final["ledger"][1:]}
    report = json.loads((takeover_run / "report.json").read_text())
    report["verdict"], report["run"]["world_path"] = "fail", None   # no world file: as a memory backend's run
    report["checks"] = [{"name": "acknowledged_writes", "ok": False, "details": {"problems": [
        f"lost acknowledged write: op {dropped!r} (mint, ok) missing from ledger of {key!r}"]}}]
    write_report(report, tmp_path)
    assert write_timelines(tmp_path, report, {key: final}) == {key: tmp_path / "timelines" / f"{key}.html"}
    tl = json.loads((tmp_path / "timelines" / f"{key}.json").read_text())
    assert tl["versions"] == [] and "world file" in tl["versions_note"] and "missing" in tl["versions_note"]
    assert tl["final_source"] == "the run's final read"
    assert [o["op_id"] for o in tl["ops"] if o["in_final_ledger"] is False and o["outcome"] == "ok"] == [dropped]
    op = next(o for o in tl["ops"] if o["op_id"] == dropped)
    assert [(c["check"], c["from"], c["to"]) for c in tl["counterexamples"]] == [("acknowledged_writes", op["t"],
                                                                                 op["t"])]
    assert f'href="timelines/{key}.html"' in (tmp_path / "report.html").read_text()
