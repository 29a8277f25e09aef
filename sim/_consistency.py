"""The consistency checker: a run's raw DataStore and MemoryStore requests against what Roblox promises.

Each DataStore key is a register with Roblox's documented weakenings, and each MemoryStore map item likewise:

- a `get` served by its data store object's read cache (recorded as a "hit") may return a version that object
  itself fetched or wrote (a get that missed the cache, a write) less than 4 s (`READ_CACHE_MS`) before the get
  began. Any other get (a miss, `use_cache=false`, or a hit on a version the object did not fetch or write within
  4 s) must return the latest version acknowledged before it
  began, or a newer one (a concurrent write, or a failed one that landed). A MemoryStore item has no cache;
- `UpdateAsync` (and a map item's `update`) is atomic: an update that succeeded read version b and wrote w, so
  nobody's version can lie between b and w; two updates that both read b and both succeeded lost one of them;
- a failed or ambiguous write may have landed: the versions it may have made are unknown, so a read may see a
  version no acknowledged write made. A read can never see a version whose acknowledged writer began after the read
  ended. A version no recorded write can have made is counted (`unattributed_reads`), not held against the store:
  writers outside the game servers are not recorded (the coordinator's recovery of a transaction, Open Cloud);
- versions strictly increase per key: a write acknowledged before another began has the lower version, and no two
  writes make one version (a key purged for good, by an erasure or a deleted data store, starts its versions over:
  simulations do neither).

A read of no entry (None) is the key's state before its first write, or after a remove (a tombstone, right after
the version the remove reported as previous); a MemoryStore item also vanishes at its expiration (not recorded),
so an empty read of an item is always allowed, and an update of an item that read nothing is not checked.

The checker works key by key (records grouped once, each key's sorted once): linear in the run's length up to the
sort. Every violation comes with its witness, the two or three requests that cannot be ordered.

Owns: `check_consistency(requests) -> CheckResult` (name "consistency"), the report's verdict on the store itself.
Never does: judge the application above the store (a design that loses coins with a consistent store passes here:
the other checkers blame it).
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any, Iterable, NamedTuple

from lodestore.sim._checkers import CheckResult
from lodestore.storage import READ_CACHE_MS, REQUEST_FIELDS

__all__ = ["check_consistency", "RawRequest", "VIOLATION_KINDS"]

NAME = "consistency"
WRITES = frozenset({"set", "update", "increment", "remove"})
KEPT = 20   # violations kept in the details (all are counted)

VIOLATION_KINDS = ("stale_read", "lost_update", "version_regression", "duplicate_version", "future_read")
"""What the checker finds: a read older than Roblox allows; an update whose read-modify-write skipped a version;
a write acknowledged after another with a lower version; two writes of one version; a read of a version whose
(acknowledged) writer began after the read ended."""


class RawRequest(NamedTuple):
    """One raw request record (`storage.REQUEST_FIELDS`)."""

    service: str
    store: str
    scope: str
    key: str
    obj: str
    call: str
    cache: str
    invoke: int
    complete: int
    outcome: str
    read: int | None
    written: int | None

    def describe(self) -> str:
        versions = []
        if self.call != "set" and self.call != "increment":
            versions.append(f"read {_v(self.read)}")
        if self.call != "get" and self.call != "remove":
            versions.append(f"wrote {_v(self.written)}")
        cache = f" (cache {self.cache})" if self.call == "get" else ""
        return (f"{self.call}{cache} via {self.obj} at {self.invoke}..{self.complete} ms, {self.outcome}, "
                f"{', '.join(versions)}")

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(REQUEST_FIELDS, self))


def _v(version: float | None) -> str:
    if version is None:
        return "nothing"
    if version != int(version):
        return f"the tombstone after version {int(version)}"
    return f"version {int(version)}"


class _Violation(NamedTuple):
    kind: str
    entry: str
    message: str
    witness: list[RawRequest]


def check_consistency(requests: Iterable[tuple]) -> CheckResult:
    """Check every key's raw requests (tuples or lists of `REQUEST_FIELDS`); the verdict names the first violation
    and its witness, and `details` counts them by kind (`VIOLATION_KINDS`) with the first few in full."""
    by_key: dict[tuple, list[RawRequest]] = {}
    n = 0
    for raw in requests:
        r = RawRequest._make(raw)
        by_key.setdefault((r.service, r.store, r.scope, r.key), []).append(r)
        n += 1
    violations: list[_Violation] = []
    counts: Counter = Counter()
    unattributed: list[str] = []
    for entry in sorted(by_key):
        for v in _check_key(entry, by_key[entry]):
            if v.kind == "unattributed":
                counts[v.kind] += 1
                if len(unattributed) < KEPT:
                    unattributed.append(f"{v.entry}: {v.message} by {v.witness[0].describe()}")
                continue
            counts[v.kind] += 1
            if len(violations) < KEPT:
                violations.append(v)
    details = {"requests": n, "keys": len(by_key),
               "violations": {kind: counts[kind] for kind in VIOLATION_KINDS},
               "unattributed_reads": counts["unattributed"], "unattributed_first": unattributed,
               "first": [{"kind": v.kind, "entry": v.entry, "message": v.message,
                          **dict(zip(("service", "store", "scope", "key"), v.witness[-1][:4])),
                          "witness": [w.as_dict() for w in v.witness]} for v in violations]}
    if not violations:
        return CheckResult(NAME, True, None, details)
    first = violations[0]
    steps = "; ".join(f"({i}) {w.describe()}" for i, w in enumerate(first.witness, 1))
    return CheckResult(NAME, False, f"{first.kind.replace('_', ' ')} on {first.entry}: {first.message} "
                                    f"[witness: {steps}]", details)


def _label(entry: tuple) -> str:
    service, store, scope, key = entry
    return f"DataStore {store}/{scope}/{key}" if service == "ds" else f"MemoryStore {store}/{key}"


def _check_key(entry: tuple, rs: list[RawRequest]) -> list[_Violation]:
    label = _label(entry)
    memory = entry[0] == "ms"
    out: list[_Violation] = []
    writer: dict[int, RawRequest] = {}            # version -> the acknowledged write that made it
    known: list[tuple[int, float, RawRequest]] = []   # (complete, version, write) of acknowledged versions
    tombstones: list[tuple[float, RawRequest]] = []   # acknowledged removes of a live entry
    seen: set[float] = set()                   # every version something acknowledged wrote or read
    unsure_writes: list[int] = []              # invoke times of writes that may have landed (failed, ambiguous)
    unsure_removes: list[int] = []
    observed: dict[str, list[tuple[int, int | None]]] = {}   # object -> (complete, version its cache took)
    for r in rs:
        if r.call in WRITES:
            if r.outcome != "ok":
                (unsure_removes if r.call == "remove" else unsure_writes).append(r.invoke)
                continue
            if r.call == "remove":
                if r.read is not None:
                    tomb = r.read + 0.5
                    tombstones.append((tomb, r))
                    known.append((r.complete, tomb, r))
                    seen.add(tomb)
            elif r.written is not None:
                other = writer.get(r.written)
                if other is not None:
                    out.append(_Violation("duplicate_version", label, f"two acknowledged writes made "
                                          f"{_v(r.written)}", sorted([other, r], key=lambda w: w.invoke)))
                writer[r.written] = r
                known.append((r.complete, r.written, r))
                seen.add(r.written)
        if r.outcome == "ok":
            if r.read is not None:
                seen.add(r.read)
            if entry[0] == "ds" and r.cache != "hit":
                # what the object's cache holds after it: a write's version, a get's, nothing after a remove
                saw = r.read if r.call == "get" else None if r.call == "remove" else r.written
                if r.call != "update" or r.written is not None:
                    observed.setdefault(r.obj, []).append((r.complete, saw))
    unsure_writes.sort()
    unsure_removes.sort()
    tombstones.sort(key=lambda t: t[0])
    known.sort(key=lambda k: k[0])
    order = sorted(seen)
    for seen_by in observed.values():
        seen_by.sort(key=lambda o: o[0])

    def begun_before(times: list[int], t: int) -> bool:
        return bool(times) and times[0] <= t

    floor: tuple[float, RawRequest | None] = (0, None)   # the newest version acknowledged before the request began
    i = 0
    for r in sorted(rs, key=lambda r: r.invoke):
        while i < len(known) and known[i][0] < r.invoke:
            if known[i][1] > floor[0]:
                floor = (known[i][1], known[i][2])
            i += 1
        if r.outcome != "ok":
            continue
        if r.call in ("set", "update", "increment") and r.written is not None and r.written <= floor[0]:
            out.append(_Violation("version_regression", label, f"{_v(r.written)} was written after "
                                  f"{_v(floor[0])} had been acknowledged", [floor[1], r]))
        if r.call == "set" or r.call == "increment" or (r.call == "update" and r.written is None):
            continue
        read = r.read
        if read is not None:
            made = writer.get(read)
            if made is not None and made.invoke > r.complete:
                out.append(_Violation("future_read", label, f"{_v(read)} was read before its write began",
                                      [r, made]))
            elif made is None and not begun_before(unsure_writes, r.complete):
                out.append(_Violation("unattributed", label, f"{_v(read)} was read, but no recorded write that "
                                      f"could have made it had begun", [r]))
        if not _fresh(read, floor[0], r, memory, tombstones, unsure_removes) and not _cached(read, r, observed):
            witness = [w for w in (floor[1], writer.get(read) if read is not None else None) if w is not None]
            hit = (" (a cache hit, but its object had not fetched or written that version in the 4 s before)"
                   if r.cache == "hit" else "")
            out.append(_Violation("stale_read", label, f"{r.call} returned {_v(read)}{hit}, but {_v(floor[0])} "
                                  f"had been acknowledged before it began",
                                  sorted(set(witness), key=lambda w: w.invoke) + [r]))
        if r.call == "update":
            out.extend(_lost_update(label, r, memory, order, writer, tombstones, unsure_removes))
    return out


def _fresh(read: int | None, floor: float, r: RawRequest, memory: bool, tombstones: list[tuple[float, RawRequest]],
           unsure_removes: list[int]) -> bool:
    """Whether `read` may be the latest state when `r` began, given the newest acknowledged version `floor`."""
    if read is not None:
        return read >= floor
    if memory or floor == 0 or floor != int(floor):   # expired; never written; or removed last
        return True
    if unsure_removes and unsure_removes[0] <= r.complete:   # a remove that may have landed since
        return True
    return any(t >= floor and rm.invoke <= r.complete for t, rm in tombstones)


def _cached(read: int | None, r: RawRequest, observed: dict[str, list[tuple[int, int | None]]]) -> bool:
    """Whether `r` (a get its object's cache served) returned what that cache took less than 4 s before."""
    if r.cache != "hit":
        return False
    seen_by = observed.get(r.obj, ())
    j = bisect.bisect_right(seen_by, r.invoke, key=lambda o: o[0]) - 1
    while j >= 0 and seen_by[j][0] > r.invoke - READ_CACHE_MS:
        if seen_by[j][1] == read and seen_by[j][0] <= r.invoke:
            return True
        j -= 1
    return False


def _lost_update(label: str, r: RawRequest, memory: bool, order: list[float], writer: dict[int, RawRequest],
                 tombstones: list[tuple[float, RawRequest]], unsure_removes: list[int]) -> list[_Violation]:
    """An acknowledged update read `r.read` and wrote `r.written`: any version seen strictly between them was lost."""
    base: float | None = r.read
    if base is None:   # it read no entry: the state before the first write, or the newest tombstone below
        if memory or (unsure_removes and unsure_removes[0] <= r.complete):
            return []   # an item may have expired; a remove that may have landed leaves a tombstone we cannot place
        below = [t for t, _ in tombstones if t < r.written]
        base = max(below, default=0)
    lo = bisect.bisect_right(order, base)
    hi = bisect.bisect_left(order, r.written)
    between = [u for u in order[lo:hi] if u == int(u)]   # live versions (a tombstone is the base, not a loss)
    if not between:
        return []
    u = int(between[0])
    other = writer.get(u)
    witness = sorted([w for w in (other, r) if w is not None], key=lambda w: w.invoke)
    return [_Violation("lost_update", label, f"an update read {_v(r.read)} and wrote {_v(r.written)}, so "
                       f"{_v(u)} (written in between) was lost: the read-modify-write was not atomic", witness)]
