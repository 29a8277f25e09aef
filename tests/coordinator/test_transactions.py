"""Two-phase transactions on plain asyncio with a manual clock: outcomes, a crash at every protocol step, recovery,
and a bank property test with random crashes and DataStore faults."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lodestore.actors import (TX_STORE, Get, KeyHost, KeyRequest, Load, Peek, Save, SchemaError, StoreConfig,
                              TxFinish, Unload, Update)
from lodestore.actors import records as rec
from lodestore.coordinator import (Coordinator, KeysChangedError, SimulatedCrash, Step, TxAbortedError, TxRequest,
                         TxUnknownError)
from lodestore.storage import FaultConfig, LodestoreError, ManualClock, Scheduler, TransformError, World

TEMPLATE = {"coins": 100, "items": []}


class Rig:
    def __init__(self, **options) -> None:
        self.clock = ManualClock()
        self.world = World.in_process("tx", clock=self.clock, budget=None)
        self.scheduler = Scheduler(self.clock)
        self.options = options
        inspector = self.world.server("inspector")
        self.markers = inspector.datastores.get_data_store(TX_STORE)
        self.records = inspector.datastores.get_data_store("lodestore/records/bank")

    def host(self, job: str) -> KeyHost:
        host = KeyHost(self.world, job, self.scheduler)
        host.open_store(StoreConfig(name="bank", template=TEMPLATE, **self.options))
        return host

    async def loaded_host(self, job: str = "a", keys=("ann", "bob")) -> KeyHost:
        host = self.host(job)
        for key in keys:
            await self.call(host, Load, key)
        return host

    def coordinator(self, hook=None) -> Coordinator:
        return Coordinator(self.world, hook=hook)

    async def call(self, host: KeyHost, kind: type, key=None, *args):
        request = kind("bank", key, *args) if issubclass(kind, KeyRequest) else kind("bank", *args)
        (reply,) = await host.handle([request])
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def request(self, host: KeyHost, keys, fn, immutable=False, schema=None) -> TxRequest:
        return TxRequest("bank", tuple(keys), fn, immutable, schema, {k: host for k in keys}, 30.0)

    async def stored(self, key: str):
        """What a reader sees (peek through a fresh host: records resolved by their markers)."""
        reader = KeyHost(self.world, "reader", self.scheduler)
        reader.open_store(StoreConfig(name="bank", template=TEMPLATE))
        return await self.call(reader, Peek, key)

    def markers_left(self) -> list[str]:
        return self.markers.list_keys(exclude_deleted=True).items


def transfer(src: str, dst: str, amount: int):
    def fn(state):
        state[src]["coins"] -= amount
        state[dst]["coins"] += amount
        return True
    return fn


def run(coro):
    return asyncio.run(coro)


async def drive(rig: Rig, coro, limit_s: float = 3000):
    """Await `coro` while simulated time moves on (retries and backoffs wait on the manual clock)."""
    task = asyncio.ensure_future(coro)
    waited = 0
    while not task.done() and waited < limit_s:
        await rig.scheduler.advance(1)
        waited += 1
    assert task.done(), f"still waiting after {limit_s} simulated seconds"
    return task.result()


# ------------------------------------------------------------------------------------------- outcomes

def test_a_two_key_transaction_commits_everywhere_and_leaves_no_marker():
    async def main():
        rig = Rig()
        a = await rig.loaded_host()
        assert await rig.coordinator().run(rig.request(a, ["ann", "bob"], transfer("ann", "bob", 30))) is True
        assert (await rig.call(a, Get, "ann"))["coins"] == 70 and (await rig.call(a, Get, "bob"))["coins"] == 130
        assert (await rig.stored("ann"))["coins"] == 70 and (await rig.stored("bob"))["coins"] == 130
        assert rig.markers_left() == []
        await rig.call(a, Update, "ann", lambda d: d.update(coins=d["coins"] - 1) or True)   # released
    run(main())


def test_an_immutable_transaction_returns_the_new_state():
    async def main():
        rig = Rig()
        a = await rig.loaded_host()

        def give(state):
            return {"ann": {**state["ann"], "items": ["gem"]}, "bob": {**state["bob"], "coins": 0}}

        assert await rig.coordinator().run(rig.request(a, ["ann", "bob"], give, immutable=True)) is True
        assert (await rig.stored("ann"))["items"] == ["gem"] and (await rig.stored("bob"))["coins"] == 0

        def mutate(state):
            state["ann"]["coins"] = 5
            return state

        with pytest.raises(TransformError):
            await rig.coordinator().run(rig.request(a, ["ann", "bob"], mutate, immutable=True))
        assert await rig.coordinator().run(rig.request(a, ["ann", "bob"], lambda s: False, immutable=True)) is False
    run(main())


def test_aborts_and_refusals_change_nothing_and_release_the_keys():
    async def main():
        rig = Rig()
        a = await rig.loaded_host()
        coord = rig.coordinator()

        def boom(state):
            state["ann"]["coins"] = 0
            raise RuntimeError("no")

        assert await coord.run(rig.request(a, ["ann", "bob"], lambda s: transfer("ann", "bob", 5)(s) and False)) \
            is False
        with pytest.raises(TransformError, match="RuntimeError"):
            await coord.run(rig.request(a, ["ann", "bob"], boom))
        with pytest.raises(KeysChangedError, match="Keys changed in transaction"):
            await coord.run(rig.request(a, ["ann", "bob"], lambda s: s.pop("bob") and True))
        with pytest.raises(SchemaError, match="Schema validation failed"):
            await coord.run(rig.request(a, ["ann", "bob"], transfer("ann", "bob", 500),
                                        schema=lambda d: d["coins"] >= 0))
        with pytest.raises(TxAbortedError, match="Key not loaded"):
            await coord.run(rig.request(a, ["ann", "zed"], transfer("ann", "zed", 1)))
        for key in ("ann", "bob"):
            assert (await rig.call(a, Get, key))["coins"] == 100
            assert (await rig.stored(key))["coins"] == 100
        assert rig.markers_left() == []
    run(main())


def test_a_key_held_by_another_transaction_is_refused():
    async def main():
        rig = Rig()
        a = await rig.loaded_host(keys=("ann", "bob", "cy"))
        session = a.stores["bank"].sessions["bob"]
        await session.participant.prepare("other-tx", 30)
        with pytest.raises(TxAbortedError, match="already locked by another transaction"):
            await rig.coordinator().run(rig.request(a, ["ann", "bob"], transfer("ann", "bob", 1)))
        await session.participant.finish("other-tx", "abort")
        assert await rig.coordinator().run(rig.request(a, ["ann", "bob"], transfer("ann", "bob", 1)))
    run(main())


def test_nothing_changed_writes_nothing_and_one_change_is_an_ordinary_update():
    async def main():
        rig = Rig()
        a = await rig.loaded_host()
        versions = {k: rig.records.get(k, use_cache=False)[1].version for k in ("ann", "bob")}
        assert await rig.coordinator().run(rig.request(a, ["ann", "bob"], lambda s: True)) is True

        def only_ann(state):
            state["ann"]["coins"] += 1
            return True

        assert await rig.coordinator().run(rig.request(a, ["ann", "bob"], only_ann)) is True
        assert {k: rig.records.get(k, use_cache=False)[1].version for k in ("ann", "bob")} == versions
        assert (await rig.call(a, Get, "ann"))["coins"] == 101   # in memory; the next save writes it
        await rig.call(a, Save, "ann")
        assert (await rig.stored("ann"))["coins"] == 101
        assert rig.markers_left() == []
    run(main())


# ------------------------------------------------------------------------------- crash at every step

EXPECT_COMMITTED = {Step.PREPARED: False, Step.MARKER_WRITTEN: False, Step.RECORDS_WRITTEN: False,
                    Step.COMMITTED: True, Step.FINISHED: True, Step.CLEANED: True}


@pytest.mark.parametrize("step", list(Step))
@pytest.mark.parametrize("settles_first", ["participants", "recovery"])
def test_a_coordinator_crash_at_each_step_resolves_all_or_nothing(step, settles_first):
    async def main():
        rig = Rig()
        a = await rig.loaded_host()

        def crash_at(at, tx_id):
            if at is step:
                raise SimulatedCrash(at.value)

        with pytest.raises(SimulatedCrash):
            await rig.coordinator(crash_at).run(rig.request(a, ["ann", "bob"], transfer("ann", "bob", 40)))
        expected = (60, 140) if EXPECT_COMMITTED[step] else (100, 100)
        # Right after the crash, a reader sees all of it or none of it.
        assert ((await rig.stored("ann"))["coins"], (await rig.stored("bob"))["coins"]) == expected
        if settles_first == "recovery":
            await rig.coordinator().recover()                 # the restarted coordinator
            await rig.scheduler.advance(31)                   # then the sessions' timeouts
        else:
            await rig.scheduler.advance(31)                   # the sessions settle it themselves first
            await rig.coordinator().recover()
        assert ((await rig.call(a, Get, "ann"))["coins"], (await rig.call(a, Get, "bob"))["coins"]) == expected
        assert ((await rig.stored("ann"))["coins"], (await rig.stored("bob"))["coins"]) == expected
        assert rig.markers_left() == []
        # and the keys work again: unload, and another server loads exactly that
        for key in ("ann", "bob"):
            await rig.call(a, Unload, key)
        b = rig.host("b")
        got = []
        for key in ("ann", "bob"):
            await rig.call(b, Load, key)
            got.append((await rig.call(b, Get, key))["coins"])
        assert tuple(got) == expected
    run(main())


@pytest.mark.parametrize("step", [Step.PREPARED, Step.MARKER_WRITTEN, Step.RECORDS_WRITTEN, Step.COMMITTED])
def test_a_key_actor_crash_at_each_step_resolves_all_or_nothing(step):
    async def main():
        rig = Rig()
        a = await rig.loaded_host()

        def crash_server_at(at, tx_id):
            if at is step:
                a.crash()                                     # the game server dies; the coordinator goes on

        try:
            committed = await rig.coordinator(crash_server_at).run(
                rig.request(a, ["ann", "bob"], transfer("ann", "bob", 40)))
        except TxAbortedError:
            committed = False
        await rig.coordinator().recover()
        expected = (60, 140) if committed else (100, 100)
        assert ((await rig.stored("ann"))["coins"], (await rig.stored("bob"))["coins"]) == expected
        await rig.scheduler.advance(91)                       # the dead server's locks expire
        b = rig.host("b")
        got = []
        for key in ("ann", "bob"):
            await drive(rig, rig.call(b, Load, key))
            got.append((await rig.call(b, Get, key))["coins"])
        assert tuple(got) == expected
        assert rig.markers_left() == []
    run(main())


def test_a_participant_does_not_give_up_while_its_write_is_still_in_flight():
    """Found by the bank property test: a session whose transaction timed out while its phase-one write was still
    retrying gave up, the write then landed, the transaction committed, and the session kept (and later saved) its
    old data: money was created."""
    async def main():
        rig = Rig(retry_attempts=10)
        a = await rig.loaded_host()

        def slow_writes_after_the_marker(at, tx_id):
            if at is Step.MARKER_WRITTEN:
                rig.world.set_faults(FaultConfig(seed=2, error_rate={"StandardWrite": 1.0}))

        running = asyncio.ensure_future(rig.coordinator(slow_writes_after_the_marker).run(
            rig.request(a, ["ann", "bob"], transfer("ann", "bob", 40))))
        await rig.scheduler.advance(45)                        # past tx_timeout (30 s) while the writes retry
        rig.world.set_faults(FaultConfig())
        try:
            committed = await drive(rig, running)
        except TxAbortedError:
            committed = False
        await rig.scheduler.advance(31)
        await rig.coordinator().recover()
        expected = (60, 140) if committed else (100, 100)
        assert ((await rig.call(a, Get, "ann"))["coins"], (await rig.call(a, Get, "bob"))["coins"]) == expected
        assert ((await rig.stored("ann"))["coins"], (await rig.stored("bob"))["coins"]) == expected
        for key in ("ann", "bob"):
            await rig.call(a, Unload, key)
        assert ((await rig.stored("ann"))["coins"], (await rig.stored("bob"))["coins"]) == expected
    run(main())


def test_a_load_over_a_pending_transaction_aborts_it_so_it_can_never_commit_half():
    """A server dies after phase one; its lock expires and another server loads one of the keys, overwriting that
    record with the data before the transaction. The coordinator's commit point must fail from then on."""
    async def main():
        rig = Rig()
        a = await rig.loaded_host()
        sessions = a.stores["bank"].sessions
        before = {k: await sessions[k].participant.prepare("T1", 30) for k in ("ann", "bob")}
        after = {"ann": {**before["ann"], "coins": 60}, "bob": {**before["bob"], "coins": 140}}
        rig.markers.set("T1", {"state": "pending", "store": "bank", "keys": ["ann", "bob"], "created": 0})
        for key in ("ann", "bob"):
            await sessions[key].participant.write("T1", rec.make_patch(before[key], after[key]), after[key])
        a.crash()
        await rig.scheduler.advance(91)                       # the dead server's locks expire
        b = rig.host("b")
        await rig.call(b, Load, "ann")                      # overwrites ann's record with its data before T1
        coordinator = rig.coordinator()
        outcome = await coordinator._commit_point("T1", (None, None))
        assert outcome == "aborted"
        assert ((await rig.stored("ann"))["coins"], (await rig.stored("bob"))["coins"]) == (100, 100)
        await coordinator.recover()
        assert rig.markers_left() == []
        assert (await rig.stored("bob"))["coins"] == 100
    run(main())


def test_a_lost_commit_answer_becomes_unknown_and_still_resolves_all_or_nothing():
    async def main():
        rig = Rig()
        a = await rig.loaded_host()
        coord = rig.coordinator()

        async def lost(*args, **kwargs):
            from lodestore.storage import DataStoreError
            raise DataStoreError(500, "InternalServerError", "the answer was lost")

        coord.markers.aio.update = lost
        coord.markers.aio.get = lost
        with pytest.raises((TxUnknownError, TxAbortedError)):
            await drive(rig, coord.run(rig.request(a, ["ann", "bob"], transfer("ann", "bob", 10))))
        await rig.scheduler.advance(31)
        await rig.coordinator().recover()
        ann, bob = (await rig.call(a, Get, "ann"))["coins"], (await rig.call(a, Get, "bob"))["coins"]
        assert ann + bob == 200 and (ann, bob) in ((100, 100), (90, 110))
        assert ((await rig.stored("ann"))["coins"], (await rig.stored("bob"))["coins"]) == (ann, bob)
        assert rig.markers_left() == []
    run(main())


# ------------------------------------------------------------------------------------- bank property

ACCOUNTS = [f"acct{i}" for i in range(6)]

transfer_op = st.tuples(st.just("transfer"), st.integers(0, 2), st.sampled_from(ACCOUNTS),
                        st.sampled_from(ACCOUNTS), st.integers(1, 60), st.sampled_from([None] * 6 + list(Step)))
operation = st.one_of(
    transfer_op, transfer_op, transfer_op,
    st.tuples(st.just("move"), st.sampled_from(ACCOUNTS), st.integers(0, 2)),
    st.tuples(st.just("faults"), st.sampled_from([0.0, 0.1, 0.3]), st.sampled_from([0.0, 0.1])),
    st.tuples(st.just("time"), st.sampled_from([1, 31, 100])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=5, max_size=25))
def test_bank_transfers_with_crashes_and_faults_never_create_or_destroy_money(ops):
    async def main():
        rig = Rig(retry_attempts=8)
        hosts = [rig.host(f"s{i}") for i in range(3)]
        where = {}
        for i, key in enumerate(ACCOUNTS):
            where[key] = hosts[i % 3]
            await rig.call(where[key], Load, key)
        total = 100 * len(ACCOUNTS)

        async def stored_balances():
            return [(await drive(rig, rig.stored(k)))["coins"] for k in ACCOUNTS]

        async def teleport(key, to):
            if where[key] is to:
                return
            try:
                await drive(rig, rig.call(where[key], Unload, key))
            except LodestoreError:
                return                       # a fault kept the final save from landing: the key stays
            where[key] = to
            try:
                await drive(rig, rig.call(to, Load, key))
            except LodestoreError:
                rig.world.set_faults(FaultConfig())
                await drive(rig, rig.call(to, Load, key))

        for op in ops:
            if op[0] == "transfer":
                _, server, src, dst, amount, crash = op
                if src == dst:
                    continue
                if where[src] is not where[dst]:   # a trade needs both players on one server: dst teleports
                    op = ("move", dst, hosts.index(where[src]))
                    await teleport(dst, where[src])
                    if where[src] is not where[dst]:
                        continue
                host = where[src]

                def hook(at, tx_id, crash=crash):
                    if at is crash:
                        raise SimulatedCrash(at.value)

                def move_money(state, src=src, dst=dst, amount=amount):
                    if state[src]["coins"] < amount:
                        return False
                    return transfer(src, dst, amount)(state)

                try:
                    await drive(rig, rig.coordinator(hook).run(rig.request(host, [src, dst], move_money)))
                except (SimulatedCrash, TxAbortedError, TxUnknownError):
                    pass
                except LodestoreError:
                    pass   # the key was closed under it (a lost lock): the transaction never ran
            elif op[0] == "move":           # a teleport: unload here, load on another server
                await teleport(op[1], hosts[op[2]])
            elif op[0] == "faults":
                _, error_rate, ambiguous = op
                rig.world.set_faults(FaultConfig(seed=7, error_rate={"StandardWrite": error_rate},
                                                 ambiguous_write_rate=ambiguous))
            else:
                await rig.scheduler.advance(op[1])
            balances = await stored_balances()      # every read sees whole transactions only
            assert sum(balances) == total and min(balances) >= 0, balances
        rig.world.set_faults(FaultConfig())
        await rig.scheduler.advance(31)             # in-doubt transactions settle
        await rig.coordinator().recover()
        assert rig.markers_left() == []
        in_memory = [(await drive(rig, rig.call(where[k], Get, k)))["coins"] for k in ACCOUNTS]
        assert sum(in_memory) == total and min(in_memory) >= 0
        assert in_memory == await stored_balances()

    run(main())


def test_an_abort_cleans_the_record_of_a_participant_whose_session_is_gone_before_removing_the_marker():
    """Found by the simulator (a trade reported aborted, yet applied on one side: an item duplicated). Ann's server
    died after ann's phase-one write; the coordinator aborted and removed the marker, trusting the participants to
    have cleaned their records, but nobody was left to clean ann's, and "marker gone" reads as committed."""
    async def main():
        rig = Rig()
        a = await rig.loaded_host("a", keys=("ann",))
        b = await rig.loaded_host("b", keys=("bob",))
        hosts = {"ann": a, "bob": b}
        before = {k: await hosts[k].stores["bank"].sessions[k].participant.prepare("T1", 30) for k in hosts}
        after = {"ann": {**before["ann"], "coins": 60}, "bob": {**before["bob"], "coins": 140}}
        rig.markers.set("T1", {"state": "pending", "store": "bank", "keys": ["ann", "bob"], "created": 0})
        for key, host in hosts.items():
            await host.stores["bank"].sessions[key].participant.write("T1", rec.make_patch(before[key], after[key]),
                                                                      after[key])
        a.crash()                                              # ann's session is gone, its record holds T1

        async def release(outcomes):
            replies = {}
            for key, host in hosts.items():
                replies.update(await host.tx_call(TxFinish("T1", "bank", {key: outcomes.get(key, ("abort",))})))
            return replies

        with pytest.raises(TxAbortedError):
            await rig.coordinator()._abort("T1", release, "bob's side failed")
        assert rig.markers_left() == []
        assert ((await rig.stored("ann"))["coins"], (await rig.stored("bob"))["coins"]) == (100, 100)
    run(main())
