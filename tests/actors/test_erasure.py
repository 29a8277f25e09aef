"""`World.erase_user` over what sessions and transactions keep: a Store's record with every version, the shard chunks
of its sharded files (current and orphaned), the transaction markers that name the key (settled first when they
had not committed), and a key a live session holds."""

from __future__ import annotations

import asyncio

import pytest

from lodestore.actors import TX_STORE, Load, LockLostError, Save, Unload, Update
from lodestore.actors import records as rec
from lodestore.storage.datastore import MemoryBackend

from tests.actors._rig import Rig

TEMPLATES = [("players", "global", "{UserId}")]    # a template may name the Store; its records are the user's


def run(coro):
    return asyncio.run(coro)


def every_key(store) -> list[str]:
    return store.list_keys(page_size=1000).items


def set_fields(**fields):
    def fn(data):
        data.update(fields)
        return True
    return fn


async def sharded_user(rig: Rig, key: str) -> None:
    """`key` saved sharded in two hours (two chunk sets: the older one orphaned, then removed by the session),
    then unloaded."""
    server = rig.host(f"job-{key}")
    server.runtime().shard_limit = 300
    await server(Load, key)
    await server(Update, key, set_fields(blob="x" * 2000))
    await server(Save, key)
    await rig.advance(3601)
    await server(Update, key, set_fields(blob="y" * 2000))
    await server(Unload, key)


@pytest.mark.parametrize("template", [TEMPLATES, [("lodestore/records/players", "global", "{UserId}")]])
def test_a_sharded_record_goes_with_every_chunk_it_ever_pointed_to(template):
    async def go():
        rig = Rig()
        for key in ("7", "8"):
            await sharded_user(rig, key)
        return rig
    rig = run(go())
    theirs = [k for k in every_key(rig.shards)]
    assert theirs, "the records were not sharded"
    record_versions = rig.records.list_versions("7").items
    chunk_sets = set()
    for version in record_versions:
        value, _ = rig.records.get_version("7", version.version)
        chunk_sets |= {k for f in [value["file"], *value["orphaned_files"]] for k in rec.shard_keys(f)}
    assert chunk_sets
    report = rig.world.erase_user(7, template)
    assert report.complete
    removed = {(k.store, k.key) for k in report.removed}
    assert ("lodestore/records/players", "7") in removed
    assert rig.records.list_versions("7").items == []
    left_chunks = set(every_key(rig.shards))
    assert not left_chunks & chunk_sets
    assert left_chunks, "user 8's chunks must stay"
    assert rig.record("8")["file"]["count"] >= 1
    assert rig.world.check_erased(7, template) == []


async def leave_a_transaction(rig: Rig, state: str | None) -> None:
    """7 gives 8 forty coins in transaction T1; the host dies after both records were written (phase one); the
    marker is left in `state`."""
    server = rig.host("a", template={"coins": 100})
    for key in ("7", "8"):
        await server(Load, key)
    sessions = server.runtime().sessions
    before = {key: await sessions[key].participant.prepare("T1", 30) for key in ("7", "8")}
    after = {"7": {"coins": 60}, "8": {"coins": 140}}
    rig.markers.set("T1", {"state": "pending", "store": "players", "keys": ["7", "8"], "created": 0})
    for key in ("7", "8"):
        await sessions[key].participant.write("T1", rec.make_patch(before[key], after[key]), after[key])
    server.host.crash()
    if state is not None:
        rig.markers.set("T1", {"state": state, "store": "players", "keys": ["7", "8"], "created": 0})


@pytest.mark.parametrize("state, coins_of_8", [("pending", 100), ("aborted", 100), ("committed", 140)])
def test_a_marker_naming_the_key_is_settled_then_removed(state, coins_of_8):
    async def go():
        rig = Rig()
        await leave_a_transaction(rig, state)
        return rig, await rig.world.aio.erase_user(7, TEMPLATES)
    rig, report = run(go())
    assert report.complete
    assert (TX_STORE, "T1") in {(k.store, k.key) for k in report.removed}
    assert rig.markers.list_versions("T1").items == []                 # every version of the marker gone
    record = rig.record("8")
    assert rec.committed(record["file"]["data"], False) == {"coins": coins_of_8}   # the marker is gone now


def test_a_marker_of_other_keys_only_stays():
    rig = Rig()
    rig.markers.set("T9", {"state": "pending", "store": "players", "keys": ["8", "9"], "created": 0})
    rig.markers.set("T8", {"state": "pending", "store": "other", "keys": ["7"], "created": 0})
    rig.world.erase_user(7, TEMPLATES)
    assert rig.markers.get("T9", use_cache=False)[0]["state"] == "pending"
    assert rig.markers.get("T8", use_cache=False)[0]["state"] == "pending"


def test_a_live_session_cannot_write_the_erased_record_back():
    async def go():
        rig = Rig()
        server = rig.host("live")
        await server(Load, "7")
        await server(Update, "7", set_fields(coins=5))
        await server(Save, "7")
        report = await rig.world.aio.erase_user(7, TEMPLATES)
        assert report.complete
        with pytest.raises(LockLostError):
            await server(Update, "7", set_fields(coins=6))
            await server(Save, "7")            # its fenced write finds the record gone: the session loses the key
        return rig
    rig = run(go())
    assert rig.records.list_versions("7").items == []
    assert rig.world.check_erased(7, TEMPLATES) == []


def test_the_check_reports_chunks_that_stayed_although_their_record_went(monkeypatch):
    """A purge that failed to take a record's chunks: only the keys found before the purge can tell (the record
    that pointed to them is gone), and the report lists them."""
    async def go():
        rig = Rig()
        await sharded_user(rig, "7")
        return rig
    rig = run(go())
    purge = MemoryBackend.purge_key
    monkeypatch.setattr(MemoryBackend, "purge_key",
                        lambda self, k: 0 if k[0] == "lodestore/shards/players" else purge(self, k))
    report = rig.world.erase_user(7, TEMPLATES)
    assert not report.complete
    assert {k.store for k in report.remaining} == {"lodestore/shards/players"}
    assert {k.key for k in report.remaining} == set(every_key(rig.shards))
