"""What a run recorded, gathered from every host: the history the checkers read, and the figures of the report.

Owns: `Collector`, which takes the drains of `SimHost`s (plain tuples and counters) as they come, builds the
`History` (op outcomes, and lock holds with each session's refreshes folded into its last one), totals, latency
percentiles and per-bucket series, and finally the report dict (`sim._report` documents its format) with the
checkers' verdicts.

Never does: talk to Ray or a store, or decide an op's outcome (hosts do).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from typing import Any

from lodestore.sim._checkers import CheckResult, History, LockEvent, OpEvent, run_checks
from lodestore.sim._consistency import check_consistency

__all__ = ["Collector", "check_hot_counters", "percentiles"]

_HISTORY_KINDS = ("mint", "grant", "purchase", "trade")
_SERVER_EVENTS = ("start", "stop", "crash", "stall")   # what `annotations` keeps of a server's life
ANNOTATIONS_FORMAT = 1
MAX_STORE_LOG_PER_KEY = 200
"""At most this many of the store's warnings about one key are kept (a long outage retries all the time)."""

HARNESS_TOLERANCE = 0.01
"""The share of events a run may start late (or never) and of locks it may lose unexplained, and still be a test."""


def percentiles(values: list[float]) -> dict[str, float]:
    """count, p50, p90, p99 and max of `values` (nearest rank), in ms rounded to 0.01."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 2)

    return {"count": len(ordered), "p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99),
            "max": round(ordered[-1], 2)}


def check_hot_counters(finals: dict[str, int], ok: Counter, unknown: Counter) -> CheckResult:
    """Every acknowledged hot-key increment is counted, and nothing else: ok <= final <= ok + unknown."""
    bad = {k: (finals.get(k, 0), ok[k], unknown[k]) for k in sorted(set(finals) | set(ok) | set(unknown))
           if not ok[k] <= finals.get(k, 0) <= ok[k] + unknown[k]}
    details = {"keys": len(set(finals) | set(ok)), "ok": sum(ok.values()), "unknown": sum(unknown.values()),
               "bad": {k: {"final": f, "ok": o, "unknown": u} for k, (f, o, u) in bad.items()}}
    if bad:
        key, (final, n_ok, n_unknown) = next(iter(bad.items()))
        return CheckResult("hot_counters", False, f"hot key {key!r} counts {final}, but {n_ok} increments were "
                                                  f"acknowledged and {n_unknown} are unknown", details)
    return CheckResult("hot_counters", True, None, details)


class Collector:
    """Drains in, history and report out. `bucket_s` is the width of a series bucket in simulated seconds."""

    def __init__(self, duration_s: float, bucket_s: float, slack_s: float, leased: bool = True) -> None:
        self.history = History()
        self.slack_s = slack_s   # lock_ttl - lock_refresh: how late a lock refresh (or any event) may be
        self.leased = leased     # the design's locks are leases kept by refreshes (a lost one is no design choice)
        self._lag: dict[int, tuple[int, int, int]] = {}   # host -> (events started, started late, latest ms)
        self._stalled: set[str] = set()    # servers a fault stalled (their lost locks are explained)
        self.bucket_s = bucket_s
        self.buckets = max(1, math.ceil(duration_s / bucket_s))
        self._refresh: dict[tuple[str, str], LockEvent] = {}
        self._holding: dict[tuple[str, str], tuple[str, int]] = {}   # open hold -> (server, last report)
        self.ops = defaultdict(Counter)             # kind -> outcome -> n
        self.errors = Counter()
        self.tx = Counter()
        self.locks = Counter()
        self.events = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.hot_ok: Counter = Counter()
        self.hot_unknown: Counter = Counter()
        self._counters: dict[int, dict[str, int]] = {}
        self._throttled: dict[str, int] = {}
        self._logs: dict[int, dict[str, int]] = {}
        self._host_live: dict[int, tuple[int, frozenset]] = {}   # host -> (servers up, players online)
        self.peak_servers = 0
        self.peak_players = 0
        b = self.buckets
        self.s_ops: dict[str, list[int]] = defaultdict(lambda: [0] * b)
        self.s_lat: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(b)])
        self.s_errors: dict[str, list[int]] = defaultdict(lambda: [0] * b)
        self.s_tx = {k: [0] * b for k in ("committed", "aborted", "unknown")}
        self.s_locks = {k: [0] * b for k in ("waits", "steals", "lost")}
        self.s_throttled = [0] * b
        self.s_tokens_min: list[float | None] = [None] * b
        self.s_tokens_median: list[float | None] = [None] * b
        self.s_servers: list[int | None] = [None] * b
        self.s_players: list[int | None] = [None] * b
        self._host_tokens: dict[int, list[float]] = {}
        self.op_notes: dict[str, dict[str, str]] = {}        # op id -> {"why": error code, "tx": outcome}
        self.server_events: list[tuple[int, str, str]] = []  # (t_ms, what, server): starts, stops, crashes, stalls
        self.store_log: dict[str, list[tuple]] = defaultdict(list)   # key -> (t_ms, server, level, text)

    def _bucket(self, t_ms: float) -> int:
        return min(self.buckets - 1, max(0, int(t_ms / 1000 / self.bucket_s)))

    # ------------------------------------------------------------------------------------------------ intake

    def live(self) -> tuple[int, int]:
        """Servers up and players online as the hosts last reported them; a player on two servers at once (a
        teleport between its leave and its join) counts once."""
        servers = sum(s for s, _ in self._host_live.values())
        return servers, len(frozenset().union(*(online for _, online in self._host_live.values())))

    def add(self, host: int, drain: dict) -> None:
        """One host's drain (see `SimHost.drain`)."""
        self.add_ops(drain["ops"])
        self.history.requests.extend(drain.get("requests", ()))
        self._stalled.update(server for _, what, server in drain["events"] if what == "stall")
        for at, key, session, kind, until, server in drain["locks"]:
            self._lock(at, key, session, kind, until, server)
        self._lag[host] = tuple(drain.get("lag", (0, 0, 0)))
        for t, op, latency, code in drain["samples"]:
            b = self._bucket(t)
            self.latency[op].append(latency)
            self.s_ops[op][b] += 1
            self.s_lat[op][b].append(latency)
            if code is not None:
                self.s_errors[code][b] += 1
        for t, key, server, level, text in drain.get("store_log", ()):
            if len(self.store_log[key]) < MAX_STORE_LOG_PER_KEY:
                self.store_log[key].append((t, server, level, text))
        for t, what, server in drain["events"]:
            self.events[what] += 1
            if what in _SERVER_EVENTS:
                self.server_events.append((t, what, server))
        now_b = self._bucket(drain["time"])
        previous = self._counters.get(host, {})
        for name, series in (("lock_waits", "waits"), ("lock_steals", "steals"), ("locks_lost", "lost")):
            delta = drain["counters"].get(name, 0) - previous.get(name, 0)
            self.s_locks[series][now_b] += max(0, delta)
        self._counters[host] = dict(drain["counters"])
        self._logs[host] = dict(drain.get("log", {}))
        throttled_before = sum(self._throttled.values())
        self._throttled.update(drain["throttled"])
        self.s_throttled[now_b] += max(0, sum(self._throttled.values()) - throttled_before)
        self._host_live[host] = (drain["servers"], frozenset(drain["online"]))
        self._host_tokens[host] = list(drain["tokens"])
        servers, players = self.live()
        self.peak_servers = max(self.peak_servers, servers)
        self.peak_players = max(self.peak_players, players)
        self.s_servers[now_b] = servers
        self.s_players[now_b] = players
        tokens = [x for values in self._host_tokens.values() for x in values]
        if tokens:
            self.s_tokens_min[now_b] = float(min(tokens))
            self.s_tokens_median[now_b] = float(statistics.median(tokens))

    def add_ops(self, ops: list[tuple]) -> None:
        """Outcomes of actions, as `SimHost.drain` tuples."""
        for t, player, server, op_id, kind, outcome, amount, item, target, why, tx in ops:
            self.ops[kind][outcome] += 1
            if why is not None and why != "Refused":
                self.errors[why] += 1
            if tx is not None:
                self.tx[tx] += 1
                self.s_tx[tx][self._bucket(t)] += 1
            if kind == "hot":
                (self.hot_ok if outcome == "ok" else self.hot_unknown if outcome == "unknown" else Counter())[
                    target] += 1
            elif kind in _HISTORY_KINDS:
                if why is not None or tx is not None:
                    self.op_notes[op_id] = {k: v for k, v in (("why", why), ("tx", tx)) if v is not None}
                self.history.record(OpEvent(t, player, server, op_id, kind, outcome, amount,
                                            item if kind != "trade" else None,
                                            target if kind == "trade" else None))

    def _lock(self, at: int, key: str, session: str, kind: str, until: int, server: str) -> None:
        slot = (key, session)
        if kind == "refreshed":
            if until > at:
                self._refresh[slot] = LockEvent(at, key, server, session, "refreshed", until - at)
                self._holding[slot] = (server, at)
            return
        if kind == "acquired":
            self.locks["acquired"] += 1
            self.history.record(LockEvent(at, key, server, session, "acquired", max(1, until - at)))
            self._holding[slot] = (server, at)
            return
        self._holding.pop(slot, None)
        last = self._refresh.pop(slot, None)
        if last is not None:
            self.history.record(last)
        if kind == "lost":
            self.locks["lost"] += 1
            if server not in self._stalled:
                self.locks["lost_unexplained"] += 1
        self.history.record(LockEvent(at, key, server, session, kind))

    def lose_host(self, host: int, servers: set[str], live: int, ops: list[tuple]) -> None:
        """Host `host` was lost with whatever it had not reported: its servers' open holds end at their last report
        ("vanished"), its `live` servers count as lost with their node, and its actions still without an outcome (`ops`,
        as `SimHost.drain` tuples) are unknown."""
        self.add_ops(ops)
        self._host_live.pop(host, None)
        self._host_tokens.pop(host, None)
        for slot, (server, at) in list(self._holding.items()):
            if server in servers:
                self._lock(at, slot[0], slot[1], "vanished", at, server)
        self.events["host_lost"] += 1
        self.events["lost_with_node"] += live

    def close_locks(self) -> None:
        """Fold the last refresh of every hold that never ended into the history (end of the run)."""
        for event in self._refresh.values():
            self.history.record(event)
        self._refresh.clear()

    # ------------------------------------------------------------------------------------------------ output

    def checks(self, initial: dict, final: dict, hot_finals: dict[str, int]) -> list[CheckResult]:
        results = run_checks(self.history, initial, final)
        if hot_finals or self.hot_ok or self.hot_unknown:
            results.append(check_hot_counters(hot_finals, self.hot_ok, self.hot_unknown))
        if self.history.requests:   # raw requests recorded: the store itself is checked too
            results.append(check_consistency(self.history.requests))
        return results

    def annotations(self, t0_ms: int) -> dict:
        """What the history's events leave out and a key's timeline (`sim._timeline`) shows, as JSON-ready data:
        each op's error code ("why") and a trade's transaction outcome ("tx"), by op id (only ops that have one);
        every server's starts, stops, crashes and stalls; the store's warnings and errors about each key, by key
        (a request that failed and was retried, a lock taken over, a transaction in doubt: the request-level
        faults the store saw; the first `MAX_STORE_LOG_PER_KEY` of each key); and `t0_ms`, the world's time at
        simulated 0 (versions in the world file carry world times). Kept beside the events (`history.json`'s
        "annotations"), outside the history digest: it adds nothing the digest's events and finals do not decide.
        Sorted, so that the order hosts reported in does not show."""
        def order(entry: tuple) -> tuple:
            return tuple("" if x is None else x for x in entry)
        return {"format": ANNOTATIONS_FORMAT, "t0_ms": t0_ms, "ops": dict(sorted(self.op_notes.items())),
                "servers": [list(e) for e in sorted(self.server_events)],
                "store_log": {k: [list(e) for e in sorted(v, key=order)] for k, v in sorted(self.store_log.items())}}

    def health(self, stopped_early: bool) -> dict:
        """Whether the harness kept up, so that the checkers' verdict says something about the store. In virtual
        time it always does unless something is wrong beyond the checkers' reach; the figures stay as a guard.

        It did not when more than `HARNESS_TOLERANCE` of the events started more than `slack_s` late or never ran
        (a lock refresh then misses its TTL), or when more than that share of the session locks were lost on
        servers no fault stalled (for want of a refresh; only for a design whose locks are leases: another design
        loses a session by its own rules, which the checkers judge). Most actions failing is noted, not held
        against it: a storm of teleports or an outage fails most actions by design.
        """
        started = sum(lag[0] for lag in self._lag.values())
        late = sum(lag[1] for lag in self._lag.values())
        worst_s = max((lag[2] for lag in self._lag.values()), default=0) / 1000
        not_run = 0 if stopped_early else self.errors["NotRun"]
        acquired, unexplained = self.locks["acquired"], self.locks["lost_unexplained"]
        problems, notes = [], []
        if late + not_run > HARNESS_TOLERANCE * max(1, started + not_run):
            problems.append(f"the harness fell behind: {late:,} of {started:,} events started more than "
                            f"{self.slack_s:g} s (lock_ttl - lock_refresh) late, the latest {worst_s:,.1f} s, and "
                            f"{not_run:,} actions never ran (in virtual time nothing is late for want of wall "
                            f"time: a bug of the engine or of the store under test)")
        if self.leased and unexplained > HARNESS_TOLERANCE * max(1, acquired):
            problems.append(f"{unexplained:,} of {acquired:,} session locks were lost on servers no fault stalled: "
                            f"their refreshes did not land in time (in virtual time: a bug of the store under test)")
        actions = sum(sum(outcomes.values()) for outcomes in self.ops.values())
        ok = sum(outcomes["ok"] for outcomes in self.ops.values())
        if actions and ok < actions / 2:
            notes.append(f"most actions did not succeed ({actions - ok:,} of {actions:,}); see errors by code")
        return {"ok": not problems, "problems": problems, "notes": notes, "events_started": started,
                "events_late": late, "latest_s": worst_s, "slack_s": self.slack_s, "actions_not_run": not_run,
                "locks_lost_unexplained": unexplained}

    def report(self, *, scenario: dict, run: dict, checks: list[CheckResult]) -> dict:
        counters = Counter()
        for c in self._counters.values():
            counters.update(c)
        events = self.events
        return {
            "format": 1,
            "scenario": scenario,
            "run": run,
            "totals": {
                "ops_by_kind": {k: {o: self.ops[k][o] for o in ("ok", "failed", "unknown")}
                                for k in ("mint", "grant", "purchase", "trade", "hot") if k in self.ops},
                "errors_by_code": dict(self.errors.most_common()),
                "tx": {k: self.tx[k] for k in ("committed", "aborted", "unknown")},
                "locks": {"acquired": self.locks["acquired"], "waits": counters["lock_waits"],
                          "steals": counters["lock_steals"], "lost": self.locks["lost"]},
                "throttled": sum(self._throttled.values()),
                "servers": {"started": events["start"], "stopped": events["stop"], "crashed": events["crash"],
                            "stalled": events["stall"], "lost_with_node": events["lost_with_node"],
                            "peak": self.peak_servers, "key_actors": counters["key_actors"]},
                "players": {"joins": self.latency_count("load"), "leaves": self.latency_count("unload"),
                            "teleports": events["teleport"], "peak_online": self.peak_players,
                            "load_failures": events["load_failed"], "loads_cancelled": events["load_cancelled"]},
                "saves": counters["saves"], "saves_skipped": counters["saves_skipped"],
                "save_failures": counters["save_failures"],
                # player-seconds of changes held in memory and not yet saved (what a crash would have lost)
                "data_at_risk_player_s": round(counters["at_risk_ms"] / 1000, 1),
                "refreshes": counters["refreshes"],
                "store_warnings": dict(sum((Counter(v) for v in self._logs.values()), Counter()).most_common()),
            },
            "latency_ms": {op: percentiles(values) for op, values in sorted(self.latency.items())},
            "series": {
                "bucket_s": self.bucket_s,
                "t": [i * self.bucket_s for i in range(self.buckets)],
                "ops_per_s": {op: [round(n / self.bucket_s, 2) for n in counts]
                              for op, counts in sorted(self.s_ops.items())},
                "latency_ms": {op: {"p50": [percentiles(v).get("p50") for v in per],
                                    "p99": [percentiles(v).get("p99") for v in per]}
                               for op, per in sorted(self.s_lat.items())},
                "errors": dict(sorted(self.s_errors.items())),
                "tx": self.s_tx,
                "locks": self.s_locks,
                "throttled": self.s_throttled,
                "budget_tokens_min": self.s_tokens_min,
                "budget_tokens_median": self.s_tokens_median,
                "servers_online": _carry(self.s_servers),
                "players_online": _carry(self.s_players),
            },
            "checks": [{"name": c.name, "ok": c.ok, "counterexample": c.counterexample,
                        "details": _jsonable(c.details)} for c in checks],
            "health": (health := self.health(bool(run.get("stopped_early")))),
            "verdict": "fail" if not all(c.ok for c in checks) else "pass" if health["ok"] else "inconclusive",
        }

    def latency_count(self, op: str) -> int:
        return len(self.latency.get(op, ()))


def _carry(values: list[int | None]) -> list[int]:
    """Buckets no drain landed in keep the figure of the bucket before."""
    out, last = [], 0
    for v in values:
        last = last if v is None else v
        out.append(last)
    return out


def _jsonable(value: Any, limit: int = 20) -> Any:
    """Check details as JSON, long lists cut to `limit` entries (a report must stay readable)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, limit) for k, v in list(value.items())[:200]}
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v, limit) for v in list(value)[:limit]]
        return items + [f"... {len(value) - limit} more"] if len(value) > limit else items
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
