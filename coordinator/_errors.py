"""Typed outcomes of a transaction that did not simply commit.

`TxAbortedError`: nothing of the transaction is visible anywhere, and it is safe to retry. `TxUnknownError`: the
coordinator could not learn whether the commit point was reached (a storage answer was lost, or the coordinator
died); readers still see all of it or none of it, and the participants settle it from the marker store.
"""

from __future__ import annotations

from lodestore.actors import StoreError

__all__ = ["TxError", "TxAbortedError", "TxUnknownError", "KeysChangedError", "SimulatedCrash"]


class TxError(StoreError):
    """Base of the transaction outcomes (a Store API error)."""


class TxAbortedError(TxError):
    """"Transaction aborted": it never reached its commit point and left nothing behind; safe to retry."""


class TxUnknownError(TxError):
    """The transaction may or may not have committed; it resolves all-or-nothing without the caller."""


class KeysChangedError(TxError):
    """"Keys changed in transaction": the transform added or removed keys of the state it was given."""


class SimulatedCrash(BaseException):
    """Raised by a test's fault hook to stop the coordinator at a protocol step, as if its process died there.
    A BaseException, so no handler of the protocol catches it (a dead process cleans nothing up)."""
