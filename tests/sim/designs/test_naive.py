"""The naive design (Roblox's basics page) on plain asyncio with a manual clock: what the page's code does, and the
losses it is known for: a failed read that hands out defaults, and two servers whose last writer wins."""

from __future__ import annotations

import asyncio
import types

import pytest

from lodestore.actors import StoreConfig
from lodestore.sim.designs import NAIVE, DesignError, NaiveOptions, check_options
from lodestore.storage import ConfigError, FaultConfig, ManualClock, Scheduler, World

TEMPLATE = {"coins": 0, "items": [], "ledger": []}


class Rig:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.world = World.in_process("naive", clock=self.clock, budget=None)
        self.scheduler = Scheduler(self.clock)
        self.holds: list[tuple] = []
        self.config = StoreConfig("players", TEMPLATE, autosave_interval=60.0,
                                  lock_callback=lambda *e: self.holds.append(e))
        self.raw = self.world.server("inspector").datastores.get_data_store("players")

    async def layer(self, job: str, **options):
        game = types.SimpleNamespace(storage=self.world.server(job, players=1))
        return await NAIVE.open(game, self.scheduler, self.config, NaiveOptions(**options))

    def stored(self, key: str):
        return self.raw.get(key, use_cache=False)[0]


def run(body):
    async def main():
        await body(Rig())
    asyncio.run(main())


def coins(n):
    def fn(data):
        data["coins"] += n
        return True
    return fn


def test_join_gives_the_defaults_leave_saves_and_autosave_writes_every_interval():
    async def body(rig: Rig):
        a = await rig.layer("a")
        await a.load("p1")
        assert await a.is_loaded("p1") and rig.stored("p1") is None      # nothing written on join
        assert await a.update("p1", coins(5)) is True
        await rig.scheduler.advance(61)                                  # the autosave loop
        assert rig.stored("p1")["coins"] == 5 and a.statistics().saves == 1
        assert await a.update("p1", coins(2))
        assert await a.unload("p1") is True                              # PlayerRemoving: SetAsync
        assert rig.stored("p1")["coins"] == 7 and not await a.is_loaded("p1")
        assert [h[0] for h in rig.holds] == ["acquired", "released"]
        with pytest.raises(DesignError) as err:
            await a.update("p1", coins(1))
        assert err.value.reason == "NotLoaded"
    run(body)


def test_a_failed_read_hands_out_the_defaults_and_the_next_save_wipes_the_player():
    """The page's `getPlayerData`: "if not success or not data then return table.clone(defaultData)"."""
    async def body(rig: Rig):
        rig.raw.set("p1", {"coins": 500, "items": ["sword"], "ledger": []})
        rig.world.set_faults(FaultConfig(error_rate={"StandardRead": 1.0}))
        a = await rig.layer("a")
        await a.load("p1")                                               # no error: the defaults instead
        rig.world.set_faults(FaultConfig())
        assert await a.unload("p1") is True
        assert rig.stored("p1") == TEMPLATE                              # 500 coins and a sword gone
    run(body)


@pytest.mark.parametrize("variant, kept", [("set", 3), ("update", 5)])
def test_two_servers_holding_one_player_last_write_wins_unless_saves_use_update(variant, kept):
    """A quick teleport: b loads before a's final save lands. SetAsync writes each server's whole copy (a's +2
    is lost); the page's UpdateAsync advice replays each server's own changes on the stored value (both kept)."""
    async def body(rig: Rig):
        a, b = await rig.layer("a", variant=variant), await rig.layer("b", variant=variant)
        await a.load("p1")
        await b.load("p1")                                               # no lock: b holds it too
        assert rig.holds[1][0] == "acquired" and rig.holds[1][3] < rig.holds[0][4]   # two holds at once
        await a.update("p1", coins(2))
        await b.update("p1", coins(3))
        assert await a.unload("p1") and await b.unload("p1")
        assert rig.stored("p1")["coins"] == kept
    run(body)


def test_a_crash_loses_what_was_not_saved_and_ends_the_hold_then():
    async def body(rig: Rig):
        a = await rig.layer("a")
        await a.load("p1")
        await a.update("p1", coins(4))
        await rig.scheduler.advance(10)
        a.crash()
        assert rig.holds[-1][0] == "lost" and rig.stored("p1") is None
        assert a.statistics().at_risk_ms == 10_000                       # 10 s of changes that were never saved
        await rig.scheduler.advance(120)                                 # no autosave after the crash
        assert rig.stored("p1") is None
    run(body)


def test_bad_options_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="set, update, got 'sometimes'") as err:
        NaiveOptions(variant="sometimes")
    assert err.value.field == "variant"
    with pytest.raises(ConfigError, match=r"store\.naive\.retries"):
        check_options(NAIVE, {"retries": 3}, "store.naive")
    with pytest.raises(ConfigError, match=r"store\.naive\.variant: must be str"):
        check_options(NAIVE, {"variant": 1}, "store.naive")
