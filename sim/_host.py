"""Simulated game servers: many of them in one host (one Ray actor, or the in-process engine), playing the plan.

Owns: `SimHost`, which runs planned events (`sim._workload.Planned`) at their simulated times against the session
layer, exactly as game code would call it: a join loads the player's key, actions update it (a purchase saves before
it is granted, a trade is a two-key transaction, a hot-key write is a raw UpdateAsync), a leave unloads it, a stop is
BindToClose, a crash drops everything. It records what became of every action (`OpEvent`: ok, failed or unknown),
the lock history its sessions report (`LockEvent`), latencies, errors and budget figures, and hands them over with
`drain()`. `HostRole` is how a virtual-time node (one Ray actor, or one node of the in-process engine) hosts it.

An action is "ok" once it is durable: a purchase when its forced save returns, a trade when its transaction commits,
a mint or grant when a later save of its session returns (the unload when the player leaves, or BindToClose). It is
"failed" when it is known not to have happened (refused, not loaded, aborted) and "unknown" when its session ended
without a final save (a crash, a lost lock): it may or may not have been autosaved.

Each simulated server is a `lodestore.GameServer` with its own JobId, budget and players, whose key actors (one per
server, or one per loaded key: the scenario's placement) live on this host's event loop through a `LocalRuntime`;
the events call its Store API exactly as game code would, and all of a host's servers share its one timer
scheduler. Transactions reach a host through `tx_calls`, which routes each key to the server holding it live.

Never does: decide what happens (that is the planner's) or judge the outcome (that is the checkers').
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from lodestore import GameServer, store_options, tx_batcher
from lodestore.actors import TxCall
from lodestore.coordinator import TxRequest, TxUnknownError
from lodestore.sim._scenario import Scenario, store_config
from lodestore.sim._workload import Planned
from lodestore.sim.designs import DataLayer, DesignError, design
from lodestore.storage import (DataStoreError, LocalRuntime, LodestoreError, MemoryStoreError, Scheduler, Server,
                               emergency, virtual)

__all__ = ["SimHost", "HostRole", "Relay", "RELAY", "Trade", "HOT_STORE", "error_code", "since_start"]

_IDS = re.compile(r"\b[0-9a-f]{32}\b|'[^']*'|\bplayer_\d+\b")   # ids, quoted values, player keys
_LOG_TEXT = 300   # how much of a store's warning about a key is kept for its timeline

RELAY = "relay"
"""The cloud node's object that carries a message from one host's game server to another's (`Relay`)."""

HOT_STORE = "lodestore-sim/hot"
"""The DataStore the hot keys (guilds, global counters) live in, written with plain UpdateAsync."""


def since_start(requests: list[tuple], t0: int) -> list[tuple]:
    """Raw request records (`storage.REQUEST_FIELDS`) with their invoke and complete in ms since the run began
    (simulated ms `t0`), as every other event of the history."""
    return [r[:7] + (r[7] - t0, r[8] - t0) + r[9:] for r in requests]


def error_code(exc: BaseException) -> str:
    """A short, stable name for an error, for the report's "errors by code"."""
    if isinstance(exc, DataStoreError):
        return f"DataStore {exc.code}"
    if isinstance(exc, MemoryStoreError):
        return f"MemoryStore {exc.name}"
    if isinstance(exc, DesignError):
        return exc.reason
    return type(exc).__name__


@dataclass(frozen=True)
class Trade:
    """A trade's transform: `giver` pays `amount` coins and hands over its oldest item, if it has the coins."""

    giver: str
    taker: str
    amount: int
    op_id: str

    def __call__(self, state: dict) -> bool:
        giver, taker = state[self.giver], state[self.taker]
        if giver["coins"] < self.amount:
            return False
        giver["coins"] -= self.amount
        taker["coins"] += self.amount
        if giver["items"]:
            taker["items"].append(giver["items"].pop(0))
        giver["ledger"].append(self.op_id)
        taker["ledger"].append(self.op_id)
        return True


@dataclass(frozen=True)
class _Debit:
    """A trade played as two separate updates, the giver's half: pay `amount` and hand over the oldest item (kept
    in `moved` for the taker's half), if the giver has the coins."""

    amount: int
    op_id: str
    moved: list = field(default_factory=list, compare=False)

    def __call__(self, data: dict) -> bool:
        if data["coins"] < self.amount:
            return False
        data["coins"] -= self.amount
        self.moved[:] = [data["items"].pop(0)] if data["items"] else []
        data["ledger"].append(self.op_id)
        return True


@dataclass(frozen=True)
class _Credit:
    """The taker's half of a trade played as two updates: receive the coins and the item."""

    amount: int
    item: str | None
    op_id: str

    def __call__(self, data: dict) -> bool:
        data["coins"] += self.amount
        if self.item is not None:
            data["items"].append(self.item)
        data["ledger"].append(self.op_id)
        return True


@dataclass(frozen=True)
class _Refund:
    """Undo a giver's half whose taker's half failed: the coins and the item back, the op out of the ledger."""

    amount: int
    item: str | None
    op_id: str

    def __call__(self, data: dict) -> bool:
        if self.op_id not in data["ledger"]:
            return False
        data["coins"] += self.amount
        if self.item is not None:
            data["items"].insert(0, self.item)
        data["ledger"].remove(self.op_id)
        return True


@dataclass(frozen=True)
class _Mint:
    amount: int
    op_id: str

    def __call__(self, data: dict) -> bool:
        data["coins"] += self.amount
        data["ledger"].append(self.op_id)
        return True


@dataclass(frozen=True)
class _Grant:
    item: str
    op_id: str

    def __call__(self, data: dict) -> bool:
        data["items"].append(self.item)
        data["ledger"].append(self.op_id)
        return True


@dataclass(frozen=True)
class _Purchase:
    amount: int
    item: str
    op_id: str

    def __call__(self, data: dict) -> bool:
        if data["coins"] < self.amount:
            return False
        data["coins"] -= self.amount
        data["items"].append(self.item)
        data["ledger"].append(self.op_id)
        return True


def _bump_hot(value: Any, _info: Any = None) -> Any:
    value = dict(value or {})
    value["count"] = value.get("count", 0) + 1
    return value


@dataclass
class _Op:
    """An action on its way: running, or done in memory and waiting for a save to become durable."""

    ev: Planned
    outcome: str | None = None
    durable_later: bool = False     # in a session's pending list: that session's end decides


@dataclass
class _Presence:
    """One player on one simulated server: its load, and its actions not durable yet."""

    key: str
    loaded: asyncio.Future
    pending: list[_Op] = field(default_factory=list)
    ended: str | None = None          # "saved" (unloaded with a final save) or "lost" (no final save)
    leaving: bool = False             # the player left (PlayerRemoving): game code no longer touches its data

    async def usable(self) -> bool:
        """Whether game code may still change the player's data here: loaded, not leaving, not ended."""
        return not self.leaving and await self.loaded and not self.leaving and self.ended is None


@dataclass
class _Server:
    sid: str
    game: GameServer
    data: DataLayer          # the players' data, kept the way the scenario's design keeps it
    players: dict[str, _Presence] = field(default_factory=dict)
    closing: bool = False
    synced_players: int = -1


class SimHost:
    """Simulated game servers sharing one scheduler. Build it on its event loop's thread.

    `run_tx(req)` runs a transaction and answers its result or error as a value; `peer(host_index)` is what a
    coordinator calls to reach host `host_index` (this object in process, an actor handle on Ray).
    """

    def __init__(self, world: Any, scenario: Scenario, index: int, t0: int, *, scheduler: Scheduler,
                 run_tx: Callable[[TxRequest], Any], peer: Callable[[int], Any],
                 host_of: Callable[[str], int], remote: Callable[..., Any] | None = None) -> None:
        self.world = world
        self.scenario = scenario
        self.index = index
        self.t0 = t0
        self.scheduler = scheduler
        self._run_tx = run_tx
        self._peer = peer
        self._host_of = host_of
        self._remote = remote if remote is not None else self._local_credit
        self.config = store_config(scenario, log_callback=self._on_log)
        self.design = design(scenario.store.design)
        self.options = scenario.store.design_options()
        self.runtime = LocalRuntime.here(f"sim-host-{index}")   # the servers' key actors live on this loop
        self._log_counts: dict[str, int] = {}
        self.servers: dict[str, _Server] = {}
        self._starting: dict[str, asyncio.Future] = {}   # servers whose GameServer is being made (on Ray)
        self._gone: dict[str, dict] = {}    # ended servers' final figures (`DataLayer.totals`)
        self._live_totals: dict[str, dict] = {}   # each live server's figures at the last drain
        self._lock_owner: dict[str, str] = {}      # lock (session) id -> server id
        self._ops: list[tuple] = []
        self._locks: list[tuple] = []
        self._samples: list[tuple] = []            # (t_ms, op, latency_ms, error code or None)
        self._events: list[tuple] = []             # (t_ms, what, server): server lifecycle, loads, throttling
        self._store_log: list[tuple] = []          # (t_ms, key, server, level, text): the store's warnings on a key
        self._requests: list[tuple] = []           # raw DataStore/MemoryStore requests (see REQUEST_FIELDS)
        world.recorder = self._requests.append     # every server (and key actor) made on this world records
        self._inflight: dict[str, set[asyncio.Task]] = {}   # server -> its running events
        self._open: dict[str, _Op] = {}                      # actions without an outcome yet
        self._throttled: dict[str, int] = {}
        st = scenario.store
        self._slack_ms = round((st.lock_ttl - st.lock_refresh) * 1000)   # how late a lock refresh may land
        self._lag = [0, 0, 0]   # events started, of them started later than the slack, the latest (ms late)
        self.stopped = False

    # ----------------------------------------------------------------------------------------------- intake

    async def _local_credit(self, host: int, server_id: str, key: str, fn: Callable[[dict], bool]) -> str:
        if host != self.index:
            raise LodestoreError(f"host {host} cannot be reached from host {self.index}")
        return await self.credit(server_id, key, fn)

    def now_rel(self) -> int:
        return self.scheduler.now() - self.t0

    def apply(self, events: list[Planned]) -> None:
        """Schedule each event at its simulated time (at once when that time has passed)."""
        for ev in events:
            self.scheduler.call_at(self.t0 + ev.t, lambda ev=ev: self._start(ev))

    def _start(self, ev: Planned) -> None:
        if self.stopped:
            return
        late = self.now_rel() - ev.t   # a harness that keeps up starts every event on time
        self._lag[0] += 1
        if late > self._slack_ms:
            self._lag[1] += 1
        self._lag[2] = max(self._lag[2], late)
        task = self.scheduler.spawn(self._run(ev))
        running = self._inflight.setdefault(ev.server, set())
        running.add(task)
        task.add_done_callback(running.discard)

    async def _run(self, ev: Planned) -> None:
        try:
            await getattr(self, f"_ev_{ev.kind}")(ev)
        except asyncio.CancelledError:
            op = self._open.get(ev.op_id) if ev.op_id is not None else None
            if op is not None and not op.durable_later:
                self._resolve(op, "unknown", "ServerGone")
        except Exception as exc:   # one event's failure is recorded; it never stops the others
            self._event_failed(ev, exc)

    def _event_failed(self, ev: Planned, exc: BaseException) -> None:
        """An event raised where none should: counted among the run's errors; its action's outcome is unknown."""
        self._note("error", f"{ev.kind} on {ev.server} failed: {error_code(exc)}")
        op = self._open.get(ev.op_id) if ev.op_id is not None else None
        if op is not None:
            self._resolve(op, "unknown", error_code(exc))

    def _op(self, ev: Planned) -> _Op:
        op = self._open[ev.op_id] = _Op(ev)
        return op

    # ------------------------------------------------------------------------------------ server lifecycle

    async def _ev_start(self, ev: Planned) -> None:
        config = dataclasses.replace(self.config, lock_callback=functools.partial(self._on_lock, ev.server),
                                     log_callback=functools.partial(self._on_log, server=ev.server))
        # the events planned meanwhile for this server wait for it (`_server`); in process nothing waits at all
        starting = self._starting[ev.server] = asyncio.get_running_loop().create_future()
        try:
            game = await GameServer.create(self.world, ev.server, runtime=self.runtime)
        finally:
            del self._starting[ev.server]
            starting.set_result(None)
        data = await self.design.open(game, self.scheduler, config, self.options)
        self.servers[ev.server] = _Server(ev.server, game, data)
        self._events.append((ev.t, "start", ev.server))

    async def _server(self, sid: str) -> _Server | None:
        """The live server `sid`, once it has started."""
        starting = self._starting.get(sid)
        if starting is not None:
            await starting
        return self.servers.get(sid)

    async def _ev_stop(self, ev: Planned) -> None:
        """BindToClose: the budget boost, then every player's final save, within the shutdown window."""
        server = await self._server(ev.server)
        if server is None or server.closing:
            return
        server.closing = True
        self._events.append((ev.t, "stop", ev.server))
        try:
            await server.game.aio.begin_shutdown()
        except LodestoreError as exc:   # no shutdown boost: the players are saved all the same
            self._note("error", f"BindToClose budget boost failed: {error_code(exc)}")
        window = self.scenario.servers.shutdown_window
        with emergency():
            tasks = [self.scheduler.spawn(self._leave(server, key, ev.t)) for key in list(server.players)]
            if tasks:
                done = asyncio.gather(*tasks, return_exceptions=True)
                sleeper = self.scheduler.spawn(self.scheduler.sleep(window))
                await asyncio.wait([done, sleeper], return_when=asyncio.FIRST_COMPLETED)
                sleeper.cancel()
        if any(not t.done() for t in tasks):
            self._events.append((self.now_rel(), "shutdown_window_exceeded", ev.server))
            await self._drop(server, ev.t, "crash")
            return
        try:
            await server.data.close()
            await server.game.aio.shutdown()
        except LodestoreError:
            pass   # a final save that failed: its presence is already settled (every player left first)
        totals = await self._totals(server)
        self._sample_budget(server)
        self._retire(server, totals)

    async def _ev_crash(self, ev: Planned) -> None:
        server = await self._server(ev.server)
        if server is None:
            return
        self._events.append((ev.t, "crash", ev.server))
        await self._drop(server, ev.t, "crash")

    async def _ev_stall(self, ev: Planned) -> None:
        server = await self._server(ev.server)
        if server is not None:
            self._events.append((ev.t, "stall", ev.server))
            await server.data.stall(ev.amount / 1000)

    async def _drop(self, server: _Server, t: int, why: str) -> None:
        """The server dies: its sessions end unsaved, the game code it was running stops mid-call. Its figures are
        read just before (a crashed key actor answers nothing)."""
        if self.servers.get(server.sid) is not server:
            return
        self.servers.pop(server.sid, None)   # no event finds it from now on
        totals = await self._totals(server)
        self._sample_budget(server)
        server.data.crash()
        server.game.crash()
        for presence in server.players.values():
            self._end_presence(presence, "lost")
        server.players.clear()
        me = asyncio.current_task()
        for task in list(self._inflight.get(server.sid, ())):
            if task is not me:
                task.cancel()
        for op in [op for op in self._open.values() if op.ev.server == server.sid]:
            self._resolve(op, "unknown", "ServerGone")
        self._retire(server, totals)
        try:   # a crashed server's players leave the world's CCU, its budget goes
            await server.game.storage.aio.close()
        except LodestoreError:
            pass

    def _retire(self, server: _Server, totals: dict | None) -> None:
        self.servers.pop(server.sid, None)
        self._live_totals.pop(server.sid, None)
        if totals is not None:
            self._gone[server.sid] = totals

    async def _totals(self, server: _Server) -> dict | None:
        """The server's data layer figures now (the last ones read when it cannot answer)."""
        try:
            totals = await server.data.totals()
        except LodestoreError:
            return self._live_totals.get(server.sid)
        self._live_totals[server.sid] = totals
        return totals

    # ------------------------------------------------------------------------------------- players

    async def _ev_join(self, ev: Planned) -> None:
        server = await self._server(ev.server)
        if server is None or server.closing:
            self._events.append((ev.t, "join_refused", ev.server))
            return
        old = server.players.get(ev.player)
        if old is not None:  # a rejoin on the same server: the previous presence leaves first
            await self._leave(server, ev.player, ev.t)
        presence = _Presence(ev.player, asyncio.get_running_loop().create_future())
        server.players[ev.player] = presence
        self._sync_players(server)
        started = self.scheduler.now()
        try:
            await server.data.load(ev.player)
        except Exception as exc:
            self._sample(ev.t, "load", started, exc)
            # a load stopped because the player left meanwhile is no failure of the store
            self._events.append((ev.t, "load_cancelled" if presence.leaving else "load_failed", ev.server))
            if server.players.get(ev.player) is presence:
                del server.players[ev.player]
                self._sync_players(server)
            presence.ended = "failed"
            presence.loaded.set_result(False)
            return
        self._sample(ev.t, "load", started, None)
        presence.loaded.set_result(True)

    async def _ev_leave(self, ev: Planned) -> None:
        server = await self._server(ev.server)
        if server is not None and not server.closing:
            await self._leave(server, ev.player, ev.t)

    async def _leave(self, server: _Server, key: str, t: int) -> None:
        presence = server.players.get(key)
        if presence is None:
            return
        presence.leaving = True   # from now on no action changes its data: the final save holds all there is
        if not presence.loaded.done() and server.data.cancels_loads:
            # the player left while its load runs: the layer stops the load (Lyra's unload of a loading key)
            self.scheduler.spawn(self._stop_load(server, key))
        if not await presence.loaded:
            return
        started = self.scheduler.now()
        try:
            unloaded = await server.data.unload(key)
        except Exception as exc:
            self._sample(t, "unload", started, exc)
            ended = "lost"
        else:
            self._sample(t, "unload", started, None)
            # False: the session had already ended by itself (its lock was lost), so nothing was saved now
            ended = "saved" if unloaded else "lost"
        if server.players.get(key) is presence:
            del server.players[key]
            self._sync_players(server)
        self._end_presence(presence, ended)

    @staticmethod
    async def _stop_load(server: _Server, key: str) -> None:
        try:
            await server.data.unload(key)
        except Exception:
            pass   # the load fails (stopped) or finished first: the leave that waits on it settles the presence

    def _end_presence(self, presence: _Presence, ended: str) -> None:
        presence.ended = ended
        for op in presence.pending:
            self._resolve(op, "ok" if ended == "saved" else "unknown")
        presence.pending.clear()
        if not presence.loaded.done():
            presence.loaded.set_result(False)

    def _sync_players(self, server: _Server) -> None:
        """Tell storage how many players the server has (quotas and budgets follow), at most once per turn."""
        if server.synced_players == -2:
            return
        server.synced_players = -2

        async def sync() -> None:
            await asyncio.sleep(0)
            count = len(server.players)
            server.synced_players = count
            try:
                await server.game.aio.set_players(count)
            except Exception:
                pass  # a world shutting down
        self.scheduler.spawn(sync())

    # ---------------------------------------------------------------------------------------------- actions

    async def _present(self, ev: Planned) -> tuple[_Server, _Presence] | None:
        server = await self._server(ev.server)
        presence = server.players.get(ev.player) if server is not None else None
        if presence is None or not await presence.usable():
            self._resolve(self._op(ev), "failed", "NotLoaded")
            return None
        return server, presence

    async def _ev_mint(self, ev: Planned) -> None:
        await self._update(ev, _Mint(ev.amount, ev.op_id))

    async def _ev_grant(self, ev: Planned) -> None:
        await self._update(ev, _Grant(ev.item, ev.op_id))

    async def _ev_purchase(self, ev: Planned) -> None:
        op = await self._update(ev, _Purchase(ev.amount, ev.item, ev.op_id))
        if op is None:
            return
        server = self.servers.get(ev.server)
        started = self.scheduler.now()
        try:  # a receipt is granted only once the purchase is saved
            if server is None:
                raise LodestoreError(f"server {ev.server!r} is gone")
            await server.data.save(ev.player)
        except Exception as exc:
            self._sample(ev.t, "purchase_save", started, exc)
            return  # stays pending: a later save (or the unload) decides
        self._sample(ev.t, "purchase_save", started, None)
        self._resolve(op, "ok")

    async def _update(self, ev: Planned, fn: Callable[[dict], bool]) -> _Op | None:
        found = await self._present(ev)
        if found is None:
            return None
        server, presence = found
        op = self._op(ev)
        started = self.scheduler.now()
        try:
            changed = await server.data.update(ev.player, fn)
        except Exception as exc:
            self._sample(ev.t, ev.kind, started, exc)
            self._resolve(op, "failed", error_code(exc))
            return None
        self._sample(ev.t, ev.kind, started, None)
        if not changed:
            self._resolve(op, "failed", "Refused")
            return None
        if presence.ended is not None:   # the session ended while the update ran: FIFO put it in the final save
            self._resolve(op, "ok" if presence.ended == "saved" else "unknown")
        else:
            op.durable_later = True
            presence.pending.append(op)
        return op

    async def _ev_trade(self, ev: Planned) -> None:
        found = await self._present(ev)
        if found is None:
            return
        if not found[0].data.transactions:
            await self._trade_in_two(ev, *found)
            return
        op = self._op(ev)
        peers = {ev.player: self._peer(self.index), ev.target: self._peer(self._host_of(ev.target_server))}
        req = TxRequest(self.config.name, (ev.player, ev.target), Trade(ev.player, ev.target, ev.amount, ev.op_id),
                        False, None, peers, self.config.tx_timeout)
        started = self.scheduler.now()
        try:
            result = await self._run_tx(req)
        except Exception as exc:   # the coordinator could not be reached: the transaction may still settle
            result = TxUnknownError(f"the coordinator did not answer: {type(exc).__name__}: {exc}")
        error = result if isinstance(result, BaseException) else None
        self._sample(ev.t, "trade", started, error)
        if error is None:
            self._resolve(op, "ok" if result else "failed", None if result else "Refused", tx="committed"
                          if result else "aborted")
        elif isinstance(error, TxUnknownError):
            self._resolve(op, "unknown", error_code(error), tx="unknown")
        else:
            self._resolve(op, "failed", error_code(error), tx="aborted")

    async def _trade_in_two(self, ev: Planned, server: _Server, giver: _Presence) -> None:
        """A trade on a design without transactions, played as its users play one: the giver's server takes the
        coins and the item and saves, then asks the taker's server (a cross-server message through the cloud) to
        add them and save. When the taker's half fails, the giver is refunded; what is left half done (a crash in
        between, a save that may have landed) is "unknown", and the conservation checker sees its coins."""
        op = self._op(ev)
        started = self.scheduler.now()
        debit = _Debit(ev.amount, ev.op_id)
        try:
            if not await server.data.update(ev.player, debit):
                self._sample(ev.t, "trade", started, None)
                self._resolve(op, "failed", "Refused", tx="aborted")
                return
        except Exception as exc:
            self._sample(ev.t, "trade", started, exc)
            self._resolve(op, "failed", error_code(exc), tx="aborted")
            return
        item = debit.moved[0] if debit.moved else None
        refund = _Refund(ev.amount, item, ev.op_id)
        try:
            await server.data.save(ev.player)
        except Exception as exc:   # not sent to the taker: undo the giver's half before any save takes it
            self._sample(ev.t, "trade", started, exc)
            undone = await self._refund(server, giver, ev.player, refund)   # the failed save may have landed
            self._resolve(op, "failed" if undone else "unknown", error_code(exc), tx="aborted")
            return
        credit = _Credit(ev.amount, item, ev.op_id)
        answer = await self._credit_remote(ev.target_server, ev.target, credit)
        if answer == "ok":
            self._sample(ev.t, "trade", started, None)
            self._resolve(op, "ok", tx="committed")
            return
        self._sample(ev.t, "trade", started, DesignError(answer, answer))
        if answer in ("NotLoaded", "Refused", "ServerGone"):   # the taker got nothing: give the giver's half back
            undone = await self._refund(server, giver, ev.player, refund)
            self._resolve(op, "failed" if undone else "unknown", answer, tx="aborted" if undone else "unknown")
        else:   # the taker's half may have landed
            self._resolve(op, "unknown", answer, tx="unknown")

    @staticmethod
    async def _refund(server: _Server, giver: _Presence, key: str, refund: _Refund) -> bool:
        """Give a trade's giver half back and save it: True once that is durable. A giver who left meanwhile cannot
        be refunded (its final save may already hold the debit): the trade then stays half done, "unknown"."""
        if giver.leaving or giver.ended is not None:
            return False
        try:
            if not await server.data.update(key, refund):
                return False
            await server.data.save(key)
        except Exception:
            return False
        return True

    async def _credit_remote(self, server_id: str | None, key: str | None, credit: _Credit) -> str:
        """The taker's half on the taker's server, wherever it runs: "ok" once saved, or why not."""
        try:
            return await self._remote(self._host_of(server_id), server_id, key, credit)
        except Exception as exc:
            return error_code(exc)

    async def credit(self, server_id: str, key: str, fn: Callable[[dict], bool]) -> str:
        """Apply a trade's taker half on server `server_id` of this host and save it: "ok", "NotLoaded", "Refused",
        "Unsaved" (applied, the save failed: it may land with a later one) or the update's error code."""
        server = await self._server(server_id)
        presence = server.players.get(key) if server is not None and not server.closing else None
        if presence is None or not await presence.usable():
            return "NotLoaded"
        try:
            if not await server.data.update(key, fn):
                return "Refused"
        except Exception as exc:
            return error_code(exc)
        try:
            await server.data.save(key)
        except Exception:
            return "Unsaved"
        return "ok"

    async def _ev_hot(self, ev: Planned) -> None:
        server = await self._server(ev.server)
        op = self._op(ev)
        if server is None or ev.target is None:
            self._resolve(op, "failed", "NotLoaded")
            return
        started = self.scheduler.now()
        try:
            await server.game.storage.datastores.get_data_store(HOT_STORE).aio.update(ev.target, _bump_hot)
        except DataStoreError as exc:
            self._sample(ev.t, "hot", started, exc)
            # a refusal before sending (throttle queue full, a bad request) never lands; a server error may have
            self._resolve(op, "unknown" if exc.code >= 500 else "failed", error_code(exc))
            return
        except Exception as exc:
            self._sample(ev.t, "hot", started, exc)
            self._resolve(op, "unknown", error_code(exc))
            return
        self._sample(ev.t, "hot", started, None)
        self._resolve(op, "ok")

    # -------------------------------------------------------------------------------------------- recording

    def _resolve(self, op: _Op, outcome: str, why: str | None = None, tx: str | None = None) -> None:
        if op.outcome is not None:
            return
        op.outcome = outcome
        self._open.pop(op.ev.op_id, None)
        ev = op.ev
        self._ops.append((ev.t, ev.player, ev.server, ev.op_id, ev.kind, outcome, ev.amount, ev.item, ev.target,
                          why, tx))

    def _sample(self, t: int, op: str, started: int, exc: BaseException | None) -> None:
        """An operation's latency in simulated ms (modelled network and service time, queueing, retries). A forced
        save and an unload's final save are also samples of "save", whatever the design."""
        sample = (t, op, self.scheduler.now() - started, None if exc is None else error_code(exc))
        self._samples.append(sample)
        if op in ("purchase_save", "unload"):
            self._samples.append((t, "save") + sample[2:])

    def _on_log(self, message: Any, server: str | None = None) -> None:
        """Count the store's warnings and errors by their gist (the text before any detail in brackets); keep those
        about a key (a failed request retried, a lock taken over, a transaction in doubt) for its timeline."""
        if message.level in ("warn", "error"):
            self._note(message.level, message.message.split(" (")[0])
            key = message.context.get("key")
            if isinstance(key, str):
                self._store_log.append((self.now_rel(), key, server, message.level, message.message[:_LOG_TEXT]))

    def _note(self, level: str, text: str) -> None:
        gist = f"{level}: " + _IDS.sub("<id>", text)[:100]
        self._log_counts[gist] = self._log_counts.get(gist, 0) + 1

    def _on_lock(self, server: str, kind: str, key: str, session: str, at: int, until: int) -> None:
        self._locks.append((at - self.t0, key, session, kind, until - self.t0, server))

    def _sample_budget(self, server: _Server) -> int:
        """Requests the server's budget gates throttled so far (its key actors' and its own raw client's); answers
        the tokens its own client holds now."""
        stats = server.game.storage.datastores.gate_statistics()
        totals = self._live_totals.get(server.sid)
        self._throttled[server.sid] = stats.throttled + (totals["throttled"] if totals is not None else 0)
        return sum(stats.tokens.values())

    # ------------------------------------------------------------------------------------------------ output

    async def drain(self) -> dict:
        """Everything recorded since the last drain, plus current figures. Plain data (tuples, dicts, numbers)."""
        out = {"ops": self._ops, "locks": self._locks, "samples": self._samples, "events": self._events,
               "store_log": self._store_log,
               "requests": since_start(self._requests, self.t0)}
        self._ops, self._locks, self._samples, self._events, self._store_log = [], [], [], [], []
        self._requests.clear()   # in place: every server's clients append to this list
        live = list(self.servers.values())
        stats = await asyncio.gather(*(self._statistics(server) for server in live))
        counters: dict[str, int] = {}
        for totals in [self._live_totals.get(s.sid) for s in live] + list(self._gone.values()):
            if totals is not None:
                for name, value in totals.items():
                    if name != "throttled":
                        counters[name] = counters.get(name, 0) + value
        tokens = []
        errors: list[str] = []
        for server, (held, recent) in zip(live, stats):
            tokens.append(self._sample_budget(server) + held)
            errors += recent
        out["counters"] = counters
        out["log"] = dict(self._log_counts)
        out["throttled"] = dict(self._throttled)
        out["tokens"] = tokens
        out["servers"] = len(self.servers)
        # a teleporting player is on two servers for a moment (leaving one, joining the other): online once
        out["online"] = sorted({key for s in self.servers.values() for key in s.players})
        out["time"] = self.now_rel()
        out["lag"] = tuple(self._lag)
        out["errors"] = errors[-5:]
        return out

    async def _statistics(self, server: _Server) -> tuple[int, list[str]]:
        """The server's data layer now (tokens its gates hold, its latest errors); its figures over its life are
        kept too."""
        try:
            live = await server.data.live()
        except LodestoreError:
            return 0, []
        await self._totals(server)
        return live

    async def finish(self) -> dict:
        """End of the run: no new events; let what is running end (a lock wait at most), then BindToClose on every
        server still up. An action that still has no outcome is unknown."""
        self.stopped = True
        running = [t for tasks in self._inflight.values() for t in tasks]
        if running:
            st = self.scenario.store
            limit = self.scheduler.spawn(self.scheduler.sleep(st.lock_ttl + st.lock_refresh + 5))
            await asyncio.wait(running + [limit], return_when=asyncio.FIRST_COMPLETED)
            while not limit.done() and any(not t.done() for t in running):
                await asyncio.wait([t for t in running if not t.done()] + [limit],
                                   return_when=asyncio.FIRST_COMPLETED)
            limit.cancel()
            for task in running:
                task.cancel()
            await asyncio.sleep(0)
        for server in [s for s in self.servers.values() if s.closing]:  # a BindToClose cut short by the end
            await self._drop(server, self.now_rel(), "crash")
        ending = list(self.servers.values())
        stops = await asyncio.gather(*(self._ev_stop(Planned(self.now_rel(), "stop", s.sid)) for s in ending),
                                     return_exceptions=True)
        for server, result in zip(ending, stops):   # one server's failed BindToClose never ends the others'
            if isinstance(result, Exception):
                self._event_failed(Planned(self.now_rel(), "stop", server.sid), result)
                await self._drop(server, self.now_rel(), "crash")
        for op in list(self._open.values()):
            self._resolve(op, "unknown", "RunEnded")
        return await self.drain()

    async def peek(self, keys: list[str]) -> dict:
        """The stored data of `keys` as a load would see it (transactions resolved), or None where there is none:
        the verifier's read at the end of a run, outside every game server's budget."""
        reader = Server(self.world, f"sim-reader-{self.index}", budgeted=False)
        return await self.design.read(reader, self.scheduler, self.config, self.options, keys)

    async def read_hot(self, names: list[str]) -> dict:
        reader = Server(self.world, f"sim-hot-reader-{self.index}", budgeted=False)
        store = reader.datastores.get_data_store(HOT_STORE)
        out = {}
        for name in names:
            value, _ = await store.aio.get(name, False)
            out[name] = (value or {}).get("count", 0)
        return out

    # --------------------------------------------------------------------------------- transaction routing

    async def tx_calls(self, calls: list[TxCall]) -> list[Any]:
        """A coordinator's participant calls: each call's keys go to the server of this host that holds them live
        (its `GameServer` forwards them to the key actor holding each)."""
        async def one(call: TxCall) -> Any:
            groups: dict[str, tuple[GameServer, list[str]]] = {}
            for key in call.keys:
                game = await self._holder(key)
                groups.setdefault(game.job_id, (game, []))[1].append(key)
            merged: dict = {}
            for game, group in groups.values():
                merged.update((await game.aio.tx_calls([call.only(group)]))[0])
            return merged

        return await asyncio.gather(*(one(c) for c in calls))

    async def _holder(self, key: str) -> GameServer:
        """The server of this host whose session of `key` is live (a teleport may leave a closing one behind on
        another); with none, any server (its answer: not loaded, or ABSENT to a finish)."""
        servers = list(self.servers.values())
        loaded = await asyncio.gather(*(self._is_loaded(server, key) for server in servers))
        for server, live in zip(servers, loaded):
            if live:
                return server.game
        if servers:
            return servers[0].game
        return await self._orphan_server()

    @staticmethod
    async def _is_loaded(server: _Server, key: str) -> bool:
        try:
            return await server.data.is_loaded(key)
        except LodestoreError:
            return False   # a server going down holds nothing a transaction can use

    async def _orphan_server(self) -> GameServer:
        game = getattr(self, "_orphan", None)
        if game is None:
            game = self._orphan = await GameServer.create(self.world, f"sim-none-{self.index}", runtime=self.runtime)
            await game.aio.create_store(self.config.name, self.config.template, **store_options(self.config))
        return game


class HostRole:
    """A `SimHost` as the object "sim" of a virtual-time node (`storage.virtual.Node`): what the engine starts on it
    (apply, drain, finish, peek, read_hot) and what coordinators call (tx_calls). Made on the node's loop."""

    def __init__(self, node: Any, world: Any, scenario: Scenario, index: int, t0: int, node_of_host: Callable[[int],
                 int]) -> None:
        self._servers: dict[str, int] = {}
        relay = virtual.Address(virtual.CLOUD, RELAY)

        async def remote(host: int, server_id: str, key: str, fn: Callable[[dict], bool]) -> str:
            return await node.call(relay, "forward", (node_of_host(host), "credit", (server_id, key, fn)))
        self.host = SimHost(world, scenario, index, t0, scheduler=node.scheduler, run_tx=tx_batcher(world).submit,
                            peer=lambda i: virtual.Address(node_of_host(i), "sim"),
                            host_of=lambda sid: self._servers.get(sid, index), remote=remote)

    def apply(self, events: list[Planned], placement: dict[str, int]) -> None:
        self._servers.update(placement)
        self.host.apply(events)

    async def drain(self) -> dict:
        return await self.host.drain()

    async def finish(self) -> dict:
        return await self.host.finish()

    async def peek(self, keys: list[str]) -> dict:
        return await self.host.peek(keys)

    async def read_hot(self, names: list[str]) -> dict:
        return await self.host.read_hot(names)

    async def tx_calls(self, calls: list[TxCall]) -> list:
        return await self.host.tx_calls(calls)

    async def credit(self, server_id: str, key: str, fn: Callable[[dict], bool]) -> str:
        return await self.host.credit(server_id, key, fn)


class Relay:
    """On the cloud node: hands a game server's message to the host of another (Roblox's cross-server messages go
    through Roblox, so a message between two game servers takes a hop there and a hop on: hosts only talk to the
    cloud). Delivered twice: the message is delivered twice (a trade's taker half is not idempotent; the engine
    never delivers twice)."""

    def __init__(self, node: Any) -> None:
        self.node = node

    async def forward(self, node: int, method: str, args: tuple) -> Any:
        return await self.node.call(virtual.Address(node, "sim"), method, args)
