"""The profilestore design: MadStudioRoblox's ProfileStore (loleris), its session lock kept inside the record itself.

Where its behaviour comes from: `ProfileStore.luau` (MadStudioRoblox/ProfileStore at 45c9847; its header comment is
the API reference, `docs/api.md` the same in prose) and `../shared/reference/peers.md` (ProfileStore section).
- The record is one DataStore value: `{Data, MetaData: {ProfileCreateTime, SessionLoadCount, ActiveSession:
  [place_id, job_id, unique_session_id], ForceLoadSession: [place_id, job_id], LastUpdate (os.time() seconds),
  MetaTags}, RobloxMetaData, UserIds, GlobalUpdates: [last_index, [[index, message], ...]]}`; RobloxMetaData and
  UserIds are also written as the key's metadata and user ids. Every write is an UpdateAsync whose transform checks
  that the session is still ours (ActiveSession's place and job, and SessionLoadCount equal to the one we loaded).
- `start_session` (StartSessionAsync): an UpdateAsync that takes a free record, or one whose LastUpdate is more than
  ASSUME_DEAD = 630 s old; otherwise it writes ForceLoadSession = us, reads again after FIRST_LOAD_REPEAT = 5 s, then
  every LOAD_REPEAT_PERIOD = 10 s, and after ceil(SESSION_STEAL / LOAD_REPEAT_PERIOD) = 4 repeats in which the
  request stood, steals the session on the next read: about 45 s after the first request (the source's constants,
  "about 40 s" in the seed). A later requester that overwrote our ForceLoadSession makes us give up (None).
  START_SESSION_TIMEOUT = 120 s applies only while DataStore calls fail (backoff 1, 2, 4 .. 20 s): a conflict never
  times out, it ends in a steal. A second `start_session` for a key already loading on this server takes over that
  load's result (the first returns None), as the source does for quick rejoins.
- The holder learns of a force-load only from the answer to its own next write (auto-save, `save`, a message it
  receives): it then does a final save (OnLastSave "External") that clears ActiveSession and ends its session. A
  write that finds the session no longer ours ends the session on this server without saving (OnSessionEnd).
- Auto-save: one server-wide list of active profiles, one saved every AUTO_SAVE_PERIOD / N seconds in turn (300 s by
  default), skipping profiles loaded less than AUTO_SAVE_PERIOD / 2 ago; `save()` moves the profile behind the
  auto-save index (its next auto-save comes a full round later). Every auto-save writes, changed or not.
- Final saves (end_session, shutdown, External) repeat until they land (backoff 1, 2, 4 .. 20 s; 8 s at shutdown);
  other saves are tried once. UpdateAsync calls for one key on one server run one at a time (UpdateQueue).
- Messages (MessageAsync): appended to the record's GlobalUpdates (at most MAX_MESSAGE_QUEUE = 1000, oldest dropped),
  handed to the holder's message handlers when its next write reads them back (or, for messages already there at
  load, when a handler is set); a handler calls `processed()` and the next write removes the message.
- Critical state: 5 DataStore errors within 120 s turn `is_critical_state` on (OnCriticalToggle), 120 s without that
  many turn it off.

- MessagingService (RobloxMessageSubscription): a session subscribes to "PS_<session id>" (in a spawned thread; a
  session that ended meanwhile disconnects at once), and the source publishes to it (task.spawn(PublishAsync), its
  errors unread) so that the holder saves at once (MessageAsync's message) or ends its session at once (a
  force-load's EndSession), reacting at most once per 6 s and only to its own SessionLoadCount. It rides on the
  world's MessagingService (`server.messaging`): best effort, after the world's messaging delay (1-2 s by default),
  to the holder on whatever simulator host it runs. A lost message changes nothing but time: the force-load then
  waits for the holder's next auto-save and ends in a steal when that is more than ~45 s away. `messaging = false`
  (not in the source) never publishes nor subscribes.

Left out: the mock stores (`ProfileStore.Mock`, Studio without API access) and DataStoreState other than "Access";
error 509 handling and invalid-UTF-8 stripping that peers.md mentions for a 2025-07 version (not in this snapshot).

Owns: `ProfileStore`, `Profile`, `ProfileVersionQuery`, `ProfileStoreRuntime` (the module's state on one game server:
the auto-save list, active sessions, update queue, BindToClose), `ProfileLayer` and the design's entry `PROFILESTORE`.
Never does: keep a lock anywhere but in the record, or write without an UpdateAsync that checks the session (except
`Profile.set_async` on a view-mode profile, which the source also lets overwrite the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import math
import weakref
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

from lodestore.actors import StoreConfig
from lodestore.storage import (ConfigError, DataStoreError, LodestoreError, Scheduler, Server, SortDirection, Timer,
                               UpdateResult, check_value, new_id)
from lodestore.sim.designs._base import DataLayer, Design, DesignError

__all__ = ["ProfileStoreOptions", "ProfileStore", "Profile", "ProfileVersionQuery", "ProfileStoreRuntime", "Signal",
           "SaveOutcome", "SessionStart", "ProfileLayer", "PROFILESTORE",
           "AUTO_SAVE_PERIOD", "LOAD_REPEAT_PERIOD", "FIRST_LOAD_REPEAT", "SESSION_STEAL", "ASSUME_DEAD",
           "START_SESSION_TIMEOUT", "MAX_MESSAGE_QUEUE", "PLACE_ID"]

# The source's constants (ProfileStore.luau, top of the file), in seconds.
AUTO_SAVE_PERIOD = 300.0
LOAD_REPEAT_PERIOD = 10.0
FIRST_LOAD_REPEAT = 5.0
SESSION_STEAL = 40.0
ASSUME_DEAD = 630.0
START_SESSION_TIMEOUT = 120.0
CRITICAL_STATE_ERROR_COUNT = 5
CRITICAL_STATE_ERROR_EXPIRE = 120.0
CRITICAL_STATE_EXPIRE = 120.0
MAX_MESSAGE_QUEUE = 1000

PLACE_ID = 0
"""game.PlaceId: lodestore's servers all run one place; a session tag is [PLACE_ID, job_id, unique id]."""

MAX_NAME = 50   # store_name and profile_key limits the source checks

MESSAGING_COOLDOWN = 6.0
"""RobloxMessageSubscription reacts to at most one message per 6 s per profile (the source)."""



# ------------------------------------------------------------------------------------------------------ options

@dataclass(frozen=True)
class ProfileStoreOptions:
    """`[store.profilestore]`: the source's constants (`ProfileStore.SetConstant`), in seconds.

    `autosave_period` 0 (the default) takes the scenario's `autosave_interval` in the simulator (300 s unless the
    scenario says otherwise, the source's AUTO_SAVE_PERIOD) and 300 s through the API. `messaging` (on, as in the
    source) is its use of MessagingService (see the module docstring); off, a force-load waits for an auto-save."""

    autosave_period: float = 0.0
    load_repeat_period: float = LOAD_REPEAT_PERIOD
    first_load_repeat: float = FIRST_LOAD_REPEAT
    session_steal: float = SESSION_STEAL
    assume_dead: float = ASSUME_DEAD
    start_session_timeout: float = START_SESSION_TIMEOUT
    max_message_queue: int = MAX_MESSAGE_QUEUE
    messaging: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "messaging":
                if not isinstance(value, bool):
                    raise ConfigError(f"must be a bool, got {value!r}", field=f.name)
                continue
            if f.name == "max_message_queue":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ConfigError(f"must be an int of at least 1, got {value!r}", field=f.name)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"must be a finite number of seconds, got {value!r}", field=f.name)
            if f.name in ("autosave_period", "session_steal"):
                if value < 0:
                    raise ConfigError(f"must be at least 0 seconds, got {value!r}", field=f.name)
            elif value <= 0:
                raise ConfigError(f"must be more than 0 seconds, got {value!r}", field=f.name)

    @property
    def period(self) -> float:
        """The auto-save period in effect (0 means the source's 300 s)."""
        return self.autosave_period or AUTO_SAVE_PERIOD


# ------------------------------------------------------------------------------------------------------ signals

class _Connection:
    __slots__ = ("signal", "fn", "connected")

    def __init__(self, signal: "Signal", fn: Callable) -> None:
        self.signal, self.fn, self.connected = signal, fn, True

    def disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self.signal._connections.remove(self)


class Signal:
    """The source's Signal: `connect(fn) -> connection` (`.disconnect()`), `fire(*args)` calls every listener now.
    A listener's exception goes to the scheduler's `on_error` (Luau runs each listener in its own thread)."""

    def __init__(self, on_error: Callable[[BaseException], Any] | None = None) -> None:
        self._connections: list[_Connection] = []
        self._on_error = on_error

    def connect(self, fn: Callable) -> _Connection:
        if not callable(fn):
            raise DesignError(f"listener must be a function, got {type(fn).__name__}", "InvalidArgument")
        connection = _Connection(self, fn)
        self._connections.append(connection)
        return connection

    @property
    def listener_count(self) -> int:
        return len(self._connections)

    def fire(self, *args: Any) -> None:
        for connection in list(self._connections):
            if connection.connected:
                try:
                    connection.fn(*args)
                except Exception as exc:
                    if self._on_error is not None:
                        self._on_error(exc)


# ------------------------------------------------------------------------------------------------------ results

class SaveOutcome(str, Enum):
    """What one save did: SAVED (landed, session still ours), ENDED (a final save landed and cleared the session),
    REFUSED (the record says another session holds it: nothing of ours was written, the session ended here),
    FAILED (a DataStore error: nothing written; a final save never fails, it repeats)."""

    SAVED = "saved"
    ENDED = "ended"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class SessionStart:
    """How `start_session` got its profile (a Python extension: `Profile.started`): `conflicts` reads that found the
    key held by another session, `took` "new", "free", "own" (this server's stale session), "dead" (LastUpdate older
    than ASSUME_DEAD) or "steal"."""

    conflicts: int
    took: str
    started_ms: int


def _is_table(value: Any) -> bool:
    return isinstance(value, (dict, list))


def _tag_is(tag: Any, place_id: int, job_id: str) -> bool:
    return isinstance(tag, list) and len(tag) >= 2 and tag[0] == place_id and tag[1] == job_id


def _reconcile(target: dict, template: dict) -> None:
    for k, v in template.items():
        if isinstance(k, str):
            if k not in target or target[k] is None:
                target[k] = copy.deepcopy(v)
            elif isinstance(target[k], dict) and isinstance(v, dict):
                _reconcile(target[k], v)


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DesignError(f"{what} must be a string, got {value!r} ({type(value).__name__})", "InvalidArgument")
    if not value:
        raise DesignError(f"{what} cannot be an empty string", "InvalidArgument")
    if len(value) > MAX_NAME:
        raise DesignError(f"{what} is too long: {len(value)} characters, at most {MAX_NAME}", "InvalidArgument")
    return value


# ------------------------------------------------------------------------------------------------------ runtime

class ProfileStoreRuntime:
    """The module's state on one game server (the Luau module's upvalues): active sessions, the circular auto-save
    list, the per-key UpdateAsync queue, closing and critical state. Shared by every `ProfileStore` of the server;
    get it with `ProfileStoreRuntime.of(server, scheduler)`."""

    _by_server: "weakref.WeakKeyDictionary[Server, ProfileStoreRuntime]" = weakref.WeakKeyDictionary()

    def __init__(self, server: Server, scheduler: Scheduler, options: ProfileStoreOptions | None = None) -> None:
        self.server = server
        self.scheduler = scheduler
        self.options = options or ProfileStoreOptions()
        self.place_id = PLACE_ID
        self.job_id = server.job_id
        self.is_closing = False
        self.down = False                                  # crashed: nothing runs or is written any more
        self.on_error = Signal(scheduler.on_error)         # (message, store_name, profile_key)
        self.on_overwrite = Signal(scheduler.on_error)     # (store_name, profile_key)
        self.on_critical_toggle = Signal(scheduler.on_error)
        self.active: dict[str, Profile] = {}               # ActiveSessionCheck: session token -> profile
        self.autosave_list: list[Profile] = []
        self.autosave_index = 0                            # 0-based AutoSaveIndex
        self.last_autosave = float(scheduler.now())
        self.load_jobs = 0
        self.save_jobs = 0
        self._timer: Timer | None = None
        self._queues: dict[str, list[asyncio.Future]] = {}
        self._issues: list[int] = []
        self._critical = False
        self._critical_start = 0
        self._tasks: set[asyncio.Task] = set()
        self._waiters: set[asyncio.Future] = set()
        self._subscriptions: set[Any] = set()             # this server's live "PS_<session id>" subscriptions

    @classmethod
    def of(cls, server: Server, scheduler: Scheduler,
           options: ProfileStoreOptions | None = None) -> "ProfileStoreRuntime":
        """The runtime of `server` (made on first use); `options` given replace its constants (SetConstant)."""
        runtime = cls._by_server.get(server)
        if runtime is None or runtime.down:
            runtime = cls._by_server[server] = cls(server, scheduler, options)
        elif runtime.scheduler is not scheduler:
            raise DesignError(f"ProfileStore on server {server.job_id!r} already runs on another scheduler",
                              "InvalidArgument")
        elif options is not None:
            runtime.options = options
            runtime._arm()
        return runtime

    # ---------------------------------------------------------------------------------------------- time

    def os_time(self) -> int:
        """os.time(): whole seconds of simulated time."""
        return self.scheduler.now() // 1000

    async def wait(self, seconds: float) -> None:
        """task.wait(seconds), cut short when the server starts closing."""
        if self.is_closing:
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.add(future)
        timer = self.scheduler.call_later(seconds, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            timer.cancel()
            self._waiters.discard(future)

    def spawn(self, coro) -> asyncio.Task:
        task = self.scheduler.spawn(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -------------------------------------------------------------------------------------- messaging

    def publish(self, topic: str, data: dict) -> None:
        """task.spawn(MessagingService.PublishAsync, ...) (when `options.messaging`): sent in the background; a
        refusal (a MessagingService limit) is dropped unread, as in the source. Delivery is best effort."""
        if not self.options.messaging or self.down:
            return
        self.spawn(self._publish(topic, data))

    async def _publish(self, topic: str, data: dict) -> None:
        try:
            await self.server.messaging.aio.publish(topic, data)
        except LodestoreError:
            pass   # the spawned PublishAsync's error goes nowhere in the source

    def subscribe(self, profile: "Profile") -> None:
        """task.spawn(RobloxMessageSubscription, ...) (when `options.messaging`): "PS_<session id>" asks this
        profile to save, or to end its session."""
        if not self.options.messaging or not profile.session_id:
            return
        self.spawn(self._subscribe(profile))

    async def _subscribe(self, profile: "Profile") -> None:
        last = [-math.inf]

        def on_message(message: dict) -> None:
            data = message.get("Data")
            if self.down or not isinstance(data, dict) or data.get("LoadCount") != profile.session_load_count:
                return
            now = self.scheduler.now()
            if now - last[0] <= MESSAGING_COOLDOWN * 1000:
                return
            last[0] = now
            if profile.is_active():
                if data.get("EndSession") is True:
                    self.spawn(self.save_profile(profile, True, False, "External"))
                else:
                    profile.save()

        try:
            subscription = await self.server.messaging.aio.subscribe("PS_" + profile.session_id, on_message)
        except LodestoreError:
            return   # SubscribeAsync failed (a limit, a closed server): the source's spawned thread errors, no more
        if not profile.is_active() or self.down:
            subscription.disconnect()
            return
        self._subscriptions.add(subscription)

        def unsubscribe() -> None:
            subscription.disconnect()
            self._subscriptions.discard(subscription)
        profile._unsubscribe = unsubscribe

    # ------------------------------------------------------------------------------------------- storage

    @contextlib.asynccontextmanager
    async def _queued(self, token: str):
        """WaitInUpdateQueue: one UpdateAsync per key at a time on this server, in arrival order."""
        queue = self._queues.get(token)
        if queue is None:
            self._queues[token] = []
        else:
            future = asyncio.get_running_loop().create_future()
            queue.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._next_in_queue(token)   # our turn came as we were cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._next_in_queue(token)

    def _next_in_queue(self, token: str) -> None:
        queue = self._queues.get(token)
        while queue:
            nxt = queue.pop(0)
            if not nxt.done():
                nxt.set_result(None)
                return
        self._queues.pop(token, None)

    async def update_async(self, store: "ProfileStore", key: str, *, existing: Callable | None = None,
                           missing: Callable | None = None, edit: Callable | None = None,
                           get_call: bool = False, version: str | None = None) -> tuple[Any, Any]:
        """The source's UpdateAsync helper: (record, KeyInfo), or (None, None) when the call failed (the error goes to
        `on_error`). The transform repairs a record that is not a profile (OnOverwrite)."""
        if self.down:
            raise DesignError(f"server {self.job_id!r} is down", "ServerGone")

        def transform(latest: Any, _info: Any = None) -> UpdateResult:
            is_missing, overwritten, updates = False, False, [0, []]
            if latest is None:
                is_missing = True
            elif not isinstance(latest, dict):
                is_missing = overwritten = True
            elif _is_table(latest.get("Data")) and _is_table(latest.get("MetaData")) and \
                    _is_table(latest.get("GlobalUpdates")):
                latest["WasOverwritten"] = False
                updates = latest["GlobalUpdates"]
                if existing is not None:
                    existing(latest)
            elif latest.get("Data") is None and latest.get("MetaData") is None and \
                    _is_table(latest.get("GlobalUpdates")):
                latest["WasOverwritten"] = False
                updates = latest["GlobalUpdates"]
                is_missing = True
            else:
                is_missing = overwritten = True
            if is_missing:
                latest = {"GlobalUpdates": updates}
                if missing is not None:
                    missing(latest)
            if edit is not None:
                edit(latest)
            if overwritten:
                latest["WasOverwritten"] = True
            return UpdateResult(latest, latest.get("UserIds"), latest.get("RobloxMetaData"))

        async with self._queued(f"L_{store.name}\0{key}"):
            try:
                if get_call:
                    if version is not None:
                        value, info = await store.data_store.aio.get_version(key, version)
                    else:
                        value, info = await store.data_store.aio.get(key)
                    loaded = transform(value).value
                else:
                    loaded, info = await store.data_store.aio.update(key, transform)
            except LodestoreError as exc:
                if isinstance(exc, DesignError) and exc.reason == "ServerGone":
                    raise
                self._register_error(str(exc), store.name, key)
                return None, None
        if isinstance(loaded, dict):
            if loaded.get("WasOverwritten") is True and not get_call:
                self.on_overwrite.fire(store.name, key)
            return loaded, info
        self._register_error("UpdateAsync returned no profile", store.name, key)
        return None, None

    def _register_error(self, message: str, store_name: str, key: str) -> None:
        self._issues.append(self.scheduler.now())
        self.on_error.fire(message, store_name, key)
        self._check_critical()

    @property
    def is_critical_state(self) -> bool:
        """ProfileStore.IsCriticalState: CRITICAL_STATE_ERROR_COUNT errors within CRITICAL_STATE_ERROR_EXPIRE s."""
        self._check_critical()
        return self._critical

    def _check_critical(self) -> None:
        now = self.scheduler.now()
        if not self._critical:
            if len(self._issues) >= CRITICAL_STATE_ERROR_COUNT:
                self._critical, self._critical_start = True, now
                self.on_critical_toggle.fire(True)
        elif len(self._issues) >= CRITICAL_STATE_ERROR_COUNT:
            self._critical_start = now
        elif now - self._critical_start > CRITICAL_STATE_EXPIRE * 1000:
            self._critical = False
            self.on_critical_toggle.fire(False)
        while self._issues and now - self._issues[0] > CRITICAL_STATE_ERROR_EXPIRE * 1000:
            self._issues.pop(0)

    # ----------------------------------------------------------------------------------------- auto-save

    def add_to_autosave(self, profile: "Profile") -> None:
        self.active[profile.session_token] = profile
        self.autosave_list.insert(self.autosave_index, profile)
        if len(self.autosave_list) > 1:
            self.autosave_index += 1
        else:   # the first profile: not saved at once
            self.last_autosave = float(self.scheduler.now())
        self._arm()

    def remove_from_autosave(self, profile: "Profile") -> None:
        if self.active.get(profile.session_token) is profile:
            del self.active[profile.session_token]
        if profile in self.autosave_list:
            i = self.autosave_list.index(profile)
            self.autosave_list.pop(i)
            if i < self.autosave_index:
                self.autosave_index -= 1
            if self.autosave_index >= len(self.autosave_list):
                self.autosave_index = 0
        self._arm()

    def _speed_ms(self) -> float:
        return self.options.period * 1000.0 / len(self.autosave_list)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.autosave_list and not self.down:
            self._timer = self.scheduler.call_at(math.ceil(self.last_autosave + self._speed_ms()), self._tick)

    def _tick(self) -> None:
        """The Heartbeat loop's auto-save part: one profile every period / N, in turn, fresh ones skipped."""
        self._timer = None
        if self.down:
            return
        now = self.scheduler.now()
        half = self.options.period * 1000.0 / 2
        while self.autosave_list and now - self.last_autosave >= self._speed_ms():
            self.last_autosave += self._speed_ms()
            n = len(self.autosave_list)
            profile: Profile | None = self.autosave_list[self.autosave_index]
            if now - profile.load_ms < half:
                profile = None
                for _ in range(n - 1):
                    self.autosave_index = (self.autosave_index + 1) % n
                    candidate = self.autosave_list[self.autosave_index]
                    if now - candidate.load_ms >= half:
                        profile = candidate
                        break
            self.autosave_index = (self.autosave_index + 1) % n
            if profile is not None:
                try:
                    self.spawn(self.save_profile(profile))
                except DesignError as exc:   # Profile.data is not a table: that profile's thread errors
                    if self.scheduler.on_error is not None:
                        self.scheduler.on_error(exc)
        self._check_critical()
        self._arm()

    # ----------------------------------------------------------------------------------------------- saves

    def save_profile(self, profile: "Profile", ending: bool = False, overwriting: bool = False,
                     reason: str | None = None):
        """SaveProfileAsync: the part before its first yield runs now (OnSave, OnLastSave, the end of the session
        here for a final save); returns the coroutine of the rest, which gives a `SaveOutcome`."""
        if not isinstance(profile.data, dict):
            raise DesignError(f"Profile.data of key {profile.key!r} in store {profile.profile_store.name!r} is "
                              f"{type(profile.data).__name__}, not a table", "InvalidData")
        profile.on_save.fire()
        if ending:
            profile.on_last_save.fire(reason or "Manual")
        if ending and not overwriting:
            profile._unsubscribe()
            self.remove_from_autosave(profile)
            profile.on_session_end.fire()
        return self._save_rest(profile, ending, overwriting, reason)

    async def _save_rest(self, profile: "Profile", ending: bool, overwriting: bool,
                         reason: str | None) -> SaveOutcome:
        self.save_jobs += 1
        try:
            return await self._save_loop(profile, ending, overwriting, reason)
        finally:
            self.save_jobs -= 1

    def _owns(self, meta: dict, profile: "Profile") -> bool:
        return _tag_is(meta.get("ActiveSession"), self.place_id, self.job_id) and \
            meta.get("SessionLoadCount") == profile.load_index

    async def _save_loop(self, profile: "Profile", ending: bool, overwriting: bool,
                         reason: str | None) -> SaveOutcome:
        store = profile.profile_store
        backoff = 1.0
        while True:
            taken: list[int] = []

            def edit(latest: dict) -> None:
                taken.clear()
                if not overwriting:
                    owns = self._owns(latest["MetaData"], profile)
                else:
                    owns = True
                if not owns:
                    return
                locked = profile._locked_updates
                if locked:
                    latest["GlobalUpdates"][1] = [u for u in latest["GlobalUpdates"][1] if u[0] not in locked]
                latest["Data"] = profile.data
                latest["RobloxMetaData"] = profile.roblox_metadata
                latest["UserIds"] = profile.user_ids
                meta = latest.setdefault("MetaData", {})
                if not overwriting:
                    meta["LastUpdate"] = self.os_time()
                    if ending:
                        meta.pop("ActiveSession", None)
                else:
                    meta.pop("ActiveSession", None)
                    meta.pop("ForceLoadSession", None)
                taken.append(self.scheduler.now())

            loaded, info = await self.update_async(store, profile.key, edit=edit)
            if loaded is not None and info is not None:
                if overwriting:
                    profile.key_info = info
                    return SaveOutcome.SAVED
                return await self._after_save(profile, loaded, info, ending, taken[0] if taken else None)
            if not ending:
                return SaveOutcome.FAILED
            await self.scheduler.sleep(backoff)   # a final save repeats until it lands
            backoff = min(8.0 if reason == "Shutdown" else 20.0, backoff * 2)

    async def _after_save(self, profile: "Profile", loaded: dict, info: Any, ending: bool,
                          taken: int | None) -> SaveOutcome:
        meta = loaded["MetaData"]
        owns = self._owns(meta, profile)     # after a final save that landed: False (ActiveSession cleared)
        wrote = taken is not None            # the transform found the session ours and wrote our data
        force = meta.get("ForceLoadSession")
        force_pending = isinstance(force, list) and not _tag_is(force, self.place_id, self.job_id)
        active = profile.is_active()
        watcher = profile._watcher
        if wrote:
            profile.last_update = meta.get("LastUpdate")
            if watcher is not None:
                watcher.wrote(profile, taken, meta, ending)
        if force_pending and owns:
            # Another server asked for this profile: a final save, and the session ends here.
            if active:
                await self.save_profile(profile, True, False, "External")
            return SaveOutcome.ENDED if ending else SaveOutcome.SAVED
        locked, received = profile._locked_updates, profile._received_updates
        updates = loaded["GlobalUpdates"][1]
        new, pending = [], set()
        for update in updates:
            if update[0] in locked:
                pending.add(update[0])
            elif update[0] not in received:
                received.add(update[0])
                new.append(update)
        locked &= pending
        profile.key_info = info
        profile.last_saved_data = loaded["Data"]
        profile._global_updates = updates
        if owns:
            if active and not ending:
                for update in new:
                    profile._deliver(update)
        else:
            profile._unsubscribe()
            if active:
                self.remove_from_autosave(profile)
                profile.on_session_end.fire()
            if not wrote and (active or ending) and watcher is not None:
                watcher.refused(profile)
        profile.on_after_save.fire(profile.last_saved_data)
        if ending:
            return SaveOutcome.ENDED if wrote else SaveOutcome.REFUSED
        return SaveOutcome.SAVED if owns else SaveOutcome.REFUSED

    # ------------------------------------------------------------------------------------------- lifecycle

    async def close(self) -> None:
        """BindToClose: no new sessions; every active profile gets its final save ("Shutdown"); returns once every
        load and save job has finished."""
        self.is_closing = True
        for future in list(self._waiters):
            if not future.done():
                future.set_result(None)
        jobs = [self.spawn(self.save_profile(p, True, False, "Shutdown")) for p in list(self.autosave_list)
                if p.is_active()]
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
        while self.load_jobs > 0 or self.save_jobs > 0:
            await self.scheduler.sleep(0.1)

    def crash(self) -> None:
        """The server died: every timer and task stops, nothing more is written."""
        self.down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        for future in list(self._waiters):
            if not future.done():
                future.cancel()
        self.active.clear()
        self.autosave_list.clear()
        for subscription in list(self._subscriptions):   # a dead server's subscriptions end with it
            subscription.disconnect()
        self._subscriptions.clear()


# ------------------------------------------------------------------------------------------------------ profile

class Profile:
    """One profile: `data` is changed in place and saved by its session (see the module docstring)."""

    def __init__(self, record: dict, key_info: Any, store: "ProfileStore", key: str, session_token: str = "",
                 started: SessionStart | None = None) -> None:
        meta = record.get("MetaData") or {}
        session = meta.get("ActiveSession")
        self.data: Any = record.get("Data") if record.get("Data") is not None else {}
        self.last_saved_data: Any = copy.deepcopy(self.data)
        self.first_session_time: int = meta.get("ProfileCreateTime", 0)
        self.session_load_count: int = meta.get("SessionLoadCount", 0)
        self.session: dict | None = ({"place_id": session[0], "job_id": session[1]}
                                     if isinstance(session, list) else None)
        self.session_id: str | None = session[2] if isinstance(session, list) and len(session) > 2 else None
        self.roblox_metadata: dict = record.get("RobloxMetaData") or {}
        self.user_ids: list = list(record.get("UserIds") or [])
        self.key_info = key_info
        on_error = store.runtime.scheduler.on_error
        self.on_save = Signal(on_error)
        self.on_last_save = Signal(on_error)        # (reason: "Manual" | "External" | "Shutdown")
        self.on_session_end = Signal(on_error)
        self.on_after_save = Signal(on_error)       # (last_saved_data)
        self.profile_store = store
        self.key = key
        self.started = started
        self.view_mode = False
        self.load_ms = store.runtime.scheduler.now()
        self.session_token = session_token
        self.load_index: int = meta.get("SessionLoadCount", 0)
        self.last_update: int | None = meta.get("LastUpdate")   # MetaData.LastUpdate of the last write (seconds)
        updates = (record.get("GlobalUpdates") or [0, []])[1]
        self._global_updates: list = updates
        self._received_updates: set = {u[0] for u in updates}
        self._locked_updates: set = set()
        self._handlers: list[Callable] = []
        self._watcher: Any = None
        self._unsubscribe: Callable[[], Any] = lambda: None

    def __repr__(self) -> str:
        return f"Profile({self.profile_store.name!r}, {self.key!r}, active={self.is_active()})"

    @property
    def _runtime(self) -> ProfileStoreRuntime:
        return self.profile_store.runtime

    def is_active(self) -> bool:
        """True while this server's session is live: changes to `data` will be saved."""
        return bool(self.session_token) and self._runtime.active.get(self.session_token) is self

    def reconcile(self) -> None:
        """Fill in missing string keys of `data` (nested tables too) from the store's template."""
        _reconcile(self.data, self.profile_store.template)

    def end_session(self) -> asyncio.Task | None:
        """EndSession: the session ends here now (OnLastSave "Manual", OnSessionEnd) and a final save runs in the
        background until it lands. Returns that save's task (a Python extension), None when not active."""
        if not self.is_active():
            return None
        return self._runtime.spawn(self._runtime.save_profile(self, True, False, "Manual"))

    def save(self) -> asyncio.Task | None:
        """Save now (one UpdateAsync in the background) and move this profile behind the auto-save index. Returns the
        save's task (a Python extension; its result is a `SaveOutcome`), None when not active (the source warns)."""
        if self.view_mode:
            raise DesignError(f"can't save profile {self.key!r} in view mode; use set_async", "ViewMode")
        if not self.is_active():
            return None
        self._runtime.remove_from_autosave(self)
        self._runtime.add_to_autosave(self)
        return self._runtime.spawn(self._runtime.save_profile(self))

    def add_user_id(self, user_id: int) -> None:
        """Associate a user id with the profile (GDPR); a non-integer is ignored (the source warns)."""
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            return
        if user_id < 0:
            return   # the source gives real Roblox APIs no negative user ids
        if user_id not in self.user_ids:
            self.user_ids.append(user_id)

    def remove_user_id(self, user_id: int) -> None:
        if user_id in self.user_ids and not isinstance(user_id, bool):
            self.user_ids.remove(user_id)

    def message_handler(self, fn: Callable[[Any, Callable[[], None]], Any]) -> None:
        """`fn(message, processed)` for every message not yet processed, now and as new ones arrive; `processed()`
        marks it done (the next save removes it) and stops later handlers getting it."""
        if not callable(fn):
            raise DesignError(f"message handler must be a function, got {type(fn).__name__}", "InvalidArgument")
        if not self.view_mode and not self.is_active():
            return
        self._handlers.append(fn)
        for update in list(self._global_updates):
            index = update[0]
            if index not in self._locked_updates:
                self._call(fn, update, [False])

    def _call(self, fn: Callable, update: list, flag: list) -> None:
        index = update[0]

        def processed() -> None:
            flag[0] = True
            self._locked_updates.add(index)
        try:
            fn(copy.deepcopy(update[-1]), processed)
        except Exception as exc:
            if self._runtime.scheduler.on_error is not None:
                self._runtime.scheduler.on_error(exc)

    def _deliver(self, update: list) -> None:
        for fn in list(self._handlers):
            flag = [False]
            self._call(fn, update, flag)
            if flag[0]:
                break

    async def set_async(self) -> None:
        """View mode only: write this profile's data over the stored one, clearing its session lock."""
        if not self.view_mode:
            raise DesignError(f"set_async on {self.key!r}: only for profiles from get or version_query", "ViewMode")
        await self._runtime.save_profile(self, False, True)

    @property
    def global_updates(self) -> list:
        """The messages the last read saw, as [index, message] pairs (read-only)."""
        return copy.deepcopy(self._global_updates)


# ------------------------------------------------------------------------------------------------ profile store

@dataclass
class _LoadJob:
    load_id: int
    done: asyncio.Future
    result: tuple = ()


class ProfileStore:
    """One DataStore of profiles (ProfileStore.New).

    >>> store = ProfileStore.new(server, scheduler, "PlayerData", {"coins": 0})
    >>> profile = await store.start_session("Player_1")
    >>> profile.data["coins"] += 10; profile.end_session()
    """

    def __init__(self, runtime: ProfileStoreRuntime, name: str, template: dict) -> None:
        self.runtime = runtime
        self.name = name
        self.template = template
        self.data_store = runtime.server.datastores.get_data_store(name)
        self._load_jobs: dict[str, _LoadJob] = {}
        self._load_index = 0

    @classmethod
    def new(cls, server: Server, scheduler: Scheduler, store_name: str, template: dict | None = None,
            options: ProfileStoreOptions | None = None) -> "ProfileStore":
        """ProfileStore.New(store_name, template) on `server`; `options` set the server's constants."""
        _check_name(store_name, "store_name")
        if template is None:
            template = {}
        if not isinstance(template, dict):
            raise DesignError(f"template must be a table (dict), got {type(template).__name__}", "InvalidArgument")
        if options is not None and not isinstance(options, ProfileStoreOptions):
            raise DesignError(f"options must be ProfileStoreOptions, got {type(options).__name__}", "InvalidArgument")
        return cls(ProfileStoreRuntime.of(server, scheduler, options), store_name, template)

    @property
    def _opts(self) -> ProfileStoreOptions:
        return self.runtime.options

    # -------------------------------------------------------------------------------------------- sessions

    async def start_session(self, profile_key: str, cancel: Callable[[], bool] | None = None,
                            steal: bool = False) -> Profile | None:
        """StartSessionAsync: the profile with this server's session, or None (cancelled, closing, another server's
        later request, or START_SESSION_TIMEOUT of failing DataStore calls). `steal=True` disregards a held lock."""
        _check_name(profile_key, "profile_key")
        if cancel is not None and not callable(cancel):
            raise DesignError(f"cancel must be a function, got {type(cancel).__name__}", "InvalidArgument")
        if not isinstance(steal, bool):
            raise DesignError(f"steal must be a bool, got {steal!r}", "InvalidArgument")
        rt = self.runtime
        if rt.is_closing:
            return None
        token = f"L_{self.name}\0{profile_key}"
        if token in rt.active:
            raise DesignError(f"profile (store {self.name!r}, key {profile_key!r}) is already loaded in this "
                              "session", "AlreadyLoaded")
        rt.load_jobs += 1
        try:
            return await self._start(profile_key, token, cancel, steal)
        finally:
            rt.load_jobs -= 1

    async def _start(self, key: str, token: str, cancel: Callable[[], bool] | None,
                     user_steal: bool) -> Profile | None:
        rt, opts = self.runtime, self._opts
        cancelled = [False]

        def cancel_condition() -> bool:
            if not cancelled[0] and cancel is not None:
                cancelled[0] = cancel() is True
            return cancelled[0]

        steps, request_force_load, steal_session = 0, True, False
        conflicts = 0
        start = rt.scheduler.now()
        backoff = 1.0
        while not rt.is_closing and not cancel_condition():
            self._load_index += 1
            load_id = self._load_index
            job = self._load_jobs.get(key)
            unique_session_id = new_id()
            took: list[str] = []
            if job is not None:   # a load for this key is under way here: take its result
                job.load_id = load_id
                await asyncio.shield(job.done)
                if job.load_id != load_id:
                    return None
                loaded, info, took = job.result
                self._load_jobs.pop(key, None)
            else:
                job = self._load_jobs[key] = _LoadJob(load_id, asyncio.get_running_loop().create_future())
                mine = [rt.place_id, rt.job_id, unique_session_id]

                def existing(latest: dict) -> None:
                    took.clear()
                    if rt.is_closing or cancel_condition():
                        return
                    meta = latest["MetaData"]
                    active, force = meta.get("ActiveSession"), meta.get("ForceLoadSession")
                    if active is None:
                        meta["ActiveSession"] = list(mine)
                        meta.pop("ForceLoadSession", None)
                        took.append("free")
                    elif isinstance(active, list):
                        if not _tag_is(active, rt.place_id, rt.job_id):
                            last = meta.get("LastUpdate")
                            if last is not None and rt.os_time() - last > opts.assume_dead:
                                meta["ActiveSession"] = list(mine)
                                meta.pop("ForceLoadSession", None)
                                took.append("dead")
                                return
                            if steal_session or user_steal:
                                interrupted = (not _tag_is(force, rt.place_id, rt.job_id)) if force is not None \
                                    else True
                                if not interrupted or user_steal:
                                    meta["ActiveSession"] = list(mine)
                                    meta.pop("ForceLoadSession", None)
                                    took.append("steal")
                            elif request_force_load:
                                meta["ForceLoadSession"] = [rt.place_id, rt.job_id]
                        else:
                            meta.pop("ForceLoadSession", None)
                            took.append("own")

                def missing(latest: dict) -> None:
                    took.clear()
                    is_cancel = rt.is_closing or cancel_condition()
                    latest["Data"] = copy.deepcopy(self.template)
                    latest["MetaData"] = {"ProfileCreateTime": rt.os_time(), "SessionLoadCount": 0, "MetaTags": {}}
                    if not is_cancel:
                        latest["MetaData"]["ActiveSession"] = list(mine)
                        took.append("new")

                def edit(latest: dict) -> None:
                    if rt.is_closing or cancel_condition():
                        return
                    meta = latest["MetaData"]
                    if _tag_is(meta.get("ActiveSession"), rt.place_id, rt.job_id):
                        meta["SessionLoadCount"] = meta.get("SessionLoadCount", 0) + 1
                        meta["LastUpdate"] = rt.os_time()

                try:
                    loaded, info = await rt.update_async(self, key, existing=existing, missing=missing, edit=edit)
                except BaseException:
                    job.result = (None, None, [])
                    if not job.done.done():
                        job.done.set_result(None)
                    if self._load_jobs.get(key) is job:
                        del self._load_jobs[key]
                    raise
                job.result = (loaded, info, list(took))
                if not job.done.done():
                    job.done.set_result(None)
                if job.load_id != load_id:
                    return None   # a later start_session for this key took the result
                self._load_jobs.pop(key, None)

            if loaded is not None and info is not None:
                meta = loaded["MetaData"]
                active = meta.get("ActiveSession")
                if not isinstance(active, list):
                    return None   # likely closing or cancelled
                if _tag_is(active, rt.place_id, rt.job_id):
                    started = SessionStart(conflicts, took[0] if took else "own", start)
                    profile = Profile(loaded, info, self, key, token, started)
                    rt.add_to_autosave(profile)
                    rt.subscribe(profile)
                    if rt.is_closing or cancel_condition():
                        await rt.save_profile(profile, True)
                        return None
                    return profile
                if rt.is_closing or cancel_condition():
                    return None
                conflicts += 1
                force = meta.get("ForceLoadSession")
                interrupted = (not _tag_is(force, rt.place_id, rt.job_id)) if force is not None else True
                if interrupted:
                    return None   # another server asked for it after us
                if not request_force_load:
                    steps += 1
                    if steps >= math.ceil(opts.session_steal / opts.load_repeat_period):
                        steal_session = True
                if len(active) > 2 and isinstance(active[2], str):   # ask the holder to end its session now
                    rt.publish("PS_" + active[2], {"LoadCount": meta.get("SessionLoadCount", 0), "EndSession": True})
                await rt.wait(opts.first_load_repeat if request_force_load else opts.load_repeat_period)
                request_force_load = False
            else:
                timed_out = cancel is None and rt.scheduler.now() - start >= opts.start_session_timeout * 1000
                if timed_out or rt.is_closing or cancel_condition():
                    return None
                await rt.wait(backoff)
                backoff = min(20.0, backoff * 2)
        return None

    # ------------------------------------------------------------------------------------------ messages

    async def message(self, profile_key: str, message: Any) -> bool:
        """MessageAsync: append `message` to the profile's record (for whoever holds or next loads it); False only
        when the server is closing. A message to a profile active on this server makes it save now."""
        _check_name(profile_key, "profile_key")
        if not _is_table(message):
            raise DesignError(f"message must be a table (dict or list), got {type(message).__name__}",
                              "InvalidArgument")
        try:
            check_value(message, what="message")
        except DataStoreError as exc:
            raise DesignError(f"message for {profile_key!r} cannot be stored: {exc}", "InvalidArgument") from exc
        rt = self.runtime
        cap = self._opts.max_message_queue
        backoff = 1.0
        while not rt.is_closing:
            def edit(latest: dict) -> None:
                updates = latest["GlobalUpdates"]
                updates[0] += 1
                updates[1].append([updates[0], message])
                while len(updates[1]) > cap:
                    updates[1].pop(0)
            loaded, _info = await rt.update_async(self, profile_key, edit=edit)
            if loaded is not None:
                profile = rt.active.get(f"L_{self.name}\0{profile_key}")
                if profile is not None:
                    profile.save()
                else:   # ask the remote holder to save sooner and so receive the message
                    meta = loaded.get("MetaData") or {}
                    active = meta.get("ActiveSession")
                    if isinstance(active, list) and len(active) > 2 and isinstance(active[2], str):
                        rt.publish("PS_" + active[2], {"LoadCount": meta.get("SessionLoadCount", 0)})
                return True
            await rt.wait(backoff)
            backoff = min(20.0, backoff * 2)
        return False

    # --------------------------------------------------------------------------------------------- reading

    async def get(self, profile_key: str, version: str | None = None) -> Profile | None:
        """GetAsync: a view-mode profile (no session, never auto-saved) of the stored record or of `version`;
        None when the key is empty. Failing reads repeat (backoff 1 .. 20 s) until closing."""
        _check_name(profile_key, "profile_key")
        if version is not None and (not isinstance(version, str) or not version):
            raise DesignError(f"version must be a version string, got {version!r}", "InvalidArgument")
        rt = self.runtime
        if rt.is_closing:
            return None

        def missing(latest: dict) -> None:
            latest["Data"] = copy.deepcopy(self.template)
            latest["MetaData"] = {"ProfileCreateTime": rt.os_time(), "SessionLoadCount": 0, "MetaTags": {}}

        backoff = 1.0
        while not rt.is_closing:
            loaded, info = await rt.update_async(self, profile_key, missing=missing, get_call=True, version=version)
            if loaded is not None:
                if info is None:
                    return None
                profile = Profile(loaded, info, self, profile_key)
                profile.view_mode = True
                return profile
            await rt.wait(backoff)
            backoff = min(20.0, backoff * 2)
        return None

    def version_query(self, profile_key: str, sort_direction: Any = SortDirection.ASCENDING,
                      min_date: int | None = None, max_date: int | None = None) -> "ProfileVersionQuery":
        """VersionQuery: `await query.next()` gives the profile at each stored version in turn, then None."""
        _check_name(profile_key, "profile_key")
        try:
            sort_direction = SortDirection(sort_direction)
        except ValueError:
            raise DesignError(f"invalid sort_direction {sort_direction!r}", "InvalidArgument") from None
        for name, value in (("min_date", min_date), ("max_date", max_date)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise DesignError(f"invalid {name} {value!r}: milliseconds since the epoch", "InvalidArgument")
        return ProfileVersionQuery(self, profile_key, sort_direction, min_date, max_date)

    async def remove(self, profile_key: str) -> bool:
        """RemoveAsync: delete the record for good; True when it worked."""
        _check_name(profile_key, "profile_key")
        rt = self.runtime
        if rt.is_closing:
            return False
        if rt.down:
            raise DesignError(f"server {rt.job_id!r} is down", "ServerGone")
        async with rt._queued(f"L_{self.name}\0{profile_key}"):
            try:
                await self.data_store.aio.remove(profile_key)
            except LodestoreError:
                return False
        return True


class ProfileVersionQuery:
    """The versions of one key, read one at a time (VersionQuery:NextAsync)."""

    def __init__(self, store: ProfileStore, key: str, direction: SortDirection, min_date: int | None,
                 max_date: int | None) -> None:
        self.store, self.key, self.direction = store, key, direction
        self.min_date, self.max_date = min_date, max_date
        self._items: list = []
        self._cursor: str | None = None
        self._started = False
        self._failed = False
        self._lock = asyncio.Lock()

    async def next(self) -> Profile | None:
        async with self._lock:
            while not self._items:
                if self._failed or (self._started and self._cursor is None) or self.store.runtime.is_closing:
                    return None
                try:
                    page = await self.store.data_store.aio.list_versions(self.key, self.direction, self.min_date,
                                                                         self.max_date, 0, self._cursor)
                except LodestoreError:
                    self._failed = True
                    return None
                self._started = True
                self._cursor = page.cursor
                self._items = [v for v in page.items if not v.is_deleted]
                if not page.items:
                    self._failed = True
            version = self._items.pop(0)
        return await self.store.get(self.key, version.version)


# ------------------------------------------------------------------------------------------------------ layer

@dataclass
class _Hold:
    profile: Profile
    session: str
    done: asyncio.Future
    until_ms: int = 0


class ProfileLayer(DataLayer):
    """One server's players on ProfileStore: load = start_session (+ reconcile), save = `Profile.save` awaited,
    unload = `end_session` awaited. Lock reports follow the record: "acquired"/"refreshed" until LastUpdate +
    ASSUME_DEAD (the first moment another server may take it as dead), "released" when a final save landed (the
    player's leave, or another server's force-load), "lost" when a write found the session taken, "crashed"."""

    cancels_loads = True

    def __init__(self, server: Server, scheduler: Scheduler, config: StoreConfig,
                 options: ProfileStoreOptions) -> None:
        super().__init__(server, scheduler, config)
        self.options = options
        self.store = ProfileStore.new(server, scheduler, config.name, copy.deepcopy(config.template), options)
        self.runtime = self.store.runtime
        self.holds: dict[str, _Hold] = {}
        self._loading: set[str] = set()     # keys whose start_session runs
        self._left: set[str] = set()        # ... of which the player left: its `cancel` answers True
        self._ended: dict[str, bool] = {}    # sessions that ended by themselves: did their final save land?

    def _until(self, last: Any) -> int:
        if not isinstance(last, (int, float)):
            return self.now()
        return int((last + math.floor(self.options.assume_dead) + 1) * 1000)

    # ----------------------------------------------------------------------------- the runtime's watcher

    def wrote(self, profile: Profile, taken: int, meta: dict, ending: bool) -> None:
        hold = self.holds.get(profile.key)
        if hold is None or hold.profile is not profile:
            return
        self.saved(profile.key, taken)
        if ending:   # the write that freed the session was sent when its data was taken: the hold ended then
            self._end(profile.key, hold, True, "released", at=taken)
        else:
            hold.until_ms = self._until(meta.get("LastUpdate"))
            self.report("refreshed", profile.key, hold.session, hold.until_ms)

    def refused(self, profile: Profile) -> None:
        hold = self.holds.get(profile.key)
        if hold is not None and hold.profile is profile:
            self.log("warn", f"profile {profile.key!r}: the session was taken by another server; changes since its "
                             "last save are lost")
            self._end(profile.key, hold, False, "lost")

    def _end(self, key: str, hold: _Hold, landed: bool, kind: str, at: int | None = None) -> None:
        del self.holds[key]
        self._ended[key] = landed
        self.forget(key)
        self.report(kind, key, hold.session, at_ms=at)
        if not hold.done.done():
            hold.done.set_result(landed)

    # ----------------------------------------------------------------------------------------- contract

    async def load(self, key: str) -> None:
        self.check_up()
        if key in self.holds:
            raise DesignError(f"key {key!r} is already loaded on server {self.server.job_id!r}", "AlreadyLoaded")
        self._ended.pop(key, None)
        self._loading.add(key)
        try:   # the README's join handler: cancel when the player has left (ProfileStore polls it between tries)
            profile = await self.store.start_session(key, cancel=lambda: key in self._left)
        finally:
            self._loading.discard(key)
            left = key in self._left
            self._left.discard(key)
        self.check_up()
        if profile is None and left:
            raise DesignError(f"start_session for {key!r} was cancelled: the player left", "LoadCancelled")
        if profile is None:
            self.counters.load_failures += 1
            raise DesignError(f"start_session for {key!r} on server {self.server.job_id!r} gave no profile "
                              "(timed out, or another server asked for it after us)", "LoadFailed")
        started = profile.started
        if started is not None and started.conflicts:
            self.counters.lock_waits += 1
        if started is not None and started.took in ("steal", "dead"):
            self.counters.lock_steals += 1
        profile.reconcile()
        profile.add_user_id(_user_id(key))
        hold = _Hold(profile, profile.session_id or new_id(), asyncio.get_running_loop().create_future())
        hold.until_ms = self._until(profile.last_update)
        self.holds[key] = hold
        profile._watcher = self
        self.counters.loads += 1
        self.report("acquired", key, hold.session, hold.until_ms)

    async def update(self, key: str, fn: Callable[[dict], bool]) -> bool:
        hold = self._active(key)
        if not fn(hold.profile.data):
            return False
        self.changed(key)
        return True

    async def save(self, key: str) -> None:
        hold = self._active(key)
        task = hold.profile.save()
        outcome = await task if task is not None else SaveOutcome.REFUSED
        if outcome in (SaveOutcome.SAVED, SaveOutcome.ENDED):
            return
        self.counters.save_failures += 1
        why = "the session was taken by another server" if outcome is SaveOutcome.REFUSED else "a DataStore error"
        self.log("warn", f"Failed to save profile {key!r}: {why}")
        raise DesignError(f"the save of {key!r} failed: {why}", "SaveFailed")

    async def unload(self, key: str) -> bool:
        self.check_up()
        hold = self.holds.get(key)
        if hold is None:
            if key in self._ended:
                return self._ended.pop(key)
            if key in self._loading:   # the player left while the session starts: its cancel stops it
                self._left.add(key)
                return False
            raise self.not_loaded(key)
        if hold.profile.is_active():
            hold.profile.end_session()
        landed = await asyncio.shield(hold.done)
        self._ended.pop(key, None)
        return landed

    async def is_loaded(self, key: str) -> bool:
        hold = self.holds.get(key)
        return hold is not None and hold.profile.is_active()

    async def close(self) -> None:
        if not self.runtime.down:
            await self.runtime.close()

    def crash(self) -> None:
        self.runtime.crash()
        for key, hold in list(self.holds.items()):
            self.report("crashed", key, hold.session, hold.until_ms)
            if not hold.done.done():
                hold.done.cancel()
        self.holds.clear()
        self.forget_all()

    # ------------------------------------------------------------------------------------------ helpers

    def _active(self, key: str) -> _Hold:
        self.check_up()
        hold = self.holds.get(key)
        if hold is None or not hold.profile.is_active():
            raise self.not_loaded(key)
        return hold

    @property
    def down(self) -> bool:
        return self.runtime.down


def _user_id(key: str) -> int:
    """The user id in a player key ("Player_123", "u42"), -1 when there is none (then nothing is added)."""
    digits = "".join(ch for ch in key if ch.isdigit())
    return int(digits[-18:]) if digits else -1


async def _open(game: Any, scheduler: Scheduler, config: StoreConfig, options: ProfileStoreOptions) -> ProfileLayer:
    if not options.autosave_period:
        options = dataclasses.replace(options, autosave_period=float(config.autosave_interval))
    return ProfileLayer(game.storage, scheduler, config, options)


async def _read(reader: Server, scheduler: Scheduler, config: StoreConfig, options: ProfileStoreOptions,
                keys: list[str]) -> dict[str, Any]:
    """Each key's `Data` as stored (None when there is no profile: absent, or only messages waiting)."""
    store = reader.datastores.get_data_store(config.name)
    out: dict[str, Any] = {}
    for key in keys:
        value, _ = await store.aio.get(key, False)
        out[key] = value.get("Data") if isinstance(value, dict) and _is_table(value.get("Data")) else None
    return out


PROFILESTORE = Design("profilestore", "MadStudio's ProfileStore: session lock in the record's metadata, force-load "
                      "then steal after ~45 s, dead after 630 s, auto-save every 300 s spread over profiles",
                      ProfileStoreOptions, _open, _read, transactions=False,
                      lock="in the record (UpdateAsync), force-load/steal")
