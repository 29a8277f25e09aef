"""The workload of a simulation: what every player and game server does, and when, drawn from the scenario's seed.

Owns: `Planner`, which turns a `Scenario` into a time-ordered stream of `Planned` events (servers starting,
stopping, crashing and stalling; players joining, leaving and teleporting; coin mints, item grants, purchases,
trades and hot-key writes). The stream depends on the scenario and its seed only, never on how the run goes, so
the same seed always gives the same event sequence: the plan assumes every join succeeds and every action happens,
and the runner records what really became of each.

Never does: run Ray, touch a store, or read the clock. Times are simulated milliseconds from the run's start.

How the rates read (per step of `servers.step` simulated seconds):
- each offline player joins with probability `join_rate`; each online player leaves with `leave_rate` and
  teleports to another server with `teleport_rate`;
- each live server stops (BindToClose, `shutdown_window`) with `stop_rate` and crashes with `crash_rate`, plus any
  active fault window's `server_crash_rate`; it stalls its lock upkeep with a window's `lock_stall_rate`, for
  `lock_ttl + lock_refresh` seconds, and half its players (chosen by the seed) reconnect on another server meanwhile:
  their old server notices them leave only when the stall ends;
- a new server starts with probability `start_rate`, and whenever a joining player finds every server full;
- actions are Poisson processes per online player at `actions_per_minute` each.
Waiting times are drawn once per entity (geometric for per-step chances, exponential for actions), so the planner's
work grows with the number of events, not with players x steps.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from lodestore.sim._scenario import Scenario
from lodestore.storage import ConfigError

__all__ = ["Planned", "Planner", "Script", "playable", "events_to_json", "events_from_json", "EVENT_KINDS",
           "ACTION_KINDS", "player_key", "hot_key_name"]

ACTION_KINDS = ("mint", "grant", "purchase", "trade", "hot")
"""Player actions: earn coins, get an item, buy an item with coins (saved before it is granted), give coins (and the
oldest item) to another player in a transaction, write a shared hot key."""

EVENT_KINDS = ("start", "stop", "crash", "stall", "join", "leave", "teleport") + ACTION_KINDS

_RATE_FIELDS = {"mint": "coins", "grant": "grant_item", "purchase": "purchase", "trade": "trade", "hot": "hot_key"}


@dataclass(frozen=True, slots=True)
class Planned:
    """One planned event at simulated time `t` (ms). Fields a kind does not use are None / 0.

    - start / stop / crash: `server`; stall: `server`, `amount` = stall length in ms.
    - join: `player` joins `server`. leave: `player` leaves `server`. teleport: `player` moves from `server` to
      `target` (its old server unloads, the new one loads at once: the contention Roblox teleports cause).
    - mint / grant / purchase / hot: `player` on `server`, `op_id`, `amount` (coins), `item` (grant, purchase),
      `target` (hot: the hot key's name).
    - trade: `player` on `server` gives `amount` coins to `target`, who plays on `target_server`.
    """

    t: int
    kind: str
    server: str
    player: str | None = None
    op_id: str | None = None
    amount: int = 0
    item: str | None = None
    target: str | None = None
    target_server: str | None = None


def player_key(index: int) -> str:
    return f"player_{index:05d}"


def hot_key_name(index: int, kinds: tuple[str, ...]) -> str:
    return f"{kinds[index % len(kinds)]}_{index:03d}"


class Planner:
    """The scenario's event stream, generated lazily: `until(t_ms)` hands out every event before `t_ms`, in order."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._rng = random.Random(scenario.world.seed)
        self._step_ms = int(round(scenario.servers.step * 1000))
        self._end_ms = int(round(scenario.world.duration * 1000))
        self._heap: list[tuple[int, int, str, str, int]] = []   # (t, seq, what, subject, epoch)
        self._seq = 0
        self._next_server = 0
        self._next_op = 0
        self.servers: dict[str, set[str]] = {}                  # live server -> its players
        self._server_epoch: dict[str, int] = {}
        self.location: dict[str, str | None] = {}               # player -> server, or None when offline
        self._player_epoch: dict[str, int] = {}
        self._pending: list[Planned] = []                       # made while handling one heap entry
        self._online = 0
        self._limit = 0                                         # every event before it has been handed out
        st = scenario.store
        self.stall_ms = int(round((st.lock_ttl + st.lock_refresh) * 1000))
        self.hot_keys = tuple(hot_key_name(i, scenario.hot_keys.kinds) for i in range(scenario.hot_keys.count))
        rates = scenario.players.actions_per_minute
        self._action_rates = {k: getattr(rates, f) for k, f in _RATE_FIELDS.items()}
        if not self.hot_keys:
            self._action_rates["hot"] = 0.0
        for _ in range(scenario.servers.count):
            self._start_server(0)
        for i in range(scenario.players.population):
            key = player_key(i)
            self.location[key] = None
            self._player_epoch[key] = 0
            self._arm_player(key, 0, "join", scenario.players.join_rate)
        self._arm("server_start", "", 0, self._geometric(0, scenario.servers.start_rate))
        self._arm("faults", "", 0, self._step_ms)

    # ------------------------------------------------------------------------------------------------- output

    def until(self, t_ms: int) -> list[Planned]:
        """Every event with time < min(t_ms, end of run) not handed out yet, in time order (ties: generation order)."""
        out, self._pending = self._pending, []
        limit = min(t_ms, self._end_ms)
        self._limit = max(self._limit, limit)
        while self._heap and self._heap[0][0] < limit:
            t, _, what, subject, epoch = heapq.heappop(self._heap)
            getattr(self, f"_on_{what}")(t, subject, epoch)
            out.extend(self._pending)
            self._pending = []
        return out

    def next_at(self) -> int | None:
        """The earliest time (ms) an event not handed out yet can have, or None when the plan is spent. Events come
        out of heap entries at the entry's time, so the heap's first entry bounds them."""
        if self._pending:
            return min(ev.t for ev in self._pending)
        if self._heap and self._heap[0][0] < self._end_ms:
            return self._heap[0][0]
        return None

    def lose(self, servers: Iterable[str]) -> list[str]:
        """Servers that died outside the plan (their node was lost): each crashes right after the events handed
        out so far, and its players go offline and rejoin later, as after a planned crash. The crash events come
        out of the next `until`. Answers the servers that were live."""
        live = sorted(s for s in servers if s in self.servers)
        for sid in live:
            self._end_server(self._limit, sid, "crash")
        return live

    def __iter__(self) -> Iterator[Planned]:
        yield from self.until(self._end_ms)

    @property
    def online(self) -> int:
        """Players online in the plan, as of the last event handed out."""
        return self._online

    # ---------------------------------------------------------------------------------------------- internals

    def _emit(self, event: Planned) -> None:
        self._pending.append(event)

    def _arm(self, what: str, subject: str, epoch: int, t: int | None) -> None:
        if t is not None and t < self._end_ms:
            self._seq += 1
            heapq.heappush(self._heap, (t, self._seq, what, subject, epoch))

    def _geometric(self, now: int, p: float) -> int | None:
        """The next step boundary at which an event with per-step chance `p` happens, or None for never."""
        if p <= 0:
            return None
        if p >= 1:
            return now + self._step_ms
        u = 1.0 - self._rng.random()   # (0, 1]
        steps = int(math.log(u) / math.log1p(-p)) + 1
        return now + steps * self._step_ms

    def _exponential(self, now: int, per_minute: float) -> int | None:
        if per_minute <= 0:
            return None
        return now + max(1, int(self._rng.expovariate(per_minute / 60_000.0)))

    def _new_op(self) -> str:
        self._next_op += 1
        return f"op{self._next_op:07d}"

    def _arm_player(self, key: str, now: int, what: str, p: float) -> None:
        self._arm(what, key, self._player_epoch[key], self._geometric(now, p))

    def _start_server(self, t: int) -> str:
        self._next_server += 1
        sid = f"server_{self._next_server:04d}"
        self.servers[sid] = set()
        self._server_epoch[sid] = 0
        self._emit(Planned(t, "start", sid))
        self._arm_server(sid, t)
        return sid

    def _arm_server(self, sid: str, now: int) -> None:
        sv = self.scenario.servers
        epoch = self._server_epoch[sid]
        self._arm("server_stop", sid, epoch, self._geometric(now, sv.stop_rate))
        self._arm("server_crash", sid, epoch, self._geometric(now, sv.crash_rate))

    def _room(self, exclude: str | None = None) -> list[str]:
        cap = self.scenario.servers.max_players
        return [s for s, ps in self.servers.items() if len(ps) < cap and s != exclude]

    def _place(self, key: str, sid: str, t: int) -> None:
        self._online += self.location[key] is None
        self.location[key] = sid
        self.servers[sid].add(key)
        self._player_epoch[key] += 1
        pl = self.scenario.players
        self._arm_player(key, t, "leave", pl.leave_rate)
        self._arm_player(key, t, "teleport", pl.teleport_rate)
        for kind, rate in self._action_rates.items():
            self._arm(f"act_{kind}", key, self._player_epoch[key], self._exponential(t, rate))

    def _unplace(self, key: str, t: int, rejoin: bool = True) -> None:
        sid = self.location[key]
        if sid is not None:
            self.servers[sid].discard(key)
            self._online -= 1
        self.location[key] = None
        self._player_epoch[key] += 1
        if rejoin:
            self._arm_player(key, t, "join", self.scenario.players.join_rate)

    def _live(self, key: str, epoch: int) -> bool:
        return self._player_epoch.get(key) == epoch

    # ----------------------------------------------------------------------------------------- event handlers

    def _on_join(self, t: int, key: str, epoch: int) -> None:
        if not self._live(key, epoch) or self.location[key] is not None:
            return
        room = self._room()
        sid = self._rng.choice(sorted(room)) if room else self._start_server(t)
        self._emit(Planned(t, "join", sid, key))
        self._place(key, sid, t)

    def _on_leave(self, t: int, key: str, epoch: int) -> None:
        if not self._live(key, epoch):
            return
        self._emit(Planned(t, "leave", self.location[key], key))
        self._unplace(key, t)

    def _on_teleport(self, t: int, key: str, epoch: int) -> None:
        if not self._live(key, epoch):
            return
        src = self.location[key]
        room = self._room(exclude=src)
        if not room:
            self._arm_player(key, t, "teleport", self.scenario.players.teleport_rate)
            return
        dst = self._rng.choice(sorted(room))
        self._emit(Planned(t, "teleport", src, key, target_server=dst))
        self.servers[src].discard(key)
        self._place(key, dst, t)

    def _on_server_start(self, t: int, _subject: str, _epoch: int) -> None:
        self._start_server(t)
        self._arm("server_start", "", 0, self._geometric(t, self.scenario.servers.start_rate))

    def _end_server(self, t: int, sid: str, kind: str) -> None:
        self._emit(Planned(t, kind, sid))
        for key in sorted(self.servers.pop(sid)):
            self._online -= 1
            self.location[key] = None
            self._player_epoch[key] += 1
            self._arm_player(key, t, "join", self.scenario.players.join_rate)
        self._server_epoch[sid] += 1

    def _on_server_stop(self, t: int, sid: str, epoch: int) -> None:
        if sid in self.servers and self._server_epoch[sid] == epoch:
            self._end_server(t, sid, "stop")

    def _on_server_crash(self, t: int, sid: str, epoch: int) -> None:
        if sid in self.servers and self._server_epoch[sid] == epoch:
            self._end_server(t, sid, "crash")

    def _on_faults(self, t: int, _subject: str, _epoch: int) -> None:
        """Once per step while a fault window is active: extra crashes and lock stalls."""
        windows = self.scenario.faults_at(t / 1000)
        crash = 1 - math.prod(1 - w.server_crash_rate for w in windows)
        stall = 1 - math.prod(1 - w.lock_stall_rate for w in windows)
        if crash > 0 or stall > 0:
            for sid in sorted(self.servers):
                roll = self._rng.random()
                if roll < crash:
                    self._end_server(t, sid, "crash")
                elif roll < crash + stall:
                    self._stall(t, sid)
        nxt = t + self._step_ms
        if not windows:  # skip ahead to the next window's start
            starts = [int(w.start * 1000) for w in self.scenario.faults if w.start * 1000 > t]
            nxt = max(nxt, min(starts)) if starts else None
            if nxt is not None:
                nxt = -(-nxt // self._step_ms) * self._step_ms
        self._arm("faults", "", 0, nxt)

    def _stall(self, t: int, sid: str) -> None:
        self._emit(Planned(t, "stall", sid, amount=self.stall_ms))
        for key in sorted(self.servers[sid]):
            if self._rng.random() >= 0.5:
                continue
            room = self._room(exclude=sid)
            if not room:
                continue
            dst = self._rng.choice(sorted(room))
            # the player reconnects elsewhere now; the stalled server sees it leave when the stall ends
            self._arm("stalled_leave", f"{sid}|{key}", 0, t + self.stall_ms)
            self._emit(Planned(t, "join", dst, key))
            self.servers[sid].discard(key)
            self._place(key, dst, t)

    def _on_stalled_leave(self, t: int, subject: str, _epoch: int) -> None:
        sid, key = subject.split("|")
        self._emit(Planned(t, "leave", sid, key))

    def _on_act_mint(self, t: int, key: str, epoch: int) -> None:
        self._act(t, key, epoch, "mint", amount=self._rng.randint(1, 20))

    def _on_act_grant(self, t: int, key: str, epoch: int) -> None:
        self._act(t, key, epoch, "grant", item=True)

    def _on_act_purchase(self, t: int, key: str, epoch: int) -> None:
        self._act(t, key, epoch, "purchase", amount=self._rng.randint(5, 50), item=True)

    def _on_act_trade(self, t: int, key: str, epoch: int) -> None:
        if not self._live(key, epoch):
            return
        other = self._someone_else(key)
        if other is not None:
            self._act(t, key, epoch, "trade", amount=self._rng.randint(1, 30), target=other,
                      target_server=self.location[other])
        else:
            self._arm("act_trade", key, epoch, self._exponential(t, self._action_rates["trade"]))

    def _someone_else(self, key: str) -> str | None:
        """A random online player other than `key` (rejection sampling over the population), or None."""
        population = self.scenario.players.population
        if self.online < 2:
            return None
        for _ in range(64):
            other = player_key(self._rng.randrange(population))
            if other != key and self.location[other] is not None:
                return other
        return None

    def _on_act_hot(self, t: int, key: str, epoch: int) -> None:
        self._act(t, key, epoch, "hot", amount=1, target=self._rng.choice(self.hot_keys) if self.hot_keys else None)

    def _act(self, t: int, key: str, epoch: int, kind: str, *, amount: int = 0, item: bool = False,
             target: str | None = None, target_server: str | None = None) -> None:
        if not self._live(key, epoch):
            return
        op = self._new_op()
        self._emit(Planned(t, kind, self.location[key], key, op, amount, f"item-{op}" if item else None, target,
                           target_server))
        self._arm(f"act_{kind}", key, epoch, self._exponential(t, self._action_rates[kind]))


# ------------------------------------------------------------------------------------------ a given event list

_EVENTS_FORMAT = 1


def playable(events: Iterable[Planned], population: int) -> list[Planned]:
    """The events of `events` (in time order, ties in list order) whose premises are in the list too: what is left
    of a plan once some of its events were taken out (`lodestore shrink`), or of a list edited by hand. A plan is
    playable as it is (`playable(plan) == plan`).

    An event is dropped when what it stands on is not there: anything on a server that never started before it (a
    teleport or trade towards one too); a leave, teleport or action of a player who never joined (or teleported to)
    its server before it, say one whose join was taken out; a trade whose taker never joined the taker's server; any
    event of a player outside the scenario's population (the final read would never see its data). What the planner
    makes alike is kept: an action of a player who joined its server but is not on it any more (the plan has those:
    a stalled server's late leave, a crash) is played, and fails as not loaded, as it does in the plan's own run; a
    player may stay on a server whose crash or leave was taken out and join another meanwhile (the simulated servers
    play that as Roblox would, two sessions contending for one key)."""
    started: set[str] = set()
    joined: set[tuple[str | None, str | None]] = set()   # (player, server) of every join and teleport so far
    known = {player_key(i) for i in range(population)}
    out = []
    for ev in sorted(events, key=lambda ev: ev.t):
        if ev.player is not None and ev.player not in known:
            continue
        if ev.kind == "start":
            if ev.server in started:
                continue
            started.add(ev.server)
        elif ev.server not in started:
            continue
        elif ev.kind == "join":
            joined.add((ev.player, ev.server))
        elif ev.kind not in ("stop", "crash", "stall"):
            if (ev.player, ev.server) not in joined:
                continue
            if ev.kind == "teleport":
                if ev.target_server not in started:
                    continue
                joined.add((ev.player, ev.target_server))
            elif ev.kind == "trade" and (ev.target not in known or (ev.target, ev.target_server) not in joined):
                continue
        out.append(ev)
    return out


class Script:
    """A given event list played in the planner's place (`RunOptions.events`), with the planner's interface: the
    engine cannot tell them apart, so a run of a script is as deterministic as one of a plan, and a script of a plan
    gives the plan's own history. The list is first cut to what is `playable` and to the run's duration; `lose`
    crashes servers as the planner's does (their players stay offline: no rejoin is planned for them)."""

    def __init__(self, scenario: Scenario, events: Iterable[Planned]) -> None:
        self.scenario = scenario
        self.hot_keys = tuple(hot_key_name(i, scenario.hot_keys.kinds) for i in range(scenario.hot_keys.count))
        self._end = end = int(round(scenario.world.duration * 1000))
        self.events = [ev for ev in playable(events, scenario.players.population) if ev.t < end]
        self._next = 0
        self._limit = 0
        self._pending: list[Planned] = []
        self._live: set[str] = set()
        self._where: dict[str, set[str]] = {}   # player -> the servers it is on

    def until(self, t_ms: int) -> list[Planned]:
        """Every event with time < t_ms not handed out yet, in order (a lost server's crash first)."""
        out, self._pending = self._pending, []
        self._limit = max(self._limit, min(t_ms, self._end))
        while self._next < len(self.events) and self.events[self._next].t < t_ms:
            out.append(self.events[self._next])
            self._next += 1
        for ev in out:
            self._follow(ev)
        return out

    def next_at(self) -> int | None:
        if self._pending:
            return min(ev.t for ev in self._pending)
        return self.events[self._next].t if self._next < len(self.events) else None

    def lose(self, servers: Iterable[str]) -> list[str]:
        """Servers that died outside the script (their node was lost): each crashes right after the events handed
        out so far, and the script's later events on them (or teleports and trades to them) are dropped."""
        live = sorted(s for s in servers if s in self._live)
        self._pending += [Planned(self._limit, "crash", sid) for sid in live]
        gone = set(live)
        self.events[self._next:] = [ev for ev in self.events[self._next:]
                                    if ev.server not in gone and ev.target_server not in gone]
        return live

    def __iter__(self) -> Iterator[Planned]:
        yield from self.until(1 << 62)

    @property
    def online(self) -> int:
        return sum(1 for servers in self._where.values() if servers)

    def _follow(self, ev: Planned) -> None:
        if ev.kind == "start":
            self._live.add(ev.server)
        elif ev.kind in ("stop", "crash"):
            self._live.discard(ev.server)
            for servers in self._where.values():
                servers.discard(ev.server)
        elif ev.kind == "join":
            self._where.setdefault(ev.player, set()).add(ev.server)
        elif ev.kind in ("leave", "teleport"):
            self._where.get(ev.player, set()).discard(ev.server)
            if ev.kind == "teleport":
                self._where.setdefault(ev.player, set()).add(ev.target_server)


def events_to_json(events: Iterable[Planned]) -> dict[str, Any]:
    """A JSON-compatible form of an event list (`events.json`): each event's fields, those at their default left
    out."""
    out = []
    for ev in events:
        row: dict[str, Any] = {"t": ev.t, "kind": ev.kind, "server": ev.server}
        for name in ("player", "op_id", "amount", "item", "target", "target_server"):
            value = getattr(ev, name)
            if value not in (None, 0):
                row[name] = value
        out.append(row)
    return {"format": _EVENTS_FORMAT, "events": out}


def events_from_json(data: Any, source: str = "events") -> list[Planned]:
    """The event list `events_to_json` made `data` from; ConfigError naming the event and field on anything else."""
    if not isinstance(data, dict) or data.get("format") != _EVENTS_FORMAT or not isinstance(data.get("events"), list):
        raise ConfigError(f"{source}: not an event list (a JSON object with format {_EVENTS_FORMAT} and a list "
                          f"'events')")
    fields = {"t": int, "kind": str, "server": str, "player": str, "op_id": str, "amount": int, "item": str,
              "target": str, "target_server": str}
    out = []
    for i, row in enumerate(data["events"]):
        where = f"{source}: events[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: must be an object, got {type(row).__name__}")
        unknown = sorted(set(row) - set(fields))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(fields)})")
        for name in ("t", "kind", "server"):
            if name not in row:
                raise ConfigError(f"{where}.{name}: is required")
        for name, value in row.items():
            want = fields[name]
            if not isinstance(value, want) or isinstance(value, bool):
                raise ConfigError(f"{where}.{name}: must be {want.__name__}, got {value!r}")
        if row["kind"] not in EVENT_KINDS:
            raise ConfigError(f"{where}.kind: must be one of {', '.join(EVENT_KINDS)}, got {row['kind']!r}")
        if row["t"] < 0 or row.get("amount", 0) < 0:
            raise ConfigError(f"{where}: t and amount must be >= 0, got {row['t']} and {row.get('amount', 0)}")
        out.append(Planned(**row))
    return out
