"""The profilestore design: ProfileStore's API as its source and docs describe it, on a manual clock, and its weak
spots shown by scripted cases (a stolen session's unsaved changes are lost; a later requester makes an earlier one
give up)."""

from __future__ import annotations

import asyncio
import math
import types

import pytest

from lodestore.actors import StoreConfig
from lodestore.sim.designs import DesignError, check_options
from lodestore.sim.designs._profilestore import (PROFILESTORE, PLACE_ID, Profile, ProfileLayer, ProfileStore,
                                                 ProfileStoreOptions, SaveOutcome)
from lodestore.storage import ConfigError, FaultConfig, ManualClock, Outage, Scheduler, World

TEMPLATE = {"coins": 0, "items": [], "settings": {"music": True, "volume": 5}}
STORE = "PlayerData"


LOST = FaultConfig(messaging_drop_rate=1.0)
"""Every MessagingService message is lost: the source's paths when the holder hears nothing (best effort)."""


class Rig:
    """An in-process world on a manual clock (`faults`: the world's); `store(job)` is one game server's ProfileStore."""

    def __init__(self, faults: FaultConfig | None = None, **options) -> None:
        self.clock = ManualClock()
        self.world = World.in_process("ps", clock=self.clock, budget=None, faults=faults)
        self.scheduler = Scheduler(self.clock)
        self.options = ProfileStoreOptions(**options) if options else None
        self.raw = self.world.server("inspector").datastores.get_data_store(STORE)
        self.t0 = self.clock.now()

    def store(self, job: str, template=TEMPLATE) -> ProfileStore:
        return ProfileStore.new(self.world.server(job), self.scheduler, STORE, template, self.options)

    def record(self, key: str):
        return self.raw.get(key, use_cache=False)[0]

    def at(self) -> float:
        """Seconds since the rig started."""
        return (self.clock.now() - self.t0) / 1000

    async def advance(self, seconds: float) -> None:
        await self.scheduler.advance(seconds)

    async def until_done(self, task: asyncio.Task, limit: float = 700.0, step: float = 1.0):
        waited = 0.0
        while not task.done() and waited < limit:
            await self.advance(step)
            waited += step
        assert task.done(), f"still waiting after {limit} simulated seconds"
        return task.result()


def run(coro):
    return asyncio.run(coro)


# ----------------------------------------------------------------------------------------------- the record

def test_new_profile_starts_from_the_template_in_the_sources_record_layout():
    async def main():
        rig = Rig()
        a = rig.store("A")
        profile = await a.start_session("Player_1")
        assert profile.is_active() and profile.data == TEMPLATE and profile.data is not a.template
        assert profile.session_load_count == 1 and profile.started.took == "new"
        profile.data["coins"] = 3
        profile.add_user_id(1)
        assert await profile.save() is SaveOutcome.SAVED
        record = rig.record("Player_1")
        meta = record["MetaData"]
        assert record["Data"]["coins"] == 3 and record["GlobalUpdates"] == [0, []]
        assert meta["ActiveSession"][:2] == [PLACE_ID, "A"] and meta["ActiveSession"][2] == profile.session_id
        assert meta["SessionLoadCount"] == 1 and meta["LastUpdate"] == rig.clock.now() // 1000
        assert "ForceLoadSession" not in meta
        assert rig.raw.get("Player_1", use_cache=False)[1].user_ids == (1,)   # UserIds go to the key too
        assert profile.last_saved_data["coins"] == 3
    run(main())


def test_reconcile_fills_missing_template_keys_and_keeps_what_is_there():
    async def main():
        rig = Rig()
        rig.raw.set("Player_1", {"Data": {"coins": 9, "settings": {"music": False}}, "GlobalUpdates": [0, []],
                                 "MetaData": {"ProfileCreateTime": 1, "SessionLoadCount": 4, "MetaTags": {}}})
        profile = await rig.store("A").start_session("Player_1")
        assert profile.data == {"coins": 9, "settings": {"music": False}}   # not reconciled until asked
        assert profile.session_load_count == 5
        profile.reconcile()
        assert profile.data == {"coins": 9, "items": [], "settings": {"music": False, "volume": 5}}
        profile.data["items"].append("sword")
        assert TEMPLATE["items"] == []    # the template was copied, not shared
    run(main())


def test_end_session_ends_it_here_at_once_and_the_final_save_clears_the_lock():
    async def main():
        rig = Rig()
        profile = await rig.store("A").start_session("Player_1")
        reasons, ended = [], []
        profile.on_last_save.connect(reasons.append)
        profile.on_session_end.connect(lambda: ended.append(True))
        profile.data["coins"] = 11
        task = profile.end_session()
        assert not profile.is_active() and reasons == ["Manual"] and ended == [True]
        assert await task is SaveOutcome.ENDED
        meta = rig.record("Player_1")["MetaData"]
        assert "ActiveSession" not in meta and rig.record("Player_1")["Data"]["coins"] == 11
        assert profile.end_session() is None and profile.save() is None   # inactive: nothing more
    run(main())


# ----------------------------------------------------------------------------------------- session lock

def test_a_held_session_blocks_another_server_until_the_holder_ends_it():
    async def main():
        rig = Rig(LOST)
        a, b = rig.store("A"), rig.store("B")
        pa = await a.start_session("Player_1")
        pa.data["coins"] = 7
        tb = rig.scheduler.spawn(b.start_session("Player_1"))
        await rig.advance(3)
        assert not tb.done()                                   # held: B waits (first re-read after 5 s)
        assert rig.record("Player_1")["MetaData"]["ForceLoadSession"] == [PLACE_ID, "B"]
        await pa.end_session()
        pb = await rig.until_done(tb)
        assert rig.at() == 5                                   # the source's FIRST_LOAD_REPEAT
        assert pb.data["coins"] == 7 and pb.started.took == "free" and pb.started.conflicts == 1
        assert pb.session_load_count == 2
    run(main())


def test_force_load_makes_the_holder_save_and_end_on_its_next_autosave_and_nothing_is_lost():
    async def main():
        rig = Rig(LOST)
        a, b = rig.store("A"), rig.store("B")
        pa = await a.start_session("Player_1")
        reasons = []
        pa.on_last_save.connect(reasons.append)
        await rig.advance(270)
        pa.data["coins"] = 42                                  # a change the holder never saved by itself
        tb = rig.scheduler.spawn(b.start_session("Player_1"))
        await rig.advance(29)
        assert pa.is_active() and not tb.done()
        await rig.advance(1)                                   # t=300: A's auto-save sees the force-load
        assert not pa.is_active() and reasons == ["External"]
        assert "ActiveSession" not in rig.record("Player_1")["MetaData"]
        pb = await rig.until_done(tb)
        assert rig.at() == 305 and pb.started.took == "free"   # B's next re-read (5 s, then every 10 s)
        assert pb.data["coins"] == 42
    run(main())


def test_steal_comes_after_the_sources_40_s_of_asking_and_the_holders_unsaved_changes_are_lost():
    """The weak spot: the holder hears of the force-load only on its next write; after about 45 s the requester
    steals, the holder keeps playing on its copy, and its next write is refused: those changes are gone."""
    async def main():
        rig = Rig(LOST)
        a, b = rig.store("A"), rig.store("B")
        pa = await a.start_session("Player_1")
        pa.data["coins"] = 5                                   # never saved: A's first auto-save is at 300 s
        tb = rig.scheduler.spawn(b.start_session("Player_1"))
        pb = await rig.until_done(tb)
        assert rig.at() == 45                                  # 5 + 4 x 10 s (ceil(40 / 10) repeats), then steal
        assert pb.started.took == "steal" and pb.started.conflicts == 5
        assert pb.data["coins"] == 0                           # A's change is not there
        assert pa.is_active()                                  # both servers hold the profile now
        pa.data["coins"] += 1
        ended = []
        pa.on_session_end.connect(lambda: ended.append(rig.at()))
        await rig.advance(300 - 45)                            # A's auto-save: refused, its session ends
        assert ended == [300] and not pa.is_active()
        assert rig.record("Player_1")["Data"]["coins"] == 0
        assert rig.record("Player_1")["MetaData"]["ActiveSession"][1] == "B"
    run(main())


def test_start_with_steal_takes_a_held_session_at_once():
    async def main():
        rig = Rig()
        pa = await rig.store("A").start_session("Player_1")
        pb = await rig.store("B").start_session("Player_1", steal=True)
        assert pb.started.took == "steal" and pb.started.conflicts == 0 and rig.at() == 0
        assert await pa.save() is SaveOutcome.REFUSED and not pa.is_active()
    run(main())


def test_a_later_requester_makes_the_earlier_one_give_up():
    async def main():
        rig = Rig(LOST)
        await rig.store("A").start_session("Player_1")
        tb = rig.scheduler.spawn(rig.store("B").start_session("Player_1"))
        await rig.advance(1)
        tc = rig.scheduler.spawn(rig.store("C").start_session("Player_1"))
        await rig.advance(1)
        assert rig.record("Player_1")["MetaData"]["ForceLoadSession"] == [PLACE_ID, "C"]
        assert await rig.until_done(tb) is None and rig.at() == 5   # B's re-read finds C's request: gives up
        pc = await rig.until_done(tc)
        assert pc.started.took == "steal"
    run(main())


def test_crashed_holder_is_taken_as_dead_630_s_after_its_last_update():
    async def main():
        rig = Rig()
        a = rig.store("A")
        pa = await a.start_session("Player_1")
        last = rig.record("Player_1")["MetaData"]["LastUpdate"]
        a.runtime.crash()
        await rig.advance(620)
        tb = rig.scheduler.spawn(rig.store("B").start_session("Player_1"))
        pb = await rig.until_done(tb)
        # 620 s and 625 s: not dead yet (a force-load request, then one repeat); 635 s: more than 630 s old
        assert rig.at() == 635 and pb.started.took == "dead" and pb.started.conflicts == 2
        assert rig.clock.now() // 1000 - last > 630
        assert pa.is_active() is False
    run(main())


def test_crashed_holder_is_stolen_after_about_45_s_when_a_server_asks_at_once():
    async def main():
        rig = Rig()
        a = rig.store("A")
        await a.start_session("Player_1")
        await rig.advance(100)
        a.runtime.crash()
        tb = rig.scheduler.spawn(rig.store("B").start_session("Player_1"))
        pb = await rig.until_done(tb)
        assert rig.at() == 145 and pb.started.took == "steal"
    run(main())


def test_start_session_times_out_after_120_s_of_failing_datastore_calls():
    async def main():
        rig = Rig()
        now = rig.clock.now()
        rig.world.set_faults(FaultConfig(outages=(Outage(now, now + 3_600_000),)))
        a = rig.store("A")
        errors = []
        a.runtime.on_error.connect(lambda message, store, key: errors.append(key))
        task = rig.scheduler.spawn(a.start_session("Player_1"))
        assert await rig.until_done(task) is None
        # backoff 1, 2, 4, 8, 16, then 20 s: the first failure at or past 120 s gives up (131 s)
        assert 120 <= rig.at() <= 131 and len(errors) >= 6
        assert a.runtime.is_critical_state
    run(main())


def test_cancel_stops_the_start():
    async def main():
        rig = Rig(LOST)
        await rig.store("A").start_session("Player_1")
        stop = [False]
        tb = rig.scheduler.spawn(rig.store("B").start_session("Player_1", cancel=lambda: stop[0]))
        await rig.advance(10)
        stop[0] = True
        assert await rig.until_done(tb) is None and rig.at() <= 15
    run(main())


def test_a_second_start_on_the_same_server_takes_over_the_first_load():
    async def main():
        rig = Rig()
        a = rig.store("A")
        first = rig.scheduler.spawn(a.start_session("Player_1"))
        second = rig.scheduler.spawn(a.start_session("Player_1"))
        await rig.advance(0)
        assert first.result() is None and isinstance(second.result(), Profile)
        with pytest.raises(DesignError) as err:
            await a.start_session("Player_1")
        assert err.value.reason == "AlreadyLoaded"
    run(main())


def test_a_late_final_save_of_an_older_session_on_the_same_server_is_refused():
    """The source compares SessionLoadCount on every write: a final save still repeating through an outage must not
    clear the session this server started again for the same key meanwhile."""
    async def main():
        rig = Rig()
        a = rig.store("A")
        old = await a.start_session("Player_1")
        now = rig.clock.now()
        rig.world.set_faults(FaultConfig(outages=(Outage(now, now + 7_200),)))
        old.data["coins"] = 1
        final = old.end_session()                    # tries at 0, 1, 3, 7 (all in the outage), then 15 s
        await rig.advance(0.5)
        again = rig.scheduler.spawn(a.start_session("Player_1"))   # tries at 0.5, 1.5, 3.5, 7.5 s: lands
        new = await rig.until_done(again, step=0.5)
        assert new.started.took == "own" and new.session_load_count == 2 and new.data["coins"] == 0
        new.data["coins"] = 2
        assert await rig.until_done(final) is SaveOutcome.REFUSED   # at 15 s: SessionLoadCount 1 is not ours
        assert new.is_active() and await new.save() is SaveOutcome.SAVED
        assert rig.record("Player_1")["Data"]["coins"] == 2
    run(main())


# ------------------------------------------------------------------------------------------------ auto-save

def test_autosave_spreads_over_profiles_one_every_period_over_n_and_skips_fresh_ones():
    async def main():
        rig = Rig()
        a = rig.store("A")
        saves: list[tuple[float, str]] = []
        for key in ("p1", "p2", "p3"):
            profile = await a.start_session(key)
            profile.on_save.connect(lambda key=key: saves.append((rig.at(), key)))
        await rig.advance(800)
        times = [t for t, _ in saves]
        # one profile every 300 / 3 = 100 s; the tick at 100 s finds every profile younger than 150 s
        assert times == [200, 300, 400, 500, 600, 700, 800]
        for key in ("p1", "p2", "p3"):
            mine = [t for t, k in saves if k == key]
            assert all(b - a == 300 for a, b in zip(mine, mine[1:])) and mine
        assert {k for _, k in saves[:3]} == {"p1", "p2", "p3"}
    run(main())


def test_autosave_period_is_one_of_the_sources_constants():
    async def main():
        rig = Rig(autosave_period=60.0)
        profile = await rig.store("A").start_session("p1")
        saves = []
        profile.on_save.connect(lambda: saves.append(rig.at()))
        await rig.advance(200)
        assert saves == [60, 120, 180]
    run(main())


# ------------------------------------------------------------------------------------------------ messages

def test_a_message_to_a_held_profile_is_handled_by_the_holder_on_its_next_autosave():
    async def main():
        rig = Rig(LOST)
        a, b = rig.store("A"), rig.store("B")
        pa = await a.start_session("Player_1")
        got = []

        def handler(message, processed):
            got.append((rig.at(), message))
            pa.data["coins"] += message["gift"]
            processed()
        pa.message_handler(handler)
        await rig.advance(10)
        assert await b.message("Player_1", {"gift": 50}) is True
        assert rig.record("Player_1")["GlobalUpdates"] == [1, [[1, {"gift": 50}]]]
        await rig.advance(280)
        assert got == []                                     # nobody tells the holder before its next write
        await rig.advance(10)
        assert got == [(300, {"gift": 50})] and pa.data["coins"] == 50
        await pa.save()                                      # the next write drops the processed message
        record = rig.record("Player_1")
        assert record["GlobalUpdates"] == [1, []] and record["Data"]["coins"] == 50
    run(main())


def test_a_message_to_an_offline_profile_waits_for_its_next_load():
    async def main():
        rig = Rig()
        b = rig.store("B")
        assert await b.message("Player_2", {"gift": 5}) is True    # never loaded: a record of messages only
        assert rig.record("Player_2") == {"GlobalUpdates": [1, [[1, {"gift": 5}]]]}
        profile = await rig.store("A").start_session("Player_2")
        assert profile.data == TEMPLATE and profile.started.took == "new"
        seen, later = [], []
        profile.message_handler(lambda m, done: (seen.append(m), done()))
        profile.message_handler(lambda m, done: later.append(m))   # processed already: not handed on
        assert seen == [{"gift": 5}] and later == []
        await profile.end_session()
        assert rig.record("Player_2")["GlobalUpdates"] == [1, []]
    run(main())


def test_a_message_to_a_profile_held_on_this_server_saves_it_now():
    async def main():
        rig = Rig()
        a = rig.store("A")
        profile = await a.start_session("Player_1")
        got = []
        profile.message_handler(lambda m, done: (got.append(m), done()))
        await a.message("Player_1", {"n": 1})
        await rig.advance(0)
        assert got == [{"n": 1}]
    run(main())


def test_the_message_queue_keeps_the_newest_up_to_its_cap():
    async def main():
        rig = Rig(max_message_queue=3)
        b = rig.store("B")
        for n in range(5):
            await b.message("Player_1", {"n": n})
        assert rig.record("Player_1")["GlobalUpdates"] == [5, [[3, {"n": 2}], [4, {"n": 3}], [5, {"n": 4}]]]
        assert ProfileStoreOptions().max_message_queue == 1000
    run(main())


def test_messaging_ends_the_holders_session_at_once_on_a_force_load():
    async def main():
        rig = Rig()                                        # messaging on: the source's default
        a, b = rig.store("A"), rig.store("B")
        pa = await a.start_session("Player_1")
        pa.data["coins"] = 8
        reasons = []
        pa.on_last_save.connect(reasons.append)
        await rig.advance(0)                               # the subscription is made in a spawned task
        assert rig.world.messaging_statistics().subscriptions == 1    # "PS_<session id>"
        tb = rig.scheduler.spawn(b.start_session("Player_1"))
        await rig.advance(0.9)
        assert pa.is_active()                              # the EndSession message is on its way (1-2 s)
        await rig.advance(1.1)
        assert not pa.is_active() and reasons == ["External"]
        pb = await rig.until_done(tb)
        assert rig.at() == 5 and pb.data["coins"] == 8 and pb.started.took == "free"   # no steal
        stats = rig.world.messaging_statistics()
        assert stats.published == 1 and stats.delivered == 1 and stats.subscriptions == 1   # B's session now
    run(main())


def test_a_message_to_a_profile_held_elsewhere_makes_the_holder_save_at_once():
    async def main():
        rig = Rig()
        a, b = rig.store("A"), rig.store("B")
        pa = await a.start_session("Player_1")
        got = []

        def handler(message, processed):
            got.append((rig.at(), message))
            processed()
        pa.message_handler(handler)
        await rig.advance(10)
        assert await b.message("Player_1", {"gift": 50}) is True
        await rig.advance(2)
        assert [m for _, m in got] == [{"gift": 50}] and 11 <= got[0][0] <= 12   # 1-2 s, not at its auto-save
        assert pa.is_active()                              # a message saves; it does not end the session
    run(main())


def test_the_subscription_reacts_only_to_its_own_load_count_and_once_per_6_s_and_ends_with_the_session():
    async def main():
        rig = Rig()
        a = rig.store("A")
        pa = await a.start_session("Player_1")
        saves = []
        pa.on_save.connect(lambda: saves.append(rig.at()))
        topic = "PS_" + pa.session_id
        await rig.world.aio.publish(topic, {"LoadCount": pa.session_load_count + 1, "EndSession": True})
        await rig.world.aio.publish(topic, "not a table")
        await rig.advance(3)
        assert pa.is_active() and saves == []              # another session's load count, or no table: ignored
        await rig.world.aio.publish(topic, {"LoadCount": pa.session_load_count})
        await rig.advance(3)
        await rig.world.aio.publish(topic, {"LoadCount": pa.session_load_count})
        await rig.advance(3)
        assert len(saves) == 1                             # the second came within 6 s of the first
        await pa.end_session()
        assert rig.world.messaging_statistics().subscriptions == 0
    run(main())


def test_a_crashed_server_holds_no_subscription():
    async def main():
        rig = Rig()
        a = rig.store("A")
        await a.start_session("Player_1")
        await a.start_session("Player_2")
        await rig.advance(0)
        assert rig.world.messaging_statistics().subscriptions == 2
        a.runtime.crash()
        assert rig.world.messaging_statistics().subscriptions == 0
    run(main())


def test_with_messaging_off_nothing_is_published_nor_subscribed():
    async def main():
        rig = Rig(messaging=False)
        a, b = rig.store("A"), rig.store("B")
        await a.start_session("Player_1")
        tb = rig.scheduler.spawn(b.start_session("Player_1"))
        await rig.advance(10)
        assert not tb.done()
        stats = rig.world.messaging_statistics()
        assert stats.published == 0 and stats.subscriptions == 0
        tb.cancel()
    run(main())


# ------------------------------------------------------------------------------------------------ reading

def test_get_and_version_query_read_without_a_session():
    async def main():
        rig = Rig()
        a = rig.store("A")
        assert await a.get("nobody") is None
        profile = await a.start_session("Player_1")
        for coins in (1, 2, 3):    # a version per hour (Roblox keeps the last write of each hour)
            profile.data["coins"] = coins
            await profile.save()
            if coins < 3:
                await rig.advance(3700)
        view = await a.get("Player_1")
        assert view.view_mode and not view.is_active() and view.data["coins"] == 3
        with pytest.raises(DesignError):
            view.save()
        query = a.version_query("Player_1")
        seen = []
        while (p := await query.next()) is not None:
            seen.append(p.data["coins"])
        assert seen == [1, 2, 3]
        assert await a.remove("Player_1") is True and rig.record("Player_1") is None
    run(main())


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_input_gets_typed_errors_and_changes_nothing():
    async def main():
        rig = Rig()
        a = rig.store("A")
        for bad in (123, "", "x" * 51):
            with pytest.raises(DesignError) as err:
                await a.start_session(bad)
            assert err.value.reason == "InvalidArgument" and "profile_key" in str(err.value)
        with pytest.raises(DesignError, match="cancel"):
            await a.start_session("Player_1", cancel=5)
        with pytest.raises(DesignError, match="message must be a table"):
            await a.message("Player_1", "hello")
        with pytest.raises(DesignError, match="cannot be stored"):
            await a.message("Player_1", {"bad": {1, 2}})
        with pytest.raises(DesignError, match="message must be a table"):
            await a.message("Player_1", None)
        assert rig.record("Player_1") is None
        with pytest.raises(DesignError, match="store_name"):
            ProfileStore.new(rig.world.server("C"), rig.scheduler, "", TEMPLATE)
        with pytest.raises(DesignError, match="template"):
            ProfileStore.new(rig.world.server("C"), rig.scheduler, STORE, [1, 2])
        profile = await a.start_session("Player_1")
        with pytest.raises(DesignError, match="message handler"):
            profile.message_handler("nope")
        profile.add_user_id("12")
        profile.add_user_id(1.5)
        assert profile.user_ids == []
    run(main())


def test_options_refuse_bad_values_naming_the_field():
    for bad, name in ((dict(assume_dead=math.nan), "assume_dead"), (dict(load_repeat_period=0.0), "load_repeat_period"),
                      (dict(autosave_period=-1.0), "autosave_period"), (dict(max_message_queue=0), "max_message_queue"),
                      (dict(start_session_timeout=math.inf), "start_session_timeout")):
        with pytest.raises(ConfigError) as err:
            ProfileStoreOptions(**bad)
        assert err.value.field == name
    with pytest.raises(ConfigError, match="unknown option"):
        check_options(PROFILESTORE, {"lock_ttl": 5}, "store.profilestore")
    with pytest.raises(ConfigError, match="must be float"):
        check_options(PROFILESTORE, {"assume_dead": "630"}, "store.profilestore")
    options = check_options(PROFILESTORE, {"session_steal": 20, "messaging": True}, "store.profilestore")
    assert options.session_steal == 20.0 and options.messaging
    defaults = ProfileStoreOptions()
    assert (defaults.period, defaults.load_repeat_period, defaults.first_load_repeat, defaults.session_steal,
            defaults.assume_dead, defaults.start_session_timeout) == (300.0, 10.0, 5.0, 40.0, 630.0, 120.0)


# ---------------------------------------------------------------------------------------------- the layer

class LayerRig(Rig):
    def __init__(self, faults: FaultConfig | None = None, **config) -> None:
        super().__init__(faults)
        self.events: list[tuple] = []
        self.config = StoreConfig(name=STORE, template={"coins": 0, "items": [], "ledger": []},
                                  lock_callback=lambda *e: self.events.append(e), **config)

    async def layer(self, job: str, **options) -> ProfileLayer:
        game = types.SimpleNamespace(storage=self.world.server(job))
        return await PROFILESTORE.open(game, self.scheduler, self.config, ProfileStoreOptions(**options))

    def kinds(self, key: str) -> list[tuple[str, str]]:
        return [(kind, session) for kind, k, session, _at, _until in self.events if k == key]


def add(n):
    def fn(data):
        data["coins"] += n
        return True
    return fn


def test_layer_load_update_save_unload_and_lock_reports():
    async def main():
        rig = LayerRig()
        layer = await rig.layer("A")
        await layer.load("player_00001")
        assert await layer.is_loaded("player_00001")
        (kind, key, session, at, until), = rig.events
        last = rig.record("player_00001")["MetaData"]["LastUpdate"]
        assert kind == "acquired" and until == (last + 631) * 1000   # the first moment another may take it
        assert await layer.update("player_00001", add(4))
        await layer.save("player_00001")
        assert rig.record("player_00001")["Data"]["coins"] == 4 and layer.statistics().saves == 1
        assert rig.raw.get("player_00001", use_cache=False)[1].user_ids == (1,)
        assert rig.events[-1][0] == "refreshed"
        assert await layer.unload("player_00001") is True
        assert rig.events[-1][0] == "released" and not await layer.is_loaded("player_00001")
        assert "ActiveSession" not in rig.record("player_00001")["MetaData"]
        assert (await PROFILESTORE.read(rig.world.server("r"), rig.scheduler, rig.config, ProfileStoreOptions(),
                                        ["player_00001", "nobody"])) == {"player_00001": {"coins": 4, "items": [],
                                                                                         "ledger": []},
                                                                        "nobody": None}
        with pytest.raises(DesignError) as err:
            await layer.update("player_00001", add(1))
        assert err.value.reason == "NotLoaded"
    run(main())


def test_layer_autosave_follows_the_scenarios_interval_unless_set():
    async def main():
        rig = LayerRig(autosave_interval=30.0)
        layer = await rig.layer("A")
        await layer.load("player_00001")
        await layer.update("player_00001", add(1))
        await rig.advance(30)
        assert rig.record("player_00001")["Data"]["coins"] == 1 and layer.statistics().at_risk_ms == 30_000
        own = await rig.layer("B", autosave_period=300.0)
        assert own.runtime.options.period == 300.0
    run(main())


def test_layer_force_load_hands_over_with_a_release_and_the_holders_unload_reports_its_save_landed():
    async def main():
        rig = LayerRig(LOST)
        a, b = await rig.layer("A"), await rig.layer("B")
        await a.load("player_00001")
        await rig.advance(280)
        await a.update("player_00001", add(9))
        tb = rig.scheduler.spawn(b.load("player_00001"))
        await rig.until_done(tb)
        assert rig.at() == 305 and b.counters.lock_waits == 1 and b.counters.lock_steals == 0
        # A's auto-save lands (refreshed), finds the force-load and its final save lands (released); then B
        events = rig.kinds("player_00001")
        assert [k for k, _ in events] == ["acquired", "refreshed", "released", "acquired"]
        assert events[0][1] == events[2][1] != events[3][1]
        assert not await a.is_loaded("player_00001")
        assert await a.unload("player_00001") is True             # the final save ("External") landed
        assert await b.update("player_00001", lambda d: d["coins"] == 9)
    run(main())


def test_layer_steal_loses_the_holders_changes_and_it_reports_the_loss():
    async def main():
        rig = LayerRig(LOST)
        a, b = await rig.layer("A"), await rig.layer("B")
        await a.load("player_00001")
        await a.update("player_00001", add(5))
        await rig.until_done(rig.scheduler.spawn(b.load("player_00001")))
        assert b.counters.lock_steals == 1
        a_session = rig.kinds("player_00001")[0][1]
        assert await a.is_loaded("player_00001")                   # both hold it now: the checker sees the overlap
        with pytest.raises(DesignError) as err:
            await a.save("player_00001")                            # the write is refused
        assert err.value.reason == "SaveFailed" and a.counters.save_failures == 1
        assert ("lost", a_session) in rig.kinds("player_00001")
        assert await a.unload("player_00001") is False
        assert rig.record("player_00001")["Data"]["coins"] == 0
        assert a.statistics().at_risk_ms > 0
    run(main())


def test_layer_crash_reports_crashed_and_the_lock_lasts_until_the_dead_time():
    async def main():
        rig = LayerRig()
        a = await rig.layer("A")
        await a.load("player_00001")
        until = rig.events[-1][4]
        a.crash()
        assert rig.events[-1][0] == "crashed" and rig.events[-1][4] == until
        with pytest.raises(DesignError) as err:
            await a.update("player_00001", add(1))
        assert err.value.reason == "ServerGone"
        await rig.advance(400)
        assert "LastUpdate" in rig.record("player_00001")["MetaData"]   # nothing more was written
        b = await rig.layer("B")
        await rig.scheduler.advance_to(until)
        await b.load("player_00001")          # at the lock's end: taken as dead on the first read
        assert b.counters.lock_steals == 1 and b.counters.lock_waits == 0
    run(main())


def test_layer_load_failure_is_a_typed_error():
    async def main():
        rig = LayerRig(LOST)
        await (await rig.layer("A")).load("player_00001")
        b, c = await rig.layer("B"), await rig.layer("C")
        tb = rig.scheduler.spawn(b.load("player_00001"))
        await rig.advance(1)
        rig.scheduler.spawn(c.load("player_00001"))
        await rig.advance(5)
        with pytest.raises(DesignError) as err:
            tb.result()
        assert err.value.reason == "LoadFailed" and b.counters.load_failures == 1
    run(main())


def test_layer_close_after_players_left_writes_nothing_more():
    async def main():
        rig = LayerRig()
        a = await rig.layer("A")
        await a.load("player_00001")
        await a.unload("player_00001")
        version = rig.raw.get("player_00001", use_cache=False)[1].version
        await a.close()
        await rig.advance(600)
        assert rig.raw.get("player_00001", use_cache=False)[1].version == version
        assert a.runtime.is_closing and await a.store.start_session("player_00002") is None
    run(main())


def test_a_player_who_leaves_while_the_session_starts_cancels_it_at_the_next_try():
    """The README's join handler passes `cancel` (the player left): start_session polls it between its tries and
    gives up, so the leaving server never takes (or force-loads) the profile."""
    async def main():
        rig = LayerRig(LOST)
        a, b = await rig.layer("A"), await rig.layer("B")
        await a.load("player_00001")
        loading = asyncio.get_running_loop().create_task(b.load("player_00001"))
        await rig.scheduler.advance(1)                       # b found a's session and asked it to finish
        assert not loading.done()
        assert await b.unload("player_00001") is False       # the player left b: nothing loaded, nothing saved
        waited = 0
        while not loading.done() and waited < 60:
            await rig.scheduler.advance(1)
            waited += 1
        with pytest.raises(DesignError) as err:
            loading.result()
        assert err.value.reason == "LoadCancelled" and waited <= 10   # at its next try, not after a steal (45 s)
        assert b.counters.load_failures == 0 and not await b.is_loaded("player_00001")
        assert [k for k, _ in rig.kinds("player_00001")] == ["acquired"]   # only a ever held it
    run(main())


# ------------------------------------------------------------------------------------------- in the simulator

def test_in_the_simulator_force_loads_reach_the_holder_through_the_cloud_s_messaging_service():
    """A teleport storm on profilestore: every new server's force-load publishes EndSession to the holder's session
    topic; messages cross simulator hosts through the cloud node's MessagingService, in virtual time."""
    import dataclasses
    import io

    from lodestore.sim import RunOptions, parse_scenario, simulate
    from tests.sim.test_compare import TELEPORTS

    scenario = parse_scenario(TELEPORTS)
    scenario = dataclasses.replace(scenario, store=dataclasses.replace(scenario.store, design="profilestore"),
                                   world=dataclasses.replace(scenario.world, duration=150))
    result = simulate(scenario, RunOptions(engine="in-process", write_files=False, stream=io.StringIO()))
    messaging = result.report["messaging"]
    assert messaging["published"] > 0 and messaging["delivered"] > 0 and messaging["throttled"] == 0
    assert {c.name: c.ok for c in result.checks}["single_holder"]
