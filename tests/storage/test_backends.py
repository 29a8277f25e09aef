"""The SQLite backend's file: one world at a time holds it, and a clean close leaves it complete on its own."""

from __future__ import annotations

import shutil
import sqlite3
import sys

import pytest

from lodestore.storage import ConfigError
from lodestore.storage.datastore._backends import LOCK_SUFFIX, SqliteBackend

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="advisory file locks are POSIX")

ROLLBACK, WAL = 1, 2   # the journal mode a SQLite header says (bytes 18 and 19)


def _write(backend: SqliteBackend, n: int) -> None:
    with backend.transaction():
        backend.ordered_put(("s", "global", f"k{n}"), n, 1)


def _journal_mode(path) -> tuple[int, int]:
    header = path.read_bytes()[:100]
    return header[18], header[19]


def test_a_file_held_by_a_backend_is_refused_to_another_until_it_closes(tmp_path):
    path = tmp_path / "w.db"
    first = SqliteBackend(str(path))
    try:
        with pytest.raises(ConfigError, match="is in use by another world") as refused:
            SqliteBackend(str(path))
        assert str(path) in str(refused.value) and refused.value.field == "path"
        assert f"{path}{LOCK_SUFFIX}" in str(refused.value)   # and which lock says so
        _write(first, 1)                                     # the refusal took nothing from the holder
    finally:
        first.close()
    again = SqliteBackend(str(path))
    try:
        assert again.ordered_get(("s", "global", "k1")) == (1, 1)
    finally:
        again.close()


def test_a_joining_backend_shares_the_holders_file_and_the_holders_close_leaves_it_whole(tmp_path):
    path = tmp_path / "w.db"
    holder = SqliteBackend(str(path))
    joiner = SqliteBackend(str(path), hold=False)
    for n in range(20):
        _write(holder if n % 2 else joiner, n)
    joiner.close()                       # not the last connection: the WAL stays for the holder
    assert path.with_name("w.db-wal").exists()
    holder.close()
    assert not path.with_name("w.db-wal").exists() and not path.with_name("w.db-shm").exists()
    assert _journal_mode(path) == (ROLLBACK, ROLLBACK)   # the header says: no -wal needed

    copy = tmp_path / "copy" / "w.db"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    reader = sqlite3.connect(copy.as_uri() + "?mode=ro", uri=True)   # read-only: creates no -wal, needs none
    try:
        assert reader.execute("SELECT COUNT(*) FROM ordered_entries").fetchone() == (20,)
    finally:
        reader.close()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["w.db"]


def test_while_open_the_file_is_in_wal_mode_and_the_latest_writes_are_in_its_wal(tmp_path):
    # what a killed world leaves: world.db needs world.db-wal beside it
    path = tmp_path / "w.db"
    backend = SqliteBackend(str(path))
    _write(backend, 1)
    assert _journal_mode(path) == (WAL, WAL)
    assert path.with_name("w.db-wal").stat().st_size > 0
    backend.close()
