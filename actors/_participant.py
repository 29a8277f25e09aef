"""The transaction participant: one session's side of the coordinator's two-phase commit.

Owns the transaction holding the session (`_Tx`: its id, the data before it, the data after it, whether its
phase-one record was written), the three steps a coordinator drives (`prepare`, `write`, `finish`), and the timer
that settles the transaction from what is stored when the coordinator goes quiet for `timeout_s` (a written record
is settled by the marker's compare-and-set, `resolve_in_doubt`; never by guessing). While a transaction holds the
session it holds the session's mailbox and save lane, so no update, save or unload runs until it finishes.

It never writes except through the session's fenced `write_record`, never touches the marker except to settle a
transaction it timed out on, and never guesses an outcome.
Delivered twice (every message names its transaction): a repeated prepare answers the same data, a repeated write is
done once, a repeated or late finish is a no-op; a message for a transaction this participant gave up on (timed out)
is refused with KeyClosedError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lodestore.actors import _records as rec
from lodestore.actors._errors import KeyClosedError, LockLostError, TxLockedError
from lodestore.actors._records import copy_data
from lodestore.actors._txn import resolve_in_doubt
from lodestore.storage import Timer

if TYPE_CHECKING:
    from lodestore.actors._session import Session

__all__ = ["TxParticipant"]

_REFUSED_KEPT = 16           # transactions given up on that a late message is still refused for
_WRITE_SETTLE_S = 5.0        # a timed-out transaction whose write is in flight is settled this much later
_IN_DOUBT_RETRY_S = 10.0     # ... and one whose marker could not be read, this much later


@dataclass
class _Tx:
    id: str
    before: Any
    after: Any = None
    written: bool = False
    writing: bool = False   # a phase-one write is in flight: it may land, so the session cannot give up yet
    timer: Timer | None = None


class TxParticipant:
    """The participant of one session. The session makes it; its key host routes `TxPrepare`, `TxWrite` and
    `TxFinish` to it."""

    __slots__ = ("session", "tx", "_refused")

    def __init__(self, session: Session) -> None:
        self.session = session
        self.tx: _Tx | None = None          # the transaction holding the session, if any
        self._refused: list[str] = []       # transactions given up on: a late message is refused

    async def prepare(self, tx_id: str, timeout_s: float) -> Any:
        """Join transaction `tx_id`: block the session's other operations and answer a copy of its data."""
        s = self.session
        if self.tx is not None and self.tx.id == tx_id:
            return copy_data(self.tx.before)
        if tx_id in self._refused:
            raise KeyClosedError(f"Key is closed: key {s.key!r} already gave up transaction {tx_id!r}")
        if self.tx is not None:
            raise TxLockedError(f"Key is already locked by another transaction: key {s.key!r}")
        s.check_usable()
        await s.mailbox.acquire()
        try:
            await s.save_lane.acquire()
        except BaseException:
            s.mailbox.release()
            raise
        try:
            if self.tx is not None:
                raise TxLockedError(f"Key is already locked by another transaction: key {s.key!r}")
            s.check_usable()
        except BaseException:
            s.save_lane.release()
            s.mailbox.release()
            raise
        s.enter_transaction()
        self.tx = _Tx(tx_id, s.data)
        sched = s.rt.scheduler
        self.tx.timer = sched.call_later(timeout_s, lambda: sched.spawn(self._expire(tx_id)))
        return copy_data(s.data)

    def _current(self, tx_id: str) -> _Tx:
        if self.tx is None or self.tx.id != tx_id:
            raise KeyClosedError(f"Key is closed: key {self.session.key!r} is not in transaction {tx_id!r} any more")
        return self.tx

    async def write(self, tx_id: str, patch: list, after: Any) -> None:
        """Phase one: write the record as {committed_data: before, tx_id, tx_patch} (fenced, as every write)."""
        tx = self._current(tx_id)
        if tx.written:
            return
        s = self.session
        rec.check_data(after, what=f"data for key {s.key!r}")
        s.rt.check_schema(s.key, after)
        txinfo = rec.pending_txinfo(tx.before, tx_id, patch)
        tx.writing = True
        try:
            ok = await s.write_record(tx.before, txinfo=txinfo)
        except LockLostError:
            s.lose("the lock ran out before the transaction's write")
            raise
        finally:
            tx.writing = False
        if not ok:
            s.lose("another session wrote the record: this session's lock was taken over")
            raise LockLostError(f"Key is closed: the lock on key {s.key!r} was lost in a transaction")
        tx.after, tx.written = after, True

    async def finish(self, tx_id: str, outcome: str, after: Any = None) -> None:
        """Phase two. "commit": the data becomes the transaction's result (the record already holds it, resolved by
        the marker). "apply": a one-key transaction: the data changes like an update, to be saved as usual.
        "abort": the data stays; a record written in phase one is rewritten without the transaction."""
        if self.tx is None or self.tx.id != tx_id:
            return  # finished already, or never joined: a repeated or late message
        tx, s = self.tx, self.session
        try:
            if outcome == "commit":
                new = tx.after if tx.written else after
                old = s.replace_data(new)
                if tx.written:
                    s.saved_checksum = rec.checksum(new)
                s.rt.counters.tx_committed += 1
                s.rt.notify_changed(s.key, new, old)
            elif outcome == "apply":
                s.rt.check_schema(s.key, after)
                old = s.replace_data(after)
                s.rt.counters.tx_committed += 1
                s.rt.notify_changed(s.key, after, old)
            elif outcome == "abort":
                s.rt.counters.tx_aborted += 1
                if tx.written:
                    await s.write_record(tx.before)
                    s.saved_checksum = rec.checksum(tx.before)
            else:
                raise ValueError(f"unknown transaction outcome {outcome!r}")
        finally:
            if self.tx is tx:
                self.release()

    def holds(self, tx_id: str) -> bool:
        """Whether transaction `tx_id` holds this session now."""
        return self.tx is not None and self.tx.id == tx_id

    def release(self) -> None:
        """The transaction lets go of the session (finished, or the session lost its lock)."""
        tx, self.tx = self.tx, None
        if tx is None:
            return
        if tx.timer is not None:
            tx.timer.cancel()
        s = self.session
        s.leave_transaction()
        s.save_lane.release()
        s.mailbox.release()

    def cancel_timer(self) -> None:
        """The session ended: the transaction's timer must not fire (what holds the session stays as it is)."""
        if self.tx is not None and self.tx.timer is not None:
            self.tx.timer.cancel()

    async def _expire(self, tx_id: str) -> None:
        """The coordinator went quiet: settle the transaction from what is stored, never by guessing."""
        tx = self.tx
        if tx is None or tx.id != tx_id:
            return
        s = self.session
        rt = s.rt
        sched = rt.scheduler
        if tx.writing:  # the record may be landing right now: settle once the write has answered
            tx.timer = sched.call_later(_WRITE_SETTLE_S, lambda: sched.spawn(self._expire(tx_id)))
            return
        rt.counters.tx_timeouts += 1
        self._refused = (self._refused + [tx_id])[-_REFUSED_KEPT:]
        if not tx.written:  # without this record the commit point cannot have been reached
            rt.log("warn", f"transaction {tx_id} timed out before its write; leaving it", key=s.key)
            self.release()
            return
        try:
            outcome = await resolve_in_doubt(rt, tx_id, s.key)
        except Exception as exc:
            rt.log("warn", f"transaction {tx_id} in doubt ({exc}); asking again later", key=s.key)
            tx.timer = sched.call_later(_IN_DOUBT_RETRY_S, lambda: sched.spawn(self._expire(tx_id)))
            return
        rt.log("warn", f"transaction {tx_id} timed out; the store says {outcome}", key=s.key)
        await self.finish(tx_id, "commit" if outcome == "committed" else "abort")
