"""The datastorer design: DataStorer (minecoiii2/datastorer), a queue-based DataStore module with a weak session
marker and last-write-wins, written again in Python on lodestore's emulated cloud.

Where its behaviour comes from: the seed document `../shared/reference/seeds/datastorer.md` (its README) and the
module's whole source, `datastorer.luau` (github:minecoiii2/datastorer, commit d26f57f "fix2"). In detail:
- One module per game server (`DataStorer`) with its stores (`get_datastore`: the same name gives the same `Store`,
  later arguments ignored), each with its key stores (`create_key`: numbers become strings; a second live key store of
  one key is refused). The module's settings are the source's constants: `AUTO_SAVE_EVERY` 90 s, `MAX_WAIT_EXPONENT`
  5, `MAX_ATTEMPTS` = exponent + 7, `REVESERVE_REQUESTS_FOR_EMERGENCY` 10, `AUTO_SAVING` true, `AUTO_SAVE_WHEN_CLOSE`
  false, `DEBUG` false (the source's defaults; the README describes AUTO_SAVE_WHEN_CLOSE as the switch to turn on).
- One queue for every request of the module (`queueMethods`): one item per key store at a time (`Update`, `Load` and
  `Release` do nothing, answering None, while the key store has an item queued), emergency items inserted first,
  others appended. A heartbeat (`Run.Heartbeat`, `FRAME_SECONDS` apart) first runs the autosave pass, then looks at
  the queue's first item only: budget check (`GetRequestBudgetForRequestType(UpdateAsync)`, here the smaller of this
  server's StandardRead and StandardWrite budgets, must be above 10, or above 0 for an emergency item, else nothing
  happens this frame), an item still marked processing or still in its backoff (2^min(attempt, exponent) seconds
  after its last attempt) is moved to the back, an item of a closed key store is removed as failed; otherwise one
  UpdateAsync runs, and the heartbeat waits for it: the module sends one request at a time.
- Every request is the same UpdateAsync (the transform in `queueHeartbeat`): a missing key starts from the template
  and metadata template with `Session`, `SessionStartedAt` (epoch seconds) and `DataVersion` (= number of versions)
  in KeyInfo metadata; the data is stored raw, as the value. When the stored `Session` is another one, the older key
  store loses (its `SessionStartedAt`, taken when the key store was created, is before the stored one): the request
  fails for good and the key store closes; otherwise it takes the marker (`Session` = its own, `SessionStartedAt` =
  now). Then migrations run from the stored `DataVersion` on the stored data. A key store without data (the first
  request) takes the stored data (a load); one with data writes its data (a save). The transform keeps its effects
  even when the write then fails, so a load whose write failed is retried as a save of what it read, over whatever
  the previous holder wrote meanwhile.
- Failures: an error whose message holds a 1xx or 4xx code (the source matches the first three digits anywhere), or a
  lost session conflict, fails the item at once; any other failure is retried up to MAX_ATTEMPTS with backoff. A
  failed item closes its key store (`Update`'s handler): no further saves.
- The queue removes and fires "the first item" by position after the request returns, as the source does: an
  emergency item inserted at the front while another request was in flight is the one removed and reported
  processed (True, never written), and the request that ran stays in the queue marked processing, never to end.
- Autosave: every heartbeat, each key store whose last processed request ended `AUTO_SAVE_EVERY` seconds ago, with no
  item queued, is checksummed (`storage.canonical` + blake2b, for checksum.lua); when the checksum differs from the one
  taken at its last load or autosave, it is queued. A forced `update()` does not refresh that checksum (the source
  does not), so the next autosave writes once more.
- `flush_queue` drops every item that is neither emergency nor processing and `emergency_flush_queue` drops all,
  without firing them: whoever waits on a dropped item waits forever, as in the source. `wait_for_empty_queue` waits
  a heartbeat, then until the queue is empty. `bind_to_close` is `game:BindToClose`'s handler.
- The lock is a marker, not a lease: no expiry, never cleared on release, never waited for. A load always takes the
  key from a live holder unless it is older; two key stores created in the same epoch second both keep winning, each
  write overwriting the other's (last write wins).

Python shape: waits are coroutines (`await key.load()`, `await key.release()`, `await result.wait()`), the Lua
signals are `Signal` (`on_closed.connect(fn)`) and `ProcessedSignal` (what `update()` answers; unlike bettersignal,
its `wait()` after the firing answers the outcome instead of waiting for a next one). Asserts are `DataStorerError`s
(a `DesignError` with a reason) and bad settings `ConfigError`s. With `debug=True` every line the source prints (and
its warnings) is kept in `DataStorer.trace`, prefixed by the simulated seconds since the module started; warnings also
go to `on_message(level, line)` whether debugging or not.
Emulation choices: the heartbeat runs every frame only while there is something to do; when every queued item is in
its backoff it sleeps until the first one ends, and a key store found due but unchanged is checked again every
`recheck_seconds` (1 s; the source checks it every frame) or when `poke()` says data changed (the layer pokes on
every change, which makes it exact).

Owns: `DataStorer`, `Store`, `KeyStore`, their queue and signals, `DatastorerLayer` (the simulator's adapter) and the
design's entry. Never does: lease, wait for, or clear a session marker; reconcile data with the template; run more
than one request at a time; touch MemoryStore.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from lodestore.actors import StoreConfig
from lodestore.storage import (ConfigError, DataStoreError, LodestoreError, RequestType, Scheduler, Server,
                               TransformError, UpdateResult, canonical, check_value, new_id)
from lodestore.sim.designs._base import DataLayer, Design, DesignError, read_values

__all__ = ["DataStorer", "Store", "KeyStore", "Signal", "ProcessedSignal", "Connection", "QueueItem",
           "DataStorerError", "DataStorerStatistics", "DatastorerOptions", "DatastorerLayer", "DATASTORER",
           "AUTO_SAVE_EVERY", "MAX_WAIT_EXPONENT", "EXTRA_ATTEMPTS", "RESERVE_REQUESTS_FOR_EMERGENCY",
           "FRAME_SECONDS", "BIND_TO_CLOSE_LIMIT_S"]

AUTO_SAVE_EVERY = 90.0
"""Seconds between autosaves of a changed key store (`AUTO_SAVE_EVERY`)."""
MAX_WAIT_EXPONENT = 5
"""The longest backoff is 2^5 = 32 s (`MAX_WAIT_EXPONENT`)."""
EXTRA_ATTEMPTS = 7
"""`MAX_ATTEMPTS = MAX_WAIT_EXPONENT + 7`: 12 attempts, about four minutes of backoff."""
RESERVE_REQUESTS_FOR_EMERGENCY = 10
"""A routine item waits while the UpdateAsync budget is at or below this; an emergency item while it is 0."""
FRAME_SECONDS = 1 / 60
"""One `Run.Heartbeat`."""
BIND_TO_CLOSE_LIMIT_S = 30.0
"""How long Roblox lets BindToClose handlers run."""
LOG_HEADER = "[DATASTORER]"
MAX_SHIFT = 20   # the largest max_wait_exponent accepted (2^20 s is 12 days)

_CODE = re.compile(r"\d\d\d")


class DataStorerError(DesignError):
    """What the module refuses (the source's asserts): `reason` is "BadArgument", "KeyExists", "KeyClosed",
    "AlreadyLoaded", "ShuttingDown" or "UserIdExists"; the message names the key and the value."""


@dataclass(frozen=True)
class DataStorerStatistics:
    """A snapshot of one module: its queue, and what its requests did."""

    queued: int
    emergency_queued: int
    key_stores: int
    requests: int              # UpdateAsync calls sent
    loads: int                 # requests that took the stored data
    saves: int                 # requests that wrote a key store's data
    failures: int              # failed attempts (retried or not)
    items_failed: int          # items removed as not processed
    session_rejections: int    # requests refused because a newer session held the key
    session_takeovers: int     # requests that replaced another session's marker
    autosaves: int             # items the autosave pass queued
    autosaves_skipped: int     # due key stores found unchanged (once per due period)
    budget_waits: int          # heartbeats that found the budget at or below the reserve


# ------------------------------------------------------------------------------------------------------- signals


class Connection:
    """One callback on a `Signal`; `disconnect()` removes it."""

    __slots__ = ("_signal", "fn", "once", "connected")

    def __init__(self, signal: "Signal", fn: Callable, once: bool) -> None:
        self._signal, self.fn, self.once, self.connected = signal, fn, once, True

    def disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self._signal._connections.remove(self)


class Signal:
    """The source's Signal: `connect(fn)`, `once(fn)`, `fire(*args)` (callbacks in connection order; one that
    raises is reported to `on_error` and the others still run), `await wait()` for the next firing."""

    def __init__(self, on_error: Callable[[BaseException], Any] | None = None) -> None:
        self._connections: list[Connection] = []
        self._waiters: list[asyncio.Future] = []
        self._on_error = on_error

    def connect(self, fn: Callable) -> Connection:
        if not callable(fn):
            raise DataStorerError(f"a signal connects callables, got {fn!r} ({type(fn).__name__})", "BadArgument")
        connection = Connection(self, fn, False)
        self._connections.append(connection)
        return connection

    def once(self, fn: Callable) -> Connection:
        connection = self.connect(fn)
        connection.once = True
        return connection

    def fire(self, *args: Any) -> None:
        for connection in list(self._connections):
            if not connection.connected:
                continue
            if connection.once:
                connection.disconnect()
            try:
                connection.fn(*args)
            except Exception as exc:
                if self._on_error is not None:
                    self._on_error(exc)
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(args)

    async def wait(self) -> tuple:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return await future


class ProcessedSignal(Signal):
    """What `KeyStore.update()` answers (a queue item's `onProcessed`): fired once with True (written or loaded) or
    False (failed). `await result.wait()` answers that boolean, also when it fired before the wait began."""

    def __init__(self, on_error: Callable[[BaseException], Any] | None = None) -> None:
        super().__init__(on_error)
        self.fired = False
        self.result: bool | None = None

    def fire(self, processed: bool) -> None:   # type: ignore[override]
        if not self.fired:
            self.fired, self.result = True, bool(processed)
        super().fire(processed)

    async def wait(self) -> bool:   # type: ignore[override]
        if self.fired:
            return bool(self.result)
        (processed,) = await super().wait()
        return bool(processed)


# --------------------------------------------------------------------------------------------------------- queue


@dataclass(eq=False)
class QueueItem:
    """One request waiting in the module's queue (`queueItem`). `last_attempt` is in seconds on the module's clock."""

    keystore: "KeyStore"
    on_processed: ProcessedSignal
    emergency: bool = False
    attempt: int = 0
    last_attempt: float = -math.inf
    processing: bool = False


class _Queue(list):
    """`queueMethods`: a list whose first item is the only one the heartbeat looks at."""

    def __init__(self, module: "DataStorer") -> None:
        super().__init__()
        self._module = module

    def has_item_for(self, keystore: "KeyStore") -> bool:
        return any(item.keystore is keystore for item in self)

    def item_for(self, keystore: "KeyStore") -> QueueItem | None:
        return next((item for item in self if item.keystore is keystore), None)

    def add_item(self, keystore: "KeyStore", emergency: bool) -> QueueItem:
        item = QueueItem(keystore, ProcessedSignal(self._module._callback_failed), emergency=bool(emergency))
        if emergency:
            self.insert(0, item)
        else:
            self.append(item)
        return item

    def remove_first_item(self, processed: bool) -> None:
        """Remove whatever is first now and fire it (the source's `removeFirstItem`, by position)."""
        if not self:
            return
        item = self.pop(0)
        item.on_processed.fire(processed)
        item.keystore._last_processed = self._module._clock_s()
        self._module._queue_changed()

    def move_first_item_last(self) -> None:
        if len(self) > 1:
            self.append(self.pop(0))

    def emergency_flush(self) -> int:
        dropped = len(self)
        self.clear()
        self._module._queue_changed()
        return dropped

    def flush(self) -> int:
        kept = [item for item in self if item.emergency or item.processing]
        dropped = len(self) - len(kept)
        self[:] = kept
        self._module._queue_changed()
        return dropped


# -------------------------------------------------------------------------------------------------------- module


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be a bool, got {value!r} ({type(value).__name__})", field=name)
    return value


def _check_seconds(value: Any, name: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a finite number of seconds above 0, got {value!r}", field=name)
    return float(value)


def _check_exponent(value: Any, name: str = "max_wait_exponent") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SHIFT:
        raise ConfigError(f"{name} must be an integer from 0 to {MAX_SHIFT}, got {value!r}", field=name)
    return value


def _key_name(key: Any) -> str:
    """The source's `tostring(key)` for a string or number key; anything else is refused."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or not isinstance(key, (int, float)):
        raise DataStorerError(f"key expected a string or number, got {key!r} ({type(key).__name__})", "BadArgument")
    if isinstance(key, float):
        if not math.isfinite(key):
            raise DataStorerError(f"key must be a finite number, got {key!r}", "BadArgument")
        if key.is_integer():
            return str(int(key))
        return f"{key:.14g}"
    return str(key)


def _checksum(data: Any) -> Any:
    """checksum.any: equal for equal data; data that cannot be stored never equals anything."""
    try:
        return hashlib.blake2b(canonical(data), digest_size=16).digest()
    except Exception:
        return object()


class DataStorer:
    """The module (`require('./Datastorer')`) of one game server: stores, one request queue, the heartbeat.

    Build it inside the running event loop; everything it does later runs through `scheduler`.

        >>> module = DataStorer(server, scheduler)
        >>> store = module.get_datastore("Players", {"Coins": 0})
        >>> key = store.create_key(123, [123])
        >>> if await key.load():
        ...     key.data["Coins"] += 100
        ...     ok = await key.update().wait()
        ...     await key.release()
    """

    def __init__(self, server: Server, scheduler: Scheduler, *, debug: bool = False, auto_saving: bool = True,
                 auto_save_every: float = AUTO_SAVE_EVERY, max_wait_exponent: int = MAX_WAIT_EXPONENT,
                 auto_save_when_close: bool = False, frame_seconds: float = FRAME_SECONDS,
                 recheck_seconds: float | None = 1.0,
                 on_message: Callable[[str, str], Any] | None = None) -> None:
        if not isinstance(scheduler, Scheduler):
            raise ConfigError(f"scheduler must be a storage.Scheduler, got {type(scheduler).__name__}",
                              field="scheduler")
        if getattr(server, "datastores", None) is None:
            raise ConfigError(f"server must be a storage.Server, got {type(server).__name__}", field="server")
        self.debug = _check_bool(debug, "debug")
        self.auto_saving = _check_bool(auto_saving, "auto_saving")
        self.auto_save_when_close = _check_bool(auto_save_when_close, "auto_save_when_close")
        self.auto_save_every = _check_seconds(auto_save_every, "auto_save_every")
        self.max_wait_exponent = _check_exponent(max_wait_exponent)
        self.max_attempts = self.max_wait_exponent + EXTRA_ATTEMPTS
        self.frame_seconds = _check_seconds(frame_seconds, "frame_seconds")
        self.recheck_seconds = _check_seconds(recheck_seconds, "recheck_seconds", allow_none=True)
        if on_message is not None and not callable(on_message):
            raise ConfigError(f"on_message must be callable, got {on_message!r}", field="on_message")
        self.server = server
        self.scheduler = scheduler
        self.on_message = on_message
        self.alive = True          # ALIVE: false from BindToClose on
        self.trace: list[str] = []
        self._started_ms = scheduler.now()
        self._stores: dict[str, Store] = {}
        self._queue = _Queue(self)
        self._waiter: asyncio.Future | None = None
        self._empty_waiters: list[asyncio.Future] = []
        self._stopped = False
        self._counts = dict.fromkeys(("requests", "loads", "saves", "failures", "items_failed", "session_rejections",
                                      "session_takeovers", "autosaves", "autosaves_skipped", "budget_waits"), 0)
        # hooks for the simulator's layer: a request landed (key store, when its data was taken (ms), was a load)
        self._on_written: Callable[[KeyStore, int, bool], Any] | None = None
        self._on_skipped: Callable[[KeyStore], Any] | None = None
        self._heartbeat = scheduler.spawn(self._run())

    # ------------------------------------------------------------------------------------------ public API

    def get_datastore(self, name: str, template: Any = None, versions: Sequence[Callable[[Any], Any]] = (),
                      metadata_template: dict | None = None, auto_save: bool | None = None) -> "Store":
        """The store called `name` (`GetDatastore`): made on the first call, the same one after (the other
        arguments are then ignored, as in the source)."""
        if not isinstance(name, str):
            raise DataStorerError(f"storeName expected string, got {name!r} ({type(name).__name__})", "BadArgument")
        found = self._stores.get(name)
        if found is not None:
            return found
        store = Store(self, name, template, versions, metadata_template, auto_save)
        self._stores[name] = store
        store._print("Creating")
        return store

    def flush_queue(self) -> int:
        """Drop every queued item that is neither an emergency nor being processed, without firing it; returns how
        many were dropped."""
        return self._queue.flush()

    def emergency_flush_queue(self) -> int:
        """Drop every queued item, without firing any; returns how many were dropped."""
        return self._queue.emergency_flush()

    async def wait_for_empty_queue(self) -> None:
        """Wait a heartbeat, then until the queue is empty."""
        while True:
            await self.scheduler.sleep(self.frame_seconds)
            if not self._queue:
                return
            future = asyncio.get_running_loop().create_future()
            self._empty_waiters.append(future)
            await future

    async def bind_to_close(self) -> None:
        """`game:BindToClose`'s handler: no more autosaves or new key stores; with `auto_save_when_close`, drop the
        routine items, release every key store as an emergency, wait for the queue, and stop the heartbeat."""
        self.alive = False
        if self.auto_save_when_close:
            self.flush_queue()
            await asyncio.sleep(0)
            for store in list(self._stores.values()):
                store.release_all_keys(True)
            await self.wait_for_empty_queue()
            self.stop()

    def stop(self) -> None:
        """Stop the heartbeat (`task.cancel(heartbeat)`): nothing queued runs any more."""
        self._stopped = True
        if not self._heartbeat.done():
            self._heartbeat.cancel()
        self._poke()

    def poke(self) -> None:
        """Tell the heartbeat that some key store's data changed (it then checks due key stores at the next frame
        instead of at its next recheck)."""
        self._poke()

    @property
    def queue(self) -> tuple[QueueItem, ...]:
        """The queue now, first item first."""
        return tuple(self._queue)

    def statistics(self) -> DataStorerStatistics:
        return DataStorerStatistics(len(self._queue), sum(1 for i in self._queue if i.emergency),
                                    sum(len(s.key_stores) for s in self._stores.values()), **self._counts)

    # ---------------------------------------------------------------------------------------------- heartbeat

    def _clock_s(self) -> float:
        return self.scheduler.now() / 1000.0

    def _epoch(self) -> int:
        return self.scheduler.now() // 1000

    async def _run(self) -> None:
        """`while true do autoSavingHeartbeat(); queueHeartbeat(); Run.Heartbeat:Wait() end`, asleep while there
        is nothing to do."""
        frame_ms = max(1, int(self.frame_seconds * 1000))
        while not self._stopped:
            self._autosave_pass()
            await self._queue_heartbeat()
            if self._stopped:
                break
            until = self._next_wake()
            if until is not None and until <= self.scheduler.now() + frame_ms:
                await self.scheduler.sleep(self.frame_seconds)
            elif await self._nap(until):   # poked: something changed, the next frame looks at it
                await self.scheduler.sleep(self.frame_seconds)

    def _next_wake(self) -> int | None:
        """When the next heartbeat could do something (ms), or None: only a poke wakes it."""
        now_s = self._clock_s()
        times: list[float] = []
        waiting = [item for item in self._queue if not item.processing]
        if waiting:
            ready = [item.last_attempt + 2 ** min(item.attempt, self.max_wait_exponent) for item in waiting]
            times.append(max(now_s, min(ready)))
        if self.auto_saving and self.alive:
            for store in self._stores.values():
                if not store.auto_save:
                    continue
                for ks in store.key_stores.values():
                    if self._queue.has_item_for(ks):
                        continue
                    due = ks._last_processed + self.auto_save_every
                    if due > now_s:
                        times.append(due)
                    elif self.recheck_seconds is not None:
                        times.append(now_s + self.recheck_seconds)
        if not times:
            return None
        return math.ceil(min(times) * 1000)

    async def _nap(self, until: int | None) -> bool:
        """Sleep until `until` (ms) or a poke; True when poked."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            return await self.scheduler.sleep_until(until, self._waiter)
        finally:
            self._waiter = None

    def _poke(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _queue_changed(self) -> None:
        self._poke()
        if not self._queue:
            waiters, self._empty_waiters = self._empty_waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)

    async def _update_budget(self) -> float:
        """GetRequestBudgetForRequestType(UpdateAsync): an UpdateAsync spends a read and a write."""
        datastores = self.server.datastores
        if not datastores.budgets_enforced:
            return math.inf
        try:
            write = await datastores.aio.get_request_budget(RequestType.STANDARD_WRITE)
            if write <= RESERVE_REQUESTS_FOR_EMERGENCY:
                return write
            return min(write, await datastores.aio.get_request_budget(RequestType.STANDARD_READ))
        except LodestoreError:
            return 0   # the budget actor did not answer: this heartbeat sends nothing, the next asks again

    def _autosave_pass(self) -> None:
        """`autoSavingHeartbeat`."""
        if not self.auto_saving or not self.alive:
            return
        clock = self._clock_s()
        for store in list(self._stores.values()):
            if not store.auto_save:
                continue
            for ks in list(store.key_stores.values()):
                if clock < ks._last_processed + self.auto_save_every:
                    continue
                if self._queue.has_item_for(ks):
                    continue
                checksum = _checksum(ks.data)
                if ks._last_checksum == checksum:
                    noted = ks._skip_noted
                    if noted is None or noted < ks._last_processed or clock >= noted + self.auto_save_every:
                        ks._skip_noted = clock   # counted once per auto_save_every, however often it is checked
                        self._counts["autosaves_skipped"] += 1
                        if self._on_skipped is not None:
                            self._on_skipped(ks)
                    continue
                ks._last_checksum = checksum
                ks._last_processed = clock
                ks._print("Auto-saving")
                self._counts["autosaves"] += 1
                ks.update()

    async def _queue_heartbeat(self) -> None:
        """`queueHeartbeat`: at most one step on the first item."""
        queue = self._queue
        if not queue:
            return
        item = queue[0]
        if await self._update_budget() <= (0 if item.emergency else RESERVE_REQUESTS_FOR_EMERGENCY):
            self._counts["budget_waits"] += 1
            return
        if item.processing:
            queue.move_first_item_last()
            return
        wait_for = 2 ** min(item.attempt, self.max_wait_exponent)
        if self._clock_s() < item.last_attempt + wait_for:
            queue.move_first_item_last()
            return
        ks = item.keystore
        if ks.closed:
            queue.remove_first_item(False)
            self._counts["items_failed"] += 1
            return
        item.processing = True
        ks._print("Processing")
        await self._process(item)

    async def _process(self, item: QueueItem) -> None:
        ks = item.keystore
        store = ks.store
        state = _Attempt()
        transform = _Transform(self, ks, state)
        self._counts["requests"] += 1
        try:
            await store.instance.aio.update(ks.key, transform)
            error: BaseException | None = None
        except Exception as exc:   # pcall
            error = exc
        success = state.transform_success and error is None
        ks._print("Processing ended", success)
        queue = self._queue
        if success:
            if state.is_load:
                ks._last_checksum = _checksum(ks.data)
                self._counts["loads"] += 1
            else:
                self._counts["saves"] += 1
            if state.took_over:
                self._counts["session_takeovers"] += 1
            if state.is_load:
                ks._took_over_on_load = state.took_over
            if self._on_written is not None:
                self._on_written(ks, state.taken_ms, state.is_load)
            queue.remove_first_item(True)
            return
        self._counts["failures"] += 1
        item.attempt += 1
        item.last_attempt = self._clock_s()
        critical = not state.transform_success
        if not state.transform_success:
            self._counts["session_rejections"] += 1
        message = _message(error) if error is not None else "transform not successful"
        matched = _CODE.search(message)
        if matched is not None and matched.group()[0] in "41":
            critical = True   # 4XX or 1XX is a bad request
        ks._error(message, critical)
        if critical or item.attempt >= self.max_attempts:
            queue.remove_first_item(False)
            self._counts["items_failed"] += 1
            return
        item.processing = False
        queue.move_first_item_last()

    # ----------------------------------------------------------------------------------------------- output

    def _line(self, level: str, line: str) -> None:
        if self.debug:
            self.trace.append(f"[+{(self.scheduler.now() - self._started_ms) / 1000:.3f}] {line}")
        if self.on_message is not None and (level != "print" or self.debug):
            self.on_message(level, line)

    def _print(self, where: str, message: str, *args: Any) -> None:
        if self.debug:
            self._line("print", " ".join([f"{LOG_HEADER} PRINT @ {where}:", message, *map(str, args)]))

    def _warn(self, where: str, message: str, critical: bool = False) -> None:
        self._line("warn", f"{LOG_HEADER} {'CRITICAL ' if critical else ''}ERROR @ {where}: {message}")

    def _callback_failed(self, exc: BaseException) -> None:
        self._warn("Signal", f"a connected callback raised {type(exc).__name__}: {exc}")


def _message(exc: BaseException) -> str:
    """The error string pcall would give: a transform's own error, or the request's error."""
    if isinstance(exc, TransformError) and exc.__cause__ is not None:
        return str(exc.__cause__)
    return str(exc)


class _Attempt:
    """What the transform of one request learnt (the source's upvalues `isLoad` and `transformSuccess`: like them,
    kept across re-runs of the transform, and a conflict lost once stays lost)."""

    __slots__ = ("transform_success", "is_load", "took_over", "taken_ms")

    def __init__(self) -> None:
        self.transform_success = True
        self.is_load = False
        self.took_over = False
        self.taken_ms = 0


class _SessionLost(Exception):
    def __str__(self) -> str:
        return "transform not successful"


@dataclass(frozen=True, eq=False)
class _Transform:
    """The UpdateAsync transform of `queueHeartbeat`."""

    module: DataStorer
    ks: "KeyStore"
    state: _Attempt

    def __call__(self, old: Any, info: Any) -> UpdateResult:
        ks, store, state, module = self.ks, self.ks.store, self.state, self.module
        state.taken_ms = module.scheduler.now()
        if old is None:   # a new key
            data = copy.deepcopy(store.template)
            meta = copy.deepcopy(store.metadata_template)
            user_ids = list(ks.user_ids) if ks.user_ids is not None else []
            meta["Session"] = ks.session
            meta["SessionStartedAt"] = module._epoch()
            meta["DataVersion"] = store.latest_version
        else:
            data = copy.deepcopy(old)
            meta = info.get_metadata() if info is not None else {}
            user_ids = info.get_user_ids() if info is not None else []
            if ks.user_ids is None:
                ks.user_ids = list(user_ids)
        if meta.get("Session") != ks.session:   # resolve the conflict
            started = meta.get("SessionStartedAt")
            if isinstance(started, bool) or not isinstance(started, (int, float)):
                raise TypeError(f"attempt to compare number < {type(started).__name__}")
            if ks.session_started_at < started:   # the stored session started after ours: ours ends
                state.transform_success = False
            else:   # ours started after (or in the same second): take the session
                state.took_over = True
                meta["Session"] = ks.session
                meta["SessionStartedAt"] = module._epoch()
        if state.transform_success:
            version = meta.get("DataVersion")
            if version != store.latest_version:
                if isinstance(version, bool) or not isinstance(version, int):
                    raise TypeError(f"'for' initial value must be a number, got {type(version).__name__}")
                for i in range(version + 1, store.latest_version + 1):
                    store.versions[i - 1](data)
                    meta["DataVersion"] = i   # a failure midway keeps the version reached
        state.is_load = ks.data is None or not state.transform_success
        result = data if state.is_load else ks.data
        ks.data = result
        ks.meta = meta
        if not state.transform_success:
            raise _SessionLost()
        return UpdateResult(copy.deepcopy(result), list(ks.user_ids) if ks.user_ids is not None else user_ids,
                            dict(meta))


# --------------------------------------------------------------------------------------------------- stores


class Store:
    """One DataStore of the module (`store` class): its template, versions, metadata template and key stores."""

    def __init__(self, module: DataStorer, name: str, template: Any, versions: Sequence[Callable[[Any], Any]],
                 metadata_template: dict | None, auto_save: bool | None) -> None:
        if template is None:
            raise DataStorerError(f"templateData is required (store {name!r})", "BadArgument")
        try:
            check_value(template, what="template")
        except DataStoreError as exc:
            raise DataStorerError(f"templateData of store {name!r} cannot be stored: {exc}", "BadArgument") from None
        if isinstance(versions, (str, bytes)) or not isinstance(versions, Iterable):
            raise DataStorerError(f"dataVersions of store {name!r} must be a sequence of functions, got "
                                  f"{versions!r}", "BadArgument")
        versions = tuple(versions)
        for i, fn in enumerate(versions, 1):
            if not callable(fn):
                raise DataStorerError(f"dataVersions[{i}] of store {name!r} must be a function, got {fn!r}",
                                      "BadArgument")
        if metadata_template is not None and not isinstance(metadata_template, dict):
            raise DataStorerError(f"templateMeta of store {name!r} must be a dict, got {metadata_template!r}",
                                  "BadArgument")
        if auto_save is not None and not isinstance(auto_save, bool):
            raise DataStorerError(f"autoSave of store {name!r} must be a bool or None, got {auto_save!r}",
                                  "BadArgument")
        self.module = module
        self.name = name
        self.instance = module.server.datastores.get_data_store(name)
        self.key_stores: dict[str, KeyStore] = {}
        self.auto_save = module.auto_saving if auto_save is None else auto_save
        self.template = copy.deepcopy(template)
        self.versions = versions
        self.metadata_template = copy.deepcopy(metadata_template or {})
        self.latest_version = len(versions)

    def __repr__(self) -> str:
        return f"Store({self.name!r}, keys={len(self.key_stores)})"

    def create_key(self, key: str | int, user_ids: Iterable[int] | None = None) -> "KeyStore":
        """A new key store for `key` (a number becomes its string). `user_ids`, when given, replace the stored ones
        at every write; otherwise the stored ones are kept."""
        name = _key_name(key)
        if self.get_key(name) is not None:
            raise DataStorerError(f"key {name!r} already instanciated in store {self.name!r}", "KeyExists")
        if not self.module.alive:
            raise DataStorerError(f"cannot create key store {name!r} while shutting down", "ShuttingDown")
        ids = None
        if user_ids is not None:
            if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, Iterable):
                raise DataStorerError(f"userIds of key {name!r} must be a list of integers, got {user_ids!r}",
                                      "BadArgument")
            ids = list(user_ids)
            for uid in ids:
                if isinstance(uid, bool) or not isinstance(uid, int):
                    raise DataStorerError(f"userIds of key {name!r} must be integers, got {uid!r}", "BadArgument")
        keystore = KeyStore(self, name, ids)
        self.key_stores[name] = keystore
        keystore._print("Creating")
        self.module._poke()
        return keystore

    def release_all_keys(self, emergency: bool = False) -> None:
        """Release every open key store at once, each in a task of its own (`ReleaseAllKeys`)."""
        for keystore in list(self.key_stores.values()):
            if not keystore.closed:
                self.module.scheduler.spawn(keystore.release(emergency))

    def get_key(self, key: str | int) -> "KeyStore | None":
        return self.key_stores.get(_key_name(key))

    def is_key_loaded(self, key: str | int) -> bool:
        found = self.get_key(key)
        return found is not None and found.loaded

    def _print(self, message: str, *args: Any) -> None:
        self.module._print(f"Store {self.name}", message, *args)


class KeyStore:
    """One key of a store (`keystore` class): `data` is changed in place; `meta` is its KeyInfo metadata as last
    read or written; `session` and `session_started_at` (epoch seconds at creation) are its session marker."""

    def __init__(self, store: Store, key: str, user_ids: list[int] | None) -> None:
        module = store.module
        self.store = store
        self.key = key
        self.user_ids = user_ids
        self.data: Any = None
        self.meta: dict | None = None
        self.closed = False
        self.loaded = False
        self.session = new_id()
        self.session_started_at = module._epoch()
        self.on_closed = Signal(module._callback_failed)
        self._last_processed = module._clock_s()
        self._last_checksum: Any = None
        self._skip_noted: float | None = None
        self._took_over_on_load = False   # its load replaced another session's marker
        self._released = False            # closed after a release that saved
        self._failed = False              # closed because a request failed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "loaded" if self.loaded else "new"
        return f"KeyStore({self.store.name!r}, {self.key!r}, {state})"

    def add_user_id(self, user_id: int) -> None:
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise DataStorerError(f"userId of key {self.key!r} must be an integer, got {user_id!r}", "BadArgument")
        if self.user_ids is None:
            self.user_ids = []
        if user_id in self.user_ids:
            raise DataStorerError(f"UserId {user_id} already added to key {self.key!r}", "UserIdExists")
        self.user_ids.append(user_id)

    def close(self) -> None:
        """Close without saving: the key store leaves its store and `on_closed` fires."""
        if self.closed:
            return
        self.closed = True
        if self.store.key_stores.get(self.key) is self:
            del self.store.key_stores[self.key]
        self.on_closed.fire()
        self._print("Closing")

    def update(self, emergency: bool = False) -> ProcessedSignal | None:
        """Queue a request (a save, or the load of a key store without data): its `ProcessedSignal`, or None when
        this key store already has a request queued. A failed request closes the key store."""
        if self.closed:
            raise DataStorerError(f"key {self.key!r} is closed and cannot update", "KeyClosed")
        if not isinstance(emergency, bool):
            raise DataStorerError(f"emergency must be a bool, got {emergency!r}", "BadArgument")
        queue = self.store.module._queue
        if queue.has_item_for(self):
            return None
        item = queue.add_item(self, emergency)

        def processed(ok: bool) -> None:
            if not ok:
                self._error("Failed to update")
                self._failed = True
                self.close()
        item.on_processed.once(processed)
        self.store.module._poke()
        return item.on_processed

    async def load(self) -> bool | None:
        """Read the stored data (or the template), taking the session marker: True when loaded. None when this key
        store already had a request queued (nothing was done)."""
        if self.loaded:
            raise DataStorerError(f"key {self.key!r} is already loaded", "AlreadyLoaded")
        if self.store.module._queue.has_item_for(self):
            return None
        signal = self.update()
        self._print("Loading")
        success = await signal.wait()
        self.loaded = success
        return success

    async def release(self, emergency: bool = False) -> bool | None:
        """Save and close: True when the save landed (the key store closes either way). None when nothing was done:
        the key store was not loaded (it is closed instead) or already had a request queued (it stays open)."""
        if not self.loaded:
            self.store.module._warn(f"KeyStore {self.key}", f"Attempted to release unloaded key {self.key}, "
                                    "closing instead")
            self.close()
            return None
        if self.store.module._queue.has_item_for(self):
            return None
        signal = self.update(emergency)

        def processed(ok: bool) -> None:
            if not ok:
                self._error("Failed to save")
            else:
                self._released = True
                self._print("Release success")
            self.close()
        signal.once(processed)
        self._print("Releasing")
        return await signal.wait()

    def _print(self, message: str, *args: Any) -> None:
        self.store.module._print(f"KeyStore {self.key}", message, *args)

    def _error(self, message: str, critical: bool = False) -> None:
        self.store.module._warn(f"KeyStore {self.key}", message, critical)


# ---------------------------------------------------------------------------------------------- the design


@dataclass(frozen=True)
class DatastorerOptions:
    """`[store.datastorer]`:
    - `auto_save_every`: seconds between autosaves; 0 (default) takes the scenario's `autosave_interval`.
    - `max_wait_exponent`: the longest backoff is 2^exponent seconds (0..20, default 5; attempts = exponent + 7).
    - `auto_save_when_close`: BindToClose releases what is still open as emergencies (the source's default: false).
    - `emergency_release`: a player's leave releases as an emergency item (queued first), as BindToClose's
      `ReleaseAllKeys(true)` would.
    - `debug`: keep the module's trace (`layer.module.trace`)."""

    auto_save_every: float = 0.0
    max_wait_exponent: int = MAX_WAIT_EXPONENT
    auto_save_when_close: bool = False
    emergency_release: bool = False
    debug: bool = False

    def __post_init__(self) -> None:
        every = self.auto_save_every
        if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every < math.inf:
            raise ConfigError(f"must be seconds >= 0 (0: the scenario's autosave_interval), got {every!r}",
                              field="auto_save_every")
        try:
            _check_exponent(self.max_wait_exponent)
        except ConfigError as exc:
            raise ConfigError(str(exc), field="max_wait_exponent") from None
        for name in ("auto_save_when_close", "emergency_release", "debug"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"must be a bool, got {getattr(self, name)!r}", field=name)


class DatastorerLayer(DataLayer):
    """One server's players kept by a `DataStorer` module, as game code following its README does: `create_key` +
    `load` on join, changes to `key.data` in place, `update():wait()` for a forced save, `release()` on leave.

    Where the README's calls answer nothing (a request of the key is already queued, so `update` and `release` do
    nothing), the layer waits for that request and asks again, which is what the contract's save and unload need.
    A hold is reported from the load until the key store closes: "released" after a release that saved (or a plain
    close), "lost" when a failed request closed it (a newer session took the key, or the retries ran out). The marker
    has no expiry, so no hold has an `until_ms`."""

    def __init__(self, server: Server, scheduler: Scheduler, config: StoreConfig, options: DatastorerOptions) -> None:
        super().__init__(server, scheduler, config)
        self.options = options
        self.module = DataStorer(server, scheduler, debug=options.debug,
                                 auto_save_every=options.auto_save_every or config.autosave_interval,
                                 max_wait_exponent=options.max_wait_exponent,
                                 auto_save_when_close=options.auto_save_when_close, recheck_seconds=None,
                                 on_message=self._on_message)
        self.module._on_written = self._on_written
        self.module._on_skipped = self._on_skipped
        self.store = self.module.get_datastore(config.name, config.template,
                                               metadata_template=config.metadata_template)
        self._held: dict[str, KeyStore] = {}

    # ------------------------------------------------------------------------------------------- contract

    async def load(self, key: str) -> None:
        self.check_up()
        if self.store.get_key(key) is not None:
            raise DesignError(f"key {key!r} already has a key store on server {self.server.job_id!r}",
                              "AlreadyLoaded")
        ks = self.store.create_key(key)
        ks.on_closed.connect(lambda: self._closed(key, ks))
        # the marker keeps no one out: this server holds the player's data from the read its load starts with
        self.report("acquired", key, ks.session)
        self._held[key] = ks
        ok = await ks.load()
        if not ok:
            self.counters.load_failures += 1
            if not ks.closed:
                ks.close()
            if self._held.get(key) is ks:
                del self._held[key]
                self.report("released", key, ks.session)
            raise DesignError(f"the load of {key!r} on server {self.server.job_id!r} failed", "LoadFailed")
        self.check_up()
        self.counters.loads += 1
        if ks._took_over_on_load:
            self.counters.lock_steals += 1

    async def update(self, key: str, fn: Callable[[dict], bool]) -> bool:
        ks = self._live(key)
        if not fn(ks.data):
            return False
        self.changed(key)
        self.module.poke()
        return True

    async def save(self, key: str) -> None:
        ks = self._live(key)
        while True:
            pending = self.module._queue.item_for(ks)
            if pending is None:
                result = ks.update()
                break
            if not pending.processing:   # it will write the data as it is when it runs: this save is that one
                result = pending.on_processed
                break
            await pending.on_processed.wait()
            ks = self._live(key)
        if not await result.wait():
            self.counters.save_failures += 1
            raise DesignError(f"the save of {key!r} on server {self.server.job_id!r} failed (the key store is "
                              "closed)", "SaveFailed")

    async def unload(self, key: str) -> bool:
        self.check_up()
        ks = self._held.get(key)
        if ks is None or ks.closed:
            return False
        while True:
            result = await ks.release(self.options.emergency_release)
            if result is not None:
                return bool(result)
            pending = self.module._queue.item_for(ks)
            if pending is not None:
                await pending.on_processed.wait()
            if ks.closed:
                return False

    async def is_loaded(self, key: str) -> bool:
        return not self.down and key in self._held and self.store.is_key_loaded(key)

    async def close(self) -> None:
        if self.down:
            return
        if self.options.auto_save_when_close:
            task = self.scheduler.spawn(self.module.bind_to_close())
            sleeper = self.scheduler.spawn(self.scheduler.sleep(BIND_TO_CLOSE_LIMIT_S))
            await asyncio.wait([task, sleeper], return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            task.cancel()
        else:
            await self.module.bind_to_close()
        self._halt()

    def crash(self) -> None:
        self._halt()

    # ------------------------------------------------------------------------------------------- helpers

    def _halt(self) -> None:
        """Nothing runs any more; every hold still open is lost with its unsaved changes."""
        self.down = True
        self.module.stop()
        for key, ks in list(self._held.items()):
            self.report("lost", key, ks.session)
        self._held.clear()
        self.forget_all()

    def _closed(self, key: str, ks: KeyStore) -> None:
        if self.down or self._held.get(key) is not ks:
            return
        del self._held[key]
        self.report("lost" if ks._failed else "released", key, ks.session)
        self.forget(key)

    def _on_written(self, ks: KeyStore, taken_ms: int, is_load: bool) -> None:
        if not is_load and self._held.get(ks.key) is ks:
            self.saved(ks.key, taken_ms)

    def _on_skipped(self, ks: KeyStore) -> None:
        self.counters.saves_skipped += 1

    def _on_message(self, level: str, line: str) -> None:
        if level == "warn":
            self.log("warn", line)

    def _live(self, key: str) -> KeyStore:
        self.check_up()
        ks = self._held.get(key)
        if ks is None or ks.closed:
            raise self.not_loaded(key)
        return ks


async def _open(game: Any, scheduler: Scheduler, config: StoreConfig, options: DatastorerOptions) -> DatastorerLayer:
    return DatastorerLayer(game.storage, scheduler, config, options)


# the data is the stored value itself (metadata lives in KeyInfo): `read_values` reads it back
DATASTORER = Design("datastorer", "DataStorer: one request queue per server, checksum autosave, a session marker in "
                    "KeyInfo metadata that the newest session takes (last write wins)", DatastorerOptions, _open,
                    read_values, transactions=False, lock="metadata marker, newest wins")
