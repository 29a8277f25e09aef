"""Roblox's automated right to erasure: deletion templates, and the erasure of one user's keys with a check after.

Owns `DeletionTemplate` (a data store name, scope and key, with a `{UserId}` token in one or more of them), the
checks of a template list (`check_templates`: at most 100, each well formed), and the erasure itself, written once as
a generator (`erase`, `remaining`) that yields the requests it needs (`ReadVersions`, `PurgeKey`, `ListAllKeys` of
`datastore._lifecycle`, and `Rewrite`) for `World` to run blocking or as coroutines. Each matching key goes with
every version and backup (`PurgeKey`: nothing of the value is left, not even a tombstone).

The layers above keep records of their own that hold a user's data beyond the matching key (lodestore's sessions
keep large data in shard chunks of another data store, and transaction markers name the key): each layer registers
an `Eraser` (`register_eraser`) that, given a matching key and the decoded values of all its versions, yields those
requests too and returns the further keys to purge. `erasers()` imports `lodestore.actors` first so that its eraser
is there however the process started. This module never decides what a layer's records mean.

Delivered twice (an erasure re-run after a failure): every step finds less to do; a complete erasure re-run removes
nothing and reports nothing remaining.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Protocol

from lodestore.storage._errors import ConfigError, DataStoreError
from lodestore.storage._limits import DEFAULT_SCOPE
from lodestore.storage._values import check_key, check_scope, check_store_name, decode
from lodestore.storage.datastore._lifecycle import ListAllKeys, PurgeKey, ReadVersions

__all__ = ["DeletionTemplate", "ErasedKey", "ErasureReport", "Rewrite", "Eraser", "register_eraser", "erasers",
           "check_templates", "check_user_id", "erase", "remaining", "MAX_DELETION_TEMPLATES", "USER_ID_TOKEN",
           "TEMPLATES_META"]

MAX_DELETION_TEMPLATES = 100
USER_ID_TOKEN = "{UserId}"
TEMPLATES_META = "deletion_templates"
"""Where a world's file keeps its templates (as [[store, scope, key], ...]), for `lodestore inspect erase`."""

_BRACES = re.compile(r"[{}]")

EntryKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class DeletionTemplate:
    """Which key holds a user's data: a data store name, scope and key, with `{UserId}` in one or more of them.

    >>> DeletionTemplate("players", "global", "user_{UserId}").resolve(42)
    ('players', 'global', 'user_42')
    """

    store: str
    scope: str = DEFAULT_SCOPE
    key: str = USER_ID_TOKEN

    def resolve(self, user_id: int) -> EntryKey:
        uid = str(user_id)
        return (self.store.replace(USER_ID_TOKEN, uid), self.scope.replace(USER_ID_TOKEN, uid),
                self.key.replace(USER_ID_TOKEN, uid))


@dataclass(frozen=True, slots=True)
class ErasedKey:
    """One key an erasure removed (or, in `ErasureReport.remaining`, found still there): `versions` stored
    versions, and why it belongs to the user (the template, or the layer's record it is part of)."""

    store: str
    scope: str
    key: str
    versions: int
    reason: str


@dataclass(frozen=True, slots=True)
class ErasureReport:
    """What `World.erase_user` removed, and what its check found left afterwards (empty when the erasure is
    complete)."""

    user_id: int
    removed: tuple[ErasedKey, ...]
    remaining: tuple[ErasedKey, ...]

    @property
    def complete(self) -> bool:
        return not self.remaining


@dataclass(frozen=True, slots=True)
class Rewrite:
    """An UpdateAsync of another key through an unbudgeted client (`fn(old, info)`, None cancels): how a layer
    settles a record that names the erased key before that record goes (a transaction marker aborted first)."""

    store: str
    scope: str
    key: str
    fn: Callable[[Any, Any], Any]


Request = ReadVersions | PurgeKey | ListAllKeys | Rewrite
Steps = Generator[Request, Any, Any]


class Eraser(Protocol):
    """A layer's part of an erasure. `eraser(target, values, settle)` yields requests (as `erase` does) and returns
    [(key, reason)] of further keys that hold the user's data because of `target` (whose stored versions decode to
    `values`, None for a tombstone; [] when it is gone already). With `settle` (an erasure, not a check) it may
    first rewrite other records so that removing those keys leaves the layer consistent."""

    def __call__(self, target: EntryKey, values: list[Any], settle: bool) -> Steps: ...


_ERASERS: list[Eraser] = []


def register_eraser(eraser: Eraser) -> None:
    """Add a layer's eraser (once: registering it again does nothing)."""
    if eraser not in _ERASERS:
        _ERASERS.append(eraser)


def erasers() -> list[Eraser]:
    importlib.import_module("lodestore.actors")   # registers the erasure of sessions' and transactions' records
    return list(_ERASERS)


# ---------------------------------------------------------------------------------------------------- templates


def check_user_id(user_id: Any) -> int:
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        raise ConfigError(f"user_id must be a Roblox user id (an int >= 1), got {user_id!r}", field="user_id")
    return user_id


def _template_problem(t: DeletionTemplate) -> str | None:
    fields = {"store": t.store, "scope": t.scope, "key": t.key}
    for name, text in fields.items():
        if not isinstance(text, str):
            return f"its {name} must be a string, got {type(text).__name__}"
        if _BRACES.search(text.replace(USER_ID_TOKEN, "")):
            return f"its {name} {text!r} has a brace that is not part of the token {USER_ID_TOKEN}"
    if not any(USER_ID_TOKEN in text for text in fields.values()):
        return f"it has no {USER_ID_TOKEN} token in its store name, scope or key"
    store, scope, key = t.resolve(1)
    try:
        check_store_name(store)
        check_scope(scope)
        check_key(key)
    except DataStoreError as exc:
        return f"with a user id it names no valid key ({exc.message})"
    return None


def check_templates(templates: Any) -> tuple[DeletionTemplate, ...]:
    """Templates as given (DeletionTemplate or (store, scope, key)), checked: a list of at most 100, each well
    formed, no two alike. ConfigError names the first problem; nothing is taken then."""
    if isinstance(templates, (str, bytes)) or not isinstance(templates, Iterable):
        raise ConfigError(f"templates must be a list of DeletionTemplate or (store, scope, key), got "
                          f"{type(templates).__name__}", field="templates")
    given = list(templates)
    if len(given) > MAX_DELETION_TEMPLATES:
        raise ConfigError(f"at most {MAX_DELETION_TEMPLATES} deletion templates, got {len(given)}",
                          field="templates")
    out: list[DeletionTemplate] = []
    for i, t in enumerate(given):
        if not isinstance(t, DeletionTemplate):
            if isinstance(t, (str, bytes)) or not isinstance(t, (tuple, list)) or len(t) != 3:
                raise ConfigError(f"deletion template {i}: expected a DeletionTemplate or (store, scope, key), got "
                                  f"{t!r:.80}", field="templates")
            t = DeletionTemplate(*t)
        problem = _template_problem(t)
        if problem is not None:
            raise ConfigError(f"deletion template {i} {(t.store, t.scope, t.key)!r:.160}: {problem}",
                              field="templates")
        if t in out:
            raise ConfigError(f"deletion template {i} repeats template {out.index(t)}", field="templates")
        out.append(t)
    return tuple(out)


def _targets(user_id: int, templates: tuple[DeletionTemplate, ...]) -> list[tuple[EntryKey, str]]:
    """Each template's key for this user; a template whose key would be too long for this user id names none."""
    out: list[tuple[EntryKey, str]] = []
    for i, t in enumerate(templates):
        k = t.resolve(user_id)
        if _valid(k) and all(k != seen for seen, _ in out):
            out.append((k, f"deletion template {i}"))
    return out


def _valid(k: EntryKey) -> bool:
    try:
        check_store_name(k[0])
        check_scope(k[1])
        check_key(k[2])
    except DataStoreError:
        return False
    return True


# ------------------------------------------------------------------------------------------------- the erasure


def _values(versions: list[tuple[int, bytes | None]]) -> list[Any]:
    return [None if value is None else decode(value) for _, value in versions]


def _gather(user_id: int, templates: tuple[DeletionTemplate, ...], settle: bool) -> Steps:
    """Every key that holds the user's data: [(key, reason, versions)] in the order found, each once."""
    found: dict[EntryKey, tuple[str, int]] = {}
    for target, reason in _targets(user_id, templates):
        versions = yield ReadVersions(*target)
        found.setdefault(target, (reason, len(versions)))
        for eraser in erasers():
            for k, why in (yield from eraser(target, _values(versions), settle)):
                if k not in found:
                    found[k] = (why, len((yield ReadVersions(*k))))
    return found


def erase(user_id: int, templates: tuple[DeletionTemplate, ...]) -> Steps:
    """Remove every key of the user (see the module docstring), then check; returns the ErasureReport."""
    found = yield from _gather(user_id, templates, True)
    removed = []
    for k, (reason, _) in found.items():
        n = yield PurgeKey(*k)
        if n:
            removed.append(ErasedKey(*k, n, reason))
    left = yield from remaining(user_id, templates)
    checked = {(k.store, k.scope, k.key) for k in left}
    for k, (reason, _) in found.items():     # what only the purged keys pointed to (a record's chunks) too
        if k not in checked and (n := len((yield ReadVersions(*k)))):
            left.append(ErasedKey(*k, n, reason))
    return ErasureReport(user_id, tuple(removed), tuple(left))


def remaining(user_id: int, templates: tuple[DeletionTemplate, ...]) -> Steps:
    """What is left of the user: [ErasedKey] of every key found (by the templates and the layers' erasers) that
    still has a stored version. It changes nothing."""
    found = yield from _gather(user_id, templates, False)
    return [ErasedKey(*k, n, reason) for k, (reason, n) in found.items() if n]
