"""The transaction vocabulary: what sessions, the coordinator and `lodestore inspect` must agree on.

Owns where a store keeps its things (records in DataStore `lodestore/records/<store>`, shard chunks in
`lodestore/shards/<store>`, locks in MemoryStore hash maps `lodestore/locks/<store>[/<partition>]`, and the world's
one marker store `lodestore/tx`), what a transaction marker says (`marker_committed`), the marker transforms that
move it (`commit_if_pending`, `abort_if_pending`: each a compare-and-set from "pending", so exactly one of a
coordinator's commit and a participant's abort wins), the record transform that takes a transaction out of a record
(`without_tx`), and how a participant settles a transaction whose coordinator went quiet (`resolve_in_doubt`).

It never decides when any of this happens (the coordinator and the participant do) and writes nothing by itself:
only `resolve_in_doubt` writes, and only the marker, by compare-and-set.

Delivered twice: every transform here cancels its write (returns None) when applied to its own result, so a
retried or repeated update changes nothing the second time; `resolve_in_doubt` asked again answers the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from lodestore.actors import _records as rec

if TYPE_CHECKING:
    from lodestore.actors._session import StoreRuntime

__all__ = ["TX_STORE", "RECORDS_PREFIX", "SHARDS_PREFIX", "MAX_STORE_NAME", "ABSENT", "records_store",
           "shards_store", "lock_map_name", "marker_committed", "abort_if_pending", "commit_if_pending",
           "without_tx", "resolve_in_doubt"]

TX_STORE = "lodestore/tx"
"""The one marker store of a world: a restarted coordinator finds every marker in it."""

RECORDS_PREFIX = "lodestore/records/"
"""A store's records live in DataStore `RECORDS_PREFIX + store` (`records_store`)."""

SHARDS_PREFIX = "lodestore/shards/"
"""A store's shard chunks live in DataStore `SHARDS_PREFIX + store` (`shards_store`)."""

MAX_STORE_NAME = 32
"""The longest store name: `RECORDS_PREFIX` + name must fit Roblox's 50-character data store names."""

ABSENT = "absent"
"""What a participant answers to `TxFinish` for a key with no session there (it ended: crashed, lock lost): its
record may still carry the transaction, and only the coordinator can clean it."""


def records_store(store: str) -> str:
    """The DataStore holding `store`'s records."""
    return RECORDS_PREFIX + store


def shards_store(store: str) -> str:
    """The DataStore holding the chunks of `store`'s sharded records."""
    return SHARDS_PREFIX + store


def lock_map_name(store: str, partition: int, partitions: int) -> str:
    """Lyra keeps every lock of a store in one hash map; a MemoryStore structure serves 100,000 request units a
    minute, about 33,000 lock updates, so with more partitions than one the locks spread over several maps."""
    return f"lodestore/locks/{store}" if partitions == 1 else f"lodestore/locks/{store}/{partition}"


def marker_committed(marker: Any) -> bool:
    """Whether a transaction whose records carry its id has committed, by its marker: gone (cleaned up after the
    commit; aborted transactions' records are cleaned before their marker goes) or in state "committed"."""
    return marker is None or (isinstance(marker, dict) and marker.get("state") == "committed")


def abort_if_pending(marker: Any, _info: Any = None) -> Any:
    """A marker transform: "pending" becomes "aborted"; any other marker stays as it is (the write is cancelled)."""
    if isinstance(marker, dict) and marker.get("state") == "pending":
        return {**marker, "state": "aborted"}
    return None


def commit_if_pending(marker: Any, _info: Any = None) -> Any:
    """A marker transform: "pending" becomes "committed" (the commit point); otherwise cancelled."""
    if isinstance(marker, dict) and marker.get("state") == "pending":
        return {**marker, "state": "committed"}
    return None


def without_tx(tx_id: str) -> Callable[[Any, Any], Any]:
    """A record transform: the record as it was before transaction `tx_id` (kept: its session, its migrations)."""
    def clean(record: Any, _info: Any) -> Any:
        if not rec.is_record(record) or rec.tx_id_of(record) != tx_id:
            return None  # already clean (rewritten by its session, or by an earlier recovery)
        return {**record, "file": {"data": {"committed_data": record["file"]["data"]["committed_data"]}}}
    return clean


async def resolve_in_doubt(rt: StoreRuntime, tx_id: str, key: str) -> str:
    """"committed" or "aborted" for a transaction whose record (of `key`) was written: the marker decides, and a
    pending marker is first turned to "aborted" (compare-and-set), so the coordinator can no longer commit it. A
    missing marker means committed when the record still carries the transaction (an aborted transaction's records
    are cleaned before its marker goes)."""
    marker, _ = await rt.retrying(lambda: rt.txs.aio.update(tx_id, abort_if_pending), "marker update", key)
    if marker is None:
        marker, _ = await rt.retrying(lambda: rt.txs.aio.get(tx_id, False), "marker read", key)
    if marker is not None:
        return "committed" if marker.get("state") == "committed" else "aborted"
    record, _ = await rt.retrying(lambda: rt.records.aio.get(key, False), "record read", key)
    return "committed" if rec.is_record(record) and rec.tx_id_of(record) == tx_id else "aborted"
