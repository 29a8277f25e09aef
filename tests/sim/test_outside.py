"""What became of a served run's outside writes (`sim._outside.outside_writes`), from raw requests and lock events
made by hand: kept, replaced by a game server (seen or unseen), and whether a session held the key meanwhile."""

from __future__ import annotations

from lodestore.sim._checkers import LockEvent
from lodestore.sim._outside import outside_writes

STORE = "lodestore/records/players"


OC = "outside:open-cloud"   # Open Cloud's client, as a served run records it (`storage.OUTSIDE_PREFIX`)


def _w(obj: str, key: str, call: str, invoke: int, read, written, outcome: str = "ok", store: str = STORE) -> tuple:
    return ("ds", store, "global", key, obj, call, "off", invoke, invoke + 100, outcome, read, written)


def _held(key: str, server: str, start: int, end: int) -> list[LockEvent]:
    return [LockEvent(start, key, server, f"s-{key}", "acquired", 90_000),
            LockEvent(end, key, server, f"s-{key}", "released")]


def test_an_edit_the_holders_next_save_writes_over_is_replaced_while_held():
    requests = [_w("server_0001#1", "p1", "update", 1_000, None, 1),
                _w(f"{OC}#1", "p1", "set", 5_000, None, 2),                # the edit, while server_0001 holds p1
                _w("server_0001#1", "p1", "update", 9_000, 2, 3)]          # its autosave: read the edit, wrote over
    found = outside_writes(requests, _held("p1", "server_0001", 900, 20_000))
    assert (found["writes"], found["replaced"], found["held"], found["held_replaced"], found["kept"]) == (1, 1, 1, 1, 0)
    assert found["replaced_unseen"] == 0
    assert found["examples"] == [{"store": STORE, "scope": "global", "key": "p1", "version": 2, "t_ms": 5_100,
                                  "held_by": "server_0001", "replaced_by": "server_0001", "replaced_at_ms": 9_100,
                                  "replacing_version": 3, "seen": True}]
    assert found["by_store"] == {STORE: {"writes": 1, "replaced": 1, "held": 1}}


def test_an_edit_of_a_key_nobody_holds_is_kept_and_a_blind_overwrite_is_unseen():
    requests = [_w(f"{OC}#1", "p2", "set", 5_000, None, 1),           # nobody online: kept
                _w(f"{OC}-v1#1", "p3", "set", 5_000, 4, 5),           # Data Stores v1's client
                _w("server_0002#1", "p3", "set", 6_000, None, 6),          # a SetAsync over it, without reading it
                _w(f"{OC}#1", "p4", "set", 5_000, None, 7, outcome="ambiguous"),   # not acknowledged: not counted
                _w(f"{OC}#1", "p5", "get", 5_000, 3, None)]           # a read: not an edit
    found = outside_writes(requests, _held("p3", "server_0002", 5_500, 7_000))
    assert (found["writes"], found["kept"], found["replaced"], found["replaced_unseen"]) == (2, 1, 1, 1)
    assert found["held"] == 0 and found["examples"] == []   # p3 was taken after the edit had landed


def test_an_edit_followed_only_by_other_edits_is_kept():
    requests = [_w(f"{OC}#1", "p6", "set", 1_000, None, 1), _w(f"{OC}#2", "p6", "set", 2_000, 1, 2),
                _w("server_0001#1", "p7", "set", 500, None, 1)]            # a game server's own write: no edit
    found = outside_writes(requests)
    assert (found["writes"], found["kept"], found["replaced"]) == (2, 2, 0)
