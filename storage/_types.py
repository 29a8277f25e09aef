"""The types and argument checks that the DataStore and the MemoryStore share, defined once for both.

Owns the `ANY` write condition (a compare-and-set that always holds), `SortDirection`, the shard's `BatchReply`, and
the small checks both services apply the same way (is it an int, is it a number, is it a direction). Plain values:
no Ray, no clock, no I/O. It must never raise a service's error itself: a check that refuses takes the caller's
error factory, so a DataStore call still fails with a `DataStoreError` and a MemoryStore call with a
`MemoryStoreError`.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, NamedTuple

__all__ = ["ANY", "AnyVersion", "SortDirection", "BatchReply", "is_int", "is_number", "check_direction"]


class AnyVersion(Enum):
    """The type of `ANY`: a write condition that always holds.

    One member, so it survives pickling (Ray ships messages between processes) as the same object: compare with
    `is ANY`.
    """

    ANY = "ANY"

    def __repr__(self) -> str:
        return "ANY"


ANY = AnyVersion.ANY
"""A write that compares no version: `if_version=ANY` (a DataStore `Set`, a MemoryStore `HashMapSet` or
`SortedMapSet`) and `if_revision=ANY` (an `OrderedSet`) write unconditionally; `None` writes only if the entry is
absent; a version (or revision) only if it is still the current one."""


class SortDirection(str, Enum):
    """Direction of a listing: `DataStore.list_versions` and `SortedMap.get_range` (`SortedMapGetRange`); the plain
    strings "Ascending" and "Descending" work too."""

    ASCENDING = "Ascending"
    DESCENDING = "Descending"


class BatchReply(NamedTuple):
    """What a shard answers to one batch: a result (or error) per request, and the injected latency of each
    request in simulated milliseconds (None when no latency is configured)."""

    results: list
    delays_ms: list[float] | None


def is_int(x: object) -> bool:
    """An int that is not a bool."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    """An int or a float that is not a bool (NaN and the infinities included: check `math.isfinite` after)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_direction(direction: object, refuse: Callable[[str], Exception]) -> SortDirection:
    """`direction` as a `SortDirection`, or raise `refuse(message)`: the caller's own error, naming what it got.

    >>> check_direction("Descending", lambda message: ValueError(message))
    <SortDirection.DESCENDING: 'Descending'>
    """
    try:
        return SortDirection(direction)
    except ValueError:
        raise refuse(f"direction must be 'Ascending' or 'Descending', got {direction!r}") from None
