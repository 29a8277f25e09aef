"""What became of the writes that came in from outside a paced run (through its ingress: a `[serve]` run's own
Open Cloud server, `lodestore serve --world`, `World.connect`).

The question a user asks of a bulk edit or a migration tried against a simulated live game is whether each edit
stayed. A session-locked game holds a player's data in memory and saves it over whatever is stored, so an edit to a
key whose lock a session holds is, in most designs, replaced by that session's next save. From the run's raw
requests (`storage.REQUEST_FIELDS`, the outside ones marked `storage.OUTSIDE_PREFIX`) each acknowledged outside
write of a DataStore entry is one of:

- "kept": no game server wrote the entry after it (it is the entry's version at the end, or only outside writes
  followed);
- "replaced": a game server's write came next; "unseen" among them when that write did not read the outside
  version (it wrote over the edit without looking: a SetAsync, or a request that read the entry before the edit);

and each is "held" when a session held the entry's key lock at the moment it completed (the game's lock events name
the same key as the entry: `Store` records are keyed by player). Whether a replacing save carried the edit's content
is a question of the design's data, not of versions: the timeline of the key shows both values.

Never does: judge (a replaced edit is what Roblox does too; it is the figure a user reads before running the tool
on real players).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from lodestore.sim._checkers import LockEvent, _holds
from lodestore.sim._consistency import RawRequest
from lodestore.storage import OUTSIDE_PREFIX

__all__ = ["outside_writes", "is_outside"]

_WRITES = frozenset({"set", "update", "increment", "remove"})
EXAMPLES = 10


def _job(obj: Any) -> str:
    return str(obj).split("#", 1)[0]


def is_outside(obj: Any) -> bool:
    """Whether a raw request came in from outside the run (through its ingress: Open Cloud, `World.connect`), not
    from a game server."""
    return str(obj).startswith(OUTSIDE_PREFIX)


def outside_writes(requests: Iterable[tuple], lock_events: Iterable[LockEvent] = ()) -> dict[str, Any]:
    """The fate of every acknowledged outside DataStore write among `requests` (raw request tuples, times in ms
    since the run began), with the lock holds of `lock_events`: counts, by data store, and up to `EXAMPLES`
    replaced edits of keys a session held (the ones a user must look at first)."""
    writes: dict[tuple, list[RawRequest]] = defaultdict(list)   # (store, scope, key) -> the writes of a version
    outside: list[RawRequest] = []
    for r in map(RawRequest._make, requests):
        if r.service != "ds" or r.call not in _WRITES or r.written is None:
            continue
        writes[(r.store, r.scope, r.key)].append(r)
        if is_outside(r.obj) and r.outcome == "ok":
            outside.append(r)
    for rs in writes.values():
        rs.sort(key=lambda r: r.written)
    holds: dict[str, list] = defaultdict(list)
    for hold in _holds(lock_events):
        holds[hold.key].append(hold)

    totals = {"writes": len(outside), "kept": 0, "replaced": 0, "replaced_unseen": 0, "held": 0, "held_replaced": 0}
    by_store: dict[str, dict[str, int]] = defaultdict(lambda: {"writes": 0, "replaced": 0, "held": 0})
    examples: list[dict[str, Any]] = []
    for w in sorted(outside, key=lambda r: (r.complete, r.key)):
        nxt = next((r for r in writes[(w.store, w.scope, w.key)] if r.written > w.written), None)
        holder = next((h.server for h in holds.get(w.key, ()) if h.start <= w.complete <= h.end), None)
        counts = by_store[w.store]
        counts["writes"] += 1
        if holder is not None:
            totals["held"] += 1
            counts["held"] += 1
        if nxt is None or is_outside(nxt.obj):
            totals["kept"] += 1
            continue
        totals["replaced"] += 1
        totals["replaced_unseen"] += nxt.read != w.written
        counts["replaced"] += 1
        if holder is not None:
            totals["held_replaced"] += 1
            if len(examples) < EXAMPLES:
                examples.append({"store": w.store, "scope": w.scope, "key": w.key, "version": w.written,
                                 "t_ms": w.complete, "held_by": holder, "replaced_by": _job(nxt.obj),
                                 "replaced_at_ms": nxt.complete, "replacing_version": nxt.written,
                                 "seen": nxt.read == w.written})
    return {**totals, "by_store": dict(sorted(by_store.items())), "examples": examples}
