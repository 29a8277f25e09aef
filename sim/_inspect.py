"""`lodestore inspect`: look at and repair the player data in one world's SQLite file, offline.

Owns the `inspect` sub-command (`add_parser`) and one plain function per command (`list_stores`, `list_keys`,
`show_key`, `list_versions`, `restore_version`, `export_store`, `import_store`, `erase_user`, with
`read_import_file` for the import file; `storage_usage`), each returning JSON-ready dicts and lists that the CLI
layer only formats. Problems are `InspectError`s that carry the exit status (1 not found, 2 usage).

The file is opened through the emulator itself (`World.in_process` on the file, no request budgets) with a manual
clock standing at the file's last write, so reading never expires a backup the simulation could still see; every
write goes through the DataStore client, with the emulator's version rules. Only the list of DataStore names and
their live-key counts come from a read-only SQL query. Player records are read and written with `actors.records`.

It must never create a world file, run migrations (they are code, not stored in the file: data is shown as stored),
or write anything a command did not ask for. The checks of the file (`file_warnings`) read its headers as bytes and
the summary opens it read-only (immutable when it has no `-wal`, so that not even an empty `-wal` or `-shm` appears);
the commands open it through the emulator, which takes the world file's lock (`<db>.lock`, created when missing: a
file in use by a running world is refused) and, closing it, checkpoints its `-wal` into it. A record it writes keeps Lyra's layout valid and names no session, so the
next load by a game server takes it normally. It cannot see locks (they live in MemoryStore, not in the file): run it
only while no simulation uses the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sqlite3
import struct
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO

from lodestore.actors import MAX_STORE_NAME, RECORDS_PREFIX, SHARDS_PREFIX, TX_STORE, marker_committed
from lodestore.actors import records as rec
from lodestore.storage import (DEFAULT_SCOPE, HOUR_MS, MAX_KEY_NAME, MAX_LIST_PAGE, ConfigError, DataStore,
                               DataStoreError, KeyInfo, LodestoreError, ManualClock, SortDirection, StorageUsage,
                               UpdateResult, VersionInfo, World, check_key, check_store_name, check_value)

__all__ = ["InspectError", "add_parser", "run", "file_warnings", "list_stores", "list_keys", "show_key",
           "list_versions", "restore_version", "export_store", "import_store", "read_import_file", "erase_user",
           "storage_usage", "NOT_FOUND", "USAGE"]

NOT_FOUND = 1
"""Exit status for an unknown store, key or version, and for stored data that does not decode."""
USAGE = 2
"""Exit status for a bad argument: a missing or unreadable file, a bad name, a bad import file."""

KINDS = ("records", "shards", "transactions", "plain", "ordered")
_INTERNAL = ("shards", "transactions")


class InspectError(LodestoreError):
    """A problem `inspect` reports as one line; `status` is the exit status (NOT_FOUND or USAGE)."""

    def __init__(self, message: str, status: int = NOT_FOUND) -> None:
        super().__init__(message, status)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------------------------------------ the file


@dataclass(frozen=True)
class _FileSummary:
    """What a read-only SQL look at the file says: DataStore names with live keys, ordered stores, last write."""

    path: str
    stores: dict[str, int]      # DataStore name -> live keys in the default scope (every name with any version)
    ordered: dict[str, int]     # ordered DataStore name -> entries in the default scope
    last_ms: int | None         # the latest created or superseded time of any version


_SQLITE_MAGIC = b"SQLite format 3\x00"
_WAL_MAGIC = {0x377F0682: "<", 0x377F0683: ">"}   # a WAL header's magic -> the byte order of its checksums
_WAL_HEADER = 32
_WAL_FRAME_HEADER = 24


@dataclass(frozen=True)
class _Headers:
    """What the first bytes of a database file and of the `-wal` beside it say (nothing opened with SQLite)."""

    path: str
    page_size: int               # of the database
    wal_mode: bool               # the database's header says WAL journal (a rollback journal: False)
    wal: str                     # the path of the -wal beside it
    wal_size: int | None         # None: no -wal
    wal_page_size: int | None    # None: the -wal's header is not a valid WAL header (or it is shorter than one)

    @property
    def wal_frames(self) -> bool:
        """The -wal holds at least one page: SQLite applies it when it opens the database."""
        return self.wal_size is not None and self.wal_size >= _WAL_HEADER + _WAL_FRAME_HEADER + self.page_size


def _read_headers(path: str) -> _Headers | None:
    """The headers of the SQLite database `path` and its -wal; None when `path` is not a SQLite database file."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return None
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return None
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    wal = path + "-wal"
    try:
        with open(wal, "rb") as f:
            wal_header = f.read(_WAL_HEADER)
            wal_size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        wal_header, wal_size = b"", None
    return _Headers(path, page_size, header[18] == 2 and header[19] == 2, wal, wal_size, _wal_page_size(wal_header))


def _wal_page_size(header: bytes) -> int | None:
    """The page size a WAL header gives, when its magic and its checksum are right; else None."""
    if len(header) < _WAL_HEADER:
        return None
    order = _WAL_MAGIC.get(int.from_bytes(header[:4], "big"))
    if order is None:
        return None
    s0 = s1 = 0
    for x0, x1 in struct.iter_unpack(f"{order}II", header[:24]):   # SQLite's WAL checksum of the first 24 bytes
        s0 = (s0 + x0 + s1) & 0xFFFFFFFF
        s1 = (s1 + x1 + s0) & 0xFFFFFFFF
    if struct.unpack(">II", header[24:32]) != (s0, s1):
        return None
    page_size = int.from_bytes(header[8:12], "big")
    return 65536 if page_size == 1 else page_size


def file_warnings(db: str | os.PathLike) -> list[str]:
    """What may make `db` read stale or wrong: its -wal missing, or a -wal beside it that is not its own. Read from
    the files' headers only (nothing is opened with SQLite, nothing is written); [] when all is well or `db` is no
    SQLite file (the commands say so).

    A world closed cleanly leaves its file alone in rollback-journal mode; while it runs, and after it was killed,
    the file is in WAL mode and its latest writes are in `<db>-wal`. So: a file in WAL mode without a -wal was
    separated from it (copied alone, or the -wal lost); a -wal holding pages beside a file in rollback mode, or
    whose header is not a WAL header, or gives another page size than the file's, is not the file's own (SQLite
    would still apply its pages on open). A -wal of another world of the same page size cannot be told apart.
    """
    headers = _read_headers(os.path.abspath(os.fspath(db)))
    if headers is None:
        return []
    path, wal = headers.path, headers.wal
    if headers.wal_size is None:
        if headers.wal_mode:
            return [f"{path} was not closed cleanly (its header says WAL mode: its world was running or was "
                    f"killed) and {os.path.basename(wal)} is not beside it: writes after its last checkpoint are "
                    f"missing, if there were any (a file with no tables at all lost every one). Copy the -wal "
                    f"(and -shm) from beside the original with it, or inspect the original"]
        return []
    if headers.wal_frames and not headers.wal_mode:
        return [f"{wal} is not {os.path.basename(path)}'s own: the database was closed cleanly (rollback journal), "
                f"which leaves no -wal, yet this one holds pages, and SQLite would apply them to it on open. Move "
                f"it away unless you know it belongs to this file"]
    if headers.wal_size and headers.wal_page_size is None:
        return [f"{wal} is not a SQLite WAL file (its header does not check out): SQLite ignores it, so writes of "
                f"{os.path.basename(path)} that were in its real -wal are missing"]
    if headers.wal_page_size is not None and headers.wal_page_size != headers.page_size:
        return [f"{wal} is not {os.path.basename(path)}'s own: its pages are {headers.wal_page_size} bytes, the "
                f"database's {headers.page_size}. Move it away and find the database's own -wal"]
    return []


def _read_summary(db: Any) -> _FileSummary:
    """Check that `db` names an existing lodestore world file, and summarise it without writing anything: read-only,
    and immutable when there is no -wal (SQLite would otherwise create an empty -wal and -shm to read it)."""
    if not isinstance(db, (str, os.PathLike)) or not os.fspath(db):
        raise InspectError(f"DB must be a file path, got {db!r}", USAGE)
    path = os.path.abspath(os.fspath(db))
    if not os.path.exists(path):
        raise InspectError(f"no such file: {path} (inspect never creates one)", USAGE)
    if not os.path.isfile(path):
        raise InspectError(f"{path} is not a file", USAGE)
    mode = "mode=ro" if os.path.exists(path + "-wal") else "immutable=1"
    try:
        db_conn = sqlite3.connect(f"{Path(path).as_uri()}?{mode}", uri=True)
        try:
            tables = {row[0] for row in db_conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "entry_versions" not in tables:
                raise InspectError(f"{path} is not a lodestore world, or an unfinished one: it has no lodestore "
                                   f"tables (no entry_versions table)", USAGE)
            live = "superseded_ms IS NULL AND deleted = 0 AND substr(name, 1, ?) = ?"
            scope = f"{DEFAULT_SCOPE}/"
            stores = {row[0]: int(row[1] or 0) for row in db_conn.execute(
                f"SELECT store, SUM({live}) FROM entry_versions GROUP BY store", (len(scope), scope))}
            ordered: dict[str, int] = {}
            if "ordered_entries" in tables:
                ordered = {row[0]: int(row[1]) for row in db_conn.execute(
                    "SELECT store, SUM(scope = ?) FROM ordered_entries GROUP BY store", (DEFAULT_SCOPE,))}
            created, superseded = db_conn.execute(
                "SELECT MAX(created_ms), MAX(superseded_ms) FROM entry_versions").fetchone()
        finally:
            db_conn.close()
    except sqlite3.DatabaseError as exc:
        raise InspectError(f"cannot read {path} as a lodestore world file: {exc}", USAGE) from None
    times = [t for t in (created, superseded) if t is not None]
    return _FileSummary(path, stores, ordered, max(times) if times else None)


@dataclass(frozen=True)
class _Target:
    """The DataStore a STORE argument names."""

    name: str            # as shown: the Store name for a Store's records, else the DataStore name
    datastore: str
    kind: str            # one of KINDS
    store: str | None    # the Store a records or shards DataStore belongs to

    @property
    def shards(self) -> str:
        return SHARDS_PREFIX + (self.store or "")


def _target_of(datastore: str, kind: str | None = None) -> _Target:
    if datastore.startswith(RECORDS_PREFIX):
        store = datastore[len(RECORDS_PREFIX):]
        return _Target(store, datastore, kind or "records", store)
    if datastore.startswith(SHARDS_PREFIX):
        return _Target(datastore, datastore, kind or "shards", datastore[len(SHARDS_PREFIX):])
    if datastore == TX_STORE:
        return _Target(datastore, datastore, kind or "transactions", None)
    return _Target(datastore, datastore, kind or "plain", None)


class _Inspector:
    """One open file: an in-process world on it, its DataStore clients, and the record reading and writing.

    The clock stands at the file's last write (real time for an empty file) and only moves for a write that would
    land in the same UTC hour as the version it replaces: the emulator (like Roblox) keeps the first version of each
    hour as a backup and lets later writes of that hour replace it, so such a write is stamped at the next hour
    and the version it replaces stays in `versions`.
    """

    def __init__(self, db: Any) -> None:
        self.summary = _read_summary(db)
        self.path = self.summary.path
        self.clock = ManualClock(self.summary.last_ms if self.summary.last_ms is not None else int(time.time() * 1000))
        self.world = World.in_process("inspect", backend="sqlite", path=self.path, clock=self.clock, budget=None)
        self.datastores = self.world.server("inspect").datastores
        self._open: dict[str, DataStore] = {}

    def __enter__(self) -> "_Inspector":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.world.shutdown()

    def datastore(self, name: str) -> DataStore:
        if name not in self._open:
            self._open[name] = self.datastores.get_data_store(name)
        return self._open[name]

    # --------------------------------------------------------------------------------------------- names

    def resolve(self, name: Any, *, creating: bool = False) -> _Target:
        """The DataStore `name` designates: a Store's records first, then a DataStore of that exact name. With
        `creating` (import), a name found nowhere is a new Store."""
        if not isinstance(name, str) or not name:
            raise InspectError(f"STORE must be a non-empty name, got {name!r}", USAGE)
        stores = self.summary.stores
        if RECORDS_PREFIX + name in stores:
            return _target_of(RECORDS_PREFIX + name)
        if name in stores:
            return _target_of(name)
        if name in self.summary.ordered:
            return _Target(name, name, "ordered", None)
        if not creating:
            raise InspectError(f"no store {name!r} in {self.path}; `inspect DB stores` lists them")
        store = name[len(RECORDS_PREFIX):] if name.startswith(RECORDS_PREFIX) else name
        if not 1 <= len(store) <= MAX_STORE_NAME or "/" in store:
            raise InspectError(f"a new store name must be 1-{MAX_STORE_NAME} characters without '/', got {store!r}",
                               USAGE)
        try:
            check_store_name(RECORDS_PREFIX + store)
        except DataStoreError as exc:
            raise InspectError(f"bad store name {store!r}: {exc.message}", USAGE) from None
        return _target_of(RECORDS_PREFIX + store)

    def readable(self, name: Any) -> _Target:
        target = self.resolve(name)
        if target.kind == "ordered":
            raise InspectError(f"{name!r} is an ordered data store; inspect reads standard data stores only", USAGE)
        return target

    # ------------------------------------------------------------------------------------------- listings

    def keys(self, ds: DataStore, prefix: str = "", limit: int | None = None) -> list[str]:
        found: list[str] = []
        cursor = None
        while limit is None or len(found) < limit:
            want = MAX_LIST_PAGE if limit is None else min(MAX_LIST_PAGE, limit - len(found))
            page = ds.list_keys(prefix, page_size=want, cursor=cursor, exclude_deleted=True)
            found.extend(page.items)
            cursor = page.cursor
            if cursor is None:
                break
        return found

    def versions(self, ds: DataStore, key: str) -> list[VersionInfo]:
        """Every version of `key` still kept, newest first ([] for a key that never existed)."""
        found: list[VersionInfo] = []
        cursor = None
        while True:
            page = ds.list_versions(key, SortDirection.DESCENDING, page_size=MAX_LIST_PAGE, cursor=cursor)
            found.extend(page.items)
            cursor = page.cursor
            if cursor is None:
                return found

    def missing_key(self, target: _Target, ds: DataStore, key: str) -> NoReturn:
        """Raise the not-found error for a key with no live value: never there, or removed."""
        versions = self.versions(ds, key)
        if versions and versions[0].is_deleted:
            raise InspectError(f"key {key!r} of store {target.name!r} was removed at "
                               f"{_iso(versions[0].created_time)}; `versions` lists what it held before")
        raise InspectError(f"no key {key!r} in store {target.name!r}")

    # -------------------------------------------------------------------------------------------- records

    def read_record(self, target: _Target, key: str, record: Any) -> tuple[Any, dict | None]:
        """(the data a load sees in `record`, its transaction as {id, marker, applied} or None): shards joined, a
        transaction resolved by its marker (applied when the marker is "committed" or gone). Nothing is settled:
        a pending transaction stays pending (a load would abort it, and see the same data)."""
        try:
            rec.check_record(record)
            file = record["file"]
            if "shard" in file:
                shards = self.datastore(target.shards)
                return rec.read_file(file, [self._chunk(shards, k) for k in rec.shard_keys(file)]), None
            txinfo = file["data"]
            tx_id = txinfo.get("tx_id")
            if tx_id is None:
                return txinfo["committed_data"], None
            marker, _ = self.datastore(TX_STORE).get(tx_id, use_cache=False)
            applied = marker_committed(marker)
            state = marker.get("state") if isinstance(marker, dict) else marker
            return rec.committed(txinfo, marker_exists=not applied), {"id": tx_id, "marker": state,
                                                                       "applied": applied}
        except (rec.RecordError, DataStoreError) as exc:
            raise InspectError(f"key {key!r} of store {target.name!r} does not read as a record: {exc}") from None

    def _chunk(self, shards: DataStore, key: str) -> Any:
        """A shard chunk; one removed already (an old file's, cleaned up after a newer write) is read from the
        newest live version the store still keeps, when it keeps one."""
        value, _ = shards.get(key, use_cache=False)
        if value is not None:
            return value
        for version in self.versions(shards, key):
            if not version.is_deleted:
                return shards.get_version(key, version.version)[0]
        return None

    def write_record(self, target: _Target, key: str, data: Any, applied: Sequence[str],
                     keep: KeyInfo | None = None, prepared: tuple[Any, dict[str, str]] | None = None) -> KeyInfo:
        """Write a fresh record of `data` (sharded when large): no session, no transaction, the migrations
        `applied`; the shard sets the replaced record used become its orphaned files, for the next load to remove.
        User ids and metadata come from `keep` when given, else stay as they were."""
        file, chunks = prepared if prepared is not None else rec.make_file(data)
        shards = self.datastore(target.shards)
        for chunk_key, chunk in chunks.items():
            shards.set(chunk_key, chunk)
        records = self.datastore(target.datastore)
        self.step_past(records, key)

        def fresh(old: Any, _info: Any) -> Any:
            record = rec.new_record(None, applied, None, file=file, orphaned_files=_orphans(old, file))
            return record if keep is None else UpdateResult(record, list(keep.user_ids), dict(keep.metadata))

        _, info = records.update(key, fresh)
        return info

    def step_past(self, ds: DataStore, key: str) -> None:
        """Move the clock to the next UTC hour when a write now would replace `key`'s current version."""
        page = ds.list_versions(key, SortDirection.DESCENDING, page_size=1)
        if page.items:
            hour = page.items[0].created_time // HOUR_MS
            if self.clock.now() // HOUR_MS <= hour:
                self.clock.set((hour + 1) * HOUR_MS)


def storage_usage(db: str | os.PathLike, lifetime_users: int = 0) -> dict[str, Any]:
    """The file's DataStore storage as Roblox counts it (`storage.StorageUsage`: the zlib-compressed size of every
    key's latest version, against 500 MB + 1 MB x `lifetime_users`, and the estimated monthly cost of the excess).
    The file does not record how many users played, so the caller says (default 0: the base limit)."""
    if isinstance(lifetime_users, bool) or not isinstance(lifetime_users, int) or lifetime_users < 0:
        raise InspectError(f"lifetime users must be an int >= 0, got {lifetime_users!r}", USAGE)
    with _Inspector(db) as inspector:
        measured = inspector.world.statistics().storage_bytes
    return dataclasses.asdict(StorageUsage.of(measured, lifetime_users))


def _orphans(old: Any, new_file: Any) -> list[dict]:
    """The shard sets a record replacing `old` must still remove: old's orphans and old's own sharded file."""
    if not rec.is_record(old):
        return []
    files = [*old.get("orphaned_files", ()), *([old["file"]] if "shard" in old["file"] else [])]
    out: list[dict] = []
    for file in files:
        if file != new_file and file not in out:
            out.append(dict(file))
    return out


def _info_fields(info: KeyInfo) -> dict[str, Any]:
    return {"version": info.version, "created_time": info.created_time, "updated_time": info.updated_time,
            "user_ids": list(info.user_ids), "metadata": dict(info.metadata)}


def _check_key_arg(key: Any) -> str:
    try:
        return check_key(key)
    except DataStoreError as exc:
        raise InspectError(f"bad KEY: {exc.message}", USAGE) from None


# ------------------------------------------------------------------------------------------ the commands


def list_stores(db: str | os.PathLike) -> list[dict[str, Any]]:
    """Every DataStore of the file, sorted by DataStore name: {"name", "datastore", "kind", "internal",
    "live_keys"}. A Store's records are named by the Store ("players" for DataStore "lodestore/records/players");
    `kind` is "records", "shards" (a Store's chunks of large data, internal), "transactions" (the markers of
    two-phase transactions, internal), "plain" or "ordered". Keys are counted in the default scope."""
    summary = _read_summary(db)
    rows = [_target_of(name) for name in summary.stores] + [_Target(n, n, "ordered", None) for n in summary.ordered]
    counts = {**summary.stores, **summary.ordered}
    return [{"name": t.name, "datastore": t.datastore, "kind": t.kind, "internal": t.kind in _INTERNAL,
             "live_keys": counts[t.datastore]} for t in sorted(rows, key=lambda t: (t.datastore, t.kind))]


def list_keys(db: str | os.PathLike, store: str, prefix: str = "", limit: int | None = None) -> list[str]:
    """The live key names of `store` (a Store name or a DataStore name), in order; those starting with `prefix`;
    at most `limit` of them (None: all)."""
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY_NAME:
        raise InspectError(f"prefix must be a string of at most {MAX_KEY_NAME} characters, got {prefix!r}", USAGE)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InspectError(f"limit must be an int >= 1, got {limit!r}", USAGE)
    with _Inspector(db) as inspector:
        target = inspector.readable(store)
        return inspector.keys(inspector.datastore(target.datastore), prefix, limit)


def show_key(db: str | os.PathLike, store: str, key: str, raw: bool = False) -> dict[str, Any]:
    """One key as a load would see it, not migrated (migrations are code, not in the file).

    Always: "store", "datastore", "kind", "key", and the current version's KeyInfo ("version", "created_time",
    "updated_time" in ms, "user_ids", "metadata"). With `raw`: "value", the stored value as is. Otherwise, for a
    Store's record, "record": True, "data" (shards joined, a transaction resolved by its marker),
    "applied_migrations", "session" (the lock id of the session that last wrote it, or None), "file" ({"inline":
    True} or {"shard", "count"}), "transaction" (None or {"id", "marker", "applied"}) and "orphaned_files"; for any
    other value, "record": False and "data", the value itself.
    """
    key = _check_key_arg(key)
    with _Inspector(db) as inspector:
        target = inspector.readable(store)
        ds = inspector.datastore(target.datastore)
        value, info = ds.get(key, use_cache=False)
        if info is None:
            inspector.missing_key(target, ds, key)
        shown: dict[str, Any] = {"store": target.name, "datastore": target.datastore, "kind": target.kind,
                                 "key": key, **_info_fields(info)}
        if raw:
            return {**shown, "value": value}
        if target.kind != "records" or not rec.is_record(value):
            note = {"note": "not a record: a load refuses this key"} if target.kind == "records" else {}
            return {**shown, "record": False, **note, "data": value}
        data, tx = inspector.read_record(target, key, value)
        file = value["file"]
        return {**shown, "record": True, "applied_migrations": list(value["applied_migrations"]),
                "session": value.get("session"),
                "file": {"inline": True} if "data" in file else {"shard": file["shard"], "count": file["count"]},
                "transaction": tx, "orphaned_files": list(value.get("orphaned_files", ())), "data": data}


def list_versions(db: str | os.PathLike, store: str, key: str) -> list[dict[str, Any]]:
    """The versions the store keeps of `key`, newest first: {"version", "created_time" (ms), "deleted",
    "current"}. The emulator, like Roblox, keeps the first version of each UTC hour as a backup for 30 days;
    later writes of the same hour replace the current version."""
    key = _check_key_arg(key)
    with _Inspector(db) as inspector:
        target = inspector.readable(store)
        versions = inspector.versions(inspector.datastore(target.datastore), key)
    if not versions:
        raise InspectError(f"no key {key!r} in store {target.name!r}")
    return [{"version": v.version, "created_time": v.created_time, "deleted": v.is_deleted, "current": i == 0}
            for i, v in enumerate(versions)]


def restore_version(db: str | os.PathLike, store: str, key: str, version: str) -> dict[str, Any]:
    """Make `version` of `key` current again, as a new write (the versions before stay), with that version's user
    ids and metadata. A Store's record is rewritten as a fresh record of the data that version holds (resolved as
    `show_key` resolves it, with its applied migrations), naming no session and no transaction, so the next load
    takes it normally. Returns {"store", "datastore", "key", "restored_version", "data", "applied_migrations"
    (None for a plain value), "sharded"} and the new version's KeyInfo fields."""
    key = _check_key_arg(key)
    if not isinstance(version, str) or not version:
        raise InspectError(f"VERSION must be a version string, got {version!r}", USAGE)
    with _Inspector(db) as inspector:
        target = inspector.readable(store)
        if target.kind in _INTERNAL:
            raise InspectError(f"{target.name!r} is internal ({target.kind}); restore the Store's key instead", USAGE)
        ds = inspector.datastore(target.datastore)
        value, info = ds.get_version(key, version)
        if info is None:
            versions = inspector.versions(ds, key)
            if not versions:
                raise InspectError(f"no key {key!r} in store {target.name!r}")
            if any(v.version == version for v in versions):
                raise InspectError(f"version {version} of key {key!r} is a removal; it holds nothing to restore")
            raise InspectError(f"key {key!r} of store {target.name!r} has no version {version}; "
                               f"`versions` lists the {len(versions)} it keeps")
        applied: list[str] | None = None
        sharded = False
        if target.kind == "records":
            if not rec.is_record(value):
                raise InspectError(f"version {version} of key {key!r} is not a record; restoring it would leave a "
                                   f"value no load accepts")
            data, _ = inspector.read_record(target, key, value)
            applied = list(value["applied_migrations"])
            prepared = _prepare(key, data, applied, NOT_FOUND)
            sharded = bool(prepared[1])
            new_info = inspector.write_record(target, key, data, applied, keep=info, prepared=prepared)
        else:
            data = value
            inspector.step_past(ds, key)
            _, new_info = ds.update(key, lambda _old, _info: UpdateResult(value, list(info.user_ids),
                                                                           dict(info.metadata)))
    return {"store": target.name, "datastore": target.datastore, "key": key, "restored_version": version,
            **_info_fields(new_info), "applied_migrations": applied, "sharded": sharded, "data": data}


def export_store(db: str | os.PathLike, store: str) -> dict[str, Any]:
    """{key: data} of every live key of `store`, resolved as `show_key` resolves it (not migrated)."""
    with _Inspector(db) as inspector:
        target = inspector.readable(store)
        ds = inspector.datastore(target.datastore)
        exported: dict[str, Any] = {}
        for key in inspector.keys(ds):
            value, info = ds.get(key, use_cache=False)
            if info is None:
                continue
            if target.kind == "records":
                if not rec.is_record(value):
                    raise InspectError(f"key {key!r} of store {target.name!r} holds something that is not a record; "
                                       f"`show --raw` prints it")
                value, _ = inspector.read_record(target, key, value)
            exported[key] = value
    return exported


def import_store(db: str | os.PathLike, store: str, entries: Mapping[str, Any],
                 applied_migrations: Iterable[str] = ()) -> dict[str, Any]:
    """Write each {key: data} of `entries` into Store `store` (created when new) as a fresh record: no session,
    `applied_migrations` marked applied (none by default: the next load runs every step, as for legacy data), large
    data sharded. A key that exists gets a new version and keeps its user ids and metadata.

    Everything is checked first (a mapping; keys valid DataStore keys; data storable, as a session stores it);
    on any bad entry nothing is written and InspectError (USAGE) names the key. Returns {"store", "datastore",
    "keys", "sharded"} (the keys written, and those of them sharded).
    """
    if not isinstance(entries, Mapping):
        raise InspectError(f"import needs an object of key -> data, got {type(entries).__name__}", USAGE)
    if isinstance(applied_migrations, str):
        raise InspectError("applied_migrations must be a list of names, not one string", USAGE)
    applied = list(applied_migrations)
    if not all(isinstance(name, str) and name for name in applied):
        raise InspectError(f"applied migrations must be non-empty names, got {applied!r}", USAGE)
    prepared = {}
    for key, data in entries.items():
        try:
            check_key(key)
        except DataStoreError as exc:
            raise InspectError(f"bad key {key!r}: {exc.message}", USAGE) from None
        prepared[key] = _prepare(key, data, applied)
    with _Inspector(db) as inspector:
        target = inspector.resolve(store, creating=True)
        if target.kind != "records":
            raise InspectError(f"{target.name!r} is a {target.kind} data store; import writes a Store's records",
                               USAGE)
        for key, (file, chunks) in prepared.items():
            inspector.write_record(target, key, entries[key], applied, prepared=(file, chunks))
    return {"store": target.name, "datastore": target.datastore, "keys": list(prepared),
            "sharded": [key for key, (_, chunks) in prepared.items() if chunks]}


def erase_user(db: str | os.PathLike, user_id: Any, templates: Sequence[Sequence[str]] | None = None
               ) -> dict[str, Any]:
    """Erase a user's data from the file (`World.erase_user`: every key the templates name, every version and
    backup, and the Store records' shard chunks and transaction markers of it), then check that nothing is left.
    `templates` (each [store, scope, key] with `{UserId}`) replace the ones kept in the file (set by
    `World.set_deletion_templates`); with neither it refuses (USAGE)."""
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise InspectError(f"USER_ID must be a Roblox user id (an int >= 1), got {user_id!r}", USAGE)
    with _Inspector(db) as inspector:
        used = [list(t) for t in templates] if templates else [
            [t.store, t.scope, t.key] for t in inspector.world.deletion_templates()]
        if not used:
            raise InspectError(f"no deletion templates in {inspector.path} and none given: pass --template STORE "
                               f"SCOPE KEY (with {{UserId}} in one of them), or set them with "
                               f"World.set_deletion_templates", USAGE)
        try:
            report = inspector.world.erase_user(user_id, used)
        except ConfigError as exc:
            raise InspectError(f"bad --template: {exc}", USAGE) from None
    return {"user_id": user_id, "templates": used,
            "removed": [dataclasses.asdict(k) for k in report.removed],
            "remaining": [dataclasses.asdict(k) for k in report.remaining]}


def _prepare(key: str, data: Any, applied: Sequence[str], status: int = USAGE) -> tuple[Any, dict[str, str]]:
    """The file and chunks a session would store `data` in. The data must be what a session accepts (storable,
    at most 4,194,304 characters as JSON, as any update checks it), and an inline record must fit one value."""
    try:
        check_value(data, what=f"data of key {key!r}")
        file, chunks = rec.make_file(data)
        if not chunks:
            check_value(rec.new_record(None, applied, None, file=file), what=f"the record of key {key!r}")
    except DataStoreError as exc:
        raise InspectError(f"key {key!r}: {exc.message}", status) from None
    return file, chunks


def read_import_file(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in file `path`; InspectError (USAGE) for a missing file, bad JSON (NaN and Infinity,
    duplicate keys and too deep nesting included) or anything but an object."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise InspectError(f"no such file: {os.path.abspath(path)}", USAGE) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InspectError(f"cannot read {path}: {exc}", USAGE) from None
    try:
        entries = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except ValueError as exc:  # JSONDecodeError, and the hooks' refusals
        raise InspectError(f"{path} is not valid JSON: {exc}", USAGE) from None
    except RecursionError:
        raise InspectError(f"{path} nests too deeply to read", USAGE) from None
    if not isinstance(entries, dict):
        raise InspectError(f"{path} must hold a JSON object of key -> data, not a {type(entries).__name__}", USAGE)
    return entries


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number a DataStore can store")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------------- CLI

_DESCRIPTION = """\
Look at and repair the player data in one world's SQLite file, offline, through the emulator itself.

  inspect DB stores                               every DataStore and its live keys; internal ones flagged
  inspect DB keys STORE [--prefix P] [--limit N]  key names
  inspect DB show STORE KEY [--raw]               the data a load sees (shards joined, transaction resolved)
  inspect DB versions STORE KEY                   the versions kept, newest first
  inspect DB restore STORE KEY VERSION            make a version current again (a new write; old ones stay)
  inspect DB export STORE [--out FILE]            JSON {key: data} of every live key
  inspect DB import STORE FILE                    write each {key: data} of a JSON file as a fresh record
  inspect DB erase USER_ID [--template S SC K]... erase a user's data, then check that nothing is left
  inspect DB storage [--lifetime-users N]         compressed size of the latest versions against Roblox's limit

STORE is a Store's name (as given to create_store; its records are DataStore lodestore/records/STORE) or any
DataStore name `stores` lists. Every command takes --json for machine-readable output.

Migrations are code, not stored in the file: show and export print data as stored, with the names of the
migrations applied to it, never migrated; the next load by a game server runs the missing steps."""

_EPILOG = """\
WARNING: run inspect only while no simulation uses the file (every command but `stores`, which only reads,
refuses a file that a running world holds by its DB.lock). Locks live in MemoryStore, which is not in the
file, so inspect cannot see which game server holds a key. A server holding a key that you restore or import
keeps its own copy in memory; at its next save it finds a record it did not write, so it loses the key (its
on_lock_lost fires) and drops what it had not saved. Your write stays, but that player's latest progress is lost.

Exit status: 0 done; 1 not found (store, key, version), stored data that does not decode, or something of
the user left after `erase`; 2 usage (missing
or unreadable DB, bad argument, bad import file)."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `inspect` on an argparse sub-parsers object; `args.func(args)` then runs it and returns the exit
    status."""
    parser = subparsers.add_parser(
        "inspect", help="look at and repair a world's SQLite file offline (no simulation may be using it)",
        description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db", metavar="DB", help="the world's SQLite file, e.g. lodestore-data/NAME.db (never created)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    commands = parser.add_subparsers(dest="inspect_command", metavar="COMMAND", required=True)

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(inspect_handler=handler)
        return sub

    command("stores", _cmd_stores, "every DataStore with its number of live keys; internal ones flagged")
    keys = command("keys", _cmd_keys, "the key names of a store")
    keys.add_argument("store", metavar="STORE")
    keys.add_argument("--prefix", default="", help="only keys starting with this")
    keys.add_argument("--limit", type=_positive_int, default=None, help="at most this many keys")
    show = command("show", _cmd_show, "a key's data as a load sees it (shards joined, a transaction resolved by "
                                      "its marker), not migrated, with its record and KeyInfo")
    show.add_argument("store", metavar="STORE")
    show.add_argument("key", metavar="KEY")
    show.add_argument("--raw", action="store_true", help="print the stored value as is")
    versions = command("versions", _cmd_versions, "the versions kept of a key, newest first")
    versions.add_argument("store", metavar="STORE")
    versions.add_argument("key", metavar="KEY")
    restore = command("restore", _cmd_restore, "make a version of a key current again: a new write (the old "
                                               "versions stay) of a fresh record naming no session")
    restore.add_argument("store", metavar="STORE")
    restore.add_argument("key", metavar="KEY")
    restore.add_argument("version", metavar="VERSION")
    export = command("export", _cmd_export, "JSON {key: data} of every live key (resolved as show resolves it)")
    export.add_argument("store", metavar="STORE")
    export.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    load = command("import", _cmd_import, "write each {key: data} of a JSON file as a fresh record; the whole file "
                                          "is checked first and nothing is written when any entry is bad")
    load.add_argument("store", metavar="STORE")
    load.add_argument("file", metavar="FILE")
    erase = command("erase", _cmd_erase, "erase a user's data (right to erasure): every key the deletion "
                                         "templates name, with every version, backup, shard chunk and transaction "
                                         "marker; then check nothing is left (exit 1 if something is)")
    erase.add_argument("user_id", metavar="USER_ID", type=_positive_int)
    erase.add_argument("--template", nargs=3, action="append", metavar=("STORE", "SCOPE", "KEY"),
                       help="a deletion template, {UserId} in one or more parts (repeatable; default: the "
                            "templates kept in the file)")
    load.add_argument("--applied-migrations", metavar="NAME[,NAME...]", default="",
                      help="migration steps the data already has (default none: the next load runs every step); "
                           "`show` lists a key's")
    storage = command("storage", _cmd_storage, "the file's DataStore storage as Roblox counts it (zlib-compressed "
                                               "latest versions) against the limit of 500 MB + 1 MB per lifetime "
                                               "user, and the monthly cost of going over")
    storage.add_argument("--lifetime-users", type=_count, default=0, metavar="N",
                         help="users who ever played (the file does not record them; default 0)")
    return parser


def _int_at_least(minimum: int):
    """An argparse type: an int >= `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1)
_count = _int_at_least(0)


def run(args: argparse.Namespace) -> int:
    """Run the parsed `inspect` command: output on stdout, one line on stderr for a problem. Returns the exit
    status; never raises for a problem with the file, the names or the data. Warnings about the file
    (`file_warnings`) go to stderr first; the command still runs."""
    for warning in file_warnings(args.db):
        print(f"lodestore inspect: warning: {warning}", file=sys.stderr)
    try:
        args.inspect_handler(args, sys.stdout)
        return 0
    except InspectError as exc:
        return _fail(exc.message, exc.status)
    except LodestoreError as exc:
        return _fail(str(exc), NOT_FOUND)
    except (OSError, sqlite3.Error) as exc:
        return _fail(f"{type(exc).__name__}: {exc}", NOT_FOUND)
    except Exception as exc:  # a bug; still one line, as promised
        return _fail(f"unexpected {type(exc).__name__}: {exc}", NOT_FOUND)


def _fail(message: str, status: int) -> int:
    print(f"lodestore inspect: {message}", file=sys.stderr)
    return status


def _dump(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, ensure_ascii=False, allow_nan=False, indent=2) + "\n")


def _iso(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return f"{ms} ms"


def _cmd_stores(args: argparse.Namespace, out: TextIO) -> None:
    rows = list_stores(args.db)
    if args.json:
        return _dump(rows, out)
    width = max([len("STORE"), *(len(r["name"]) for r in rows)])
    out.write(f"{'STORE':<{width}}  {'KIND':<12}  {'LIVE KEYS':>9}  DATASTORE\n")
    for r in rows:
        flag = "  (internal)" if r["internal"] else ""
        out.write(f"{r['name']:<{width}}  {r['kind']:<12}  {r['live_keys']:>9}  {r['datastore']}{flag}\n")


def _cmd_keys(args: argparse.Namespace, out: TextIO) -> None:
    keys = list_keys(args.db, args.store, args.prefix, args.limit)
    if args.json:
        return _dump(keys, out)
    out.writelines(f"{key}\n" for key in keys)


def _cmd_show(args: argparse.Namespace, out: TextIO) -> None:
    shown = show_key(args.db, args.store, args.key, args.raw)
    if args.json:
        return _dump(shown, out)
    lines = [f"key {shown['key']!r} of store {shown['store']!r} (DataStore {shown['datastore']})",
             f"version      {shown['version']}",
             f"updated      {_iso(shown['updated_time'])}   created {_iso(shown['created_time'])}",
             f"user ids     {shown['user_ids']}",
             f"metadata     {json.dumps(shown['metadata'], ensure_ascii=False)}"]
    if shown.get("record"):
        file = shown["file"]
        tx = shown["transaction"]
        lines += [
            f"session      {shown['session'] or '(none)'}",
            f"migrations   {', '.join(shown['applied_migrations']) or '(none)'} applied "
            f"(not run here: migrations are code, not in the file)",
            "file         " + ("inline" if file.get("inline") else f"sharded: {file['count']} chunk(s) of shard set "
                                                                    f"{file['shard']}"),
        ]
        if tx is not None:
            verdict = "applied" if tx["applied"] else "not applied"
            lines.append(f"transaction  {tx['id']}: marker {tx['marker'] or 'gone'}, so its patch is {verdict}")
        if shown["orphaned_files"]:
            lines.append(f"orphans      {len(shown['orphaned_files'])} old shard set(s) left for the next load "
                         f"to remove")
    if shown.get("note"):
        lines.append(f"note         {shown['note']}")
    label = "stored value (raw)" if "value" in shown else "data"
    lines.append(f"{label}:")
    out.write("\n".join(lines) + "\n")
    _dump(shown["value"] if "value" in shown else shown["data"], out)


def _cmd_versions(args: argparse.Namespace, out: TextIO) -> None:
    versions = list_versions(args.db, args.store, args.key)
    if args.json:
        return _dump(versions, out)
    for v in versions:
        flags = " ".join(f for f, on in (("current", v["current"]), ("deleted", v["deleted"])) if on)
        out.write(f"{v['version']}  {_iso(v['created_time'])}  {flags}".rstrip() + "\n")


def _cmd_restore(args: argparse.Namespace, out: TextIO) -> None:
    restored = restore_version(args.db, args.store, args.key, args.version)
    if args.json:
        return _dump(restored, out)
    applied = restored["applied_migrations"]
    out.write(f"restored key {restored['key']!r} of store {restored['store']!r} to version "
              f"{restored['restored_version']}\nnew version  {restored['version']} at "
              f"{_iso(restored['updated_time'])}\n")
    if applied is not None:
        out.write(f"migrations   {', '.join(applied) or '(none)'} applied; session (none)"
                  f"{'; sharded' if restored['sharded'] else ''}\n")
    out.write("data:\n")
    _dump(restored["data"], out)


def _cmd_export(args: argparse.Namespace, out: TextIO) -> None:
    exported = export_store(args.db, args.store)
    if args.out is None:
        return _dump(exported, out)
    with open(args.out, "w", encoding="utf-8") as f:
        _dump(exported, f)
    if args.json:
        return _dump({"store": args.store, "keys": len(exported), "out": os.path.abspath(args.out)}, out)
    out.write(f"exported {len(exported)} key(s) of store {args.store!r} to {args.out}\n")


def _cmd_erase(args: argparse.Namespace, out: TextIO) -> None:
    done = erase_user(args.db, args.user_id, args.template)
    if args.json:
        _dump(done, out)
    else:
        out.write(f"erased user {done['user_id']}: {len(done['removed'])} key(s) removed\n")
        out.writelines(f"  removed  {k['store']} / {k['scope']} / {k['key']}  ({k['versions']} version(s); "
                       f"{k['reason']})\n" for k in done["removed"])
        if done["remaining"]:
            out.write(f"check: {len(done['remaining'])} key(s) remain\n")
            out.writelines(f"  remains  {k['store']} / {k['scope']} / {k['key']}  ({k['versions']} version(s))\n"
                           for k in done["remaining"])
        else:
            out.write("check: nothing of the user is left\n")
    if done["remaining"]:
        raise InspectError(f"{len(done['remaining'])} key(s) of user {done['user_id']} remain after the erasure; "
                           f"run it again", NOT_FOUND)


def _cmd_storage(args: argparse.Namespace, out: TextIO) -> None:
    usage = storage_usage(args.db, args.lifetime_users)
    if args.json:
        return _dump(usage, out)
    mb = 1024 * 1024
    out.write(f"storage: {usage['storage_bytes'] / mb:.3f} MB (compressed latest versions) of "
              f"{usage['storage_limit_bytes'] / mb:.0f} MB (500 MB + 1 MB x {usage['lifetime_users']} lifetime "
              f"users); {'OVER the limit' if usage['over_limit'] else 'within the limit'}; "
              f"estimated cost ${usage['estimated_monthly_cost_usd']:.2f}/month\n")


def _cmd_import(args: argparse.Namespace, out: TextIO) -> None:
    entries = read_import_file(args.file)
    applied = [name.strip() for name in args.applied_migrations.split(",") if name.strip()]
    done = import_store(args.db, args.store, entries, applied)
    if args.json:
        return _dump(done, out)
    sharded = f" ({len(done['sharded'])} sharded)" if done["sharded"] else ""
    out.write(f"imported {len(done['keys'])} key(s){sharded} into store {done['store']!r} "
              f"(DataStore {done['datastore']})\n")
