"""The transaction participant on plain asyncio with a manual clock: prepare, write and finish as a coordinator
drives them (here, the test drives them), repeated messages, and a participant settling on its own when its
coordinator goes quiet. The coordinator's side is tests/coordinator."""

from __future__ import annotations

import asyncio

import pytest

from lodestore.actors import (ABSENT, Get, KeyClosedError, Load, SessionState, TxFinish, TxLockedError, TxPrepare,
                              TxWrite, Update)
from lodestore.actors import _records as rec
from lodestore.storage import ConfigError
from tests.actors._rig import Rig, run

BEFORE = {"coins": 0, "items": []}
AFTER = {"coins": 60, "items": ["sword"]}


async def loaded(rig: Rig, key: str = "u1", **options):
    """A host with `key` loaded, and that key's session."""
    a = rig.host("a", **options)
    await a(Load, key)
    return a, a.runtime().sessions[key]


def pending_marker(rig: Rig, tx_id: str, state: str = "pending") -> None:
    rig.markers.set(tx_id, {"state": state, "store": "players", "keys": ["u1", "u2"], "created": 0})


def test_prepare_holds_the_session_and_a_repeated_prepare_answers_the_same_data():
    async def main():
        rig = Rig()
        a, session = await loaded(rig)
        participant = session.participant
        assert await participant.prepare("T1", 30) == BEFORE
        assert await participant.prepare("T1", 30) == BEFORE           # delivered twice: the same answer
        assert session.state is SessionState.IN_TRANSACTION
        with pytest.raises(TxLockedError, match="already locked by another transaction"):
            await participant.prepare("T2", 30)
        updating = asyncio.create_task(a(Update, "u1", lambda d: d.update(coins=d["coins"] + 1) or True))
        await rig.scheduler.settle()
        assert not updating.done()                                     # it waits for the transaction
        await participant.finish("T1", "apply", AFTER)
        await participant.finish("T1", "apply", AFTER)                 # delivered twice: a no-op
        assert await updating is True
        assert await a(Get, "u1") == {"coins": 61, "items": ["sword"]}
        assert session.state is SessionState.ACTIVE
        assert a.runtime().counters.tx_committed == 1
    run(main())


def test_a_write_is_done_once_and_an_abort_rewrites_the_record_without_the_transaction():
    async def main():
        rig = Rig()
        a, session = await loaded(rig)
        participant = session.participant
        await participant.prepare("T1", 30)
        patch = rec.make_patch(BEFORE, AFTER)
        await participant.write("T1", patch, AFTER)
        version = rig.version("u1")
        assert rec.tx_id_of(rig.record("u1")) == "T1"
        await participant.write("T1", patch, AFTER)                    # delivered twice: written once
        assert rig.version("u1") == version
        await participant.finish("T1", "abort")
        assert rec.tx_id_of(rig.record("u1")) is None
        assert rig.record("u1")["file"]["data"]["committed_data"] == BEFORE
        assert await a(Get, "u1") == BEFORE
        with pytest.raises(KeyClosedError, match="not in transaction 'T1' any more"):
            await participant.write("T1", patch, AFTER)                # a late write is refused
    run(main())


def test_a_participant_that_times_out_after_its_write_aborts_the_pending_marker_by_compare_and_set():
    async def main():
        rig = Rig()
        a, session = await loaded(rig)
        participant = session.participant
        await participant.prepare("T1", 30)
        pending_marker(rig, "T1")
        await participant.write("T1", rec.make_patch(BEFORE, AFTER), AFTER)
        await rig.advance(29)
        assert session.state is SessionState.IN_TRANSACTION            # the coordinator still has time
        await rig.advance(1)
        assert rig.markers.get("T1", use_cache=False)[0]["state"] == "aborted"   # no commit can win now
        assert rec.tx_id_of(rig.record("u1")) is None                  # the record is clean again
        assert await a(Get, "u1") == BEFORE
        counters = a.runtime().counters
        assert (counters.tx_timeouts, counters.tx_aborted, counters.tx_committed) == (1, 1, 0)
        await participant.finish("T1", "commit")                      # the coordinator, too late: a no-op
        assert await a(Get, "u1") == BEFORE
        with pytest.raises(KeyClosedError, match="already gave up transaction 'T1'"):
            await participant.prepare("T1", 30)
        assert await a(Update, "u1", lambda d: d.update(coins=1) or True) is True   # the session is free again
    run(main())


def test_a_participant_that_times_out_after_the_commit_point_takes_the_committed_data():
    async def main():
        rig = Rig()
        a, session = await loaded(rig)
        participant = session.participant
        await participant.prepare("T1", 30)
        pending_marker(rig, "T1")
        await participant.write("T1", rec.make_patch(BEFORE, AFTER), AFTER)
        pending_marker(rig, "T1", "committed")                         # the coordinator committed, then went quiet
        await rig.advance(30)
        assert rig.markers.get("T1", use_cache=False)[0]["state"] == "committed"   # left as it was
        assert await a(Get, "u1") == AFTER
        assert a.runtime().counters.tx_committed == 1 and a.runtime().counters.tx_aborted == 0
    run(main())


def test_a_participant_that_times_out_before_its_write_lets_go_and_touches_nothing():
    async def main():
        rig = Rig()
        a, session = await loaded(rig)
        version = rig.version("u1")
        await session.participant.prepare("T1", 30)
        pending_marker(rig, "T1")
        await rig.advance(30)
        assert session.state is SessionState.ACTIVE and session.participant.tx is None
        assert rig.markers.get("T1", use_cache=False)[0]["state"] == "pending"   # the commit point is not reached
        assert rig.version("u1") == version                            # without its record, nothing to settle
        assert a.runtime().counters.tx_timeouts == 1
    run(main())


def test_a_host_routes_typed_participant_calls_and_answers_absent_for_a_key_it_does_not_hold():
    async def main():
        rig = Rig()
        a, _ = await loaded(rig)
        host = a.host
        assert await host.tx_call(TxPrepare("T1", "players", ["u1"], 30)) == {"u1": BEFORE}
        patch = rec.make_patch(BEFORE, AFTER)
        assert await host.tx_call(TxWrite("T1", "players", {"u1": (patch, AFTER)})) == {"u1": None}
        pending_marker(rig, "T1", "committed")
        replies = await host.tx_call(TxFinish("T1", "players", {"u1": ("commit",), "gone": ("commit",)}))
        assert replies == {"u1": None, "gone": ABSENT}
        assert await a(Get, "u1") == AFTER
        (refused,) = await host.tx_calls(["tx_prepare"])               # not a typed call: a clear error, as a value
        assert isinstance(refused, ConfigError) and "got a str" in str(refused)
    run(main())


def test_a_session_not_in_the_transaction_answers_absent_so_the_coordinator_cleans_the_record():
    """A later session of a key (loaded after the one in the transaction lost its lock) cannot vouch for the record
    the transaction wrote: it answers ABSENT, and the coordinator cleans the record before removing the marker (a
    marker removed first would make a reader apply the aborted patch)."""
    async def main():
        rig = Rig()
        a, _ = await loaded(rig)
        host = a.host
        assert await host.tx_call(TxPrepare("T1", "players", ["u1"], 30)) == {"u1": BEFORE}
        replies = await host.tx_call(TxFinish("T2", "players", {"u1": ("abort",)}))   # never joined T2
        assert replies == {"u1": ABSENT}
        assert await host.tx_call(TxFinish("T1", "players", {"u1": ("abort",)})) == {"u1": None}
        assert await host.tx_call(TxFinish("T1", "players", {"u1": ("abort",)})) == {"u1": ABSENT}   # repeated
        assert await a(Get, "u1") == BEFORE
    run(main())
