"""Migrations: the data a load starts from (template or legacy import) and the steps applied to it, as plain
functions on a `StoreConfig`, then through loads on a key host with a manual clock."""

from __future__ import annotations

import math

import pytest

from lodestore.actors import Get, IsLoaded, Load, Migration, MigrationError, ProbeLockActive, StoreConfig, Unload
from lodestore.actors._migrations import initial_data, migrate
from tests.actors._rig import TEMPLATE, Rig, run


def config(**options) -> StoreConfig:
    return StoreConfig(name="players", template=options.pop("template", TEMPLATE), **options)


def tag(name: str) -> Migration:
    return Migration(name, lambda d: {**d, name: True})


# ------------------------------------------------------------------------------------------ plain functions

def test_migrate_applies_only_the_missing_steps_in_order():
    seen = []

    def step(name):
        def apply(d):
            seen.append(name)
            return {**d, "trail": d.get("trail", []) + [name]}
        return Migration(name, apply)

    cfg = config(migrations=[step("m1"), step("m2"), step("m3")])
    data, applied = migrate(cfg, "u1", {"coins": 1}, ("m1",))
    assert seen == ["m2", "m3"]
    assert data == {"coins": 1, "trail": ["m2", "m3"]} and applied == ("m1", "m2", "m3")
    assert migrate(cfg, "u1", data, applied) == (data, applied)      # all applied: nothing runs again
    assert seen == ["m2", "m3"]


def test_a_step_that_raises_returns_none_or_unstorable_data_fails_with_migration_error():
    with pytest.raises(MigrationError, match="'bad' failed for key 'u1'.*ZeroDivisionError") as failed:
        migrate(config(migrations=[Migration("bad", lambda d: 1 / 0)]), "u1", {}, ())
    assert isinstance(failed.value.__cause__, ZeroDivisionError)
    with pytest.raises(MigrationError, match="'none' returned None"):
        migrate(config(migrations=[Migration("none", lambda d: None)]), "u1", {}, ())
    with pytest.raises(MigrationError, match="'nan' for key 'u1'"):
        migrate(config(migrations=[Migration("nan", lambda d: {"x": math.nan})]), "u1", {}, ())


def test_data_naming_a_step_this_server_does_not_know_is_refused_before_any_step_runs():
    ran = []
    cfg = config(migrations=[Migration("m1", lambda d: ran.append("m1") or d)])
    with pytest.raises(MigrationError, match="migration 'm9' applied, which store 'players' does not know: a newer "
                                             "server wrote it; refusing to load"):
        migrate(cfg, "u1", {}, ("m9",))
    assert ran == []


def test_a_new_key_starts_from_a_copy_of_the_template_with_every_step_counted_as_applied():
    cfg = config(template={"coins": 0, "items": []}, migrations=[tag("m1"), tag("m2")])
    data, applied = initial_data(cfg, "u1")
    assert data == {"coins": 0, "items": []} and applied == ("m1", "m2")
    data["items"].append("sword")
    assert cfg.template == {"coins": 0, "items": []}                 # a copy, not the template itself


def test_legacy_data_is_imported_with_no_step_applied_and_a_failing_import_is_a_migration_error():
    legacy = {"coins": 77, "items": ["old"]}
    cfg = config(import_legacy_data=lambda key: legacy if key == "old" else None, migrations=[tag("m1")])
    data, applied = initial_data(cfg, "old")
    assert data == legacy and data is not legacy and applied == ()
    assert initial_data(cfg, "new") == (TEMPLATE, ("m1",))            # None: no legacy data, the template
    with pytest.raises(MigrationError, match="import_legacy_data raised for key 'u1': KeyError"):
        initial_data(config(import_legacy_data=lambda key: {}[key]), "u1")
    with pytest.raises(MigrationError, match="import_legacy_data for key 'u1'"):
        initial_data(config(import_legacy_data=lambda key: {"x": math.inf}), "u1")


# --------------------------------------------------------------------------------------------- through loads

def test_migrations_run_once_in_order_and_new_keys_count_as_migrated():
    async def main():
        rig = Rig()
        seen = []

        def step(name, field):
            def apply(d):
                seen.append(name)
                return {**d, field: True}
            return Migration(name, apply)

        a = rig.host("a", migrations=[step("m1", "one")])
        await a(Load, "u1")                                     # new key: template, no step runs
        assert seen == [] and rig.record("u1")["applied_migrations"] == ["m1"]
        await a(Unload, "u1")
        # a record written before m2 existed gets m2 only
        b = rig.host("b", migrations=[step("m1", "one"), step("m2", "two")])
        await b(Load, "u1")
        assert seen == ["m2"] and await b(Get, "u1") == {**TEMPLATE, "two": True}
        assert rig.record("u1")["applied_migrations"] == ["m1", "m2"]
    run(main())


def test_a_failing_migration_fails_the_load_writes_nothing_and_releases_the_lock():
    async def main():
        rig = Rig()
        a = rig.host("a")
        await a(Load, "u1")
        await a(Unload, "u1")
        before = rig.record("u1")
        version = rig.version("u1")
        b = rig.host("b", migrations=[Migration("bad", lambda d: 1 / 0)])
        with pytest.raises(MigrationError, match="'bad' failed.*ZeroDivisionError"):
            await b(Load, "u1")
        assert rig.record("u1") == before and rig.version("u1") == version
        assert await b(ProbeLockActive, "u1") is False
        assert not await b(IsLoaded, "u1")
        c = rig.host("c", migrations=[Migration("none", lambda d: None)])
        with pytest.raises(MigrationError, match="returned None"):
            await c(Load, "u1")
    run(main())


def test_legacy_import_runs_every_migration_and_unknown_applied_steps_refuse_to_load():
    async def main():
        rig = Rig()
        a = rig.host("a", import_legacy_data=lambda key: {"coins": 77, "items": ["old"]},
                     migrations=[Migration("tag", lambda d: {**d, "tagged": True})])
        await a(Load, "u1")
        assert await a(Get, "u1") == {"coins": 77, "items": ["old"], "tagged": True}
        await a(Unload, "u1")
        old_server = rig.host("old")                              # knows no migrations at all
        with pytest.raises(MigrationError, match="newer server"):
            await old_server(Load, "u1")
    run(main())
