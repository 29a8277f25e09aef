"""A scenario's `[serve]`: the run serves Open Cloud over its own world while it plays, and reports what came in."""

from __future__ import annotations

import io
import socket
import time

import pytest
import requests

from lodestore.sim import RunOptions, parse_scenario, simulate
from lodestore.storage import ConfigError

from tests.sim._paced import paced_scenario, playing, stored

V2 = "cloud/v2/universes/7/data-stores/support/entries"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scenario(port: int) -> str:
    return paced_scenario("served", seed=5, extra=f"""
[serve]
port = {port}
universe_id = 7
api_keys = ["admin", "viewer:datastores.read"]
""")


def test_a_served_run_answers_open_cloud_while_it_plays_and_reports_it(tmp_path):
    port = _free_port()
    out = tmp_path / "run"
    stream = io.StringIO()
    http = requests.Session()
    http.trust_env = False
    base = f"http://127.0.0.1:{port}/"
    with playing(_scenario(port), out, engine="in-process", stream=stream) as done:
        deadline = time.monotonic() + 60
        while True:   # the server's start, not a behaviour under test
            assert "error" not in done, done.get("error")
            try:
                http.get(base, timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, stream.getvalue()
                time.sleep(0.05)
        written = http.patch(f"{base}{V2}/ticket_1?allowMissing=true", json={"value": {"refund": 5}},
                             headers={"x-api-key": "admin"}, timeout=30)
        assert written.status_code == 200, written.text
        read = http.get(f"{base}{V2}/ticket_1", headers={"x-api-key": "viewer"}, timeout=30)
        assert read.status_code == 200 and read.json()["value"] == {"refund": 5}
        refused = http.patch(f"{base}{V2}/ticket_2?allowMissing=true", json={"value": 1},
                             headers={"x-api-key": "viewer"}, timeout=30)
        assert refused.status_code == 403
    result = done["result"]
    assert result.ok
    assert f"serving Open Cloud for this run at http://127.0.0.1:{port}/" in stream.getvalue()
    served = result.report["open_cloud"]
    entry = "/cloud/v2/universes/{universe}/data-stores/{data_store}/entries/{entry}"
    assert served["requests"][f"PATCH {entry}"] == {"200": 1, "403": 1}
    assert served["requests"][f"GET {entry}"] == {"200": 1}
    assert stored(out, "support", "ticket_1") == {"refund": 5}
    with pytest.raises(requests.ConnectionError):   # the server ended with the run
        http.get(base, timeout=5)


def test_a_served_run_is_refused_before_it_starts_when_its_port_is_taken(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            simulate(parse_scenario(_scenario(port)), RunOptions(out=tmp_path / "run", engine="in-process",
                                                                 progress=False, stream=io.StringIO()))
    assert not (tmp_path / "run").exists()


def test_a_served_runs_keys_are_checked_before_it_starts(tmp_path):
    text = _scenario(_free_port()).replace('api_keys = ["admin", "viewer:datastores.read"]',
                                           'api_keys = ["admin:datastores.fly"]')
    with pytest.raises(ConfigError, match="datastores.fly"):
        simulate(parse_scenario(text), RunOptions(out=tmp_path / "run", engine="in-process", progress=False,
                                                  stream=io.StringIO()))


def test_a_served_run_says_which_edits_the_sessions_holding_the_keys_wrote_over(tmp_path):
    """The question a bulk edit tried against a live game asks: did each edit stay? An admin's read-modify-write
    of a record a session holds is written over by that session's next save (it holds the data in memory); the
    report counts it among the edits replaced while held and links the key's timeline, which lists the outside
    write; an edit of a key no game server touches is kept. The outside requests are in the run's raw history and
    the consistency checker passes with them."""
    from urllib.parse import quote

    from lodestore.sim import build_timeline
    from lodestore.sim._timeline import timeline_href

    port = _free_port()
    out = tmp_path / "run"
    text = paced_scenario("edited", seed=5, extra=f"\n[serve]\nport = {port}\n\n[store]\nautosave_interval = 20\n")
    text = text.replace("join_rate = 0.5", "join_rate = 0.5\nleave_rate = 0")   # the holder keeps the key
    http = requests.Session()
    http.trust_env = False
    records = f"http://127.0.0.1:{port}/cloud/v2/universes/1/data-stores/{quote('lodestore/records/players', '')}"
    key = {"x-api-key": "lodestore-test-key"}
    with playing(text, out, engine="in-process") as done:
        deadline = time.monotonic() + 60
        edited = None
        while edited is None:   # a record some session holds (the players join in the first simulated seconds)
            assert "error" not in done and time.monotonic() < deadline, done.get("error")
            try:
                listed = http.get(f"{records}/entries", headers=key, timeout=30).json()["dataStoreEntries"]
            except requests.ConnectionError:
                listed = []
            for entry in listed:
                got = http.get(f"{records}/entries/{entry['id']}", headers=key, timeout=30).json()
                if got["value"].get("session"):
                    edited, record = entry["id"], got["value"]
                    break
            time.sleep(0.1)
        record["file"]["data"]["committed_data"]["banned"] = True
        written = http.patch(f"{records}/entries/{edited}", json={"value": record}, headers=key, timeout=30)
        assert written.status_code == 200, written.text
        ours = written.json()["revisionId"]
        while http.get(f"{records}/entries/{edited}", headers=key, timeout=30).json()["revisionId"] == ours:
            assert "error" not in done and time.monotonic() < deadline + 60, "the holder never saved again"
            time.sleep(0.2)
        kept = http.post(f"http://127.0.0.1:{port}/datastores/v1/universes/1/standard-datastores/datastore/entries/"
                         f"entry?datastoreName=support&entryKey=ticket_1", json={"refund": 5}, headers=key, timeout=30)
        assert kept.status_code == 200, kept.text   # through Data Stores v1: an outside write all the same
    result = done["result"]
    checks = {c.name: c for c in result.checks}
    assert checks["consistency"].ok, checks["consistency"].counterexample
    writes = result.report["open_cloud"]["writes"]
    assert writes["writes"] == 2 and writes["kept"] == 1 and writes["held_replaced"] == 1
    example, = writes["examples"]
    assert example["key"] == edited and example["store"] == "lodestore/records/players"
    assert example["held_by"] == example["replaced_by"] and example["replaced_at_ms"] > example["t_ms"]
    assert writes["by_store"]["support"] == {"writes": 1, "replaced": 0, "held": 0}
    assert "banned" not in stored(out, "lodestore/records/players", edited)["file"]["data"]["committed_data"]
    assert any(r[4].startswith("outside:open-cloud") for r in result.history.requests)
    timeline = build_timeline(out, edited)
    assert [w for w in timeline["writes"] if w["server"] == "outside:open-cloud"] != []
    assert (out / "report.html").read_text().count(f">{edited}</a>") == 1 and (out / timeline_href(edited)).exists()
