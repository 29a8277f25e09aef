"""Requests to a key host: one frozen dataclass per operation (pykka's typed messages), dispatched by type.

Owns the shape of every message a key host answers: the Store API's calls (`HostRequest`s: `Load`, `Get`, `Update`,
..., a batch of them answered by `KeyHost.handle`) and a coordinator's participant calls (`TxCall`s: `TxPrepare`,
`TxWrite`, `TxFinish`, a batch answered by `KeyHost.tx_calls`).

They are plain values: they check nothing and do nothing (the host checks keys and arguments when it answers one),
and they travel through Ray's serializer (an `Update` carries the user's function).
Delivered twice (Ray may retry a message), each does what its class says: reads answer again, `Load` of a loaded key
and `Unload` of an unloaded key are no-ops, `Update` and `UpdateImmutable` run the transform again, `Save` writes
again, `Close` finds nothing left to save; the transaction calls are idempotent per transaction id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["HostRequest", "KeyRequest", "Load", "Get", "Update", "UpdateImmutable", "Save", "Unload", "Close", "Peek",
           "ProbeLockActive", "ListVersions", "ReadVersion", "IsLoaded", "LoadedKeys", "Statistics",
           "TxCall", "TxPrepare", "TxWrite", "TxFinish"]


# --------------------------------------------------------------------------------------------- Store API

@dataclass(frozen=True)
class HostRequest:
    """A Store API call on its way to a key host: the store it is for."""

    store: str


@dataclass(frozen=True)
class KeyRequest(HostRequest):
    """A call about one key of the store."""

    key: str


@dataclass(frozen=True)
class Load(KeyRequest):
    """Lock the key for this server and read its data (migrated, schema-checked); answers None. Twice: a no-op once
    loaded, LoadInProgressError while the first still loads."""

    user_ids: Any = None


@dataclass(frozen=True)
class Get(KeyRequest):
    """A deep copy of the loaded key's data."""


@dataclass(frozen=True)
class Update(KeyRequest):
    """`fn(copy)` changes a copy in place and returns True to commit it; answers the verdict. Twice: runs again."""

    fn: Callable[[Any], Any]


@dataclass(frozen=True)
class UpdateImmutable(KeyRequest):
    """`fn(frozen)` returns the new data, or False; answers whether it committed. Twice: runs again."""

    fn: Callable[[Any], Any]


@dataclass(frozen=True)
class Save(KeyRequest):
    """Write the key's data now, changed or not; answers True. Twice: writes again."""


@dataclass(frozen=True)
class Unload(KeyRequest):
    """Final save (when changed) and lock release; answers True, or False when the key was not loaded (so twice:
    False the second time)."""


@dataclass(frozen=True)
class Close(HostRequest):
    """Unload every key of the store (final saves at emergency priority); everything after is refused."""


@dataclass(frozen=True)
class Peek(KeyRequest):
    """The key's stored data (transactions resolved, migrated), without locking it, or None."""


@dataclass(frozen=True)
class ProbeLockActive(KeyRequest):
    """Whether some session holds the key's lock now."""


@dataclass(frozen=True)
class ListVersions(KeyRequest):
    """A page of the key's record versions; `kwargs` are `DataStore.list_versions`'s keyword arguments."""

    kwargs: dict | None = None


@dataclass(frozen=True)
class ReadVersion(KeyRequest):
    """The data stored in one version of the key's record, or None."""

    version: str


@dataclass(frozen=True)
class IsLoaded(KeyRequest):
    """Whether this host has a live session of the key."""


@dataclass(frozen=True)
class LoadedKeys(HostRequest):
    """The keys of the store this host has live sessions of."""


@dataclass(frozen=True)
class Statistics(HostRequest):
    """A `StoreStatistics` snapshot of the store on this host."""


# ---------------------------------------------------------------------------------- transaction participant

@dataclass(frozen=True)
class TxCall:
    """A coordinator's call to the participants of transaction `tx_id` on one host, for several keys of `store`.
    Each answers {key: result or exception}. `keys` are the keys it is for; `only(keys)` is the same call for some
    of them (a router that splits it between hosts)."""

    tx_id: str
    store: str

    def only(self, keys: list[str]) -> "TxCall":
        raise NotImplementedError


@dataclass(frozen=True)
class TxPrepare(TxCall):
    """Each key's session joins the transaction (its other operations wait) and answers a copy of its data. Twice:
    the same data again."""

    keys: list[str]
    timeout_s: float

    def only(self, keys: list[str]) -> "TxPrepare":
        return dataclasses.replace(self, keys=list(keys))


@dataclass(frozen=True)
class TxWrite(TxCall):
    """Phase one: `writes` is {key: (patch, data after)}; each session writes its record with the transaction
    pending (fenced). Twice: written once."""

    writes: dict

    @property
    def keys(self) -> list[str]:
        return list(self.writes)

    def only(self, keys: list[str]) -> "TxWrite":
        return dataclasses.replace(self, writes={k: self.writes[k] for k in keys})


@dataclass(frozen=True)
class TxFinish(TxCall):
    """Phase two: `outcomes` is {key: ("commit",) | ("apply", data) | ("abort",)}. A key with no session here answers
    `ABSENT`. Twice: a no-op."""

    outcomes: dict

    @property
    def keys(self) -> list[str]:
        return list(self.outcomes)

    def only(self, keys: list[str]) -> "TxFinish":
        return dataclasses.replace(self, outcomes={k: self.outcomes[k] for k in keys})
