"""StoreConfig and check_schema (`actors/_config.py`): every bad field refused with a ConfigError naming it in
`.field`, timing bounds, the nesting its template may have, and the strict reading of a schema's answer."""

from __future__ import annotations

import math

import pytest

from lodestore import GameServer
from lodestore.actors import MAX_LOCK_TTL_S, MIN_PERIOD_S, SchemaError, StoreConfig, check_schema, records
from lodestore.storage import MS_MAX_EXPIRATION_S, ConfigError, ManualClock, World, check_value
from tests.actors._rig import nested

TEMPLATE = {"coins": 0, "items": []}


def test_the_exported_bounds():
    assert MIN_PERIOD_S == 0.1
    assert MAX_LOCK_TTL_S == MS_MAX_EXPIRATION_S == 3_888_000    # MemoryStore's longest expiration: 45 days


BAD_FIELDS = [
    ("name", ""), ("name", "a/b"), ("name", 5),
    ("template", {1: 2}), ("template", math.nan), ("template", nested(records.MAX_DATA_DEPTH + 1)),
    ("schema", 5), ("import_legacy_data", "x"), ("log_callback", 1), ("on_lock_lost", 1), ("lock_callback", 1),
    ("migrations", 5), ("migrations", [("a", 1)]), ("migrations", [("a", id), ("a", id)]), ("migrations", [("", id)]),
    ("changed_callbacks", [1]),
    ("metadata_template", {"k": None}),
    # issue 18 (8): a lock TTL over MemoryStore's 45 days made every load fail; huge numbers overflowed untyped
    ("lock_ttl", MAX_LOCK_TTL_S + 1), ("lock_ttl", 1e300), ("lock_ttl", math.inf),
    ("autosave_interval", 1e300), ("autosave_interval", MAX_LOCK_TTL_S + 1), ("autosave_interval", math.nan),
    ("tx_timeout", 1e300), ("lock_wait", 1e300), ("lock_wait", -1), ("lock_steal_after", 1e300),
    # issue 18 (9): periods under a millisecond became 0 ms timers that never stop firing
    ("autosave_interval", 1e-9), ("autosave_interval", 0), ("lock_refresh", 1e-4), ("lock_ttl", 0.05),
    ("tx_timeout", 1e-3), ("lock_steal_after", 0), ("lock_steal_after", 0.01),
    ("autosave_interval", True), ("lock_ttl", "90"),
    ("lock_refresh", 100),                      # not shorter than lock_ttl (90)
    ("retry_attempts", 0), ("retry_attempts", 2.0), ("lock_partitions", 2000), ("placement", "everywhere"),
]


@pytest.mark.parametrize("name, value", BAD_FIELDS)
def test_every_bad_field_is_named_in_the_error(name, value):
    # the simulator validates a scenario's [store] section with StoreConfig and reports the error as store.<field>
    with pytest.raises(ConfigError) as caught:
        StoreConfig(**{"name": "players", "template": TEMPLATE, name: value})
    assert caught.value.field == name


def test_timings_at_their_bounds_are_accepted():
    low = StoreConfig("players", TEMPLATE, autosave_interval=MIN_PERIOD_S, lock_ttl=MIN_PERIOD_S * 2,
                      lock_refresh=MIN_PERIOD_S, tx_timeout=MIN_PERIOD_S, lock_steal_after=MIN_PERIOD_S, lock_wait=0)
    assert low.lock_wait == 0.0 and low.autosave_interval == MIN_PERIOD_S
    high = StoreConfig("players", TEMPLATE, autosave_interval=MAX_LOCK_TTL_S, lock_ttl=MAX_LOCK_TTL_S,
                       lock_refresh=MAX_LOCK_TTL_S - 1, tx_timeout=MAX_LOCK_TTL_S, lock_wait=MAX_LOCK_TTL_S,
                       lock_steal_after=MAX_LOCK_TTL_S)
    assert high.lock_ttl == float(MAX_LOCK_TTL_S)


def test_create_store_refuses_a_lock_ttl_memorystore_cannot_keep():
    server = GameServer(World.in_process("cfg", clock=ManualClock(), budget=None), "job-cfg")
    with pytest.raises(ConfigError, match="lock_ttl") as caught:
        server.create_store("players", TEMPLATE, lock_ttl=46 * 24 * 3600, lock_refresh=60)
    assert caught.value.field == "lock_ttl"
    with pytest.raises(ConfigError) as caught:
        server.create_store("players", TEMPLATE, lock_refresh=1e-4)
    assert caught.value.field == "lock_refresh"
    server.create_store("players", TEMPLATE)       # nothing was opened by the refused ones
    server.shutdown()


def test_a_template_storable_alone_but_not_inside_its_record_is_refused():
    deep = nested(records.MAX_DATA_DEPTH + 1)
    check_value(deep)                               # Roblox would store it as a value of its own ...
    with pytest.raises(ConfigError, match="template is not storable") as caught:
        StoreConfig("players", deep)                # ... but not in the record that wraps it
    assert caught.value.field == "template"
    StoreConfig("players", nested(records.MAX_DATA_DEPTH))


# ------------------------------------------------------------------------------------------------ schemas

class Falsy:
    def __bool__(self):
        return False


class Truthy:
    def __bool__(self):
        return True


@pytest.mark.parametrize("answer", [True, None, (True,), (True, "fine")])
def test_a_schema_accepts_with_exactly_true_or_none(answer):
    check_schema(lambda data: answer, "u1", {"coins": 1})


@pytest.mark.parametrize("answer, message", [
    (False, "Schema validation failed for key 'u1'$"),
    ((False, "coins", "must not be negative"), "key 'u1': coins must not be negative"),
])
def test_a_schema_refuses_with_false(answer, message):
    with pytest.raises(SchemaError, match=message):
        check_schema(lambda data: answer, "u1", {"coins": -5})


@pytest.mark.parametrize("answer, type_name", [
    (0, "int"), (1, "int"), ("", "str"), ("no", "str"), ([], "list"), ({}, "dict"), ((), "tuple"),
    ((0, "why"), "tuple"), ((None, "why"), "tuple"), (Falsy(), "Falsy"), (Truthy(), "Truthy"),
])
def test_any_other_schema_answer_is_refused_as_non_boolean(answer, type_name):
    # issue 18 (14): a schema answering 0, "", [] or a falsy object (numpy.False_) let coins = -5 load
    with pytest.raises(SchemaError, match=f"non-boolean.*\\({type_name}\\)"):
        check_schema(lambda data: answer, "u1", {"coins": -5})


def test_a_raising_schema_is_invalid():
    with pytest.raises(SchemaError, match="ZeroDivisionError"):
        check_schema(lambda data: 1 / 0, "u1", {})
