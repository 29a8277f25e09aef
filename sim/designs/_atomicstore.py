"""The atomicstore design: Inctus/AtomicStore, a thin wrapper of DataStores with safe lookups, and a session lock a
game builds from its blocks.

Where its behaviour comes from (`../shared/reference/seeds/atomicstore.md`; the source, github Inctus/AtomicStore at
a10e0cd: `src/AtomicStore/init.lua`, `Dependencies/Shared/Utility.lua`, `Dependencies/Classes/GeneralStore.lua`,
`MultiStore.lua`, `TrackedStore.lua`, `TrackedMultiStore.lua`; `docs/API/*.md`, `docs/Methodology.md`,
`docs/Resources/BestPractices.md`). The seed and `docs/index.md` name `Lua/AtomicStore.lua`; the repository keeps
the same files under `src/AtomicStore/` (`init.lua` is the main module).

What is AtomicStore's (this module's classes, as the source has them):
- `AtomicStore(server, scheduler)`: `retrieve_general_store`, `retrieve_multi_store`, `retrieve_tracked_store`,
  `retrieve_tracked_multi_store` (the constructors, each registered by name, a later one replacing an earlier one of
  the same name), `get_stores()`, `find_first_store_by_name(name)`.
- `Utility`, the safe lookups (`Utility.RetryRequest`): up to MAX_RETRIES + 1 = 31 tries with no pause between
  failed ones, every error caught (pcall), the answer reported, never raised: a read answers its value (None when
  absent) or False, `set` answers True or False, `update` answers the new value, None (cancelled) or False. Before
  each try it checks the request budget of its Roblox request type (`server.datastores.aio.get_request_budget`; an
  UpdateAsync needs a read and a write). The source's wait `while not GetRequestBudgetForRequestType(t) do
  Wait(0.1)` never waits in Luau (0 is truthy); we follow what `docs/Methodology.md` says it is for ("waiting for the
  DataStore budget ... to be available"): a try that finds the budget at 0 sends nothing and waits RETRY_TIME (0.1 s),
  and counts as one of the 31, so a lookup with no budget for 3.1 s answers False instead of hanging or queueing.
- `GeneralStore(name, scope)`: one key "DataKey" of DataStore(name, "GeneralStore" + scope); `pull_data()`,
  `push_data(data)`, `update_data(fn)`. `MultiStore(name, scope)`: DataStore(name, "MultiStore" + scope), the same
  with a `save_key`. Scope defaults to "global" (so "GeneralStoreglobal": the prefix has no separator).
- `TrackedStore(name, scope)` (Berezza's method): data under a fresh GUID key of DataStore("MainData", "TrackedStore"
  + scope) and the GUID in OrderedDataStore("VersionHistory", same scope) with `os.time()` (whole seconds) as its
  value; `get_save_keys(depth)` is one GetSortedAsync (descending, page size `depth`), `get_save_key(depth)` its
  depth-th entry, `pull_data(depth=1)` / `pull_data_from_key(key)` answer `(data, save_key)`, `push_data(data)`
  answers `(True, guid)` or `(False, message)`. The name is used for nothing but the registry: two TrackedStores of
  one scope share their data. `update_data_from_key` calls UpdateAsync without the update function (the source's
  `Safe.UpdateAsync(self.MainDataStore, save_key)`), so it always fails: 31 refused tries, `(False, "Couldn't update
  data")`. Kept as written.
- `TrackedMultiStore(name, scope, data_store_names)`: one DataStore "MainData" + name per sub-store, one shared
  version history; `push_data(data_dict)` writes every sub-store, only warns when one fails, and still records the
  version (`(True, guid)`); `update_data_from_key(key, fn)` runs `fn(sub_store_name, old)` in each sub-store (this
  one passes the function) and answers `({name: new value or None or False}, save_key)`.
- LibraryStore (src/ only, not in the seed's layout) is left out.

What is the game's (`AtomicLayer`, not AtomicStore's: "This module ... provides no inbuilt safeguarding or rate
limiting"; BestPractices: "apply session locking with UpdateData", a SessionData section in the data). A record is
`{"data": <player data>, "session": None or {"id", "job", "taken_at", "expires_at"}}` (ms), and with
`session_lock = true`:
- load: an `update_data` whose transform takes the lock when the record has none, or its holder's `expires_at` has
  passed (a steal), or it is ours; otherwise it cancels (None) and the load tries again every `lock_retry` seconds up
  to `config.lock_wait` ("LockHeld"). The lock expires `config.lock_ttl` after each write of it.
- every `min(config.lock_refresh, config.autosave_interval)`: a save, which is also the refresh; every save is an
  `update_data` whose transform writes the data only when the stored lock is still ours (fencing) and else cancels:
  the session is then given up ("lost" reported, "LockLost" raised by a forced save). The final save clears the lock.
- store_kind "general" (a GeneralStore per player, scope = key), "multi" (one MultiStore, save_key = key) or
  "tracked" (a TrackedStore per player, scope = key: each save pushes a new version). For "tracked" the game works
  around the broken `update_data_from_key` by calling the same safe UpdateAsync on the store's `main_data_store`
  itself, on the save key it loaded or last pushed (its cache of the key): the fencing check runs there in place,
  then `push_data` writes the new version. A new player's first version is pushed with the lock in it: two servers
  loading a new player at once may both push (no compare-and-set on an absent history).
With `session_lock = false` the game uses `pull_data` on join and `push_data` on saves, as raw AtomicStore users do.

Weak spots this keeps (the tests show them): without the lock two servers overlap and the last push wins; with it, a
server stalled past `lock_ttl` keeps changing data in memory until its next save is refused (those changes are lost);
"tracked" orders versions by whole seconds, so a save in the same second as the previous version may read back as
the older one, and every load spends a GetSortedAsync (OrderedList: 5 + 2 x players a minute, a burst of 10), which
a busy server runs out of ("LoadFailed"); TrackedMultiStore records a version whose sub-store writes failed.

Owns: the AtomicStore classes above, `AtomicLayer` and the design's entry. Never does: retry beyond the source's
31 tries, queue, throttle, or check a lock anywhere but inside an update transform.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Awaitable, Callable, NamedTuple

from lodestore.actors import StoreConfig
from lodestore.storage import (ConfigError, DataStore, LodestoreError, OrderedDataStore, RequestType, Scheduler,
                               Server, new_id)
from lodestore.sim.designs._base import DataLayer, Design, DesignError

__all__ = ["AtomicStore", "Utility", "UtilityStatistics", "SafeRequest", "GeneralStore", "MultiStore",
           "TrackedStore", "TrackedMultiStore", "VersionEntry", "AtomicOptions", "AtomicLayer", "SessionState",
           "ATOMICSTORE"]

RETRY_TIME = 0.1          # Utility.lua RETRY_TIME (seconds)
MAX_RETRIES = 30          # Utility.lua MAX_RETRIES: tries until success or retries > 30, so 31 in all
GLOBAL_SCOPE = "global"
GENERAL_DATA_KEY = "DataKey"
VERSION_HISTORY_NAME = "VersionHistory"
MAIN_DATA_NAME = "MainData"
STORE_KINDS = ("general", "multi", "tracked")


class SafeRequest(str, Enum):
    """Roblox's `Enum.DataStoreRequestType` a safe lookup checks, and the emulator's budgets behind it."""

    GET_ASYNC = "GetAsync"
    GET_SORTED_ASYNC = "GetSortedAsync"
    UPDATE_ASYNC = "UpdateAsync"
    SET_INCREMENT_ASYNC = "SetIncrementAsync"
    SET_INCREMENT_SORTED_ASYNC = "SetIncrementSortedAsync"

    @property
    def budgets(self) -> tuple[RequestType, ...]:
        return _BUDGETS[self]


_BUDGETS = {
    SafeRequest.GET_ASYNC: (RequestType.STANDARD_READ,),
    SafeRequest.GET_SORTED_ASYNC: (RequestType.ORDERED_LIST,),
    SafeRequest.UPDATE_ASYNC: (RequestType.STANDARD_READ, RequestType.STANDARD_WRITE),
    SafeRequest.SET_INCREMENT_ASYNC: (RequestType.STANDARD_WRITE,),
    SafeRequest.SET_INCREMENT_SORTED_ASYNC: (RequestType.ORDERED_WRITE,),
}


@dataclass(frozen=True)
class UtilityStatistics:
    """What the safe lookups did: lookups, tries sent, tries refused for want of budget, tries that raised, and
    lookups that gave up after 31 tries."""

    lookups: int
    tries: int
    refused: int
    errors: int
    gave_up: int
    last_error: str | None


def _bad(message: str) -> DesignError:
    return DesignError(message, "BadArgument")


def _lua_call(fn: Callable, *args: Any) -> Any:
    """Call `fn` as Luau does: extra arguments are dropped when it takes fewer (`function(old) ... end` given to
    UpdateAsync, which passes old value and key info)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fn(*args)
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return fn(*args)
    n = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    return fn(*args[:n])


class Utility:
    """`Utility.lua`: safe access to DataStores (see the module docstring). `warn(message)` is Roblox's `warn`."""

    def __init__(self, server: Server, scheduler: Scheduler, warn: Callable[[str], Any] | None = None) -> None:
        self.server = server
        self.scheduler = scheduler
        self.warnings: list[str] = []
        self._warn = warn
        self._lookups = self._tries = self._refused = self._errors = self._gave_up = 0
        self._last_error: str | None = None

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self._warn is not None:
            self._warn(message)

    async def budget(self, request: SafeRequest) -> int:
        """GetRequestBudgetForRequestType: what this server may send of `request` now (an update needs both); 0
        when the budget actor does not answer (this try is then refused, like one with no budget)."""
        service = self.server.datastores.aio
        try:
            return min([await service.get_request_budget(t) for t in request.budgets])
        except LodestoreError:
            return 0

    def statistics(self) -> UtilityStatistics:
        return UtilityStatistics(self._lookups, self._tries, self._refused, self._errors, self._gave_up,
                                 self._last_error)

    async def retry_request(self, request: SafeRequest, call: Callable[[], Awaitable[Any]], returns: bool) -> Any:
        """`Utility.RetryRequest`: `call()` until it succeeds or 31 tries were made; the value (or False) when
        `returns`, else True/False. Errors are caught, never raised."""
        self._lookups += 1
        retries, success, data = 0, False, None
        while True:
            retries += 1
            if self.server.datastores.budgets_enforced and await self.budget(request) < 1:
                self._refused += 1
                await self.scheduler.sleep(RETRY_TIME)
            else:
                self._tries += 1
                try:
                    data = await call()
                    success = True
                except Exception as exc:   # pcall: every error, a bad argument as much as a 5xx
                    self._errors += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
            if success or retries > MAX_RETRIES:
                break
        if not success:
            self._gave_up += 1
        if returns:
            return data if success else False
        return success

    async def safe_get(self, datastore: DataStore, save_key: Any) -> Any:
        """`Safe.GetAsync`: the value (None when absent) or False. pcall keeps GetAsync's first answer only."""
        async def call():
            value, _info = await datastore.aio.get(save_key)
            return value
        return await self.retry_request(SafeRequest.GET_ASYNC, call, True)

    async def safe_get_sorted(self, ordered: OrderedDataStore, page_size: Any) -> Any:
        """`Safe.GetOrderedAsync`: the first page of `GetSortedAsync(false, page_size)` (descending), or False."""
        return await self.retry_request(SafeRequest.GET_SORTED_ASYNC,
                                        lambda: ordered.aio.get_sorted(False, page_size), True)

    async def safe_update(self, datastore: DataStore, save_key: Any, update_function: Any = None) -> Any:
        """`Safe.UpdateAsync`: the new value, None when the transform cancelled, or False."""
        fn = update_function
        transform = None if fn is None else (lambda old, info: _lua_call(fn, old, info))

        async def call():
            value, _info = await datastore.aio.update(save_key, transform)
            return value
        return await self.retry_request(SafeRequest.UPDATE_ASYNC, call, True)

    async def safe_set(self, datastore: DataStore, save_key: Any, data: Any) -> bool:
        """`Safe.SetAsync`: True or False."""
        return await self.retry_request(SafeRequest.SET_INCREMENT_ASYNC, lambda: datastore.aio.set(save_key, data),
                                        False)

    async def safe_set_ordered(self, ordered: OrderedDataStore, save_key: Any, data: Any) -> bool:
        """`Safe.SetOrderedAsync`: True or False."""
        return await self.retry_request(SafeRequest.SET_INCREMENT_SORTED_ASYNC,
                                        lambda: ordered.aio.set(save_key, data), False)


def _check_name_scope(cls: str, name: Any, scope: Any) -> str:
    """The constructors' asserts: a name, and a scope (default "global"), both strings."""
    if name is None:
        raise _bad(f"{cls} expected arg <name>")
    scope = GLOBAL_SCOPE if scope is None else scope
    if not isinstance(name, str):
        raise _bad(f"{cls} received arg <name> of type {type(name).__name__}. Expected string.")
    if not isinstance(scope, str):
        raise _bad(f"{cls} received arg <scope> of type {type(scope).__name__}. Expected string.")
    return scope


def _guid() -> str:
    """HttpService:GenerateGUID(): "{8-4-4-4-12}", upper-case hex in braces."""
    h = new_id(32).upper()
    return f"{{{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}}}"


class GeneralStore:
    """`GeneralStore.lua`: one key ("DataKey") of DataStore(name, "GeneralStore" + scope), no history."""

    def __init__(self, utility: Utility, name: str, scope: str | None = None) -> None:
        scope = _check_name_scope("GeneralStore", name, scope)
        self.utility = utility
        self.main_data_store = utility.server.datastores.get_data_store(name, "GeneralStore" + scope)
        self.name = name

    async def pull_data(self) -> Any:
        """The stored value, None when there is none, False when the lookup failed."""
        return await self.utility.safe_get(self.main_data_store, GENERAL_DATA_KEY)

    async def push_data(self, data: Any) -> bool:
        return await self.utility.safe_set(self.main_data_store, GENERAL_DATA_KEY, data)

    async def update_data(self, update_function: Callable[..., Any]) -> Any:
        """UpdateAsync with `update_function(old)` (or `(old, key_info)`): the new value, None or False."""
        return await self.utility.safe_update(self.main_data_store, GENERAL_DATA_KEY, update_function)


class MultiStore:
    """`MultiStore.lua`: DataStore(name, "MultiStore" + scope), any key, no history."""

    def __init__(self, utility: Utility, name: str, scope: str | None = None) -> None:
        scope = _check_name_scope("MultiStore", name, scope)
        self.utility = utility
        self.main_data_store = utility.server.datastores.get_data_store(name, "MultiStore" + scope)
        self.name = name

    async def pull_data(self, save_key: str) -> Any:
        return await self.utility.safe_get(self.main_data_store, save_key)

    async def push_data(self, save_key: str, data: Any) -> bool:
        return await self.utility.safe_set(self.main_data_store, save_key, data)

    async def update_data(self, save_key: str, update_function: Callable[..., Any]) -> Any:
        return await self.utility.safe_update(self.main_data_store, save_key, update_function)


class VersionEntry(NamedTuple):
    """One entry of a version history page (GetCurrentPage's `{key=, value=}`): save key and its os.time()."""

    key: str
    value: int


class _Tracked:
    """What TrackedStore and TrackedMultiStore share: the version history (Berezza's method)."""

    _prefix = ""
    utility: Utility
    ordered_data_store: OrderedDataStore
    name: str

    async def get_save_keys(self, depth: Any) -> tuple[Any, str | None]:
        """The `depth` most recent save keys, newest first: `(entries, None)` or `(False, message)`."""
        page = await self.utility.safe_get_sorted(self.ordered_data_store, depth)
        if page is False:
            return False, "VersionHistory couldn't be loaded"
        return [VersionEntry(k, v) for k, v in page.items], None

    async def get_save_key(self, depth: Any) -> Any:
        """The depth-th most recent save key; None when the history is shorter, False when it could not be read."""
        page, _ = await self.get_save_keys(depth)
        if page is False:
            return False
        index = depth - 1 if isinstance(depth, int) else -1
        return page[index].key if 0 <= index < len(page) else None

    def _time_stamp(self) -> int:
        return self.utility.scheduler.now() // 1000     # os.time(): whole seconds


class TrackedStore(_Tracked):
    """`TrackedStore.lua`: see the module docstring. The name is not part of where the data lives."""

    def __init__(self, utility: Utility, name: str, scope: str | None = None) -> None:
        scope = _check_name_scope("TrackedStore", name, scope)
        service = utility.server.datastores
        self.utility = utility
        self.ordered_data_store = service.get_ordered_data_store(VERSION_HISTORY_NAME, "TrackedStore" + scope)
        self.main_data_store = service.get_data_store(MAIN_DATA_NAME, "TrackedStore" + scope)
        self.name = name

    async def pull_data_from_key(self, save_key: Any) -> tuple[Any, Any]:
        """`(data or None or False, save_key)`; a missing (None) or failed (False) key fails its 31 tries."""
        return await self.utility.safe_get(self.main_data_store, save_key), save_key

    async def pull_data(self, depth: int = 1) -> tuple[Any, Any]:
        save_key = await self.get_save_key(depth)
        return await self.pull_data_from_key(save_key)

    async def push_data(self, data: Any) -> tuple[bool, str]:
        """A new version: `(True, guid)`, or `(False, message)` when either write failed (a failed history write
        leaves the data written under a key nothing points to)."""
        guid = _guid()
        time_stamp = self._time_stamp()
        if not await self.utility.safe_set(self.main_data_store, guid, data):
            return False, "Couldn't update MainDataStore"
        if not await self.utility.safe_set_ordered(self.ordered_data_store, guid, time_stamp):
            return False, "Couldn't update VersionHistory"
        return True, guid

    async def update_data_from_key(self, save_key: Any, update_function: Any = None) -> tuple[Any, Any]:
        """As the source has it: the update function is not passed on, so UpdateAsync refuses every try and the
        answer is `(False, "Couldn't update data")`."""
        new_data = await self.utility.safe_update(self.main_data_store, save_key)
        if new_data is False:
            return False, "Couldn't update data"
        return new_data, save_key

    async def update_data(self, depth: int = 1, update_function: Any = None) -> tuple[Any, Any]:
        save_key = await self.get_save_key(depth)
        return await self.update_data_from_key(save_key, update_function)


class TrackedMultiStore(_Tracked):
    """`TrackedMultiStore.lua`: a DataStore "MainData" + name per sub-store, one version history."""

    def __init__(self, utility: Utility, name: str, scope: str | None, data_store_names: Any) -> None:
        if data_store_names is None:
            raise _bad("TrackedMultiStore expected arg <data_store_names>")
        scope = _check_name_scope("TrackedMultiStore", name, scope)
        if not isinstance(data_store_names, (list, tuple)) or not all(isinstance(n, str) for n in data_store_names):
            raise _bad(f"TrackedMultiStore received arg <data_store_names> of type "
                       f"{type(data_store_names).__name__}. Expected table (a list of strings).")
        service = utility.server.datastores
        self.utility = utility
        self.ordered_data_store = service.get_ordered_data_store(VERSION_HISTORY_NAME, "TrackedMultiStore" + scope)
        self.data_stores = {n: service.get_data_store(MAIN_DATA_NAME + n, "TrackedMultiStore" + scope)
                            for n in data_store_names}
        self.name = name

    async def pull_data_from_key(self, save_key: Any) -> tuple[dict, Any]:
        extracted = {}
        for name, data_store in self.data_stores.items():
            extracted[name] = await self.utility.safe_get(data_store, save_key)
        return extracted, save_key

    async def pull_data(self, depth: int = 1) -> tuple[dict, Any]:
        save_key = await self.get_save_key(depth)
        return await self.pull_data_from_key(save_key)

    async def push_data(self, data_dict: dict) -> tuple[bool, str]:
        guid = _guid()
        time_stamp = self._time_stamp()
        for name, data_store in self.data_stores.items():
            if not await self.utility.safe_set(data_store, guid, data_dict.get(name)):
                self.utility.warn(f"Couldn't update DataStore:{name} for TrackedMultiStore:{self.name}")
        if not await self.utility.safe_set_ordered(self.ordered_data_store, guid, time_stamp):
            return False, "Couldn't update VersionHistory"
        return True, guid

    async def update_data_from_key(self, save_key: Any, update_function: Callable[[str, Any], Any]
                                   ) -> tuple[dict, Any]:
        """`update_function(sub_store_name, old)` in every sub-store, each its own UpdateAsync."""
        def per_store(name: str) -> Callable[[Any], Any]:
            def new_update_function(old_data: Any) -> Any:
                return update_function(name, old_data)
            return new_update_function

        extracted = {}
        for name, data_store in self.data_stores.items():
            extracted[name] = await self.utility.safe_update(data_store, save_key, per_store(name))
        return extracted, save_key

    async def update_data(self, depth: int = 1, update_function: Any = None) -> tuple[dict, Any]:
        save_key = await self.get_save_key(depth)
        return await self.update_data_from_key(save_key, update_function)


class AtomicStore:
    """`init.lua`: the module a game requires, one per server: the store constructors and a registry by name.

    >>> atomic = AtomicStore(server, scheduler)
    >>> store = atomic.retrieve_multi_store("Items")
    >>> await store.push_data("sword_1", {"owner": 7})
    True
    """

    def __init__(self, server: Server, scheduler: Scheduler, warn: Callable[[str], Any] | None = None) -> None:
        self.utility = Utility(server, scheduler, warn)
        self._instantiated: dict[str, Any] = {}

    def _retrieve(self, store: Any) -> Any:
        self._instantiated[store.name] = store
        return store

    def retrieve_general_store(self, name: str, scope: str | None = None) -> GeneralStore:
        return self._retrieve(GeneralStore(self.utility, name, scope))

    def retrieve_multi_store(self, name: str, scope: str | None = None) -> MultiStore:
        return self._retrieve(MultiStore(self.utility, name, scope))

    def retrieve_tracked_store(self, name: str, scope: str | None = None) -> TrackedStore:
        return self._retrieve(TrackedStore(self.utility, name, scope))

    def retrieve_tracked_multi_store(self, name: str, scope: str | None, data_store_names: Any) -> TrackedMultiStore:
        return self._retrieve(TrackedMultiStore(self.utility, name, scope, data_store_names))

    def get_stores(self) -> list:
        return list(self._instantiated.values())

    def find_first_store_by_name(self, name: str) -> Any:
        return self._instantiated.get(name)


# ------------------------------------------------------------------------------------------------- the game's code


@dataclass(frozen=True)
class AtomicOptions:
    """`[store.atomicstore]`: `store_kind` "general", "multi" or "tracked" (where a player's record lives, see the
    module docstring); `session_lock` (the game-built lock, or raw pull/push with none); `lock_retry`: seconds between
    a load's tries of a held lock."""

    store_kind: str = "general"
    session_lock: bool = True
    lock_retry: float = 6.0

    def __post_init__(self) -> None:
        if self.store_kind not in STORE_KINDS:
            raise ConfigError(f"must be one of {', '.join(STORE_KINDS)}, got {self.store_kind!r}", field="store_kind")
        if not isinstance(self.session_lock, bool):
            raise ConfigError(f"must be true or false, got {self.session_lock!r}", field="session_lock")
        if (isinstance(self.lock_retry, bool) or not isinstance(self.lock_retry, (int, float))
                or not math.isfinite(self.lock_retry) or not 0.1 <= self.lock_retry <= 3600):
            raise ConfigError(f"must be seconds from 0.1 to 3600, got {self.lock_retry!r}", field="lock_retry")


class SessionState(str, Enum):
    ACTIVE = "active"
    CLOSED = "closed"
    LOST = "lost"


@dataclass
class _Session:
    key: str
    id: str
    data: dict
    store: Any
    expires_at: int | None = None          # the lock's expiry as last written (None without a lock)
    save_key: str | None = None            # tracked: the version this session loaded or last pushed
    state: SessionState = SessionState.ACTIVE
    saving: asyncio.Lock = field(default_factory=asyncio.Lock)


def _record(old: Any) -> tuple[Any, dict | None]:
    """(data, session) of a stored record; (None, None) for none or a value not in the record format."""
    if isinstance(old, dict) and "data" in old:
        session = old.get("session")
        return old["data"], session if isinstance(session, dict) else None
    return None, None


class AtomicLayer(DataLayer):
    """One server's players, kept as a game built on AtomicStore keeps them (see the module docstring)."""

    cancels_loads = True

    def __init__(self, server: Server, scheduler: Scheduler, config: StoreConfig, options: AtomicOptions) -> None:
        super().__init__(server, scheduler, config)
        self.options = options
        self.atomic = AtomicStore(server, scheduler, warn=lambda message: self.log("warn", message))
        self.sessions: dict[str, _Session] = {}
        self._loading: dict[str, asyncio.Future] = {}   # key -> done once the player left while its load waits
        self.ttl_ms = int(config.lock_ttl * 1000)
        self.interval = (min(config.lock_refresh, config.autosave_interval) if options.session_lock
                         else config.autosave_interval)
        self._multi = (self.atomic.retrieve_multi_store(config.name) if options.store_kind == "multi" else None)
        self._stalled_until = 0
        self.arm(self.interval, self._tick)

    # ------------------------------------------------------------------------------------------ background

    def _tick(self) -> None:
        """Every interval: save (and so refresh) every session, one after another."""
        if self.down:
            return
        if self.now() < self._stalled_until:
            self.arm((self._stalled_until - self.now()) / 1000, self._tick)
            return

        async def run() -> None:
            for key in list(self.sessions):
                if not self.options.session_lock and key not in self._dirty:
                    self.counters.saves_skipped += 1
                    continue
                try:
                    await self.save(key)
                except LodestoreError:
                    pass     # warned; lost sessions are already gone; the next round tries again
            if not self.down:
                self.arm(self.interval, self._tick)
        self.spawn(run())

    def stall(self, seconds: float) -> None:
        """Fault injection: this server's background saves and refreshes stop for `seconds` (a frozen server)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < math.inf:
            raise _bad(f"stall needs seconds >= 0, got {seconds!r}")
        self._stalled_until = max(self._stalled_until, self.now() + int(seconds * 1000))

    # --------------------------------------------------------------------------------------------- contract

    async def is_loaded(self, key: str) -> bool:
        return key in self.sessions

    async def load(self, key: str) -> None:
        self.check_up()
        if not isinstance(key, str) or not key:
            raise _bad(f"load needs a player key (a non-empty str), got {key!r}")
        if key in self.sessions:
            return
        session_id = new_id()
        left = self._loading[key] = asyncio.get_running_loop().create_future()
        try:
            if self.options.session_lock:
                session = await self._load_locked(key, session_id, left)
            else:
                session = await self._load_raw(key, session_id)
        except DesignError as exc:
            if exc.reason != "LoadCancelled":
                self.counters.load_failures += 1
            raise
        finally:
            if self._loading.get(key) is left:
                del self._loading[key]
        self.check_up()
        self.sessions[key] = session
        self.counters.loads += 1
        self.report("acquired", key, session.id, session.expires_at)

    async def update(self, key: str, fn: Callable[[dict], bool]) -> bool:
        if not callable(fn):
            raise _bad(f"update of {key!r} needs a callable fn(data) -> bool, got {type(fn).__name__}")
        session = self._session(key)
        if not fn(session.data):
            return False
        self.changed(key)
        return True

    async def save(self, key: str) -> None:
        await self._save(self._session(key), final=False)

    async def unload(self, key: str) -> bool:
        left = self._loading.get(key)
        if key not in self.sessions and left is not None:   # the player left while its load waits: give it up
            if not left.done():
                left.set_result(None)
            return False
        session = self._session(key)
        sent = None
        try:
            sent = await self._save(session, final=True)
            ok = True
        except DesignError:
            ok = False
        if self.sessions.get(key) is session:
            # a final save that landed freed the lock in the write it sent: the hold ended when it was sent (after
            # it this server writes nothing, and no other can take the lock before it lands)
            self._end(session, SessionState.CLOSED, "released", at=sent if ok else None)
        return ok

    def crash(self) -> None:
        self.halt()
        for key, session in list(self.sessions.items()):
            if self.options.session_lock:
                self.report("crashed", key, session.id, session.expires_at)   # the lock runs out by its TTL
            else:
                self.report("lost", key, session.id)
        self.forget_all()
        self.sessions.clear()

    async def close(self) -> None:
        self.halt(cancel_work=False)

    # ------------------------------------------------------------------------------------------------ loads

    def _store_for(self, key: str) -> Any:
        kind = self.options.store_kind
        if kind == "multi":
            return self._multi
        if kind == "general":
            return self.atomic.retrieve_general_store(self.config.name, key)
        return self.atomic.retrieve_tracked_store(self.config.name, key)

    async def _load_raw(self, key: str, session_id: str) -> _Session:
        store = self._store_for(key)
        kind = self.options.store_kind
        save_key = None
        if kind == "multi":
            old = await store.pull_data(key)
        elif kind == "general":
            old = await store.pull_data()
        else:
            save_key = await store.get_save_key(1)
            old = False if save_key is False else None
            if save_key:
                old, _ = await store.pull_data_from_key(save_key)
        if old is False:
            raise DesignError(f"the load of {key!r} failed: its lookup answered false", "LoadFailed")
        data, _ = _record(old)
        data = copy.deepcopy(data) if isinstance(data, dict) else self.template()
        return _Session(key, session_id, data, store, save_key=save_key)

    async def _load_locked(self, key: str, session_id: str, left: asyncio.Future) -> _Session:
        """The game's retry loop: take the lock, or wait `lock_retry` and try again, up to `lock_wait`; the
        player leaving (`left`) ends the wait at once, as the game's PlayerRemoving handler would."""
        store = self._store_for(key)
        deadline = self.now() + int(self.config.lock_wait * 1000)
        waited = False
        while True:
            self.check_up()
            if left.done():
                raise DesignError(f"the load of {key!r} was given up: the player left", "LoadCancelled")
            outcome = await self._try_lock(key, store, session_id)
            if isinstance(outcome, _Session):
                return outcome
            if self.now() >= deadline:
                raise DesignError(f"key {key!r} is locked by session {outcome!r} (lock_wait "
                                  f"{self.config.lock_wait:g} s ran out)", "LockHeld")
            if not waited:
                waited = True
                self.counters.lock_waits += 1
            now = self.now()
            await self.scheduler.sleep_until(now + int(min(self.options.lock_retry, (deadline - now) / 1000) * 1000),
                                             left)

    async def _try_lock(self, key: str, store: Any, session_id: str) -> Any:
        """One compare-and-set of the lock: the new session, or the id of the session holding the key."""
        seen: dict[str, Any] = {}

        def take(old: Any) -> Any:
            now = self.now()
            data, held = _record(old)
            seen.clear()
            if held is not None and held.get("id") != session_id and held.get("expires_at", 0) > now:
                seen["holder"] = held.get("id")
                return None
            seen["stolen"] = held is not None and held.get("id") != session_id
            seen["expires_at"] = now + self.ttl_ms
            seen["data"] = data if isinstance(data, dict) else self.template()
            return {"data": seen["data"], "session": self._lock_fields(session_id, now)}

        save_key = None
        if self.options.store_kind == "tracked":
            save_key = await store.get_save_key(1)
            if save_key is False:
                raise DesignError(f"the load of {key!r} failed: its version history could not be read",
                                  "LoadFailed")
            if save_key is None:     # a new player: the first version carries the lock (no CAS on nothing)
                record = take(None)
                ok, guid = await store.push_data(record)
                if not ok:
                    raise DesignError(f"the load of {key!r} failed: {guid}", "LoadFailed")
                return _Session(key, session_id, copy.deepcopy(seen["data"]), store, seen["expires_at"], guid)
            # TrackedStore.update_data_from_key drops the function: the game calls the same safe UpdateAsync itself
            result = await self.atomic.utility.safe_update(store.main_data_store, save_key, take)
        elif self.options.store_kind == "general":
            result = await store.update_data(take)
        else:
            result = await store.update_data(key, take)
        if result is False:
            raise DesignError(f"the load of {key!r} failed: its UpdateAsync answered false", "LoadFailed")
        if result is None:
            return seen.get("holder") or "unknown"
        if seen.get("stolen"):
            self.counters.lock_steals += 1
        return _Session(key, session_id, copy.deepcopy(result["data"]), store, seen["expires_at"], save_key)

    def _lock_fields(self, session_id: str, now: int) -> dict:
        return {"id": session_id, "job": self.server.job_id, "taken_at": now, "expires_at": now + self.ttl_ms}

    # ------------------------------------------------------------------------------------------------ saves

    async def _save(self, session: _Session, final: bool) -> int:
        """Write the session's data (fenced by its lock when it has one); answers when the write was sent."""
        async with session.saving:
            if session.state is not SessionState.ACTIVE or self.sessions.get(session.key) is not session:
                raise DesignError(f"key {session.key!r} is no longer loaded here", "NotLoaded")
            since = self.now()
            snapshot = copy.deepcopy(session.data)
            if self.options.session_lock:
                await self._save_locked(session, snapshot, final)
            else:
                await self._save_raw(session, snapshot)
            self.saved(session.key, since)
            return since

    def _failed(self, session: _Session, why: str) -> DesignError:
        self.counters.save_failures += 1
        self.log("warn", f"Failed to save data for key: {session.key} ({why})")
        return DesignError(f"the save of {session.key!r} failed: {why}", "SaveFailed")

    async def _save_raw(self, session: _Session, snapshot: dict) -> None:
        record = {"data": snapshot, "session": None}
        kind, store = self.options.store_kind, session.store
        if kind == "multi":
            ok = await store.push_data(session.key, record)
        elif kind == "general":
            ok = await store.push_data(record)
        else:
            ok, _ = await store.push_data(record)
        if not ok:
            raise self._failed(session, "PushData answered false")

    async def _save_locked(self, session: _Session, snapshot: dict, final: bool) -> None:
        seen: dict[str, Any] = {}
        tracked = self.options.store_kind == "tracked"

        def fence(old: Any) -> Any:
            now = self.now()
            data, held = _record(old)
            seen.clear()
            if held is None or held.get("id") != session.id:
                seen["holder"] = held.get("id") if held else None
                return None
            lock = self._lock_fields(session.id, now)
            lock["taken_at"] = held.get("taken_at", now)
            seen["expires_at"] = lock["expires_at"]
            if tracked:   # the check in place keeps the version's data; the new version follows
                return {"data": data, "session": lock}
            return {"data": snapshot, "session": None if final else lock}

        store = session.store
        if tracked:
            result = await self.atomic.utility.safe_update(store.main_data_store, session.save_key, fence)
        elif self.options.store_kind == "general":
            result = await store.update_data(fence)
        else:
            result = await store.update_data(session.key, fence)
        if result is False:
            raise self._failed(session, "UpdateAsync answered false")
        if result is None:
            self._lost(session, seen.get("holder"))
            raise DesignError(f"the save of {session.key!r} was refused: its lock is held by session "
                              f"{seen.get('holder')!r}, not this one ({session.id!r})", "LockLost")
        session.expires_at = seen["expires_at"]
        if tracked:
            record = {"data": snapshot, "session": None if final else result["session"]}
            ok, guid = await store.push_data(record)
            if not ok:
                raise self._failed(session, guid)
            session.save_key = guid
        if not final:
            self.report("refreshed", session.key, session.id, session.expires_at)

    # -------------------------------------------------------------------------------------------- sessions

    def _lost(self, session: _Session, holder: Any) -> None:
        self.log("warn", f"Session lock of {session.key} taken by {holder!r}: the session is given up")
        self._end(session, SessionState.LOST, "lost")

    def _end(self, session: _Session, state: SessionState, kind: str, at: int | None = None) -> None:
        """The session ends here: "released" or "lost" at min(`at` (default now), the lock's expiry), as the lock
        ended then."""
        session.state = state
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        self.forget(session.key)
        callback = self.config.lock_callback
        if callback is None:
            return
        now = self.now() if at is None else at
        if session.expires_at is None:
            self.report(kind, session.key, session.id, at_ms=at)
        else:
            callback(kind, session.key, session.id, min(now, session.expires_at), session.expires_at)

    def _session(self, key: str) -> _Session:
        self.check_up()
        session = self.sessions.get(key)
        if session is None:
            raise self.not_loaded(key)
        return session


async def _open(game: Any, scheduler: Scheduler, config: StoreConfig, options: AtomicOptions) -> AtomicLayer:
    return AtomicLayer(game.storage, scheduler, config, options)


async def _read(reader: Server, scheduler: Scheduler, config: StoreConfig, options: AtomicOptions,
                keys: list[str]) -> dict[str, Any]:
    """Each key's data as a load sees it: the record's "data" (the newest version for "tracked")."""
    service = reader.datastores
    out: dict[str, Any] = {}
    for key in keys:
        if options.store_kind == "general":
            value, _ = await service.get_data_store(config.name, "GeneralStore" + key).aio.get(GENERAL_DATA_KEY,
                                                                                             False)
        elif options.store_kind == "multi":
            value, _ = await service.get_data_store(config.name, "MultiStore" + GLOBAL_SCOPE).aio.get(key, False)
        else:
            page = await service.get_ordered_data_store(VERSION_HISTORY_NAME, "TrackedStore" + key).aio.get_sorted(
                False, 1)
            value = None
            if page.items:
                value, _ = await service.get_data_store(MAIN_DATA_NAME, "TrackedStore" + key).aio.get(
                    page.items[0][0], False)
        out[key] = _record(value)[0]
    return out


ATOMICSTORE = Design("atomicstore", "Inctus/AtomicStore: safe lookups (31 tries, budget-checked) and a session lock "
                     "the game builds from UpdateData (a lock field with an expiry, fenced saves)", AtomicOptions,
                     _open, _read, transactions=False, lock="game-built UpdateAsync lock with expiry")
