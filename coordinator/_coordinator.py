"""The transaction coordinator: two-phase commit across key actors, Lyra's protocol with recovery.

One transaction over keys loaded by one server (in one or many key actors):
  1. prepare: every involved session joins (it blocks its other operations) and answers a copy of its data;
  2. the transform runs once, on copies (or frozen data); every key's new data is checked storable (as `update`
     checks it, so it raises the same DataStoreError), each changed key's against the schema;
     0 keys changed: nothing is written; 1: an ordinary in-memory update, saved as any update is;
  3. marker: {"state": "pending", "store", "keys", "created"} under the transaction id in `lodestore/tx`;
  4. each session writes its record as {committed_data: before, tx_id, tx_patch} (fenced like every write);
  5. commit point: the marker goes from "pending" to "committed" by compare-and-set. A participant that timed out
     turns a pending marker to "aborted" the same way, so exactly one of the two wins;
  6. the sessions take the new data; 7. the marker is removed (records resolve to committed without it).
Abort before the commit point: marker to "aborted", sessions rewrite their records without the transaction, then the
marker goes. So a reader (load, peek, read_version) sees the patch applied exactly when the marker is "committed" or
gone, and never a mix. `recover()` (a restarted coordinator) finds every marker: committed ones are removed, pending
ones aborted, aborted ones rolled back (records cleaned by compare-and-set) and removed.

Plain asyncio, no Ray: participants are actor references of the world's runtime (key hosts in this process, or Ray
handles of key actors and simulator hosts), each answering `tx_calls`.
Calls to one participant in one loop turn travel as one message. `hook(step, tx_id)` runs at every protocol step;
tests raise `SimulatedCrash` from it to stop the coordinator there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from lodestore.actors import (ABSENT, TX_STORE, TxFinish, TxPrepare, TxWrite, abort_if_pending, check_schema,
                              commit_if_pending, records_store, without_tx)
from lodestore.actors import records as rec
from lodestore.coordinator._errors import KeysChangedError, TxAbortedError, TxUnknownError
from lodestore.storage import (Backoff, Coalescer, DataStoreError, Server, TransformError, canonical, new_id, retry,
                               sleep)

__all__ = ["Coordinator", "TxRequest", "Step", "CoordinatorStatistics"]

_MARKER_READS = 5   # after an ambiguous commit write, how often the marker is read to learn the outcome


class Step(str, Enum):
    PREPARED = "prepared"
    MARKER_WRITTEN = "marker_written"
    RECORDS_WRITTEN = "records_written"
    COMMITTED = "committed"
    FINISHED = "finished"
    CLEANED = "cleaned"


@dataclass(frozen=True)
class TxRequest:
    """One transaction as the Store client hands it over: keys, transform, and who holds each key."""

    store: str
    keys: tuple[str, ...]
    fn: Callable[[dict], Any]
    immutable: bool
    schema: Callable[[Any], Any] | None
    participants: dict            # key -> the actor reference (in the world's runtime) holding its session
    timeout_s: float = 60.0


@dataclass
class CoordinatorStatistics:
    committed: int = 0
    aborted: int = 0
    unknown: int = 0
    unchanged: int = 0
    single_key: int = 0
    recovered_committed: int = 0
    recovered_aborted: int = 0


def _check_transform_result(req: TxRequest, state: dict, verdict: Any) -> dict | None:
    """The new data of every key, or None when the transform aborted."""
    if req.immutable:
        if verdict is False:
            return None
        if not isinstance(verdict, (dict, rec.FrozenDict)):
            raise TransformError(f"tx_immutable transform must return the new {{key: data}} or False, got "
                                 f"{verdict!r:.60}")
        if set(verdict) != set(req.keys):
            raise KeysChangedError(f"Keys changed in transaction: expected {sorted(req.keys)}, got {sorted(verdict)}")
        return {k: rec.thaw(v) for k, v in verdict.items()}
    if verdict is not True and verdict is not False:
        raise TransformError(f"tx transform must return True (commit) or False (abort), got {verdict!r:.60}")
    if set(state) != set(req.keys):
        raise KeysChangedError(f"Keys changed in transaction: expected {sorted(req.keys)}, got {sorted(state)}")
    return dict(state) if verdict else None


class Coordinator:
    """Runs transactions and recovers in-doubt ones. Build it inside the event loop it will run on."""

    def __init__(self, world: Any, hook: Callable[[Step, str], None] | None = None,
                 job_id: str = "lodestore-coordinator") -> None:
        # Infrastructure, not a game server: its requests are bounded by the participants' (each transaction costs
        # about three marker requests), so it spends no game server's budget and waits in no throttle queue.
        self.server = Server(world, job_id, budgeted=False)
        self.markers = self.server.datastores.get_data_store(TX_STORE)
        self.hook = hook
        self.stats = CoordinatorStatistics()
        self._running: set[str] = set()
        self._runtime = world.runtime
        self._peers: dict[Any, Coalescer] = {}

    def statistics(self) -> CoordinatorStatistics:
        return CoordinatorStatistics(**vars(self.stats))

    def _peer(self, target: Any) -> Coalescer:
        """A participant's batcher: its `TxPrepare`, `TxWrite` and `TxFinish` of one loop turn travel in one
        `tx_calls` message. Kept across transactions, so concurrent ones share messages; a reply is the result or
        the exception (a dead key actor's failure included) as a value."""
        peer = self._peers.get(target)
        if peer is None:
            peer = self._peers[target] = Coalescer(lambda calls: self._runtime.acall(target, "tx_calls", calls))
        return peer

    async def _retrying(self, call: Callable) -> Any:
        """A marker or record request, retried on retryable DataStore errors, waiting on the world's clock."""
        clock = self.server.world.clock
        return await retry(call, attempts=_STORAGE_ATTEMPTS, backoff=_STORAGE_BACKOFF, retryable=_retryable,
                           sleep=lambda seconds: sleep(clock, seconds))

    def _step(self, step: Step, tx_id: str) -> None:
        if self.hook is not None:
            self.hook(step, tx_id)

    # ------------------------------------------------------------------------------------------------ run

    async def run(self, req: TxRequest, tx_id: str | None = None) -> bool:
        """Run one transaction: True when it committed (or changed nothing), False when the transform aborted it.
        Raises TxAbortedError (nothing happened, safe to retry), TxUnknownError, or the transform's error."""
        tx_id = tx_id or new_id()
        self._running.add(tx_id)
        try:
            return await self._run(req, tx_id)
        finally:
            self._running.discard(tx_id)

    async def _run(self, req: TxRequest, tx_id: str) -> bool:
        peers: dict[Any, tuple[Coalescer, list[str]]] = {}
        for key in req.keys:
            peer, keys = peers.setdefault(req.participants[key], (self._peer(req.participants[key]), []))
            keys.append(key)
        groups = list(peers.values())

        async def each(request_for: Callable[[list[str]], Any]) -> dict:
            """Send every participant `request_for(its keys)`; {key: reply} (a reply may be an exception)."""
            calls = [(keys, peer.submit(request_for(keys))) for peer, keys in groups]
            merged: dict = {}
            for keys, reply in zip([k for k, _ in calls], await asyncio.gather(*(c for _, c in calls))):
                merged.update(reply if isinstance(reply, dict) else {k: reply for k in keys})
            return merged

        async def release(outcomes: dict) -> dict:
            return await each(lambda keys: TxFinish(tx_id, req.store, {k: outcomes.get(k, ("abort",)) for k in keys}))

        befores = await each(lambda keys: TxPrepare(tx_id, req.store, keys, req.timeout_s))
        failed = {k: v for k, v in befores.items() if isinstance(v, BaseException)}
        if failed:
            await release({})
            self.stats.aborted += 1
            key, exc = next(iter(failed.items()))
            raise TxAbortedError(f"Transaction aborted: key {key!r} could not join: {exc}")
        self._step(Step.PREPARED, tx_id)

        state = {k: (rec.freeze(befores[k]) if req.immutable else rec.thaw(befores[k])) for k in req.keys}
        try:
            try:
                verdict = req.fn(state)
            except Exception as exc:
                raise TransformError(f"tx transform raised {type(exc).__name__}: {exc}") from exc
            afters = _check_transform_result(req, state, verdict)
            for key in afters or ():   # before comparing: only storable data has canonical bytes
                rec.check_data(afters[key], what=f"data for key {key!r}")
            changed = [] if afters is None else \
                [k for k in req.keys if canonical(afters[k]) != canonical(befores[k])]
            for key in changed:
                check_schema(req.schema, key, afters[key])
        except BaseException:
            await release({})
            raise
        if afters is None:
            await release({})
            return False
        if not changed:
            self.stats.unchanged += 1
            await release({})
            return True
        if len(changed) == 1:
            key = changed[0]
            self.stats.single_key += 1
            replies = await release({key: ("apply", afters[key])})
            if isinstance(replies.get(key), BaseException):
                raise TxAbortedError(f"Transaction aborted: key {key!r} refused the change: {replies[key]}")
            return True
        return await self._two_phase(req, tx_id, befores, afters, changed, each, release)

    async def _two_phase(self, req, tx_id, befores, afters, changed, each, release) -> bool:
        marker = {"state": "pending", "store": req.store, "keys": changed, "created": self.server.world.now()}
        try:  # written as a create-only update: its KeyInfo lets the commit point skip a read
            written = await self._retrying(lambda: self.markers.aio.update(tx_id, lambda old, info: marker,
                                                                      current=(None, None)))
        except DataStoreError as exc:
            return await self._abort(tx_id, release, f"the marker could not be written: {exc}")
        self._step(Step.MARKER_WRITTEN, tx_id)

        patches = {k: rec.make_patch(befores[k], afters[k]) for k in changed}
        writes = await each(lambda keys: TxWrite(tx_id, req.store, {k: (patches[k], afters[k]) for k in keys
                                                                     if k in patches}))
        failed = {k: v for k, v in writes.items() if isinstance(v, BaseException)}
        if failed:
            key, exc = next(iter(failed.items()))
            return await self._abort(tx_id, release, f"key {key!r} could not write: {exc}")
        self._step(Step.RECORDS_WRITTEN, tx_id)

        outcome = await self._commit_point(tx_id, written)
        if outcome == "aborted":
            return await self._abort(tx_id, release, "a participant gave up waiting and aborted it")
        if outcome == "unknown":
            self.stats.unknown += 1
            raise TxUnknownError(f"transaction {tx_id}: the commit could not be confirmed; it resolves by itself")
        self._step(Step.COMMITTED, tx_id)
        self.stats.committed += 1
        await release({k: ("commit",) for k in changed})
        self._step(Step.FINISHED, tx_id)
        try:
            await self._retrying(lambda: self.markers.aio.remove(tx_id))
            self._step(Step.CLEANED, tx_id)
        except DataStoreError:
            pass  # committed either way; recovery removes the marker later
        return True

    async def _commit_point(self, tx_id: str, written: tuple) -> str:
        """Turn the marker from pending to committed: "committed", "aborted" (a participant won), or "unknown".
        `written` is the marker as this coordinator wrote it: the compare-and-set starts from it."""
        current = written if written[1] is not None else None
        for _ in range(_MARKER_READS):
            try:
                marker, _ = await self.markers.aio.update(tx_id, commit_if_pending, current=current)
                if marker is not None:
                    return "committed"
            except DataStoreError:
                pass  # ambiguous: read the marker to learn what happened
            try:
                marker, _ = await self.markers.aio.get(tx_id, False)
            except DataStoreError:
                continue
            state = marker.get("state") if isinstance(marker, dict) else None
            if state in ("committed", "aborted"):
                return state
        return "unknown"

    async def _abort(self, tx_id: str, release, reason: str) -> bool:
        """Before the commit point: marker to aborted (unless it committed after all), records cleaned, marker
        removed. Raises TxAbortedError; returns True only when the commit turned out to have happened."""
        try:
            await self._retrying(lambda: self.markers.aio.update(tx_id, abort_if_pending))
            marker, _ = await self._retrying(lambda: self.markers.aio.get(tx_id, False))
        except DataStoreError as exc:
            self.stats.unknown += 1
            raise TxUnknownError(f"transaction {tx_id}: could not abort it ({exc}); it resolves by itself") \
                from None
        if isinstance(marker, dict) and marker.get("state") == "committed":
            self.stats.committed += 1
            await release({k: ("commit",) for k in marker.get("keys", ())})
            return True
        replies = await release({})
        self.stats.aborted += 1
        if isinstance(marker, dict) and not any(isinstance(r, BaseException) for r in replies.values()):
            try:
                # A key whose session is gone (its server crashed, its lock ran out) may still hold this
                # transaction in its record; clean it here, or "marker gone" would read as committed.
                records = self.server.datastores.get_data_store(records_store(marker["store"]))
                for key in [k for k, r in replies.items() if r == ABSENT]:
                    await self._retrying(lambda key=key: records.aio.update(key, without_tx(tx_id)))
                await self._retrying(lambda: self.markers.aio.remove(tx_id))
            except DataStoreError:
                pass  # recovery cleans the records and removes the marker
        raise TxAbortedError(f"Transaction aborted: {reason}")

    # ------------------------------------------------------------------------------------------- recovery

    async def recover(self) -> dict:
        """Settle every marker left behind (a coordinator that died, a removal that failed). Idempotent."""
        settled = {"committed": 0, "aborted": 0}
        cursor = None
        tx_ids: list[str] = []
        while True:
            page = await self._retrying(lambda: self.markers.aio.list_keys(page_size=500, cursor=cursor, exclude_deleted=True))
            tx_ids.extend(page.items)
            if page.is_finished:
                break
            cursor = page.cursor
        for tx_id in tx_ids:
            if tx_id in self._running:
                continue
            outcome = await self._settle(tx_id)
            if outcome is not None:
                settled[outcome] += 1
        self.stats.recovered_committed += settled["committed"]
        self.stats.recovered_aborted += settled["aborted"]
        return settled

    async def _settle(self, tx_id: str) -> str | None:
        await self._retrying(lambda: self.markers.aio.update(tx_id, abort_if_pending))
        marker, _ = await self._retrying(lambda: self.markers.aio.get(tx_id, False))
        if not isinstance(marker, dict):
            return None
        if marker.get("state") != "committed":
            records = self.server.datastores.get_data_store(records_store(marker["store"]))
            for key in marker.get("keys", ()):
                await self._retrying(lambda key=key: records.aio.update(key, without_tx(tx_id)))
        await self._retrying(lambda: self.markers.aio.remove(tx_id))
        return "committed" if marker.get("state") == "committed" else "aborted"


_STORAGE_BACKOFF = Backoff(base=1.0, cap=8.0)   # marker and record requests retried after 1, 2, 4 simulated s
_STORAGE_ATTEMPTS = 4


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, DataStoreError) and exc.retryable
