"""The naive design: Roblox's basics page played as written, with no library and no lock.

Where its behaviour comes from (`../shared/reference/seeds/roblox-datastores-basics.md`):
- Load on join: `pcall(GetAsync)`; "if not success or not data then return table.clone(defaultData)". A failed read
  hands the player a fresh copy of the defaults, which the next save writes over the stored data: the page's own
  pattern, and one of the ways games wipe players.
- Save on leave (`PlayerRemoving`) and every few minutes: `pcall(SetAsync(key, data))`, a warning when it fails and
  nothing more (no retry, no queue).
- Its "better" variant (`variant = "update"`, "Good: Use UpdateAsync for modifications"): the save is an
  `UpdateAsync` that starts from the stored value ("if not oldData then return data end; modify oldData safely") and
  applies the changes this server made since its last save, instead of writing its whole copy.
- No session lock at all ("Not Handling Session Locks" is listed as a pitfall; the fix it gives is UpdateAsync):
  two servers may hold one player at once, and with SetAsync the last writer wins.

Owns: `NaiveLayer` (one server's players) and the design's entry. Never does: lock, retry, or queue.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from lodestore.actors import StoreConfig
from lodestore.storage import ConfigError, LodestoreError, Scheduler, Server, new_id
from lodestore.sim.designs._base import DataLayer, Design, DesignError, ReplayChanges, read_values

__all__ = ["NaiveOptions", "NaiveLayer", "NAIVE"]

VARIANTS = ("set", "update")


@dataclass(frozen=True)
class NaiveOptions:
    """`[store.naive]`: `variant` "set" (the page's SetAsync saves) or "update" (its UpdateAsync advice)."""

    variant: str = "set"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"must be one of {', '.join(VARIANTS)}, got {self.variant!r}", field="variant")


@dataclass
class _Player:
    data: dict
    session: str
    changes: list[Callable[[dict], bool]] = field(default_factory=list)   # since the last save (variant "update")


class NaiveLayer(DataLayer):
    """One server's players, kept as the basics page keeps them (see the module docstring)."""

    def __init__(self, server: Server, scheduler: Scheduler, config: StoreConfig, options: NaiveOptions) -> None:
        super().__init__(server, scheduler, config)
        self.options = options
        self.store = server.datastores.get_data_store(config.name)
        self.players: dict[str, _Player] = {}
        self.arm(config.autosave_interval, self._autosave)

    def _autosave(self) -> None:
        """Every few minutes: save every player, one after another (a `while true do task.wait(...)` loop)."""
        if self.down:
            return

        async def run() -> None:
            for key in list(self.players):
                try:
                    await self.save(key)
                except LodestoreError:
                    pass   # the page's pcall: warned, and left for the next round
            if not self.down:
                self.arm(self.config.autosave_interval, self._autosave)
        self.spawn(run())

    # --------------------------------------------------------------------------------------------- contract

    async def load(self, key: str) -> None:
        session = new_id()
        self.report("acquired", key, session)   # no lock: the server holds the data from the read on
        try:
            value, _info = await self.store.aio.get(key)
        except LodestoreError as exc:
            self.log("warn", f"Failed to load data for {key}: {exc}")
            value = None
        if self.down:
            self.report("lost", key, session)
            self.check_up()
        data = copy.deepcopy(value) if isinstance(value, dict) else self.template()
        self.players[key] = _Player(data, session)
        self.counters.loads += 1

    async def update(self, key: str, fn: Callable[[dict], bool]) -> bool:
        player = self._player(key)
        if not fn(player.data):
            return False
        if self.options.variant == "update":
            player.changes.append(fn)
        self.changed(key)
        return True

    async def save(self, key: str) -> None:
        player = self._player(key)
        since = self.now()
        try:
            if self.options.variant == "set":
                await self.store.aio.set(key, copy.deepcopy(player.data))
            else:
                changes, player.changes = player.changes, []
                try:
                    stored = await self.store.aio.update(key, ReplayChanges(tuple(changes), self.template()))
                except BaseException:
                    player.changes[:0] = changes
                    raise
                if self.players.get(key) is player:
                    player.data = copy.deepcopy(stored[0])
                    for fn in player.changes:   # changes made while the save ran stay on top
                        fn(player.data)
        except LodestoreError as exc:
            self.counters.save_failures += 1
            self.log("warn", f"Failed to save data for key: {key} ({exc})")
            raise DesignError(f"the save of {key!r} failed: {exc}", "SaveFailed") from exc
        self.saved(key, since)

    async def unload(self, key: str) -> bool:
        player = self._player(key)
        try:
            await self.save(key)
            ok = True
        except DesignError:
            ok = False
        if self.players.get(key) is player:
            del self.players[key]
            self.forget(key)
            self.report("released", key, player.session)
        return ok

    async def is_loaded(self, key: str) -> bool:
        return key in self.players

    def crash(self) -> None:
        self.halt()
        for key, player in list(self.players.items()):
            self.report("lost", key, player.session)
        self.forget_all()
        self.players.clear()

    async def close(self) -> None:
        self.halt(cancel_work=False)

    # ----------------------------------------------------------------------------------------------- helpers

    def _player(self, key: str) -> _Player:
        self.check_up()
        player = self.players.get(key)
        if player is None:
            raise self.not_loaded(key)
        return player


async def _open(game: Any, scheduler: Scheduler, config: StoreConfig, options: NaiveOptions) -> NaiveLayer:
    return NaiveLayer(game.storage, scheduler, config, options)


NAIVE = Design("naive", "Roblox's basics page: GetAsync on join, SetAsync (or UpdateAsync) on leave and every few "
               "minutes, no lock", NaiveOptions, _open, read_values, transactions=False, lock="none")
