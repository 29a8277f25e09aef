"""Where a storage shard keeps its entries: in memory (tests) or in one SQLite file per world (the default).

A backend stores version records and ordered entries and answers indexed questions about them; it knows nothing of
Roblox's rules (those live in `_engine`). It must never unpickle: values are msgpack bytes it stores and returns
unread, user ids and metadata are msgpack too. SQLite runs in WAL mode with synchronous=FULL, and a batch is one
transaction: once `transaction()` exits, every write in it survives the process being killed. Until `close()` the
latest writes may live only in the `-wal` file beside the database; `close()` moves them into the database file and,
as the file's last connection, switches it back to a rollback journal, so that file alone (a user's copy of
`world.db`) holds every committed batch and no `-wal` or `-shm` is left (`lodestore inspect` reads the journal mode
in the file's header to tell a cleanly closed file from one whose `-wal` is missing).

One world at a time per file: the process that opens a file for a world holds an exclusive advisory lock (`flock`)
on `<file>.lock` beside it until it closes it or dies, and opening a file that another live process holds raises
`ConfigError`. The lock is on a file of its own, never on the database: closing any descriptor of the database
would drop SQLite's own POSIX locks of the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import msgpack
from sortedcontainers import SortedList

from lodestore.storage._errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, nothing keeps two worlds off one file
    fcntl = None

__all__ = ["Backend", "MemoryBackend", "SqliteBackend", "VersionRecord", "open_backend", "LOCK_SUFFIX"]

EntryKey = tuple[str, str, str]  # (store, scope, key)


@dataclass(slots=True)
class VersionRecord:
    """One stored version of one key. `superseded_ms` is None for the current version."""

    seq: int
    version: str
    created_ms: int
    key_created_ms: int
    superseded_ms: int | None
    deleted: bool
    value: bytes | None
    user_ids: tuple[int, ...]
    metadata: dict


class Backend(Protocol):
    def transaction(self) -> contextlib.AbstractContextManager: ...
    def latest(self, k: EntryKey) -> VersionRecord | None: ...
    def versions(self, k: EntryKey) -> list[VersionRecord]: ...
    def insert(self, k: EntryKey, rec: VersionRecord) -> None: ...
    def supersede(self, k: EntryKey, seq: int, at_ms: int) -> None: ...
    def delete_version(self, k: EntryKey, seq: int) -> None: ...
    def delete_backups_before(self, cutoff_ms: int) -> int: ...
    def list_keys(self, store: str, scope: str | None, prefix: str, after: str | None, limit: int,
                  exclude_deleted: bool) -> list[str]: ...
    def ordered_get(self, k: EntryKey) -> tuple[int, int] | None: ...
    def ordered_put(self, k: EntryKey, value: int, revision: int) -> None: ...
    def ordered_delete(self, k: EntryKey) -> None: ...
    def ordered_range(self, store: str, scope: str, ascending: bool, limit: int, min_value: int | None,
                      max_value: int | None, after: tuple[int, str] | None) -> list[tuple[str, int]]: ...
    def latest_values(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...
    # Data stores' lifecycle and erasure (`_lifecycle`): world settings as JSON, stores as wholes, keys as wholes.
    def get_meta(self, name: str) -> Any: ...
    def put_meta(self, name: str, value: Any) -> None: ...
    def store_summaries(self, prefix: str, after: str | None, limit: int,
                        hidden: tuple[str, ...]) -> list[tuple[str, int, int]]: ...
    def purge_store(self, store: str, through_ms: int) -> int: ...
    def purge_key(self, k: EntryKey) -> int: ...


def _full_name(scope: str, key: str) -> str:
    # Scopes never contain "/", so "scope/key" orders keys of one scope together, as AllScopes listings show them.
    return f"{scope}/{key}"


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix` (None: no upper bound)."""
    for i in range(len(prefix) - 1, -1, -1):
        if ord(prefix[i]) < 0x10FFFF:
            return prefix[:i] + chr(ord(prefix[i]) + 1)
    return None


def _list_bounds(scope: str | None, prefix: str, after: str | None) -> tuple[str, str | None, int]:
    """Translate a listing into a range of full names: (start exclusive-or-inclusive, end exclusive, cut) where
    `cut` is how many leading characters to strip from a full name to get the listed name."""
    base = "" if scope is None else f"{scope}/"
    low = base + prefix
    if after is not None and base + after >= low:
        low = base + after + "\0"  # strictly after the cursor
    return low, _prefix_end(base + prefix) if (base + prefix) else None, len(base)


# -------------------------------------------------------------------------------------------------------- memory


class MemoryBackend:
    """Everything in dicts and sorted lists. Loses everything with the process: for tests and throwaway worlds."""

    def __init__(self) -> None:
        self._versions: dict[EntryKey, list[VersionRecord]] = {}
        self._names: dict[str, SortedList] = {}  # store -> sorted "scope/key" of keys with any version
        self._ordered: dict[EntryKey, tuple[int, int]] = {}
        self._ordered_index: dict[tuple[str, str], SortedList] = {}  # (store, scope) -> sorted (value, key)
        self._meta: dict[str, str] = {}  # name -> JSON

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        yield

    def latest(self, k: EntryKey) -> VersionRecord | None:
        recs = self._versions.get(k)
        return recs[-1] if recs else None

    def versions(self, k: EntryKey) -> list[VersionRecord]:
        return list(self._versions.get(k, ()))

    def insert(self, k: EntryKey, rec: VersionRecord) -> None:
        recs = self._versions.get(k)
        if recs is None:
            recs = self._versions[k] = []
            self._names.setdefault(k[0], SortedList()).add(_full_name(k[1], k[2]))
        recs.append(rec)

    def supersede(self, k: EntryKey, seq: int, at_ms: int) -> None:
        for rec in self._versions.get(k, ()):
            if rec.seq == seq:
                rec.superseded_ms = at_ms

    def delete_version(self, k: EntryKey, seq: int) -> None:
        recs = self._versions.get(k)
        if recs is None:
            return
        recs[:] = [r for r in recs if r.seq != seq]
        if not recs:
            del self._versions[k]
            self._names[k[0]].discard(_full_name(k[1], k[2]))

    def delete_backups_before(self, cutoff_ms: int) -> int:
        removed = 0
        for k in list(self._versions):
            for rec in self.versions(k):
                if rec.superseded_ms is not None and rec.superseded_ms <= cutoff_ms:
                    self.delete_version(k, rec.seq)
                    removed += 1
        return removed

    def list_keys(self, store, scope, prefix, after, limit, exclude_deleted):
        names = self._names.get(store)
        if not names:
            return []
        low, high, cut = _list_bounds(scope, prefix, after)
        out = []
        for name in names.irange(low, high, inclusive=(True, False)):
            scope_name, key = name.split("/", 1)
            if exclude_deleted and self._versions[(store, scope_name, key)][-1].deleted:
                continue
            out.append(name[cut:])
            if len(out) >= limit:
                break
        return out

    def ordered_get(self, k):
        return self._ordered.get(k)

    def ordered_put(self, k, value, revision):
        index = self._ordered_index.setdefault((k[0], k[1]), SortedList())
        old = self._ordered.get(k)
        if old is not None:
            index.discard((old[0], k[2]))
        self._ordered[k] = (value, revision)
        index.add((value, k[2]))

    def ordered_delete(self, k):
        old = self._ordered.pop(k, None)
        if old is not None:
            self._ordered_index[(k[0], k[1])].discard((old[0], k[2]))

    def ordered_range(self, store, scope, ascending, limit, min_value, max_value, after):
        index = self._ordered_index.get((store, scope))
        if not index:
            return []
        low = (min_value, "") if min_value is not None else None
        high = (max_value, chr(0x10FFFF) * 51) if max_value is not None else None
        if after is not None:
            if ascending:
                low = max(low, after) if low is not None else after
            else:
                high = min(high, after) if high is not None else after
        # Bounds from a cursor are exclusive, value bounds inclusive; the cursor's item is skipped below.
        items = index.irange(low, high, reverse=not ascending)
        out = []
        for value, key in items:
            if (value, key) == after:
                continue
            out.append((key, value))
            if len(out) >= limit:
                break
        return out

    def latest_values(self) -> Iterator[bytes]:
        """The stored bytes of every key's latest live version (no tombstones, no backups), then every ordered
        entry's value as msgpack: what counts toward the experience's storage."""
        for recs in self._versions.values():
            if recs and not recs[-1].deleted and recs[-1].value is not None:
                yield recs[-1].value
        for value, _ in self._ordered.values():
            yield msgpack.packb(value)

    def close(self) -> None:
        pass

    def get_meta(self, name):
        got = self._meta.get(name)
        return None if got is None else json.loads(got)

    def put_meta(self, name, value):
        self._meta[name] = json.dumps(value)

    def store_summaries(self, prefix, after, limit, hidden):
        """(store, earliest key creation, latest write) of each store with a live key, in name order."""
        out = []
        for store in sorted(self._names):
            if not store.startswith(prefix) or (after is not None and store <= after) or store in hidden:
                continue
            recs = [r for name in self._names[store] for r in self._versions[(store, *name.split("/", 1))]]
            if any(r.superseded_ms is None and not r.deleted for r in recs):
                out.append((store, min(r.key_created_ms for r in recs), max(r.created_ms for r in recs)))
                if len(out) >= limit:
                    break
        return out

    def purge_store(self, store, through_ms):
        """Remove every version of `store` created at or before `through_ms`; how many went."""
        removed = 0
        for name in list(self._names.get(store, ())):
            k = (store, *name.split("/", 1))
            for rec in self.versions(k):
                if rec.created_ms <= through_ms:
                    self.delete_version(k, rec.seq)
                    removed += 1
        return removed

    def purge_key(self, k):
        recs = self._versions.pop(k, [])
        if recs:
            self._names[k[0]].discard(_full_name(k[1], k[2]))
        return len(recs)


# -------------------------------------------------------------------------------------------------------- sqlite

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entry_versions (
    store TEXT NOT NULL,
    name TEXT NOT NULL,               -- "scope/key"
    seq INTEGER NOT NULL,
    version TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    key_created_ms INTEGER NOT NULL,
    superseded_ms INTEGER,
    deleted INTEGER NOT NULL,
    value BLOB,                       -- msgpack
    info BLOB NOT NULL,               -- msgpack [user_ids, metadata]
    PRIMARY KEY (store, name, seq)
);
CREATE INDEX IF NOT EXISTS entry_current ON entry_versions(store, name) WHERE superseded_ms IS NULL;
CREATE INDEX IF NOT EXISTS entry_backups ON entry_versions(superseded_ms) WHERE superseded_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS ordered_entries (
    store TEXT NOT NULL,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    value INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (store, scope, key)
);
CREATE INDEX IF NOT EXISTS ordered_by_value ON ordered_entries(store, scope, value, key);
CREATE TABLE IF NOT EXISTS world_meta (
    name TEXT PRIMARY KEY,            -- "data_stores", "snapshot_ms", "deletion_templates" (see _lifecycle)
    value TEXT NOT NULL               -- JSON
);
"""

_COLUMNS = "seq, version, created_ms, key_created_ms, superseded_ms, deleted, value, info"


def _record(row: tuple) -> VersionRecord:
    user_ids, metadata = msgpack.unpackb(row[7], raw=False)
    return VersionRecord(row[0], row[1], row[2], row[3], row[4], bool(row[5]), row[6], tuple(user_ids), metadata)


LOCK_SUFFIX = ".lock"
"""The lock file beside a world's SQLite file (`world.db.lock`), held while a world has the file open; it holds no
data, only a line naming the process that took it last."""


def _hold(path: str) -> int | None:
    """This process's exclusive advisory lock on `path`'s lock file (its descriptor), or ConfigError when another live
    process holds it. The kernel releases the lock when the holder closes the descriptor or dies, however it ends."""
    if fcntl is None:
        return None
    lock_path = path + LOCK_SUFFIX
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process"
        os.close(fd)
        raise ConfigError(
            f"{path} is in use by another world ({holder} holds {lock_path}): shut that world down, or let its run "
            f"finish (a killed run's Ray processes end within seconds), then start again; or give this world "
            f"another path", field="path") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


class SqliteBackend:
    """One SQLite file, WAL journal, synchronous=FULL: a committed batch survives a killed process.

    Several shards of one world may open the same file; SQLite serialises their writers (busy timeout 30 s). One of
    them `holds` the file (see the module docstring): the others join it, and must be closed before it, so that the
    holder's close is the last and leaves the file complete on its own.
    """

    def __init__(self, path: str, hold: bool = True) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.path = path
        self._lock = _hold(path) if hold else None
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._release()
            raise
        self._depth = 0
        self._closed = False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    def latest(self, k):
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM entry_versions WHERE store=? AND name=? ORDER BY seq DESC LIMIT 1",
            (k[0], _full_name(k[1], k[2]))).fetchone()
        return _record(row) if row else None

    def versions(self, k):
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM entry_versions WHERE store=? AND name=? ORDER BY seq",
            (k[0], _full_name(k[1], k[2]))).fetchall()
        return [_record(r) for r in rows]

    def insert(self, k, rec):
        self._db.execute(
            f"INSERT INTO entry_versions (store, name, {_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (k[0], _full_name(k[1], k[2]), rec.seq, rec.version, rec.created_ms, rec.key_created_ms,
             rec.superseded_ms, int(rec.deleted), rec.value,
             msgpack.packb([list(rec.user_ids), rec.metadata], use_bin_type=True)))

    def supersede(self, k, seq, at_ms):
        self._db.execute("UPDATE entry_versions SET superseded_ms=? WHERE store=? AND name=? AND seq=?",
                         (at_ms, k[0], _full_name(k[1], k[2]), seq))

    def delete_version(self, k, seq):
        self._db.execute("DELETE FROM entry_versions WHERE store=? AND name=? AND seq=?",
                         (k[0], _full_name(k[1], k[2]), seq))

    def delete_backups_before(self, cutoff_ms):
        cur = self._db.execute("DELETE FROM entry_versions WHERE superseded_ms IS NOT NULL AND superseded_ms <= ?",
                               (cutoff_ms,))
        return cur.rowcount

    def list_keys(self, store, scope, prefix, after, limit, exclude_deleted):
        low, high, cut = _list_bounds(scope, prefix, after)
        sql = "SELECT name FROM entry_versions WHERE store=? AND superseded_ms IS NULL AND name >= ?"
        args: list = [store, low]
        if high is not None:
            sql += " AND name < ?"
            args.append(high)
        if exclude_deleted:
            sql += " AND deleted = 0"
        sql += " ORDER BY name LIMIT ?"
        args.append(limit)
        return [row[0][cut:] for row in self._db.execute(sql, args)]

    def ordered_get(self, k):
        row = self._db.execute("SELECT value, revision FROM ordered_entries WHERE store=? AND scope=? AND key=?",
                               k).fetchone()
        return (row[0], row[1]) if row else None

    def ordered_put(self, k, value, revision):
        self._db.execute("INSERT OR REPLACE INTO ordered_entries (store, scope, key, value, revision) "
                         "VALUES (?,?,?,?,?)", (*k, value, revision))

    def ordered_delete(self, k):
        self._db.execute("DELETE FROM ordered_entries WHERE store=? AND scope=? AND key=?", k)

    def ordered_range(self, store, scope, ascending, limit, min_value, max_value, after):
        sql = "SELECT key, value FROM ordered_entries WHERE store=? AND scope=?"
        args: list = [store, scope]
        if min_value is not None:
            sql += " AND value >= ?"
            args.append(min_value)
        if max_value is not None:
            sql += " AND value <= ?"
            args.append(max_value)
        if after is not None:
            sql += " AND (value, key) > (?, ?)" if ascending else " AND (value, key) < (?, ?)"
            args.extend(after)
        order = "ASC" if ascending else "DESC"
        sql += f" ORDER BY value {order}, key {order} LIMIT ?"
        args.append(limit)
        return [(row[0], row[1]) for row in self._db.execute(sql, args)]

    def get_meta(self, name):
        row = self._db.execute("SELECT value FROM world_meta WHERE name=?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_meta(self, name, value):
        self._db.execute("INSERT OR REPLACE INTO world_meta (name, value) VALUES (?, ?)", (name, json.dumps(value)))

    def store_summaries(self, prefix, after, limit, hidden):
        """(store, earliest key creation, latest write) of each store with a live key, in name order."""
        sql = "SELECT store, MIN(key_created_ms), MAX(created_ms) FROM entry_versions WHERE store >= ?"
        args: list = [prefix]
        high = _prefix_end(prefix) if prefix else None
        if high is not None:
            sql += " AND store < ?"
            args.append(high)
        if after is not None:
            sql += " AND store > ?"
            args.append(after)
        if hidden:
            sql += f" AND store NOT IN ({','.join('?' * len(hidden))})"
            args.extend(hidden)
        sql += " GROUP BY store HAVING SUM(superseded_ms IS NULL AND deleted = 0) > 0 ORDER BY store LIMIT ?"
        args.append(limit)
        return [tuple(row) for row in self._db.execute(sql, args)]

    def purge_store(self, store, through_ms):
        """Remove every version of `store` created at or before `through_ms`; how many went."""
        return self._db.execute("DELETE FROM entry_versions WHERE store=? AND created_ms <= ?",
                                (store, through_ms)).rowcount

    def purge_key(self, k):
        return self._db.execute("DELETE FROM entry_versions WHERE store=? AND name=?",
                                (k[0], _full_name(k[1], k[2]))).rowcount

    def latest_values(self) -> Iterator[bytes]:
        """See `MemoryBackend.latest_values`."""
        rows = self._db.execute("SELECT value FROM entry_versions WHERE superseded_ms IS NULL AND deleted = 0 "
                                "AND value IS NOT NULL").fetchall()
        ordered = self._db.execute("SELECT value FROM ordered_entries").fetchall()
        for (value,) in rows:
            yield value
        for (value,) in ordered:
            yield msgpack.packb(value)

    def close(self) -> None:
        """Checkpoint the WAL into the database file (and truncate it), then close the connection: afterwards the
        file alone holds every committed batch. The last connection to the file also switches it to a rollback
        journal (which deletes `-wal` and `-shm`, and says in the file's header that it needs neither); a connection
        that is not the last leaves that to the last. Then the lock, if this backend holds it, is released. Closing
        again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("PRAGMA busy_timeout=0")   # another connection still open: it is not the last, at once
            try:
                self._db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.OperationalError:
                pass   # "database is locked": the file's other connection closes last and switches it
        finally:
            self._db.close()
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def open_backend(kind: str, path: str | None = None, hold: bool = True) -> Backend:
    """A backend of `kind`; a SQLite one on `path`, holding the file's lock unless `hold` is False (a shard that
    shares the file of a shard that holds it)."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        if not path:
            raise ValueError("the sqlite backend needs a path")
        return SqliteBackend(path, hold=hold)
    raise ValueError(f"unknown backend {kind!r}: expected 'sqlite' or 'memory'")
