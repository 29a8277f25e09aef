"""What sessions and transactions keep of a user beyond the key itself, for `World.erase_user` (see
`storage._erasure`, whose `Eraser` this is; registered when `lodestore.actors` is imported).

For a key a deletion template names, the records of a Store's key are found in the Store's records data store
(`lodestore/records/<store>`): a template may name the records store itself, or the Store by its own name (then its
records' key of the same scope and key name is the user's too). Beyond the record, the user's data lives in:
- the shard chunks of every sharded file any version of the record points to, current or orphaned
  (`lodestore/shards/<store>`, keys `records.shard_keys(file)`);
- the transaction markers in `lodestore/tx` that name the key (every version of each marker is read).

A marker that names the key and has not committed is first settled the way the coordinator's recovery settles it
(to "aborted" by compare-and-set, then the transaction taken out of the other keys' records with `without_tx`), so
that removing it cannot make the other keys' records read as committed. A committed marker just goes (records of a
committed transaction read as committed without it).

It never removes anything itself (the erasure purges the keys it returns) and reads only what the record layout
names. Chunks no record version points to any more (a crash between writing chunks and the record) cannot be told
to be the user's: they are not found.
"""

from __future__ import annotations

from typing import Any

from lodestore.actors import _records as rec
from lodestore.actors._txn import (MAX_STORE_NAME, RECORDS_PREFIX, TX_STORE, abort_if_pending, marker_committed,
                                   records_store, shards_store, without_tx)
from lodestore.storage import DEFAULT_SCOPE, DataStoreError, Rewrite, check_store_name, decode, register_eraser
from lodestore.storage.datastore import ListAllKeys, ReadVersions

__all__ = ["erase_records"]

_MARKER_PAGE = 500


def _record_key(target: tuple[str, str, str]) -> tuple[str, str, str] | None:
    store, scope, key = target
    if store.startswith(RECORDS_PREFIX):
        return target
    if len(store) > MAX_STORE_NAME or "/" in store:
        return None
    try:
        check_store_name(records_store(store))
    except DataStoreError:
        return None
    return (records_store(store), scope, key)


def _decode(value: bytes | None) -> Any:
    return None if value is None else decode(value)


def _names_key(marker: Any, store: str, key: str) -> bool:
    return isinstance(marker, dict) and marker.get("store") == store and key in (marker.get("keys") or ())


def erase_records(target: tuple[str, str, str], values: list[Any], settle: bool):
    """The `Eraser` of sessions' records (see the module docstring)."""
    record_key = _record_key(target)
    if record_key is None:
        return []
    found: list[tuple[tuple[str, str, str], str]] = []
    if record_key != target:
        versions = yield ReadVersions(*record_key)
        if not versions:
            return []
        values = [_decode(v) for _, v in versions]
        found.append((record_key, f"the record of Store key {target[2]!r}"))
    store = record_key[0][len(RECORDS_PREFIX):]
    chunks = shards_store(store)
    for value in values:
        if not rec.is_record(value):
            continue
        for file in [value["file"], *value.get("orphaned_files", ())]:
            for chunk in rec.shard_keys(file):
                k = (chunks, DEFAULT_SCOPE, chunk)
                if all(k != seen for seen, _ in found):
                    found.append((k, f"a shard chunk of record {record_key[2]!r}"))
    after = None
    while True:
        tx_ids = yield ListAllKeys(TX_STORE, DEFAULT_SCOPE, after, _MARKER_PAGE)
        for tx_id in tx_ids:
            k = (TX_STORE, DEFAULT_SCOPE, tx_id)
            markers = [_decode(v) for _, v in (yield ReadVersions(*k))]
            if not any(_names_key(mk, store, record_key[2]) for mk in markers):
                continue
            if settle:
                yield from _settle(k, store, record_key)
            found.append((k, f"the marker of transaction {tx_id} over key {record_key[2]!r}"))
        if len(tx_ids) < _MARKER_PAGE:
            return found
        after = tx_ids[-1]


def _settle(marker_key: tuple[str, str, str], store: str, record_key: tuple[str, str, str]):
    """Abort a pending marker (unless it committed meanwhile) and take an uncommitted transaction out of the other
    keys' records, as `Coordinator.recover` does, so that the marker can go."""
    yield Rewrite(*marker_key, abort_if_pending)
    versions = yield ReadVersions(*marker_key)
    latest = _decode(versions[-1][1]) if versions else None
    if marker_committed(latest) or not isinstance(latest, dict):
        return
    for other in latest.get("keys", ()):
        if other != record_key[2]:
            yield Rewrite(records_store(store), DEFAULT_SCOPE, other, without_tx(marker_key[2]))


register_eraser(erase_records)
