"""lodestore on a 3-node Ray cluster (`ray.cluster_utils.Cluster`, one machine): placement and node loss.

Each test runs a script in a subprocess, because a cluster needs a Ray of its own and the test session's Ray is
already running; the script prints what it saw as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, arg: Path) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", module, str(arg)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def node_loss(tmp_path_factory) -> dict:
    return _run("tests.cluster._node_loss", tmp_path_factory.mktemp("node-loss") / "run")


def test_every_checker_passes_when_a_node_is_lost_mid_run(node_loss):
    assert node_loss["checks"] == {name: [True, None] for name in
                                   ("conservation", "acknowledged_writes", "single_holder", "no_duplicate_items",
                                    "consistency")}
    assert node_loss["verdict"] == "pass"


def test_the_game_servers_on_the_lost_node_crash_with_it(node_loss):
    [lost] = node_loss["run"]["hosts_lost"]
    assert lost["host"] == 0 and lost["servers"], lost
    assert node_loss["totals"]["servers"]["lost_with_node"] == len(lost["servers"])
    assert len(set(node_loss["run"]["host_nodes"])) == 3          # the hosts spread over the three nodes
    assert node_loss["seen"]["victim_is_head"] is False
    # what the lost host had not reported is unknown, never assumed done or not done
    assert node_loss["totals"]["errors_by_code"].get("NodeLost", 0) > 0


def test_locks_of_the_lost_sessions_expire_and_other_servers_load_the_players(node_loss):
    assert node_loss["vanished"] > 0
    assert node_loss["taken_over"] > 0                             # the same keys, acquired later elsewhere


def test_the_node_was_lost_mid_run_and_transactions_still_commit(node_loss):
    assert node_loss["seen"]["events"] == ["node_removed"]
    lost_at = node_loss["run"]["hosts_lost"][0]["at_s"]
    assert 0 < lost_at < node_loss["run"]["simulated_s"]
    assert node_loss["totals"]["tx"]["committed"] > 0


def test_storage_actors_are_pinned_with_their_files(tmp_path):
    seen = _run("tests.cluster._storage_nodes", tmp_path)
    assert seen["driver"] == {"shards_here": [True, True, True], "memorystore_here": True, "files": ["driver.db"]}
    spread = seen["spread"]
    assert spread["distinct_nodes"] == 3 and spread["pinned_as_planned"] and spread["memorystore_here"]
    assert spread["files"] == ["spread-shard0.db", "spread-shard1.db", "spread-shard2.db"]
    # the lost node's shard fails with a DataStore error (500); the others keep serving
    after = seen["after_loss"]
    assert after["errors"] == [[after["lost_shard"], 500]] * 5 and after["served"] == 10
    # started again on the same files, every acknowledged write is there
    assert seen["restarted"] == {"read_back": 15, "written": 15}
