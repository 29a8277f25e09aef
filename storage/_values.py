"""What a DataStore may store, how big Roblox says it is, and the bytes lodestore keeps for it.

Owns Roblox's rules of "Names and sizes" (reference/roblox-datastores.md): store names, scopes, keys, values, user ids,
metadata and page sizes, each refused with Roblox's error code and a message that says where the bad part is and what
was found. Owns the two encodings of a value: msgpack for storage (`encode`/`decode`) and canonical JSON for checksums
(`canonical`). Plain Python: no Ray, no I/O, no clock. It must never run code found in stored bytes (no pickle, no
msgpack extension hooks) and never build error text on the success path.

Choices made where Roblox documents nothing (callers and tests rely on them):

- Store names and scopes have no Roblox error code: a bad one raises `DataStoreError(0, "InvalidName", ...)` (code 0 =
  "no Roblox code", not retryable). A scope may not contain "/" (AllScopes stores address keys as "scope/key").
- Keys: a key that is not a str raises 101 KeyNameEmpty (as Roblox does for a nil key); empty -> 101; longer than 50
  characters or holding a lone surrogate (not valid UTF-8) -> 102 KeyNameLimit.
- Values may nest at most `MAX_DEPTH` = 256 containers deep; deeper -> 104. The check itself is iterative, so any depth
  is refused cleanly; 256 leaves room on Python's 1000-frame stack for the json encoder and `canonical`, which
  recurse (msgpack's own nesting limit is higher). Should the stack still run out, that too is a 104, never a
  RecursionError.
- Lengths are Python `len`, in code points, of the compact JSON text with `ensure_ascii=False`.
- Subclasses of the storable types (IntEnum, StrEnum, OrderedDict, namedtuple, ...) are storable as their base type and
  come back from `decode` as that base type. bool is never an int here.
- `canonical`: numbers compare as Roblox's doubles and Python's `==` do, so 1 and 1.0 (and 0.0 and -0.0) give the same
  bytes: a float with no fractional part is written as the integer it equals. True and 1 stay different (Roblox has
  booleans). Dict order never matters; tuples and lists are the same array.
- User ids: ints (bool refused) in the signed 64-bit range, negative ids allowed (Roblox Studio's test players have
  ids -1, -2, ...); whole floats such as 5.0 are accepted as 5 (Roblox numbers are doubles); anything else -> 513;
  more than 4 -> 512. Metadata: every problem -> 511; values are str, finite numbers or bool (no None, no tables).
- `decode` of bytes that fail to parse raises 501 CorruptedData. `encode` of something msgpack cannot pack raises 104.
"""

from __future__ import annotations

import json
import re
import reprlib
from typing import Any

import msgpack

from ._errors import DataStoreError
from ._limits import (
    DEFAULT_SCOPE,
    INT64_MAX,
    INT64_MIN,
    MAX_KEY_NAME,
    MAX_METADATA_KEY,
    MAX_METADATA_TOTAL,
    MAX_METADATA_VALUE,
    MAX_SCOPE,
    MAX_STORE_NAME,
    MAX_USER_IDS,
    MAX_VALUE_CHARS,
)

__all__ = [
    "MAX_DEPTH",
    "check_value",
    "encode",
    "decode",
    "canonical",
    "check_store_name",
    "check_scope",
    "check_key",
    "check_user_ids",
    "check_metadata",
    "check_page_size",
]

MAX_DEPTH = 256
"""How many containers deep a value may nest; the value `[[1]]` is 2 deep, a scalar 0."""

_SHOWN = 60  # found values and names are shortened to about this many characters in messages

_has_surrogate = re.compile("[\ud800-\udfff]").search
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_canonical_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True).encode

_ROOT = object()  # the "key" of the value itself, so an error at the root has an empty path
_CONTAINER = object()  # _leaf_problem's answer for a subclass of dict, list or tuple

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _SHOWN
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = _repr.maxdeque = 6
_repr.maxdict = 4
_repr.maxlevel = 2


# --- values -------------------------------------------------------------------------------------------------------


def check_value(value: Any, *, what: str = "value", max_depth: int = MAX_DEPTH) -> int:
    """Refuse what Roblox cannot store; return the value's size in characters as Roblox counts it.

    The size is `len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))`. Refusals: 103 ValueNotAllowed for
    NaN/infinity, strings with lone surrogates and non-str dict keys; 104 CantStoreValue for other types, ints outside
    64 bits, cycles and nesting deeper than `max_depth`; 105 ValueTooLarge over `MAX_VALUE_CHARS`. Messages name the
    bad part as a path from `what`. `max_depth` (at most `MAX_DEPTH`) is for a value that will be stored inside
    `MAX_DEPTH - max_depth` containers of the caller's (a record wrapping a player's data).

    >>> check_value({"coins": 10, "items": ["sword"]})
    30
    >>> check_value({"inventory": [1, {1: 2}]})
    Traceback (most recent call last):
    ...
    storage._errors.DataStoreError: 103 ValueNotAllowed: value["inventory"][1] has key 1 (int); dict keys must be str
    """
    at_least = _validate(value, what, max_depth)
    if at_least > MAX_VALUE_CHARS:  # certain without encoding (and a value sharing one list 2**30 times never is)
        raise _too_large(what, f"at least {at_least}")
    try:
        size = len(_json(value))
    except RecursionError:
        raise DataStoreError(
            104, "CantStoreValue", f"{what} is nested too deeply to encode from this call stack (limit {MAX_DEPTH})"
        ) from None
    if size > MAX_VALUE_CHARS:
        raise _too_large(what, str(size))
    return size


def _too_deep(what: str, max_depth: int, where: str) -> DataStoreError:
    held = f" (it is stored inside {MAX_DEPTH - max_depth} more; Roblox allows {MAX_DEPTH} in all)" \
        if max_depth < MAX_DEPTH else ""
    return DataStoreError(104, "CantStoreValue", f"{what} nests containers more than {max_depth} deep{held}, {where}")


def _too_large(what: str, size: str) -> DataStoreError:
    return DataStoreError(
        105, "ValueTooLarge", f"{what} is {size} characters as JSON, over the limit of {MAX_VALUE_CHARS}"
    )


def _validate(value: Any, what: str, max_depth: int) -> int:
    """One walk over `value`, depth first, without recursion; return a lower bound of its JSON length.

    No path is built on the success path: the path of the element being checked is the keys of the open containers
    plus the loop's current key, and is only turned into text when something is refused.
    """
    at_least = 0  # lower bound of the JSON length: strings, keys, brackets and commas; numbers count 0
    iters: list = [iter(((_ROOT, value),))]  # one iterator per open container, under one for the value itself
    containers: list = []  # containers[i] is what iters[i + 1] walks
    keys: list = []  # keys[i]: where containers[i] sits in its parent (_ROOT for the value itself)
    open_ids: set[int] = set()  # ids of the open containers: meeting one again inside itself is a cycle
    while iters:
        for k, v in iters[-1]:
            t = type(v)
            if t is str:
                at_least += len(v) + 2
                if v.isascii() or _has_surrogate(v) is None:
                    continue
            elif t is int:
                if INT64_MIN <= v <= INT64_MAX:
                    continue
            elif t is float:
                if v - v == 0.0:  # false for NaN and both infinities
                    continue
            elif t is dict or t is list or t is tuple:
                break
            elif v is None or t is bool:
                continue
            problem = _leaf_problem(v)
            if problem is None:
                continue
            if problem is _CONTAINER:
                break
            code, name, found = problem
            raise DataStoreError(code, name, f"{_path(what, keys, k)} {found}")
        else:  # this container is done
            iters.pop()
            if containers:
                open_ids.discard(id(containers.pop()))
                keys.pop()
            continue
        # v, at key k of the innermost open container, is a container: check it, then walk into it.
        if id(v) in open_ids:
            outer = next(i for i, c in enumerate(containers) if c is v)
            raise DataStoreError(
                104,
                "CantStoreValue",
                f"{_path(what, keys, k)} is a cycle: it is the same {type(v).__name__} as "
                f"{_path(what, keys[: outer + 1])}, which contains it",
            )
        if len(containers) >= max_depth:
            raise _too_deep(what, max_depth, f"at {_path(what, keys, k)} ({len(containers) + 1} deep)")
        if isinstance(v, dict):
            try:
                all_keys = "".join(v)  # checks every key is a str, at C speed
            except TypeError:
                all_keys = "\ud800"  # find the bad key below
            if not all_keys.isascii() and _has_surrogate(all_keys):
                for key in v:
                    _check_dict_key(key, what, keys, k)
            # "{" "}", a comma between entries, and per entry its key in quotes and a colon.
            at_least += len(all_keys) + 4 * len(v) + 1
            iters.append(iter(v.items()))
        else:
            at_least += len(v) + 1  # brackets and commas
            iters.append(enumerate(v))
        containers.append(v)
        keys.append(k)
        open_ids.add(id(v))
        if at_least > MAX_VALUE_CHARS:
            return at_least
    return at_least


def _leaf_problem(v: Any) -> tuple[int, str, str] | object | None:
    """Slow path for what the walk's fast checks did not accept: None if fine, _CONTAINER, or (code, name, text)."""
    if isinstance(v, str):
        bad = _has_surrogate(v)
        if bad is None:
            return None
        return 103, "ValueNotAllowed", f"is {_show(v)} ({type(v).__name__}), with {_surrogate_at(bad)}"
    if isinstance(v, float):
        if v - v == 0.0:
            return None
        return 103, "ValueNotAllowed", f"is {_show(v)} ({type(v).__name__}); numbers must be finite"
    if isinstance(v, int):  # bool was accepted before; IntEnum and other subclasses land here
        if INT64_MIN <= v <= INT64_MAX:
            return None
        return (
            104,
            "CantStoreValue",
            f"is {_show(v)} ({type(v).__name__}), outside the signed 64-bit range [{INT64_MIN}, {INT64_MAX}]",
        )
    if isinstance(v, (dict, list, tuple)):
        return _CONTAINER
    return (
        104,
        "CantStoreValue",
        f"is {_show(v)} ({type(v).__name__}), which cannot be stored; "
        "only None, bool, int, float, str, list, tuple and dict with str keys can",
    )


def _check_dict_key(key: Any, what: str, keys: list, k: Any) -> None:
    if isinstance(key, str):
        bad = _has_surrogate(key)
        if bad is None:
            return  # a str subclass
        raise DataStoreError(
            103, "ValueNotAllowed", f"{_path(what, keys, k)} has key {_show(key)}, with {_surrogate_at(bad)}"
        )
    raise DataStoreError(
        103,
        "ValueNotAllowed",
        f"{_path(what, keys, k)} has key {_show(key)} ({type(key).__name__}); dict keys must be str",
    )


def _surrogate_at(match: re.Match) -> str:
    return f"a lone surrogate {ascii(match.group())} at index {match.start()}; strings must be valid UTF-8"


def _path(what: str, keys: list, last: Any = _ROOT) -> str:
    """`value["inventory"][3]["name"]`: `what`, then each key (list indexes are ints, dict keys str)."""
    parts = [f"[{_show_key(p)}]" for p in keys if p is not _ROOT]
    if last is not _ROOT:
        parts.append(f"[{_show_key(last)}]")
    if len(parts) > 16:
        parts = [*parts[:8], f"...({len(parts) - 12} more)...", *parts[-4:]]
    return what + "".join(parts)


def _show_key(key: Any) -> str:
    if type(key) is int:
        return str(key)
    key = str(key)
    short = key if len(key) <= 40 else key[:37] + "..."
    return json.dumps(short, ensure_ascii=_has_surrogate(short) is not None)


def _show(v: Any) -> str:
    """repr of v, bounded however big v is, and never raising."""
    try:
        text = _repr.repr(v)
    except Exception:
        text = f"<{type(v).__name__} object>"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


# --- encodings ----------------------------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    """The msgpack bytes lodestore stores for a value that passed `check_value` (tuples become arrays).

    Does not check the value: what msgpack cannot pack raises 104 CantStoreValue.
    """
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
        raise DataStoreError(104, "CantStoreValue", f"cannot encode value: {_shorten(str(exc))}") from exc


def decode(data: bytes) -> Any:
    """The value `encode` made `data` from, with tuples as lists: `decode(encode(v)) == v` for stored values.

    Runs no code: msgpack extension types are refused and maps must have str keys. Bytes that are not a msgpack
    value raise 501 CorruptedData. Bytes that `encode` did not make may still decode to `bytes` or a
    `msgpack.Timestamp` (inert data); pass such results to `check_value`.
    """
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext)
    except (TypeError, ValueError) as exc:  # msgpack's FormatError, StackError, ExtraData are ValueErrors
        raise DataStoreError(501, "CorruptedData", f"stored data cannot be decoded: {_shorten(str(exc))}") from exc


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def canonical(value: Any) -> bytes:
    """Bytes that are equal exactly when two stored values are equal, for checksums (change detection).

    Compact UTF-8 JSON with sorted keys; tuples and lists are both arrays; a float with no fractional part is written
    as the integer it equals, so 1 and 1.0 agree (as they do in Roblox, where every number is a double, and for `==`).
    True and 1 differ. `value` must have passed `check_value`.

    >>> canonical({"b": 1.0, "a": (2.5, True)}) == canonical({"a": [2.5, True], "b": 1})
    True
    """
    try:
        return _canonical_json(_whole_floats_as_ints(value)).encode("utf-8")
    except RecursionError:
        raise DataStoreError(
            104, "CantStoreValue", f"value is nested too deeply to encode from this call stack (limit {MAX_DEPTH})"
        ) from None


_PLAIN = frozenset((str, int, bool, type(None)))


def _whole_floats_as_ints(v: Any) -> Any:
    t = type(v)
    if t is dict:
        return {k: x if type(x) in _PLAIN else _whole_floats_as_ints(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [x if type(x) in _PLAIN else _whole_floats_as_ints(x) for x in v]
    if t is float:
        return int(v) if v.is_integer() else v
    if isinstance(v, float):
        return int(v) if v.is_integer() else float(v)
    if isinstance(v, dict):
        return _whole_floats_as_ints(dict(v))
    if isinstance(v, (list, tuple)):
        return _whole_floats_as_ints(list(v))
    return v


# --- names, keys, user ids, metadata, page sizes ------------------------------------------------------------------


def check_store_name(name: Any, *, what: str = "data store name") -> str:
    """Return `name` if it is a str of 1..50 characters in valid UTF-8, else raise DataStoreError(0, "InvalidName").

    With `what="scope"` the scope rules apply too (no "/"), as in `check_scope` except that None is refused.
    """
    if what == "scope":
        return _check_scope(name, what)
    return _check_name(name, what, MAX_STORE_NAME)


def check_scope(scope: Any = DEFAULT_SCOPE, *, what: str = "scope") -> str:
    """Return the scope ("global" for None) if it is a str of 1..50 characters in valid UTF-8 without "/", else
    raise DataStoreError(0, "InvalidName")."""
    if scope is None:
        return DEFAULT_SCOPE
    return _check_scope(scope, what)


def _check_scope(scope: Any, what: str) -> str:
    _check_name(scope, what, MAX_SCOPE)
    if "/" in scope:
        raise DataStoreError(
            0, "InvalidName", f"{what} {_show(scope)} contains '/', which separates scope and key in AllScopes stores"
        )
    return scope


def _check_name(name: Any, what: str, limit: int) -> str:
    if not isinstance(name, str):
        raise DataStoreError(0, "InvalidName", f"{what} must be a str, got {_show(name)} ({type(name).__name__})")
    if not name:
        raise DataStoreError(0, "InvalidName", f"{what} is empty; it must be 1 to {limit} characters")
    if len(name) > limit:
        raise DataStoreError(
            0, "InvalidName", f"{what} {_show(name)} is {len(name)} characters, over the limit of {limit}"
        )
    bad = _has_surrogate(name)
    if bad is not None:
        raise DataStoreError(0, "InvalidName", f"{what} {_show(name)} has {_surrogate_at(bad)}")
    return name


def check_key(key: Any, *, what: str = "key") -> str:
    """Return `key` if it is a str of 1..50 characters in valid UTF-8.

    Not a str or empty -> 101 KeyNameEmpty; too long or a lone surrogate -> 102 KeyNameLimit.
    """
    if not isinstance(key, str):
        raise DataStoreError(101, "KeyNameEmpty", f"{what} must be a str, got {_show(key)} ({type(key).__name__})")
    if not key:
        raise DataStoreError(101, "KeyNameEmpty", f"{what} is empty; it must be 1 to {MAX_KEY_NAME} characters")
    if len(key) > MAX_KEY_NAME:
        raise DataStoreError(
            102, "KeyNameLimit", f"{what} {_show(key)} is {len(key)} characters, over the limit of {MAX_KEY_NAME}"
        )
    bad = _has_surrogate(key)
    if bad is not None:
        raise DataStoreError(102, "KeyNameLimit", f"{what} {_show(key)} has {_surrogate_at(bad)}")
    return key


def check_user_ids(user_ids: Any) -> tuple[int, ...]:
    """The user ids to attach to a write, as a tuple of ints; None gives ().

    More than 4 -> 512 UserIdLimit. Not a list/tuple, or an element that is not an integer in the signed 64-bit
    range -> 513 InvalidUserIds (bool refused, whole floats such as 5.0 taken as 5, negative ids allowed).
    """
    if user_ids is None:
        return ()
    if not isinstance(user_ids, (list, tuple)):
        raise DataStoreError(
            513,
            "InvalidUserIds",
            f"user ids must be a list or tuple of ints, got {_show(user_ids)} ({type(user_ids).__name__})",
        )
    if len(user_ids) > MAX_USER_IDS:
        raise DataStoreError(
            512, "UserIdLimit", f"{len(user_ids)} user ids given, over the limit of {MAX_USER_IDS}"
        )
    out = []
    for i, uid in enumerate(user_ids):
        if isinstance(uid, float) and uid.is_integer():
            uid = int(uid)
        if type(uid) is bool or not isinstance(uid, int) or not INT64_MIN <= uid <= INT64_MAX:
            raise DataStoreError(
                513,
                "InvalidUserIds",
                f"user_ids[{i}] is {_show(user_ids[i])} ({type(user_ids[i]).__name__}); "
                "user ids must be integers in the signed 64-bit range",
            )
        out.append(int(uid))
    return tuple(out)


def check_metadata(metadata: Any) -> dict[str, Any]:
    """A copy of the metadata to attach to a write; None gives {}.

    Keys are str of at most 50 characters; values are str, finite numbers (ints in 64 bits) or bool whose JSON is at
    most 250 characters; the whole dict's JSON is at most 300 characters. Anything else -> 511 MetadataLimit.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise DataStoreError(
            511, "MetadataLimit", f"metadata must be a dict, got {_show(metadata)} ({type(metadata).__name__})"
        )
    out = {}
    for key, v in metadata.items():
        if not isinstance(key, str):
            raise DataStoreError(
                511, "MetadataLimit", f"metadata key {_show(key)} ({type(key).__name__}) is not a str"
            )
        where = f"metadata[{_show_key(key)}]"
        if len(key) > MAX_METADATA_KEY:
            raise DataStoreError(
                511,
                "MetadataLimit",
                f"metadata key {_show(key)} is {len(key)} characters, over the limit of {MAX_METADATA_KEY}",
            )
        bad = _has_surrogate(key)
        if bad is not None:
            raise DataStoreError(511, "MetadataLimit", f"metadata key {_show(key)} has {_surrogate_at(bad)}")
        if v is None or not isinstance(v, (str, int, float)):  # bool is an int
            raise DataStoreError(
                511,
                "MetadataLimit",
                f"{where} is {_show(v)} ({type(v).__name__}); metadata values are str, numbers or bool",
            )
        problem = _leaf_problem(v)
        if problem is not None:
            raise DataStoreError(511, "MetadataLimit", f"{where} {problem[2]}")
        size = len(_json(v))
        if size > MAX_METADATA_VALUE:
            raise DataStoreError(
                511, "MetadataLimit", f"{where} is {size} characters as JSON, over the limit of {MAX_METADATA_VALUE}"
            )
        out[key] = v
    total = len(_json(out))
    if total > MAX_METADATA_TOTAL:
        raise DataStoreError(
            511, "MetadataLimit", f"metadata is {total} characters as JSON, over the limit of {MAX_METADATA_TOTAL}"
        )
    return out


def check_page_size(n: Any, *, default: int, maximum: int) -> int:
    """The page size to use: 0 gives `default`, 1..`maximum` is kept; else 106 InvalidPageSize (bool refused)."""
    if type(n) is bool or not isinstance(n, int):
        raise DataStoreError(106, "InvalidPageSize", f"page size must be an int, got {_show(n)} ({type(n).__name__})")
    if n == 0:
        return default
    if not 1 <= n <= maximum:
        raise DataStoreError(106, "InvalidPageSize", f"page size is {n}; it must be 1 to {maximum}, or 0 for {default}")
    return int(n)


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
