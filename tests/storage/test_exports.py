"""The public face of `storage`, beyond what `tests/test_exports.py` checks for every package (exports resolve, no
private module reached from outside): the two services share their common types instead of copying them, and a
subpackage's name exported from `storage` too is the same object."""

from __future__ import annotations

from lodestore import storage
from lodestore.storage import datastore, memorystore


def test_the_services_share_one_sort_direction_and_one_any():
    assert storage.SortDirection is datastore.SortDirection is memorystore.SortDirection
    assert datastore.ANY is memorystore.ANY
    assert datastore.Set("s", "global", "k", b"", 0).if_version is memorystore.HashMapSet("m", "k", b"", 0, 1).if_version


def test_a_subpackage_exports_what_storage_exports_from_it():
    for package in (datastore, memorystore):
        for name in package.__all__:
            if name in storage.__all__:
                assert getattr(storage, name) is getattr(package, name), name
