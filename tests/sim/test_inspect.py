"""`lodestore inspect` on SQLite files written by in-process worlds (no Ray): listings, show (plain, sharded, a
transaction pending under each marker state), versions, restore then load, export/import, refusals, CLI statuses."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import shutil
from pathlib import Path

import pytest

from lodestore import GameServer
from lodestore.actors import TX_STORE, KeyHost, Load, StoreConfig
from lodestore.actors import records as rec
from lodestore.sim._inspect import (NOT_FOUND, USAGE, InspectError, add_parser, export_store, import_store, list_keys,
                          list_stores, list_versions, restore_version, show_key)
from lodestore.storage import ManualClock, Scheduler, World

TEMPLATE = {"coins": 0, "items": []}
# Base64 text of random bytes: its JSON is over the 3,990,000-character shard threshold (and within the 4,194,304 a
# session accepts), and it compresses so little that the compressed text needs two chunks.
BIG = {"coins": 1, "items": [], "blob": base64.b64encode(random.Random(7).randbytes(3_075_000)).decode("ascii")}


_WORLDS: list[World] = []


def open_world(path, clock: ManualClock, name: str = "after") -> World:
    """An in-process world on the file, kept referenced until the end of the module: in-process game servers find
    their background runtime by `id(world)`, which a new world could reuse once an old one is collected."""
    world = World.in_process(name, backend="sqlite", path=str(path), clock=clock, budget=None)
    _WORLDS.append(world)
    return world


def set_data(**fields):
    def fn(data):
        data.update(fields)
        return True
    return fn


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A world file: Store "players" (u1 saved in two hours, so two versions; u2; big, sharded) and a plain
    DataStore "settings" (motd; old, removed)."""
    path = tmp_path_factory.mktemp("inspect") / "world.db"
    clock = ManualClock()
    world = open_world(path, clock, "build")
    server = GameServer(world, "job-1")
    players = server.create_store("players", template=TEMPLATE)
    players.load("u1", user_ids=[1])
    players.update("u1", set_data(coins=5))
    players.unload("u1")
    clock.advance(seconds=3601)                 # a new UTC hour: the version above stays as a backup
    players.load("u1", user_ids=[1])
    players.update("u1", set_data(coins=9))
    players.unload("u1")
    players.load("u2")
    players.update("u2", set_data(coins=2, items=["hat"]))
    players.load("big")
    players.update("big", set_data(**BIG))
    server.shutdown()
    settings = world.server("admin").datastores.get_data_store("settings")
    settings.set("motd", "hello", metadata={"by": "ops"})
    settings.set("old", 1)
    clock.advance(seconds=3600)                 # removed in the same hour, its value would be gone for good
    settings.remove("old")
    world.shutdown()
    return path


@pytest.fixture
def db(built, tmp_path) -> str:
    """A private copy of the built file, for tests that write."""
    copy = tmp_path / "world.db"
    shutil.copyfile(built, copy)
    return str(copy)


def cli(argv, capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="lodestore")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["inspect", *map(str, argv)])
    status = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------- listings, show


def test_stores_lists_every_datastore_with_live_keys_and_flags_internal_ones(built):
    rows = {row["datastore"]: row for row in list_stores(built)}
    assert rows["lodestore/records/players"] == {"name": "players", "datastore": "lodestore/records/players",
                                                 "kind": "records", "internal": False, "live_keys": 3}
    assert rows["lodestore/shards/players"]["kind"] == "shards" and rows["lodestore/shards/players"]["internal"]
    assert rows["lodestore/shards/players"]["live_keys"] == 2          # big's two chunks
    assert rows["settings"] == {"name": "settings", "datastore": "settings", "kind": "plain", "internal": False,
                                "live_keys": 1}                         # "old" was removed


def test_keys_by_store_name_or_datastore_name_with_prefix_and_limit(built):
    assert list_keys(built, "players") == ["big", "u1", "u2"]
    assert list_keys(built, "lodestore/records/players", prefix="u") == ["u1", "u2"]
    assert list_keys(built, "players", limit=2) == ["big", "u1"]
    assert list_keys(built, "settings") == ["motd"]


def test_show_a_plain_key_of_a_store(built):
    shown = show_key(built, "players", "u1")
    assert shown["data"] == {"coins": 9, "items": []}
    assert shown["record"] is True and shown["file"] == {"inline": True} and shown["transaction"] is None
    assert shown["applied_migrations"] == [] and isinstance(shown["session"], str)
    assert shown["user_ids"] == [1] and shown["version"] == list_versions(built, "players", "u1")[0]["version"]
    assert shown["updated_time"] == 1_700_000_000_000 + 3_601_000
    raw = show_key(built, "players", "u1", raw=True)
    assert raw["value"]["file"] == {"data": {"committed_data": {"coins": 9, "items": []}}}
    assert "data" not in raw


def test_show_a_sharded_key_joins_its_chunks(built):
    shown = show_key(built, "players", "big")
    assert shown["file"]["count"] == 2
    assert shown["data"] == BIG
    assert "shard" in show_key(built, "players", "big", raw=True)["value"]["file"]


def test_show_a_plain_datastore_value_with_its_metadata(built):
    shown = show_key(built, "settings", "motd")
    assert (shown["record"], shown["data"], shown["metadata"]) == (False, "hello", {"by": "ops"})


@pytest.mark.parametrize("marker, coins, applied", [
    ("committed", 60, True), (None, 60, True), ("aborted", 100, False), ("pending", 100, False)])
def test_show_resolves_a_transaction_by_its_marker(tmp_path, marker, coins, applied):
    path = str(tmp_path / "tx.db")
    asyncio.run(_leave_a_transaction(path, marker))
    shown = show_key(path, "bank", "ann")
    assert shown["data"] == {"coins": coins}
    assert shown["transaction"] == {"id": "T1", "marker": marker, "applied": applied}
    assert export_store(path, "bank") == {"ann": {"coins": coins}, "bob": {"coins": 200 - coins}}
    assert show_key(path, "bank", "ann")["transaction"]["marker"] == marker      # reading settled nothing


async def _leave_a_transaction(path: str, marker: str | None) -> None:
    """ann gives bob 40 in transaction T1; the server dies after both records were written (phase one); then the
    marker is left in state `marker` (None: removed, as after a commit)."""
    clock = ManualClock()
    world = open_world(path, clock, "tx")
    host = KeyHost(world, "a", Scheduler(clock))
    host.open_store(StoreConfig(name="bank", template={"coins": 100}))
    for key in ("ann", "bob"):
        (reply,) = await host.handle([Load("bank", key)])
        assert reply is None
    sessions = host.stores["bank"].sessions
    before = {key: await sessions[key].participant.prepare("T1", 30) for key in ("ann", "bob")}
    after = {"ann": {"coins": 60}, "bob": {"coins": 140}}
    markers = world.server("coordinator").datastores.get_data_store(TX_STORE)
    markers.set("T1", {"state": "pending", "store": "bank", "keys": ["ann", "bob"], "created": 0})
    for key in ("ann", "bob"):
        await sessions[key].participant.write("T1", rec.make_patch(before[key], after[key]), after[key])
    host.crash()
    if marker is None:
        markers.remove("T1")
    else:
        markers.set("T1", {"state": marker, "store": "bank", "keys": ["ann", "bob"], "created": 0})
    world.shutdown()


# --------------------------------------------------------------------------------------- versions, restore


def test_versions_newest_first(built):
    versions = list_versions(built, "players", "u1")
    assert [(v["created_time"], v["deleted"], v["current"]) for v in versions] == [
        (1_700_000_000_000 + 3_601_000, False, True), (1_700_000_000_000, False, False)]
    removed = list_versions(built, "settings", "old")
    assert [v["deleted"] for v in removed] == [True, False]


def test_restore_writes_a_new_version_that_the_next_load_takes(db):
    before = list_versions(db, "players", "u1")
    restored = restore_version(db, "players", "u1", before[1]["version"])
    assert restored["data"] == {"coins": 5, "items": []} and restored["user_ids"] == [1]
    after = list_versions(db, "players", "u1")
    assert [v["version"] for v in after[1:]] == [v["version"] for v in before]      # the old versions stay
    assert after[0]["version"] == restored["version"]
    shown = show_key(db, "players", "u1")
    assert (shown["data"], shown["session"], shown["user_ids"]) == ({"coins": 5, "items": []}, None, [1])
    again = restore_version(db, "players", "u1", before[0]["version"])   # its current version is of this hour
    assert [v["version"] for v in list_versions(db, "players", "u1")] == [again["version"]] + [
        v["version"] for v in after]
    restored = restore_version(db, "players", "u1", before[1]["version"])

    world = open_world(db, ManualClock(restored["updated_time"] + 60_000))
    server = GameServer(world, "job-2")
    players = server.create_store("players", template=TEMPLATE)
    players.load("u1", user_ids=[1])
    assert players.get("u1") == {"coins": 5, "items": []}
    server.shutdown()
    world.shutdown()


def test_restoring_a_sharded_record_writes_new_shards_and_orphans_the_old_ones(db):
    old = show_key(db, "players", "big")
    restored = restore_version(db, "players", "big", old["version"])
    assert restored["sharded"] is True
    shown = show_key(db, "players", "big")
    assert shown["data"] == BIG
    assert shown["file"]["shard"] != old["file"]["shard"]
    assert shown["orphaned_files"] == [old["file"]]


def test_an_old_sharded_version_restores_after_a_load_removed_its_shards(db):
    original = show_key(db, "players", "big")
    restored = restore_version(db, "players", "big", original["version"])
    world = open_world(db, ManualClock(restored["updated_time"] + 3_600_000))
    server = GameServer(world, "job-2")
    players = server.create_store("players", template=TEMPLATE)
    players.load("big")                         # the load removes the shards of the files it replaced
    server.shutdown()
    world.shutdown()
    live_shards = list_keys(db, "lodestore/shards/players")
    assert live_shards and not any(k.startswith(original["file"]["shard"]) for k in live_shards)
    back = restore_version(db, "players", "big", original["version"])   # its chunks survive as backups only
    assert back["data"] == BIG and show_key(db, "players", "big")["data"] == BIG


def test_restore_refuses_unknown_versions_and_removals(db):
    with pytest.raises(InspectError, match="has no version nope") as caught:
        restore_version(db, "players", "u1", "nope")
    assert caught.value.status == NOT_FOUND
    tombstone = list_versions(db, "settings", "old")[0]["version"]
    with pytest.raises(InspectError, match="is a removal"):
        restore_version(db, "settings", "old", tombstone)
    restore_version(db, "settings", "old", list_versions(db, "settings", "old")[1]["version"])
    assert show_key(db, "settings", "old")["data"] == 1
    assert [v["deleted"] for v in list_versions(db, "settings", "old")] == [False, True, False]


# ---------------------------------------------------------------------------------------- export, import


def test_export_then_import_into_another_store_gives_equal_data(db, tmp_path, capsys):
    out = tmp_path / "players.json"
    assert cli([db, "export", "players", "--out", out], capsys)[0] == 0
    exported = json.loads(out.read_text(encoding="utf-8"))
    assert exported == {"u1": {"coins": 9, "items": []}, "u2": {"coins": 2, "items": ["hat"]}, "big": BIG}
    status, text, _ = cli([db, "--json", "import", "copy", out], capsys)
    assert status == 0 and json.loads(text)["sharded"] == ["big"]
    assert export_store(db, "copy") == exported
    copied = show_key(db, "copy", "u2")
    assert (copied["session"], copied["applied_migrations"], copied["transaction"]) == (None, [], None)

    world = open_world(db, ManualClock(2_000_000_000_000))
    server = GameServer(world, "job-3")
    copy = server.create_store("copy", template=TEMPLATE)
    copy.load("big")
    assert copy.get("big") == BIG
    server.shutdown()
    world.shutdown()


def test_import_checks_the_whole_file_first_and_writes_nothing_when_an_entry_is_bad(db, tmp_path, capsys):
    bad_key = "a-key-much-longer-than-the-fifty-characters-roblox-allows"
    cases = {
        "long key": ({"fine": {"coins": 1}, bad_key: {"coins": 2}}, bad_key),
        "big int": ({"u1": {"coins": 1}, "u2": {"coins": 2 ** 70}}, "'u2'"),
    }
    before = list_versions(db, "players", "u1")
    for name, (entries, named) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(entries), encoding="utf-8")
        for store in ("players", "fresh"):
            status, out, err = cli([db, "import", store, path], capsys)
            assert status == USAGE and named in err and len(err.splitlines()) == 1, (name, err)
    assert list_versions(db, "players", "u1") == before
    assert show_key(db, "players", "u1")["data"] == {"coins": 9, "items": []}
    assert "fresh" not in {row["name"] for row in list_stores(db)}
    with pytest.raises(InspectError, match="bad key"):
        import_store(db, "players", {"": 1})


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "JSON object"), ("{\"u1\": ", "not valid JSON"), ("{\"u1\": NaN}", "NaN"),
    ("{\"u1\": 1, \"u1\": 2}", "duplicate key 'u1'")])
def test_import_refuses_a_file_that_is_not_an_object_of_json_values(db, tmp_path, capsys, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    status, out, err = cli([db, "import", "players", path], capsys)
    assert status == USAGE and message in err and out == ""
    assert show_key(db, "players", "u1")["data"] == {"coins": 9, "items": []}


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_json_output_of_every_reading_command(built, capsys):
    def run_json(*argv):
        status, out, err = cli([built, *argv], capsys)
        assert (status, err) == (0, ""), argv
        return json.loads(out)

    assert {"players", "settings"} <= {row["name"] for row in run_json("--json", "stores")}
    assert run_json("keys", "players", "--prefix", "u", "--json") == ["u1", "u2"]
    assert run_json("show", "players", "u2", "--json")["data"] == {"coins": 2, "items": ["hat"]}
    assert len(run_json("versions", "players", "u1", "--json")) == 2
    assert run_json("export", "settings", "--json") == {"motd": "hello"}


def test_cli_text_output(built, capsys):
    status, out, _ = cli([built, "stores"], capsys)
    assert status == 0 and "lodestore/shards/players  (internal)" in out
    status, out, _ = cli([built, "show", "players", "big"], capsys)
    assert status == 0 and "sharded: 2 chunk(s)" in out and "migrations   (none) applied" in out
    status, out, _ = cli([built, "keys", "players", "--limit", "1"], capsys)
    assert (status, out) == (0, "big\n")


@pytest.mark.parametrize("argv, status, message", [
    (["stores"], USAGE, "no such file"),
    (["show", "nobody", "u1"], NOT_FOUND, "no store 'nobody'"),
    (["show", "players", "u9"], NOT_FOUND, "no key 'u9' in store 'players'"),
    (["show", "settings", "old"], NOT_FOUND, "was removed"),
    (["show", "players", ""], USAGE, "bad KEY"),
    (["versions", "players", "u9"], NOT_FOUND, "no key 'u9'"),
    (["restore", "players", "u1", "0000"], NOT_FOUND, "has no version 0000"),
    (["export", "nobody"], NOT_FOUND, "no store 'nobody'"),
])
def test_cli_errors_are_one_line_with_an_exit_status(built, tmp_path, capsys, argv, status, message):
    target = str(tmp_path / "missing.db") if message == "no such file" else str(built)
    got, out, err = cli([target, *argv], capsys)
    assert (got, out) == (status, "")
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "missing.db").exists()                            # never created


def test_a_file_that_is_not_a_world_is_refused(tmp_path, capsys):
    path = tmp_path / "notes.db"
    path.write_text("not sqlite at all", encoding="utf-8")
    status, _, err = cli([path, "stores"], capsys)
    assert status == USAGE and "lodestore world file" in err
    assert path.read_text(encoding="utf-8") == "not sqlite at all"


# ----------------------------------------------------------------------------------- which files make a world


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def running(tmp_path):
    """The files of a world still running (as a killed one leaves them): world.db, -wal, -shm, in `running/`."""
    path = tmp_path / "running" / "world.db"
    world = World.in_process("running", backend="sqlite", path=str(path), clock=ManualClock(), budget=None)
    settings = world.server("admin").datastores.get_data_store("settings")
    for i in range(30):
        settings.set(f"k{i}", i)
    copy = tmp_path / "killed"
    shutil.copytree(path.parent, copy, ignore=shutil.ignore_patterns("*.lock"))
    world.shutdown()
    return copy


def test_a_cleanly_closed_world_file_gives_no_warning_and_inspect_changes_nothing(built, capsys):
    before = _files(built.parent)
    status, out, err = cli([built, "stores"], capsys)
    assert (status, err) == (0, "") and "settings" in out
    assert _files(built.parent) == before


def test_a_killed_worlds_files_read_whole_without_warning_or_change(running, capsys):
    assert sorted(_files(running)) == ["world.db", "world.db-shm", "world.db-wal"]
    before = _files(running)
    status, out, err = cli([running / "world.db", "stores"], capsys)
    assert (status, err) == (0, "") and "settings" in out
    after = _files(running)
    assert after.keys() == before.keys()
    assert [after[n] == before[n] for n in ("world.db", "world.db-wal")] == [True, True]   # -shm: SQLite's index


def test_a_killed_worlds_file_copied_without_its_wal_is_flagged_as_not_a_world_or_unfinished(running, capsys):
    (running / "world.db-wal").unlink()
    (running / "world.db-shm").unlink()
    before = _files(running)
    status, out, err = cli([running / "world.db", "stores"], capsys)
    warning, error = err.splitlines()
    assert "warning:" in warning and "was not closed cleanly" in warning and "world.db-wal is not beside it" in warning
    assert status == USAGE and "not a lodestore world, or an unfinished one" in error
    assert _files(running) == before               # read immutable: not even an empty -wal appeared


def test_a_wal_beside_a_cleanly_closed_file_is_flagged_as_not_its_own(built, running, tmp_path, capsys):
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    shutil.copyfile(built, stranger / "world.db")
    shutil.copyfile(running / "world.db-wal", stranger / "world.db-wal")   # another world's WAL, moved in by hand
    status, _, err = cli([stranger / "world.db", "stores"], capsys)
    assert "warning:" in err and "world.db-wal is not world.db's own" in err and "would apply them" in err


def test_a_wal_that_is_no_wal_is_flagged(running, capsys):
    (running / "world.db-wal").write_bytes(b"\0" * 4096)
    _, _, err = cli([running / "world.db", "stores"], capsys)
    assert "warning:" in err and "is not a SQLite WAL file" in err


def test_a_file_in_use_by_a_running_world_is_refused_by_the_commands(tmp_path, capsys):
    path = tmp_path / "world.db"
    world = World.in_process("busy", backend="sqlite", path=str(path), clock=ManualClock(), budget=None)
    try:
        world.server("admin").datastores.get_data_store("settings").set("motd", "hi")
        status, out, err = cli([path, "keys", "settings"], capsys)
        assert (status, out) == (NOT_FOUND, "") and "is in use by another world" in err
    finally:
        world.shutdown()
    status, out, _ = cli([path, "keys", "settings"], capsys)
    assert (status, out) == (0, "motd\n")


# ------------------------------------------------------------------------------------------------------ storage


def test_storage_measures_the_file_against_roblox_s_limit(built, capsys):
    from lodestore.sim._inspect import storage_usage

    usage = storage_usage(built, lifetime_users=3)
    assert usage["storage_limit_bytes"] == (500 + 3) * 1024 * 1024 and usage["over_limit"] is False
    assert 0 < usage["storage_bytes"] and usage["estimated_monthly_cost_usd"] == 0.0
    status, out, _ = cli([built, "storage", "--lifetime-users", "3", "--json"], capsys)
    assert status == 0 and json.loads(out) == usage
    status, out, _ = cli([built, "storage"], capsys)
    assert status == 0 and "of 500 MB (500 MB + 1 MB x 0 lifetime users); within the limit" in out
    assert "$0.00/month" in out
    with pytest.raises(InspectError):
        storage_usage(built, lifetime_users=-1)
