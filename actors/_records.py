"""What a session stores in one DataStore record, laid out as Lyra lays it out, and the pure functions around it.

Owns the record layout, data checksums, the split of large data into shard keys, the JSON patches of two-phase
transactions, how a record's data is read under a pending transaction, frozen (read-only) views of data and deep
copies of it (`copy_data`):

    record = {
        "applied_migrations": [str, ...],       # migration steps already applied, by name
        "session": str | None,                  # lock id of the session that last loaded or wrote it (fencing token)
        "file": FILE,                           # where the data is
        "orphaned_files": [SHARDED_FILE, ...],  # shard sets no longer used, to be removed in the background
    }
    FILE = {"data": TXINFO} | SHARDED_FILE
    SHARDED_FILE = {"shard": str, "count": int}      # chunks live at keys shard_key(shard, 0 .. count - 1)
    TXINFO = {"committed_data": data}, optionally with "tx_id": str and "tx_patch": PATCH

A patch is a list of ops, each `{"op": "add" | "replace", "path": [key, ...], "value": v}` or
`{"op": "remove", "path": [key, ...]}`. A path lists dict keys from the root; `[]` is the whole value (only "replace"
may target it). Diffs recurse into dicts only: lists and scalars that differ are replaced whole. "add" needs the key
absent, "replace" and "remove" need it present, so a patch applied to a value it was not made from is refused.

A record nests its data `RECORD_NESTING` containers deep at most (a transaction's phase-one record, whose patch
replaces the whole data, is the deepest), so data a session accepts may nest `MAX_DATA_DEPTH` deep, not Roblox's
`MAX_DEPTH`: `check_data` is the check for every value that becomes a session's data.

Plain Python: no Ray, no I/O, no clock, no randomness except the injectable `new_id`. It must never mutate its
inputs, never return data that aliases a patch, and never run code found in stored bytes (JSON and zlib only).
Malformed records, files, chunks and patches raise `RecordError`; data that Roblox cannot store raises
`storage.DataStoreError` (103/104, from `check_value`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import reprlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NoReturn, Required, TypedDict

import msgpack

from lodestore.actors._errors import RecordError
from lodestore.storage import (MAX_DEPTH, MAX_KEY_NAME, MAX_VALUE_CHARS, DataStoreError, canonical, check_value,
                               new_id)

__all__ = [
    "SHARD_LIMIT_CHARS",
    "RECORD_NESTING",
    "MAX_DATA_DEPTH",
    "check_data",
    "RecordError",
    "TxInfo",
    "InlineFile",
    "ShardedFile",
    "Record",
    "new_record",
    "pending_txinfo",
    "digest",
    "inline_file",
    "is_record",
    "check_record",
    "tx_id_of",
    "checksum",
    "shard_key",
    "shard_keys",
    "make_file",
    "read_file",
    "make_patch",
    "apply_patch",
    "committed",
    "FrozenDict",
    "freeze",
    "thaw",
    "copy_data",
]

SHARD_LIMIT_CHARS = 3_990_000
"""Data whose TXINFO is longer than this as JSON is sharded (Lyra's threshold, under Roblox's 4,194,304)."""

_OPS = ("add", "replace", "remove")
_PIECE = 1_000_000  # characters of a huge string checked at a time
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_TXINFO_OVERHEAD = len(_json({"committed_data": None})) - len("null")  # '{"committed_data":' and '}'
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 40


class TxInfo(TypedDict, total=False):
    """The data of an inline file, with the transaction that may be pending on it."""

    committed_data: Required[Any]
    tx_id: str
    tx_patch: list[dict[str, Any]]


class InlineFile(TypedDict):
    """A file whose data sits in the record itself."""

    data: TxInfo


class ShardedFile(TypedDict):
    """A file whose data is split over `count` chunk keys named by `shard_key(shard, i)`."""

    shard: str
    count: int


class Record(TypedDict):
    """The value a session stores under a player's key."""

    applied_migrations: list[str]
    session: str | None
    file: InlineFile | ShardedFile
    orphaned_files: list[ShardedFile]


# --- records ------------------------------------------------------------------------------------------------------


def new_record(data: Any, applied_migrations: Iterable[str], session: str | None, *, file: Any = None,
               orphaned_files: Iterable[Any] = ()) -> Record:
    """A record holding `data` inline, with no transaction and no orphaned files; or, given `file` (an inline
    file carrying a transaction, or a sharded file, for which `data` is ignored), pointing to that file, with the
    `orphaned_files` left to remove.

    `applied_migrations` is copied into a list; it must hold str names (a bare str is refused, not split into
    letters). `session` is the writer's lock id or None. Raises TypeError for either of the wrong type.
    """
    if isinstance(applied_migrations, str):
        raise TypeError(f"applied_migrations must be a list of str, got the str {_show(applied_migrations)}")
    migrations = list(applied_migrations)
    for i, name in enumerate(migrations):
        if not isinstance(name, str):
            raise TypeError(f"applied_migrations[{i}] is {_show(name)} ({type(name).__name__}), not a str")
    if session is not None and not isinstance(session, str):
        raise TypeError(f"session must be a str or None, got {_show(session)} ({type(session).__name__})")
    return {
        "applied_migrations": migrations,
        "session": session,
        "file": {"data": {"committed_data": data}} if file is None else file,
        "orphaned_files": list(orphaned_files),
    }


def pending_txinfo(before: Any, tx_id: str, patch: list[dict[str, Any]]) -> TxInfo:
    """The TXINFO of a transaction's phase one: the data before it, and the patch that applies once it commits."""
    return {"committed_data": before, "tx_id": tx_id, "tx_patch": patch}


def is_record(value: Any) -> bool:
    """True when a stored value has the record layout, to tell records from legacy or garbage values.

    Required: a dict with "applied_migrations" (a list of str) and "file" (an inline file whose "data" is a dict
    holding "committed_data", with "tx_id" a str and "tx_patch" a list when present; or a sharded file, "shard" a
    non-empty str and "count" an int >= 1). When present, "session" must be a str or None and "orphaned_files" a list
    of sharded files. The data itself is not checked.
    """
    return _record_problem(value) is None


def check_record(value: Any) -> Record:
    """Return `value` if `is_record(value)`, else raise RecordError naming the first thing that is wrong."""
    problem = _record_problem(value)
    if problem is not None:
        raise RecordError(problem)
    return value


def tx_id_of(record: Record) -> str | None:
    """The id of the transaction pending on the record's inline file; None without one or for a sharded file."""
    file = record.get("file") if isinstance(record, Mapping) else None
    _check_file(file, "record['file']")
    if "data" in file:
        return file["data"].get("tx_id")
    return None


def _record_problem(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"record is {_show(value)} ({type(value).__name__}), not a dict"
    if "applied_migrations" not in value:
        return "record has no 'applied_migrations'"
    migrations = value["applied_migrations"]
    if not isinstance(migrations, (list, tuple)):
        return f"record['applied_migrations'] is {_show(migrations)} ({type(migrations).__name__}), not a list"
    for i, name in enumerate(migrations):
        if not isinstance(name, str):
            return f"record['applied_migrations'][{i}] is {_show(name)} ({type(name).__name__}), not a str"
    if "session" in value and value["session"] is not None and not isinstance(value["session"], str):
        return f"record['session'] is {_show(value['session'])} ({type(value['session']).__name__}), not a str or None"
    if "file" not in value:
        return "record has no 'file'"
    problem = _file_problem(value["file"], "record['file']")
    if problem is not None:
        return problem
    orphans = value.get("orphaned_files", [])
    if not isinstance(orphans, (list, tuple)):
        return f"record['orphaned_files'] is {_show(orphans)} ({type(orphans).__name__}), not a list"
    for i, orphan in enumerate(orphans):
        what = f"record['orphaned_files'][{i}]"
        problem = _file_problem(orphan, what)
        if problem is not None:
            return problem
        if "data" in orphan:
            return f"{what} is an inline file; only sharded files can be orphaned"
    return None


def _file_problem(file: Any, what: str) -> str | None:
    if not isinstance(file, Mapping):
        return f"{what} is {_show(file)} ({type(file).__name__}), not a dict"
    if "data" in file:
        if "shard" in file:
            return f"{what} has both 'data' and 'shard'"
        txinfo = file["data"]
        if not isinstance(txinfo, Mapping):
            return f"{what}['data'] is {_show(txinfo)} ({type(txinfo).__name__}), not a dict"
        if "committed_data" not in txinfo:
            return f"{what}['data'] has no 'committed_data'"
        if "tx_id" in txinfo and not isinstance(txinfo["tx_id"], str):
            return f"{what}['data']['tx_id'] is {_show(txinfo['tx_id'])} ({type(txinfo['tx_id']).__name__}), not a str"
        if "tx_patch" in txinfo and not isinstance(txinfo["tx_patch"], (list, tuple)):
            return f"{what}['data']['tx_patch'] is {_show(txinfo['tx_patch'])}, not a list"
        return None
    if "shard" not in file:
        return f"{what} has neither 'data' nor 'shard'"
    shard, count = file["shard"], file.get("count")
    if not isinstance(shard, str) or not shard:
        return f"{what}['shard'] is {_show(shard)} ({type(shard).__name__}), not a non-empty str"
    if type(count) is not int or count < 1:  # bool is refused too
        return f"{what}['count'] is {_show(count)} ({type(count).__name__}); it must be an int >= 1"
    return None


def _check_file(file: Any, what: str = "file") -> None:
    problem = _file_problem(file, what)
    if problem is not None:
        raise RecordError(problem)


# --- checksums ----------------------------------------------------------------------------------------------------


def checksum(data: Any) -> str:
    """A 32-character hex digest (blake2b, 16 bytes) of `canonical(data)`.

    Equal data gives equal checksums whatever the dict order, tuples or lists, 1 or 1.0, frozen or plain; True and 1
    differ. `data` must be storable (see `check_value`).
    """
    return digest(canonical(thaw(data)))


def digest(canonical_bytes: bytes) -> str:
    """`checksum` of data whose `canonical` bytes the caller already has (a session computes them once per save)."""
    return hashlib.blake2b(canonical_bytes, digest_size=16).hexdigest()


INLINE_OVERHEAD_CHARS = len('{"committed_data":}')


def inline_file(data: Any) -> dict:
    """The inline FILE holding `data`: for callers that know its JSON length is within the limit."""
    return {"data": {"committed_data": data}}


# --- files and shards ---------------------------------------------------------------------------------------------


def shard_key(shard_id: str, index: int) -> str:
    """The key of chunk `index` of shard set `shard_id`: f"{shard_id}-{index}"."""
    return f"{shard_id}-{index}"


def shard_keys(file: InlineFile | ShardedFile) -> list[str]:
    """The chunk keys of a sharded file, in order; [] for an inline file. A malformed file raises RecordError."""
    _check_file(file)
    if "data" in file:
        return []
    return [shard_key(file["shard"], i) for i in range(file["count"])]


def _new_id() -> str:
    return new_id()


def make_file(
    data: Any, *, limit: int = SHARD_LIMIT_CHARS, new_id: Callable[[], str] = _new_id
) -> tuple[InlineFile | ShardedFile, dict[str, str]]:
    """The file to store `data` in, and the chunks to write first as {key: chunk} ({} for an inline file).

    Inline when the TXINFO `{"committed_data": data}` is at most `limit` characters as JSON. Otherwise the compact
    JSON of `data` is zlib-compressed, base64-encoded and cut into chunks of at most `limit` characters, under keys
    `shard_key(new_id(), i)`. `data` must be plain (thaw frozen data first); tuples come back from `read_file` as
    lists. An inline file holds `data` itself, not a copy.

    `data` is checked as `check_value` checks it except for its size, so data that Roblox could not store raises
    DataStoreError 103/104 whichever way it is stored (large data is checked part by part, each part nesting at most
    `MAX_DEPTH` deep). A `limit` outside 1..4,194,302 (a chunk must fit one value) or an id from `new_id` that would
    make a key over 50 characters raises ValueError.
    """
    if type(limit) is not int or not 1 <= limit <= MAX_VALUE_CHARS - 2:
        raise ValueError(f"limit must be an int in 1..{MAX_VALUE_CHARS - 2}, got {limit!r}")
    try:
        size = check_value(data, what="data") + _TXINFO_OVERHEAD
    except DataStoreError as exc:
        if exc.code != 105:
            raise
        _check_unbounded(data, "data", set(), set(), 0)
        size = None
    if size is not None and size <= limit:
        return {"data": {"committed_data": data}}, {}
    try:
        text = _json(data)
    except RecursionError:
        raise DataStoreError(
            104, "CantStoreValue", "data is nested too deeply to encode from this call stack"
        ) from None
    packed = base64.b64encode(zlib.compress(text.encode("utf-8"))).decode("ascii")
    pieces = [packed[i : i + limit] for i in range(0, len(packed), limit)]
    shard_id = new_id()
    last = shard_key(shard_id, len(pieces) - 1)
    if not isinstance(shard_id, str) or not shard_id or len(last) > MAX_KEY_NAME:
        raise ValueError(
            f"new_id() returned {_show(shard_id)}; it must be a non-empty str short enough that chunk keys such as "
            f"{_show(last)} stay within {MAX_KEY_NAME} characters"
        )
    file: ShardedFile = {"shard": shard_id, "count": len(pieces)}
    return file, {shard_key(shard_id, i): piece for i, piece in enumerate(pieces)}


def _check_unbounded(value: Any, what: str, ancestors: set[int], checked: set[int], depth: int) -> None:
    """`check_value` without its size limit: check parts small enough for it, split the rest."""
    if id(value) in checked:  # the same container met again elsewhere (not a cycle: it is not an ancestor)
        return
    try:
        check_value(value, what=what)
    except DataStoreError as exc:
        if exc.code != 105:
            raise
    else:
        checked.add(id(value))
        return
    if isinstance(value, str):  # check_value looks for lone surrogates before measuring: it is only long
        return
    if id(value) in ancestors:
        raise DataStoreError(104, "CantStoreValue", f"{what} is a cycle: it contains itself")
    if depth >= MAX_DEPTH:
        raise DataStoreError(104, "CantStoreValue", f"{what} nests containers more than {MAX_DEPTH} deep")
    ancestors.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            check_value({key: None}, what=what)  # the key: a str without lone surrogates
            _check_unbounded(item, f"{what}[{_show_path([key])[1:-1]}]", ancestors, checked, depth + 1)
    else:  # a list or tuple: check_value refused every other type with 103/104
        for i, item in enumerate(value):
            _check_unbounded(item, f"{what}[{i}]", ancestors, checked, depth + 1)
    ancestors.discard(id(value))
    checked.add(id(value))


def read_file(file: InlineFile | ShardedFile, chunks: Sequence[str | None]) -> Any:
    """The data `make_file` stored in `file`: its committed data if inline (`chunks` is ignored), else the data
    rebuilt from `chunks`, the values read at `shard_keys(file)` in order (None for a key that had no value).

    Raises RecordError for a malformed file, a chunk count other than the file's, a missing or non-str chunk, or
    chunks that do not decode (base64, zlib, UTF-8, JSON). Never runs code found in the chunks.
    """
    _check_file(file)
    if "data" in file:
        return file["data"]["committed_data"]
    shard, count = file["shard"], file["count"]
    if len(chunks) != count:
        raise RecordError(f"shard {shard!r} has {count} chunks, but {len(chunks)} were given")
    for i, chunk in enumerate(chunks):
        if chunk is None:
            raise RecordError(f"chunk {i} of {count} ({shard_key(shard, i)!r}) is missing")
        if not isinstance(chunk, str):
            raise RecordError(f"chunk {i} of {count} ({shard_key(shard, i)!r}) is a {type(chunk).__name__}, not a str")
    try:
        text = zlib.decompress(base64.b64decode("".join(chunks), validate=True)).decode("utf-8")
        return json.loads(text, parse_constant=_no_nan)
    except (binascii.Error, zlib.error, ValueError, RecursionError) as exc:  # incl. UnicodeDecode-, JSONDecodeError
        raise RecordError(f"the {count} chunks of shard {shard!r} do not decode: {type(exc).__name__}: {exc}") from None


def _no_nan(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a storable number")


# --- patches ------------------------------------------------------------------------------------------------------


def make_patch(before: Any, after: Any) -> list[dict[str, Any]]:
    """The ops that turn `before` into `after` (format in the module docstring); [] when they are equal.

    Equal means equal `canonical` bytes: 1 and 1.0, tuples and lists, dict orders agree; True and 1 do not. Dicts
    (and FrozenDicts) are diffed key by key, in sorted key order; anything else that differs is replaced whole. Op
    values are plain deep copies (dicts and lists) of parts of `after`, sharing nothing with it.
    """
    ops: list[dict[str, Any]] = []
    _diff(before, after, [], ops)
    return ops


def _diff(before: Any, after: Any, path: list[str], ops: list[dict[str, Any]]) -> None:
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        for key in sorted(before.keys() | after.keys()):
            if key not in after:
                ops.append({"op": "remove", "path": [*path, key]})
            elif key not in before:
                ops.append({"op": "add", "path": [*path, key], "value": thaw(after[key])})
            else:
                _diff(before[key], after[key], [*path, key], ops)
    elif not _same(before, after):
        ops.append({"op": "replace", "path": path, "value": thaw(after)})


def _same(a: Any, b: Any) -> bool:
    """Equality as `canonical` sees it: Python's `==`, except that a bool equals only a bool, at every depth."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and len(a) == len(b) and all(k in b and _same(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(b, (Mapping, list, tuple)):
        return False
    return a == b


def apply_patch(before: Any, patch: Sequence[Mapping[str, Any]]) -> Any:
    """A new value: `before` with `patch` applied, as plain dicts and lists sharing nothing with `before` or `patch`.

    `before` is never changed, even when an op is refused. Raises RecordError naming the op (index, kind and path)
    and the problem when the patch is not a list of ops or an op does not fit: a path through a missing key or a
    non-dict, "add" of a key that exists, "replace" or "remove" of a key that does not, or a root op other than
    "replace".
    """
    if not isinstance(patch, (list, tuple)):
        raise RecordError(f"a patch must be a list of ops, got {_show(patch)} ({type(patch).__name__})")
    result = thaw(before)
    for n, op in enumerate(patch):
        result = _apply_op(result, op, n)
    return result


def _apply_op(doc: Any, op: Any, n: int) -> Any:
    """Apply one op to `doc`, a private plain copy that may be changed in place; return the new root."""
    if not isinstance(op, Mapping):
        raise RecordError(f"patch op {n} is {_show(op)} ({type(op).__name__}), not a dict")
    kind, path = op.get("op"), op.get("path")
    if kind not in _OPS:
        raise RecordError(f"patch op {n} has op {_show(kind)}; it must be one of {', '.join(_OPS)}")
    if not isinstance(path, (list, tuple)) or not all(isinstance(key, str) for key in path):
        raise RecordError(f"patch op {n} ({kind}) has path {_show(path)}; it must be a list of str keys")
    where = f"patch op {n} ({kind} {_show_path(path)})"
    if kind != "remove" and "value" not in op:
        raise RecordError(f"{where} has no 'value'")
    if not path:
        if kind != "replace":
            raise RecordError(f"{where}: only 'replace' can target the whole value")
        return thaw(op["value"])
    parent = doc
    for depth, key in enumerate(path):
        if not isinstance(parent, dict):
            raise RecordError(f"{where}: {_show_path(path[:depth])} is a {type(parent).__name__}, not a dict")
        if depth == len(path) - 1:
            break
        if key not in parent:
            raise RecordError(f"{where}: {_show_path(path[: depth + 1])} does not exist")
        parent = parent[key]
    key = path[-1]
    if kind == "add":
        if key in parent:
            raise RecordError(f"{where}: {_show_path(path)} already exists")
        parent[key] = thaw(op["value"])
    elif key not in parent:
        raise RecordError(f"{where}: {_show_path(path)} does not exist")
    elif kind == "replace":
        parent[key] = thaw(op["value"])
    else:
        del parent[key]
    return doc


def _show_path(path: Sequence[str]) -> str:
    shown = [key if len(key) <= 40 else key[:37] + "..." for key in path]
    if len(shown) > 12:
        shown = [*shown[:6], f"...({len(shown) - 10} more)...", *shown[-4:]]
    return json.dumps(shown, ensure_ascii=False, separators=(",", ":"))


# --- transactions -------------------------------------------------------------------------------------------------


def committed(txinfo: TxInfo, marker_exists: bool | None) -> Any:
    """The data a TXINFO holds once its transaction is resolved, by Lyra's rule.

    No "tx_id" (or None): "committed_data". With a "tx_id", the transaction's marker decides: gone
    (`marker_exists is False`) means the transaction committed, so the result is `apply_patch(committed_data,
    tx_patch)`, a new value; still there (`True`) means it has not committed (or was rolled back), so the result is
    "committed_data". Other results are "committed_data" itself, not a copy.

    Raises ValueError if a tx_id is present and `marker_exists` is not a bool (the caller must look the marker up
    first), and RecordError for a malformed TXINFO, a committed transaction without a "tx_patch", or a patch that
    does not fit.
    """
    if not isinstance(txinfo, Mapping) or "committed_data" not in txinfo:
        raise RecordError(f"txinfo is {_show(txinfo)}; it must be a dict with 'committed_data'")
    tx_id = txinfo.get("tx_id")
    if tx_id is None:
        return txinfo["committed_data"]
    if marker_exists is True:
        return txinfo["committed_data"]
    if marker_exists is not False:
        raise ValueError(
            f"txinfo has tx_id {tx_id!r}: look its marker up and pass marker_exists=True or False, "
            f"not {marker_exists!r}"
        )
    if "tx_patch" not in txinfo:
        raise RecordError(f"transaction {tx_id!r} committed (its marker is gone) but the txinfo has no 'tx_patch'")
    return apply_patch(txinfo["committed_data"], txinfo["tx_patch"])


# --- frozen data --------------------------------------------------------------------------------------------------


class FrozenDict(Mapping[str, Any]):
    """A read-only dict: every Mapping method, no mutation (assignment, `del`, `update`, `pop`, ... raise TypeError).

    Equal to any mapping with equal content, where tuples and lists holding equal items are equal (so
    `freeze(x) == x`). Not hashable. Build changed copies as plain dicts: `{**frozen, "coins": 5}`.
    `FrozenDict(...)` takes what `dict(...)` takes and is shallow; use `freeze` for a deep read-only view.
    """

    __slots__ = ("_data",)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "_data", dict(*args, **kwargs))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return thaw(self) == thaw(other)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (self._data,))

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("FrozenDict is read-only; build a changed copy as a plain dict, e.g. {**frozen, key: value}")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = __ior__ = _refuse
    update = pop = popitem = clear = setdefault = _refuse


def freeze(data: Any) -> Any:
    """A deep read-only copy of `data`: mappings become FrozenDicts, lists and tuples tuples; scalars as they are."""
    if isinstance(data, Mapping):
        return FrozenDict({key: freeze(value) for key, value in data.items()})
    if isinstance(data, (list, tuple)):
        return tuple(freeze(item) for item in data)
    return data


def thaw(value: Any) -> Any:
    """A deep plain copy of `value`: mappings (FrozenDict or not) become dicts, lists and tuples lists, at every depth.

    The inverse of `freeze`, for mixed structures too (a plain dict built as `{**frozen, "coins": 5}` thaws fully).
    Scalars are returned as they are.
    """
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(item) for item in value]
    return value


def copy_data(data: Any) -> Any:
    """A deep copy of JSON-compatible data (msgpack round trip: several times faster than copy.deepcopy)."""
    return msgpack.unpackb(msgpack.packb(data, use_bin_type=True), raw=False)


# --- how deep data may nest -------------------------------------------------------------------------------------


def _nesting(value: Any, target: object) -> int:
    """How many containers deep `target` (by identity) sits in `value` at its deepest; -1 when it is absent."""
    if value is target:
        return 0
    children = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
    deepest = max((_nesting(child, target) for child in children), default=-1)
    return deepest + 1 if deepest >= 0 else -1


_DATA = object()   # stands for a session's data in the records below
RECORD_NESTING = max(
    _nesting(new_record(_DATA, (), None), _DATA),      # a saved record
    _nesting(new_record(None, (), None, file={"data": pending_txinfo(_DATA, "", make_patch([], _DATA))}), _DATA),
)
"""How many containers deep the deepest record a session writes holds its data: a transaction's phase-one record,
whose patch replaces the whole data (dict data's patches sit at least one level lower)."""

MAX_DATA_DEPTH = MAX_DEPTH - RECORD_NESTING
"""How deep a session's data may nest so that every record holding it stays within Roblox's `MAX_DEPTH`."""


def check_data(data: Any, *, what: str = "data") -> int:
    """`check_value` for a value that becomes a session's data (an update's result, a transaction's, a template, a
    migration's, imported legacy data): also refused with 104 when it nests deeper than `MAX_DATA_DEPTH`, because
    the record holding it would nest deeper than Roblox allows and every save of it would fail. Returns its size."""
    return check_value(data, what=what, max_depth=MAX_DATA_DEPTH)


def _show(value: Any) -> str:
    """repr of `value`, bounded however big it is, never raising."""
    try:
        text = _repr.repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 60 else text[:57] + "..."
