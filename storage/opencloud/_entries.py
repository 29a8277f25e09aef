"""What Data Stores v1 and v2 both do to a standard entry, on the world's coroutine client: conditional writes
(exclusive create, match version, must exist), increments that set users and attributes, and the JSON of an entry.

A conditional write is one `update` whose transform checks the condition on the value the shard holds and cancels
when it fails, so the check and the write are one compare-and-set (a concurrent writer makes the transform run
again on the newer value). Nothing here reads a request or builds an answer's status: it raises `ApiError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lodestore.storage import KeyInfo, UpdateResult
from lodestore.storage.opencloud._errors import ApiError
from lodestore.storage.opencloud._routes import rfc3339

__all__ = ["Refused", "write_entry", "increment_entry", "revision_json", "is_int"]


def is_int(x: Any) -> bool:
    """An int that is not a bool (JSON's true is not 1 here)."""
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True, slots=True)
class Refused(Exception):
    """A conditional write's condition did not hold: `reason` ("exists", "version" or "missing") and the entry
    as it is (`value`, `info`: None when there is none)."""

    reason: str
    value: Any
    info: KeyInfo | None


async def write_entry(store, key: str, value: Any, users: list[int], attributes: dict, *,
                      exclusive_create: bool = False, match_version: str | None = None,
                      must_exist: bool = False) -> tuple[Any, KeyInfo]:
    """Write `value` with `users` and `attributes` if the condition holds (raise `Refused` if not); the value
    and KeyInfo written. Without a condition it is one plain set: the KeyInfo written comes from the data store
    object's read cache, which holds what its set wrote (no second request)."""
    if not (exclusive_create or match_version is not None or must_exist):
        await store.set(key, value, users, attributes)
        return await store.get(key)
    refused: list[Refused] = []

    def transform(old: Any, info: KeyInfo | None) -> Any:
        refused.clear()
        if exclusive_create and info is not None:
            refused.append(Refused("exists", old, info))
        elif match_version is not None and (info is None or info.version != match_version):
            refused.append(Refused("version", old, info))
        elif must_exist and info is None:
            refused.append(Refused("missing", None, None))
        else:
            return UpdateResult(value, users, attributes)
        return None

    written, info = await store.update(key, transform)
    if refused:
        raise refused[0]
    return written, info


async def increment_entry(store, key: str, amount: Any, users: list[int] | None,
                          attributes: dict | None) -> tuple[Any, KeyInfo]:
    """Add `amount` (an integer) to the entry (a missing one counts as 0), setting users and attributes when given
    (keeping the entry's own when None). 400 when the entry holds something other than an integer."""
    if not is_int(amount):
        raise ApiError(400, f"the increment must be an integer, got {amount!r}", v1_code="InvalidArgument")
    wrong: list[Any] = []

    def transform(old: Any, info: KeyInfo | None) -> Any:
        wrong.clear()
        if old is not None and not is_int(old):
            wrong.append(old)
            return None
        keep_users = list(info.user_ids) if info is not None else []
        keep_attributes = dict(info.metadata) if info is not None else {}
        return UpdateResult((old or 0) + amount, keep_users if users is None else users,
                            keep_attributes if attributes is None else attributes)

    value, info = await store.update(key, transform)
    if wrong:
        raise ApiError(400, f"entry {key!r} holds {type(wrong[0]).__name__}, not an integer: it cannot be "
                            f"incremented", v1_code="ExistingValueNotNumeric")
    return value, info


def revision_json(path: str, key: str, info: KeyInfo) -> dict:
    """An entry's v2 fields without its value: path, id, revision, times, users and attributes (Roblox's
    `DataStoreEntry`); the etag is the revision, which changes with every write."""
    return {"path": path, "id": key, "createTime": rfc3339(info.created_time), "revisionId": info.version,
            "revisionCreateTime": rfc3339(info.updated_time), "state": "ACTIVE", "etag": info.version,
            "users": [f"users/{u}" for u in info.user_ids], "attributes": dict(info.metadata)}
