"""`lodestore inspect DB erase USER_ID`: a user's data erased offline from a world's file, with the templates kept
in the file or given as --template, then checked."""

from __future__ import annotations

import json

import pytest

from lodestore import GameServer
from lodestore.sim._inspect import NOT_FOUND, USAGE
from lodestore.storage import ErasedKey, ErasureReport, ManualClock, World

from tests.sim.test_inspect import cli

T0 = 1_700_000_000_000


def build(path: str, templates=None) -> None:
    """Store "players" (keys "7" and "8", saved in two hours) and a plain DataStore "settings" (key "prefs_7")."""
    clock = ManualClock(T0)
    world = World.in_process("build", backend="sqlite", path=path, clock=clock, budget=None)
    server = GameServer(world, "job-1")
    players = server.create_store("players", template={"coins": 0})
    for key in ("7", "8"):
        players.load(key)
        players.update(key, lambda data: data.update(coins=1) or True)
        players.unload(key)
    clock.advance(seconds=3601)
    players.load("7")
    players.update("7", lambda data: data.update(coins=2) or True)
    players.unload("7")
    server.shutdown()
    world.server("admin").datastores.get_data_store("settings").set("prefs_7", {"theme": "dark"})
    if templates is not None:
        world.set_deletion_templates(templates)
    world.shutdown()


def stored(path: str) -> dict:
    world = World.in_process("look", backend="sqlite", path=path, clock=ManualClock(T0 + 7200_000), budget=None)
    ds = world.server("look").datastores
    found = {name: ds.get_data_store(name).list_keys().items for name in ("lodestore/records/players", "settings")}
    found["versions_of_7"] = ds.get_data_store("lodestore/records/players").list_versions("7").items
    world.shutdown()
    return found


def test_erase_with_the_templates_kept_in_the_file(tmp_path, capsys):
    path = str(tmp_path / "w.db")
    build(path, [("players", "global", "{UserId}"), ("settings", "global", "prefs_{UserId}")])
    status, out, err = cli([path, "erase", 7], capsys)
    assert status == 0, err
    assert "erased user 7: 2 key(s) removed" in out
    assert "lodestore/records/players / global / 7  (2 version(s)" in out
    assert "check: nothing of the user is left" in out
    assert stored(path) == {"lodestore/records/players": ["8"], "settings": [], "versions_of_7": []}


def test_erase_with_template_options_and_json(tmp_path, capsys):
    path = str(tmp_path / "w.db")
    build(path)
    status, out, _ = cli([path, "erase", 7, "--template", "settings", "global", "prefs_{UserId}", "--json"], capsys)
    assert status == 0
    done = json.loads(out)
    assert done["templates"] == [["settings", "global", "prefs_{UserId}"]]
    assert [(k["store"], k["key"]) for k in done["removed"]] == [("settings", "prefs_7")]
    assert done["remaining"] == []
    assert stored(path)["lodestore/records/players"] == ["7", "8"]


@pytest.mark.parametrize("argv, message", [
    (["erase", 7], "no deletion templates"),
    (["erase", 7, "--template", "settings", "global", "prefs"], "no {UserId} token"),
])
def test_usage_problems_exit_2(tmp_path, capsys, argv, message):
    path = str(tmp_path / "w.db")
    build(path)
    status, _, err = cli([path, *argv], capsys)
    assert status == USAGE and message in err
    assert stored(path)["settings"] == ["prefs_7"]


def test_something_left_after_the_erasure_exits_non_zero(tmp_path, capsys, monkeypatch):
    path = str(tmp_path / "w.db")
    build(path, [("settings", "global", "prefs_{UserId}")])
    left = ErasedKey("settings", "global", "prefs_7", 1, "deletion template 0")
    monkeypatch.setattr(World, "erase_user", lambda self, user_id, templates=None: ErasureReport(user_id, (), (left,)))
    status, out, err = cli([path, "erase", 7], capsys)
    assert status == NOT_FOUND
    assert "check: 1 key(s) remain" in out and "remains  settings / global / prefs_7" in out
    assert "remain after the erasure" in err
