"""Lyra's lock lease against a MemoryStore that fails requests (the world's `FaultConfig.memorystore_*` faults): the
lease retries through InternalError, so faults shorter than its TTL neither stop an acquire nor lose a held lock.
Plain asyncio on a manual clock (`tests.actors._rig`)."""

from __future__ import annotations

import asyncio

from lodestore.actors import IsLoaded, Load, ProbeLockActive, Save, Update
from lodestore.actors._lease import LockLease
from lodestore.actors._session import _retryable
from lodestore.storage import FaultConfig, MemoryStoreError
from tests.actors._rig import Rig, run, until_done

LOCKS_DOWN = FaultConfig(seed=3, memorystore_error_rate={"HashMap": 1.0})


def test_an_acquire_retries_through_memorystore_faults_and_takes_the_lock_once_they_end():
    async def main():
        rig = Rig()
        rt = rig.host("a", lock_ttl=30, lock_refresh=10, lock_wait=120).runtime()
        lease = LockLease(rt, "u1")
        rig.world.set_faults(LOCKS_DOWN)
        acquiring = asyncio.create_task(lease.acquire())
        await rig.advance(20)
        assert not acquiring.done() and not lease.held           # every lock request failed with InternalError
        rig.world.set_faults(FaultConfig())
        await until_done(rig, acquiring)
        assert lease.held and rt.counters.lock_waits == 1
        item = await rt.locks("u1").aio.get("u1")
        assert item["session"] == lease.id
    run(main())


def test_a_held_lock_survives_memorystore_faults_shorter_than_its_ttl():
    async def main():
        rig = Rig()
        lost = []
        rt = rig.host("a", lock_ttl=30, lock_refresh=10).runtime()
        lease = LockLease(rt, "u1", on_lost=lost.append)
        await lease.acquire()
        rig.world.set_faults(LOCKS_DOWN)
        await rig.advance(15)                                   # the refresh at 10 s fails
        assert rt.counters.refresh_failures >= 1 and lease.held
        rig.world.set_faults(FaultConfig())
        await rig.advance(120)                                  # the retry lands before the TTL runs out
        assert lost == [] and lease.held and rig.clock.now() < lease.deadline
        assert (await rt.locks("u1").aio.get("u1"))["session"] == lease.id
    run(main())


def test_a_session_loads_saves_and_keeps_its_lock_through_intermittent_memorystore_faults():
    async def main():
        rig = Rig()
        a = rig.host("a", lock_ttl=30, lock_refresh=10, retry_attempts=10)
        rig.world.set_faults(FaultConfig(seed=11, memorystore_error_rate={"HashMap": 0.3}))
        loading = asyncio.create_task(a(Load, "u1"))
        await until_done(rig, loading)
        await a(Update, "u1", lambda d: d.update(coins=5) or True)
        await rig.advance(60)
        assert await a(IsLoaded, "u1")
        assert rig.world._shards("memorystore")[0].engine.statistics().injected_errors > 0   # faults did happen
        rig.world.set_faults(FaultConfig())
        assert await a(ProbeLockActive, "u1") and await a(Save, "u1") is True
        assert rig.record("u1")["file"]["data"]["committed_data"]["coins"] == 5
    run(main())


def test_a_session_retries_the_memorystore_errors_roblox_names_retryable_and_no_others():
    for name in ("InternalError", "TotalRequestsOverLimit", "DataStructureRequestsOverLimit",
                 "PartitionRequestsOverLimit"):
        assert _retryable(MemoryStoreError(name, "try again"))
    for name in ("TotalMemoryOverLimit", "DataStructureMemoryOverLimit", "DataStructureItemsOverLimit",
                 "ItemValueSizeTooLarge", "TransformCallbackFailed", "InvalidRequest", "RequestThrottled"):
        assert not _retryable(MemoryStoreError(name, "no"))
