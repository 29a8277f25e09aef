"""Migrations: the data a load starts from, brought up to the store's migration steps (Lyra's Migrations).

Owns `initial_data` (the data of a key with no record yet: imported legacy data, or a copy of the template) and
`migrate` (every step of `StoreConfig.migrations` not applied yet, in order, each result checked storable), with
the refusal to load data that names a step this server does not know (a newer server wrote it).

Plain functions on a `StoreConfig`: no I/O, no clock, no Ray. They never write anything: a step that raises, returns
None or returns data Roblox cannot store fails the load with MigrationError, and the load writes nothing.
Delivered twice: a load that runs again migrates the stored data again from what it holds, and every step already
applied is named in the record, so none runs twice on one record.
"""

from __future__ import annotations

from typing import Any

from lodestore.actors._config import StoreConfig
from lodestore.actors._errors import MigrationError
from lodestore.actors._records import check_data, copy_data
from lodestore.storage import DataStoreError

__all__ = ["initial_data", "migrate"]


def initial_data(config: StoreConfig, key: str) -> tuple[Any, tuple[str, ...]]:
    """(data, applied steps) of a key with no record: `import_legacy_data(key)` when it has some (no step applied
    yet: every one runs next), else a copy of the template (a new key counts as having every step applied)."""
    if config.import_legacy_data is not None:
        try:
            legacy = config.import_legacy_data(key)
        except Exception as exc:
            raise MigrationError(f"import_legacy_data raised for key {key!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if legacy is not None:
            try:
                check_data(legacy, what="imported legacy data")
            except DataStoreError as exc:
                raise MigrationError(f"import_legacy_data for key {key!r}: {exc.message}") from None
            return copy_data(legacy), ()   # imported data has no migration applied yet
    return copy_data(config.template), config.migration_names


def migrate(config: StoreConfig, key: str, data: Any, applied: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
    """Apply, in order, every migration step not applied yet. Raises MigrationError (nothing is written)."""
    known = config.migration_names
    unknown = [name for name in applied if name not in known]
    if unknown:
        raise MigrationError(f"key {key!r} has migration {unknown[0]!r} applied, which store "
                             f"{config.name!r} does not know: a newer server wrote it; refusing to load")
    for step in config.migrations:
        if step.name in applied:
            continue
        try:
            out = step.apply(data)
        except Exception as exc:
            raise MigrationError(f"migration {step.name!r} failed for key {key!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        if out is None:
            raise MigrationError(f"migration {step.name!r} returned None for key {key!r}; a step returns the "
                                 f"migrated data")
        try:
            check_data(out, what=f"data after migration {step.name!r}")
        except DataStoreError as exc:
            raise MigrationError(f"migration {step.name!r} for key {key!r}: {exc.message}") from None
        data, applied = out, applied + (step.name,)
    return data, applied
