"""Deletion templates and the erasure of a user's plain DataStore keys (every version, every backup, no tombstone),
on in-process worlds with a manual clock. What lodestore's sessions keep beyond a key: tests/actors/test_erasure.py."""

from __future__ import annotations

import asyncio

import pytest

from lodestore.storage import (ConfigError, DeletionTemplate, ErasedKey, ManualClock, World)

T0 = 1_700_000_000_000


def make_world(shards: int = 1, **kw) -> tuple[World, ManualClock]:
    clock = ManualClock(T0)
    return World.in_process(clock=clock, shards=shards, **kw), clock


def written_in_three_hours(world: World, clock: ManualClock, store: str, key: str, scope: str = "global") -> None:
    ds = world.server("writer").datastores.get_data_store(store, scope)
    for n in range(3):
        ds.set(key, {"n": n}, user_ids=[7])
        clock.advance(seconds=3600)
    ds.remove(key)                                        # a tombstone on top: the backups still hold the value


@pytest.mark.parametrize("shards", [1, 3])
def test_erase_removes_every_matching_key_with_every_version_and_leaves_other_users(shards):
    world, clock = make_world(shards)
    world.set_deletion_templates([DeletionTemplate("players", "global", "user_{UserId}"),
                                  ("inventory", "{UserId}", "items"),
                                  ("{UserId}-settings", "global", "prefs")])
    for user in (7, 8):
        written_in_three_hours(world, clock, "players", f"user_{user}")
        written_in_three_hours(world, clock, "inventory", "items", scope=str(user))
        written_in_three_hours(world, clock, f"{user}-settings", "prefs")
    players = world.server("reader").datastores.get_data_store("players")
    assert len(players.list_versions("user_7").items) == 4
    report = world.erase_user(7)
    assert {(k.store, k.scope, k.key, k.versions) for k in report.removed} == {
        ("players", "global", "user_7", 4), ("inventory", "7", "items", 4), ("7-settings", "global", "prefs", 4)}
    assert report.remaining == () and report.complete
    assert players.list_versions("user_7").items == []                 # no tombstone, no backup
    assert players.list_keys().items == ["user_8"]
    assert players.get_version_at_time("user_7", T0 + 3600_000)[0] is None
    assert len(players.list_versions("user_8").items) == 4              # another user's keys are untouched
    assert world.check_erased(7) == [] and world.check_erased(8) != []
    assert world.erase_user(7).removed == ()                            # again: nothing left to remove


def test_check_erased_lists_what_remains_and_changes_nothing():
    world, clock = make_world()
    written_in_three_hours(world, clock, "players", "user_7")
    left = world.check_erased(7, [("players", "global", "user_{UserId}")])
    assert left == [ErasedKey("players", "global", "user_7", 4, "deletion template 0")]
    assert world.check_erased(7, [("players", "global", "user_{UserId}")]) == left


def test_erasure_reaches_a_deleted_store_too():
    world, clock = make_world()
    written_in_three_hours(world, clock, "players", "user_7")
    world.server("w").datastores.get_data_store("players").set("user_8", 1)
    world.delete_data_store("players")
    assert world.erase_user(7, [("players", "global", "user_{UserId}")]).complete
    world.undelete_data_store("players")
    players = world.server("reader").datastores.get_data_store("players")
    assert players.list_keys().items == ["user_8"]


def test_templates_persist_in_the_world_file(tmp_path):
    path = str(tmp_path / "w.db")
    world = World.in_process("w", backend="sqlite", path=path, clock=ManualClock(T0))
    world.set_deletion_templates([("players", "global", "{UserId}")])
    world.shutdown()
    again = World.in_process("w", backend="sqlite", path=path, clock=ManualClock(T0))
    assert again.deletion_templates() == (DeletionTemplate("players", "global", "{UserId}"),)
    again.shutdown()


@pytest.mark.parametrize("templates, problem", [
    ("players", "must be a list"),
    ([("players", "global", "user")], "no {UserId} token"),
    ([("players", "global")], "expected a DeletionTemplate"),
    ([("players", "global", "{UserID}")], "brace"),
    ([("players", "global", "{UserId}}")], "brace"),
    ([("players", 5, "{UserId}")], "its scope must be a string"),
    ([("players", "a/b", "{UserId}")], "names no valid key"),
    ([("players", "global", "k" * 50 + "{UserId}")], "names no valid key"),
    ([("players", "global", "{UserId}"), ("players", "global", "{UserId}")], "repeats template 0"),
    ([("players", "global", f"{i}_{{UserId}}") for i in range(101)], "at most 100"),
])
def test_bad_templates_are_refused_naming_the_problem_and_change_nothing(templates, problem):
    world, _ = make_world()
    world.set_deletion_templates([("kept", "global", "{UserId}")])
    with pytest.raises(ConfigError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        world.set_deletion_templates(templates)
    assert world.deletion_templates() == (DeletionTemplate("kept", "global", "{UserId}"),)


@pytest.mark.parametrize("user_id", [0, -1, True, 1.5, "7"])
def test_a_bad_user_id_is_refused(user_id):
    world, _ = make_world()
    with pytest.raises(ConfigError, match="user_id"):
        world.erase_user(user_id, [("players", "global", "{UserId}")])


def test_the_coroutine_twins():
    world, clock = make_world(2)
    written_in_three_hours(world, clock, "players", "user_7")

    async def go():
        await world.aio.set_deletion_templates([("players", "global", "user_{UserId}")])
        templates = await world.aio.deletion_templates()
        before = await world.aio.check_erased(7)
        report = await world.aio.erase_user(7)
        return templates, before, report, await world.aio.check_erased(7)

    templates, before, report, after = asyncio.run(go())
    assert templates == (DeletionTemplate("players", "global", "user_{UserId}"),)
    assert [k.versions for k in before] == [4] and [k.versions for k in report.removed] == [4]
    assert report.complete and after == []
