"""The recorded history of a simulation run and the invariant checkers over it.

Owns: the event types the simulator records (`LockEvent`, `OpEvent`), the append-only recorder `History` with
its JSON form (`History.to_json` / `History.from_json`, plain JSON-compatible dicts), and four checkers that
compare a history with the initial and final player data and return a `CheckResult` each:

* `check_conservation` -- Jepsen's bank check generalised: trades move coins, only mints create them and
  purchases destroy them; no balance is negative.
* `check_acknowledged_writes` -- Jepsen's list-append idea on each player's ledger of op ids: every
  acknowledged op is there, no failed op is, nothing twice, nothing never recorded.
* `check_single_holder` -- never two live sessions holding one key's lock at once.
* `check_no_duplicate_items` -- no item id in two inventories (or twice in one).

`run_checks` runs all four.

Player data (both ``initial`` and ``final``) is ``{key: {"coins": int, "items": [item ids], "ledger": [op ids]}}``;
missing fields count as empty. ``initial`` must hold every player that exists at the end (a player created
during the run is in ``initial`` with its template data), or its starting coins look minted from nothing.

Never does: run Ray, touch a store, read or write files, pickle, or mutate the data it is given. Times are
simulated milliseconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from lodestore.storage import REQUEST_FIELDS

__all__ = [
    "LOCK_KINDS",
    "OP_KINDS",
    "OUTCOMES",
    "LockEvent",
    "OpEvent",
    "Event",
    "History",
    "CheckResult",
    "check_conservation",
    "check_acknowledged_writes",
    "check_single_holder",
    "check_no_duplicate_items",
    "run_checks",
]

LOCK_KINDS = ("acquired", "refreshed", "released", "lost", "crashed", "vanished")
"""Kinds of `LockEvent`: a session took, renewed, gave up or lost a key's lock, or its server crashed; "vanished":
the session's host was lost with its latest reports (a node went away), so the hold is known only up to its last
report, which is when "vanished" is stamped. A hold that vanished ends there: no later event is known, and cutting
it short can only hide an overlap, never invent one."""

OP_KINDS = ("mint", "grant", "trade", "purchase")
"""Kinds of `OpEvent`: coins earned, item added, two-key transfer, coins spent (optionally for an item)."""

OUTCOMES = ("ok", "failed", "unknown")
"""Outcomes of an `OpEvent`: durable and acknowledged, known not to have happened, or either."""

_HISTORY_FORMAT = 1


@dataclass(frozen=True)
class LockEvent:
    """A change in who holds ``key``'s session lock, at simulated time ``t`` (ms).

    ``kind`` is one of `LOCK_KINDS`. ``ttl_ms`` is required on "acquired" (how long the lock lives without a
    refresh) and optional on "refreshed" (a new TTL; None keeps the previous one). After "crashed", or when a
    hold has no end event, the hold lasts until the last "acquired"/"refreshed" time + TTL.
    """

    t: int
    key: str
    server: str
    session: str
    kind: str
    ttl_ms: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in LOCK_KINDS:
            raise ValueError(f"LockEvent.kind: must be one of {LOCK_KINDS}, got {self.kind!r}")
        if self.kind == "acquired" and self.ttl_ms is None:
            raise ValueError("LockEvent.ttl_ms: required on an 'acquired' event")
        if self.ttl_ms is not None and self.ttl_ms <= 0:
            raise ValueError(f"LockEvent.ttl_ms: must be > 0, got {self.ttl_ms}")


@dataclass(frozen=True)
class OpEvent:
    """A player action ``op_id`` on ``key`` by ``server`` at simulated time ``t`` (ms), and what became of it.

    ``kind`` is one of `OP_KINDS`: "mint" adds ``amount`` coins; "grant" adds ``item``; "trade" moves ``amount``
    coins (and ``item`` if set) from ``key`` to ``counterparty``; "purchase" removes ``amount`` coins from the
    economy (and adds ``item`` if set). ``outcome`` is one of `OUTCOMES`. When an op happens its ``op_id`` is
    appended to the ledger of ``key`` (and of ``counterparty`` for a trade).
    """

    t: int
    key: str
    server: str
    op_id: str
    kind: str
    outcome: str
    amount: int = 0
    item: str | None = None
    counterparty: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in OP_KINDS:
            raise ValueError(f"OpEvent.kind: must be one of {OP_KINDS}, got {self.kind!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"OpEvent.outcome: must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.amount < 0:
            raise ValueError(f"OpEvent.amount: must be >= 0, got {self.amount}")
        if self.kind == "grant" and self.item is None:
            raise ValueError("OpEvent.item: required on a 'grant'")
        if self.kind == "trade" and (self.counterparty is None or self.counterparty == self.key):
            raise ValueError("OpEvent.counterparty: a 'trade' needs a counterparty other than key")
        if self.kind != "trade" and self.counterparty is not None:
            raise ValueError(f"OpEvent.counterparty: only a 'trade' has one, got a {self.kind!r}")

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys whose ledgers this op is appended to when it happens."""
        return (self.key, self.counterparty) if self.counterparty is not None else (self.key,)


Event = LockEvent | OpEvent
"""Anything a `History` records."""


class History:
    """An append-only record of the lock and op events of one run, in recording order.

    Each op id may be recorded once (a retry that is the same op reuses the record, it does not add one).
    ``requests`` holds the raw DataStore and MemoryStore requests of the run when its hosts recorded them: plain
    tuples of `storage.REQUEST_FIELDS`, appended as they come (the consistency checker reads them).
    """

    def __init__(self, events: Iterable[Event] = (), requests: Iterable[tuple] = ()) -> None:
        self._events: list[Event] = []
        self._op_ids: set[str] = set()
        self.requests: list[tuple] = [tuple(r) for r in requests]
        for event in events:
            self.record(event)

    def record(self, event: Event) -> Event:
        """Append ``event`` and return it; refuses a non-event and an op id recorded before."""
        if isinstance(event, OpEvent):
            if event.op_id in self._op_ids:
                raise ValueError(f"History: op id {event.op_id!r} recorded twice")
            self._op_ids.add(event.op_id)
        elif not isinstance(event, LockEvent):
            raise TypeError(f"History: not an event: {event!r}")
        self._events.append(event)
        return event

    def lock(self, t: int, key: str, server: str, session: str, kind: str, ttl_ms: int | None = None) -> LockEvent:
        """Record a `LockEvent` built from the arguments and return it."""
        return self.record(LockEvent(t, key, server, session, kind, ttl_ms))  # type: ignore[return-value]

    def op(self, t: int, key: str, server: str, op_id: str, kind: str, outcome: str, amount: int = 0,
           item: str | None = None, counterparty: str | None = None) -> OpEvent:
        """Record an `OpEvent` built from the arguments and return it."""
        return self.record(OpEvent(t, key, server, op_id, kind, outcome, amount, item,  # type: ignore[return-value]
                                   counterparty))

    @property
    def events(self) -> tuple[Event, ...]:
        """Every event, in recording order."""
        return tuple(self._events)

    def lock_events(self) -> list[LockEvent]:
        """The lock events, in recording order."""
        return [e for e in self._events if isinstance(e, LockEvent)]

    def op_events(self) -> list[OpEvent]:
        """The op events, in recording order."""
        return [e for e in self._events if isinstance(e, OpEvent)]

    def __len__(self) -> int:
        return len(self._events)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self._events == other._events and self.requests == other.requests

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict of this history (``json.dumps`` takes it as is)."""
        out = []
        for e in self._events:
            d = asdict(e)
            d["type"] = "lock" if isinstance(e, LockEvent) else "op"
            out.append(d)
        data: dict[str, Any] = {"format": _HISTORY_FORMAT, "events": out}
        if self.requests:   # only when recorded: `history_digest` reads the events alone
            data["requests"] = [list(r) for r in self.requests]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> History:
        """The history ``to_json`` produced ``data`` from; refuses an unknown format or event type, and a request
        record that is not a list of `storage.REQUEST_FIELDS`."""
        if data.get("format") != _HISTORY_FORMAT:
            raise ValueError(f"History.from_json: format must be {_HISTORY_FORMAT}, got {data.get('format')!r}")
        events: list[Event] = []
        for i, raw in enumerate(data["events"]):
            fields = dict(raw)
            kind = fields.pop("type", None)
            if kind == "lock":
                events.append(LockEvent(**fields))
            elif kind == "op":
                events.append(OpEvent(**fields))
            else:
                raise ValueError(f"History.from_json: events[{i}].type must be 'lock' or 'op', got {kind!r}")
        requests = data.get("requests", [])
        for i, raw in enumerate(requests):
            if not isinstance(raw, list) or len(raw) != len(REQUEST_FIELDS):
                raise ValueError(f"History.from_json: requests[{i}] must be a list of {len(REQUEST_FIELDS)} "
                                 f"fields ({', '.join(REQUEST_FIELDS)}), got {raw!r:.80}")
        return cls(events, requests)


@dataclass(frozen=True)
class CheckResult:
    """One checker's verdict: ``ok``, and if not, a one-line ``counterexample``; ``details`` holds the figures."""

    name: str
    ok: bool
    counterexample: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _coins(data: Mapping[str, Any]) -> int:
    return int(data.get("coins", 0))


def check_conservation(history: History, initial: Mapping[str, Mapping[str, Any]],
                       final: Mapping[str, Mapping[str, Any]]) -> CheckResult:
    """Trades neither create nor destroy coins, and no balance is negative.

    The final total must lie in [initial + ok mints - ok purchases - unknown purchases,
    initial + ok mints + unknown mints - ok purchases]: every acknowledged mint/purchase happened, any subset of
    the unknown ones did, no failed one did.
    """
    name = "conservation"
    sums = Counter()
    for e in history.op_events():
        if e.kind in ("mint", "purchase") and e.outcome != "failed":
            sums[(e.kind, e.outcome)] += e.amount
    initial_total = sum(_coins(d) for d in initial.values())
    final_total = sum(_coins(d) for d in final.values())
    low = initial_total + sums[("mint", "ok")] - sums[("purchase", "ok")] - sums[("purchase", "unknown")]
    high = initial_total + sums[("mint", "ok")] + sums[("mint", "unknown")] - sums[("purchase", "ok")]
    negative = sorted(k for k, d in final.items() if _coins(d) < 0)
    details = {"initial_total": initial_total, "final_total": final_total, "low": low, "high": high,
               "ok_mints": sums[("mint", "ok")], "unknown_mints": sums[("mint", "unknown")],
               "ok_purchases": sums[("purchase", "ok")], "unknown_purchases": sums[("purchase", "unknown")],
               "negative": negative}
    if not low <= final_total <= high:
        verb = "created" if final_total > high else "destroyed"
        return CheckResult(name, False, f"coins {verb}: final total {final_total} outside expected [{low}, {high}] "
                                        f"(initial total {initial_total})", details)
    if negative:
        k = negative[0]
        return CheckResult(name, False, f"negative balance: key {k!r} has {_coins(final[k])} coins", details)
    return CheckResult(name, True, None, details)


def check_acknowledged_writes(history: History, final: Mapping[str, Mapping[str, Any]]) -> CheckResult:
    """Every "ok" op is in the final ledger of each of its keys; no "failed" op, duplicate or unknown op id is in any.

    An op id in the ledger of a key the op does not touch counts as a phantom there.
    """
    name = "acknowledged_writes"
    ops = {e.op_id: e for e in history.op_events()}
    ledgers = {k: list(d.get("ledger", ())) for k, d in final.items()}
    problems: list[str] = []
    missing = failed = duplicated = phantom = 0
    for e in ops.values():
        if e.outcome != "ok":
            continue
        for k in e.keys:
            if e.op_id not in ledgers.get(k, ()):
                missing += 1
                problems.append(f"lost acknowledged write: op {e.op_id!r} ({e.kind}, ok) missing from ledger of {k!r}")
    for k in sorted(ledgers):
        for op_id, n in Counter(ledgers[k]).items():
            e = ops.get(op_id)
            if e is None:
                phantom += 1
                problems.append(f"phantom op: {op_id!r} in ledger of {k!r} was never recorded")
            elif k not in e.keys:
                phantom += 1
                problems.append(f"phantom op: {op_id!r} in ledger of {k!r} belongs to {list(e.keys)}")
            elif e.outcome == "failed":
                failed += 1
                problems.append(f"failed op applied: {op_id!r} ({e.kind}, failed) in ledger of {k!r}")
            if n > 1:
                duplicated += 1
                problems.append(f"duplicated op: {op_id!r} appears {n} times in ledger of {k!r}")
    details = {"ops": len(ops), "missing": missing, "failed_applied": failed, "duplicated": duplicated,
               "phantom": phantom, "problems": problems}
    return CheckResult(name, not problems, problems[0] if problems else None, details)


@dataclass(frozen=True)
class _Hold:
    key: str
    session: str
    server: str
    start: int
    end: int


def _holds(events: Iterable[LockEvent]) -> list[_Hold]:
    """Each session's hold intervals, from its lock events taken in time order (ties in recording order)."""
    holds: list[_Hold] = []
    # (key, session) -> [server, start, last renewal, ttl]
    open_: dict[tuple[str, str], list[Any]] = {}
    for e in sorted(events, key=lambda e: e.t):
        slot = (e.key, e.session)
        cur = open_.get(slot)
        if e.kind in ("acquired", "refreshed"):
            if cur is None:  # a refresh with no acquire still counts as holding from now on
                open_[slot] = [e.server, e.t, e.t, e.ttl_ms or 0]
            else:
                cur[2] = e.t
                if e.ttl_ms is not None:
                    cur[3] = e.ttl_ms
        elif cur is not None:
            server, start, renewed, ttl = open_.pop(slot)
            end = renewed + ttl if e.kind == "crashed" else e.t
            holds.append(_Hold(e.key, e.session, server, start, max(start, end)))
    for (key, session), (server, start, renewed, ttl) in open_.items():
        holds.append(_Hold(key, session, server, start, renewed + ttl))
    return holds


def check_single_holder(history: History) -> CheckResult:
    """No two different sessions ever hold one key's lock over overlapping times (touching ends are fine).

    A hold runs from "acquired" to "released"/"lost"/"vanished"; after "crashed", or with no end event, it runs to the
    last "acquired"/"refreshed" time + TTL.
    """
    name = "single_holder"
    by_key: dict[str, list[_Hold]] = {}
    for h in _holds(history.lock_events()):
        by_key.setdefault(h.key, []).append(h)
    overlaps: list[dict[str, Any]] = []
    for key in sorted(by_key):
        active: list[_Hold] = []
        for h in sorted(by_key[key], key=lambda h: (h.start, h.end)):
            active = [a for a in active if a.end > h.start]
            for a in active:
                if a.session != h.session and h.start < h.end:
                    overlaps.append({"key": key, "first": asdict(a), "second": asdict(h),
                                     "from": h.start, "to": min(a.end, h.end)})
            active.append(h)
    details = {"keys": len(by_key), "holds": sum(len(v) for v in by_key.values()), "overlaps": overlaps}
    if overlaps:
        o = overlaps[0]
        a, b = o["first"], o["second"]
        return CheckResult(name, False,
                           f"double lock on {o['key']!r}: session {a['session']!r} (server {a['server']!r}, "
                           f"held {a['start']}..{a['end']}) and session {b['session']!r} (server {b['server']!r}, "
                           f"held {b['start']}..{b['end']}) overlap over {o['from']}..{o['to']} ms", details)
    return CheckResult(name, True, None, details)


def check_no_duplicate_items(final: Mapping[str, Mapping[str, Any]]) -> CheckResult:
    """No item id is in two inventories, or twice in one."""
    name = "no_duplicate_items"
    holders: dict[str, list[str]] = {}
    for key in sorted(final):
        for item in final[key].get("items", ()):
            holders.setdefault(item, []).append(key)
    dupes = {item: keys for item, keys in holders.items() if len(keys) > 1}
    details = {"items": len(holders), "duplicated": dupes}
    if dupes:
        item = next(iter(dupes))
        return CheckResult(name, False, f"duplicated item {item!r} held by {dupes[item]}", details)
    return CheckResult(name, True, None, details)


def run_checks(history: History, initial: Mapping[str, Mapping[str, Any]],
               final: Mapping[str, Mapping[str, Any]]) -> list[CheckResult]:
    """All four checkers, in a fixed order: conservation, acknowledged writes, single holder, duplicate items."""
    return [
        check_conservation(history, initial, final),
        check_acknowledged_writes(history, final),
        check_single_holder(history),
        check_no_duplicate_items(final),
    ]
