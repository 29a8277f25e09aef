"""The npm client openblox 1.0.62 (unmodified) against the served API, where node is present: a small node script
(`openblox_client.js`) drives it through its `config.http.adapter` (v2 entries, the lists of data stores, a
snapshot, a sorted map, memory-store:flush, v1's messaging publish) and prints what each call answered.

openblox is found in `$LODESTORE_OPENBLOX_DIR` (a node_modules directory) or in `.ci/node/node_modules`, where
`.ci/run` installs it; without node or without the install the test is skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("openblox_client.js")


def _node_modules() -> Path | None:
    given = os.environ.get("LODESTORE_OPENBLOX_DIR")
    found = Path(given) if given else ROOT / ".ci" / "node" / "node_modules"
    return found if (found / "openblox" / "package.json").is_file() else None


NODE = shutil.which("node")
NODE_MODULES = _node_modules()

pytestmark = pytest.mark.skipif(NODE is None or NODE_MODULES is None,
                                reason="needs node and openblox (npm install --prefix .ci/node openblox@1.0.62)")


def test_openblox_data_stores_sorted_map_flush_and_publish(served):
    done = subprocess.run([NODE, str(SCRIPT), served.url, "lodestore-test-key"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["created"]["value"] == {"coins": 5} and out["created"]["users"] == ["users/1"]
    assert out["got"]["value"] == {"coins": 5} and out["got"]["revisionId"] == out["created"]["revisionId"]
    assert out["listed"] == ["user_1", "user_2"]
    assert out["stores"] == ["players"]
    assert [(s["id"], s["state"]) for s in out["storesV2"]] == [("players", "ACTIVE")]
    assert out["snapshot"]["newSnapshotTaken"] is True
    assert out["incremented"]["value"] == 7
    assert out["missingStatus"] == 404
    assert out["item"]["value"] == {"n": 1} and out["item"]["numericSortKey"] == 10
    assert out["gotItem"]["value"] == {"n": 1}
    assert out["items"] == ["ann", "bob"]   # by sort key
    assert out["flushed"]["done"] is True and out["flushedItemStatus"] == 404
    assert out["published"] is True and served.world.messaging_statistics().published == 1
    game = served.world.server("game")
    assert game.datastores.get_data_store("players").get("user_1")[0] == {"coins": 5}
    assert game.datastores.get_data_store("counters").get("visits")[0] == 7
