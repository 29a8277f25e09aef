"""The public face of `storage` (trio's test_exports): every exported name exists, the two services share their common
types instead of copying them, and no other layer reaches into a private storage module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lodestore import storage
from lodestore.storage import datastore, memorystore

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("lodestore", "actors", "coordinator", "sim", "bench")   # the folders of the packages above storage


@pytest.mark.parametrize("package", [storage, datastore, memorystore], ids=lambda p: p.__name__)
def test_every_exported_name_exists_once(package):
    assert len(package.__all__) == len(set(package.__all__))
    missing = [name for name in package.__all__ if not hasattr(package, name)]
    assert missing == []


def test_the_services_share_one_sort_direction_and_one_any():
    assert storage.SortDirection is datastore.SortDirection is memorystore.SortDirection
    assert datastore.ANY is memorystore.ANY
    assert datastore.Set("s", "global", "k", b"", 0).if_version is memorystore.HashMapSet("m", "k", b"", 0, 1).if_version


def test_a_subpackage_exports_what_storage_exports_from_it():
    for package in (datastore, memorystore):
        for name in package.__all__:
            if name in storage.__all__:
                assert getattr(storage, name) is getattr(package, name), name


def _private_storage_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lodestore.storage"):
            modules = [node.module] if "._" in node.module else [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names if alias.name.startswith("lodestore.storage")]
        else:
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno} {m}" for m in modules
                  if any(part.startswith("_") for part in m.split(".")[2:])]
    return found


def test_no_other_layer_imports_a_private_storage_module():
    offenders = [hit for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))
                 for hit in _private_storage_imports(path)]
    assert offenders == []
