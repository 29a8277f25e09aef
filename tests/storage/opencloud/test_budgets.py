"""Whose budget an Open Cloud request spends: v2 the experience's, shared with game servers; v1 only its own
per-universe limits."""

from __future__ import annotations

from lodestore.storage import World

from tests.storage.opencloud.conftest import serve

V2 = "cloud/v2/universes/1/data-stores/players/entries"
V1 = "datastores/v1/universes/1/standard-datastores/datastore/entries/entry"


def _entry(key: str) -> dict:
    return {"datastoreName": "players", "scope": "global", "entryKey": key}


def test_v2_spends_the_experience_budget_and_v1_does_not(clock):
    world = World.in_process(clock=clock, budget="current")
    # the experience's write bucket (300 + 20 x CCU per minute, a minute's worth at most) is spent by game servers,
    # three of them, each within its own startup burst of 100 writes
    for n in range(3):
        game = world.server(f"game-{n}", players=0).datastores.get_data_store("filler")
        for i in range(100):
            game.set(f"k{n}-{i}", i)
    for served in serve(world):
        refused = served.request("PATCH", f"{V2}/u1?allowMissing=true", json={"value": 1})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["code"] == "RESOURCE_EXHAUSTED"
        assert world.server("reader").datastores.get_data_store("players").get("u1")[0] is None   # nothing written
        written = served.request("POST", V1, params=_entry("u1"), data=b"7")
        assert written.status_code == 200, written.text
        clock.advance(60)   # a minute later the experience's bucket has refilled: v2 goes through again
        assert served.request("PATCH", f"{V2}/u1?allowMissing=true", json={"value": 8}).status_code == 200
        assert served.request("GET", f"{V2}/u1").json()["value"] == 8
