"""Outside calls into a running simulation's world (`storage._ingress`): the door an Open Cloud server uses."""

from __future__ import annotations

import dataclasses
import time

import pytest

from lodestore.storage import ManualClock, World, namespace_of
from lodestore.storage._ingress import INGRESS_NAME, Ingress, SimulationEnded, ingress_world
from lodestore.storage._shards import MEMORYSTORE_NAME, WorldInfo, datastore_name
from lodestore.storage._faults import FaultConfig

from tests.sim._paced import paced_scenario, playing, stored, wait_until_open


def _info(**changes) -> WorldInfo:
    return dataclasses.replace(WorldInfo("w", "memory", None, 1, ManualClock(1_000), FaultConfig()), **changes)


def test_an_ingress_hands_calls_over_in_order_and_answers_each():
    ingress = Ingress(_info(), 1_000, time.time(), 1.0)
    first = ingress.submit(datastore_name(0), "execute", ([1],))
    second = ingress.submit(MEMORYSTORE_NAME, "statistics", ())
    taken = ingress.take()
    assert [(name, method) for _, name, method, _ in taken] == [(datastore_name(0), "execute"),
                                                               (MEMORYSTORE_NAME, "statistics")]
    assert ingress.take() == []
    ingress.answer([(taken[1][0], True, "stats"), (taken[0][0], False, KeyError("gone"))])
    assert second.result(timeout=1) == "stats"
    with pytest.raises(KeyError):
        first.result(timeout=1)


def test_an_ingress_reaches_storage_only_and_ends_with_the_run():
    ingress = Ingress(_info(), 1_000, time.time(), 1.0)
    with pytest.raises(LookupError, match="coordinator"):
        ingress.submit("coordinator", "recover", ()).result(timeout=1)
    waiting = ingress.submit(datastore_name(0), "execute", ([],))
    ingress.close("the simulation's play ended")
    with pytest.raises(SimulationEnded, match="play ended"):
        waiting.result(timeout=1)
    with pytest.raises(SimulationEnded):
        ingress.submit(datastore_name(0), "execute", ([],)).result(timeout=1)
    assert ingress.take() == []


def test_the_world_behind_an_ingress_keeps_the_runs_pace():
    wall_start = time.time() - 10.0     # the run's play began 10 wall seconds ago, at simulated ms 5,000,000
    ingress = Ingress(_info(), 5_000_000, wall_start, 6.0)
    world = ingress_world(ingress)
    assert world.now() == 5_000_000     # the engine has not said how far it came: the play's start
    ingress.exchange([], run_ms=9_000_000)   # it has come further than the pace
    assert abs(world.now() - (5_000_000 + 60_000)) < 5_000    # 10 wall s at 6x: a simulated minute on
    assert world.info.shards == 1 and world.name == "w"


def test_the_world_behind_an_in_process_ingress_is_never_ahead_of_the_engine():
    """A time read before a call is at or before the engine's start of it, even when the engine lags its pace."""
    ingress = Ingress(_info(), 5_000_000, time.time() - 10.0, 6.0)   # by the pace, a simulated minute on
    world = ingress_world(ingress)
    ingress.exchange([], run_ms=5_030_000)   # the engine has played only 30 simulated seconds
    assert world.now() == 5_030_000
    ingress.exchange([], run_ms=9_000_000)   # the engine ahead of the pace: the pace
    assert abs(world.now() - (5_000_000 + 60_000)) < 5_000


@pytest.mark.ray
def test_a_paced_run_on_ray_takes_writes_from_outside_into_its_world(ray_session, tmp_path):
    """World.connect(NAME) of a running paced simulation reaches its world: a write made from outside while it
    plays is in the run's world file afterwards, beside the players' data."""
    import ray

    out = tmp_path / "run"
    with playing(paced_scenario("doortest", seed=3), out) as done:
        wait_until_open("doortest", done)
        world = World.connect("doortest")
        server = world.server("support-tool")
        store = server.datastores.get_data_store("support")
        version = store.set("ticket_1", {"refund": 5})
        value, info = store.get("ticket_1", use_cache=False)
        assert value == {"refund": 5} and info.version == version
        assert world.now() > 1_700_000_000_000   # the run's simulated clock, not this machine's
    result = done["result"]
    assert result.ok and result.report["run"]["stopped_early"]
    with pytest.raises(Exception):   # the run is over: its door is gone
        ray.get_actor(INGRESS_NAME, namespace=namespace_of("doortest"))
    assert stored(out, "support", "ticket_1") == {"refund": 5}
    # what the outside client did is in the run's history and report, checked with the game servers' requests
    outside = [r for r in result.history.requests if r[4].startswith("outside:support-tool")]
    assert [(r[3], r[5], r[9]) for r in outside] == [("ticket_1", "set", "ok"), ("ticket_1", "get", "ok")]
    (_, set_done), (get_start, get_done) = (r[7:9] for r in outside)
    assert outside[0][7] <= set_done <= get_start <= get_done <= result.report["run"]["simulated_s"] * 1000
    writes = result.report["open_cloud"]["writes"]
    assert (writes["writes"], writes["kept"]) == (1, 1) and result.report["open_cloud"]["outside_calls"] >= 2


@pytest.mark.ray
def test_lodestore_serve_joins_a_paced_run_on_ray_and_serves_its_world(ray_session, tmp_path):
    """`lodestore serve --world NAME --address ADDR`, in a process of its own, serves the running simulation's
    world: what it writes is in the run's world file afterwards."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    import ray
    import requests

    out = tmp_path / "run"
    with playing(paced_scenario("servejoin", seed=4), out) as done:
        wait_until_open("servejoin", done)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = ["serve", "--world", "servejoin", "--address", ray.get_runtime_context().gcs_address,
                   "--port", str(port)]
        server = subprocess.Popen([sys.executable, "-c", "import sys; from lodestore.sim import main; "
                                   "sys.exit(main(sys.argv[1:]))", *command],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        try:
            http = requests.Session()
            http.trust_env = False
            base = f"http://127.0.0.1:{port}/cloud/v2/universes/1/data-stores/support/entries"
            key = {"x-api-key": "lodestore-test-key"}
            deadline = time.monotonic() + 120
            while True:   # the server's start
                assert server.poll() is None, server.stdout.read()
                try:
                    written = http.patch(f"{base}/ticket_9?allowMissing=true", json={"value": [1, 2]},
                                         headers=key, timeout=30)
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert written.status_code == 200, written.text
            assert http.get(f"{base}/ticket_9", headers=key, timeout=30).json()["value"] == [1, 2]
        finally:
            server.send_signal(signal.SIGINT)   # Ctrl-C: it stops serving; the world is the run's, left alone
            printed, _ = server.communicate(timeout=60)
    assert "(joined)" in printed
    assert done["result"].ok, [(c.name, c.counterexample) for c in done["result"].checks if not c.ok]
    assert stored(out, "support", "ticket_9") == [1, 2]
    assert done["result"].report["open_cloud"]["writes"]["by_store"]["support"]["writes"] == 1   # from that process


@pytest.mark.ray
def test_a_paced_run_whose_ingress_dies_plays_on_closed_to_outside_callers(ray_session, tmp_path):
    """The ingress actor is only a door: losing it (its process killed, as a lost node would) ends no run."""
    import io

    import ray

    stream = io.StringIO()
    with playing(paced_scenario("doorlost", seed=5), tmp_path / "run", stream=stream) as done:
        wait_until_open("doorlost", done)
        deadline = time.monotonic() + 60
        while "is open" not in stream.getvalue():   # the run has the door, not only its name
            assert "error" not in done and time.monotonic() < deadline, done.get("error")
            time.sleep(0.05)
        ray.kill(ray.get_actor(INGRESS_NAME, namespace=namespace_of("doorlost")), no_restart=True)
        deadline = time.monotonic() + 60
        while "ingress is gone" not in stream.getvalue():
            assert "error" not in done and time.monotonic() < deadline, stream.getvalue()
            time.sleep(0.1)
    assert done["result"].ok, [c for c in done["result"].checks if not c.ok]
