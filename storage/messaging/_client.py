"""The MessagingService client a simulated game server calls: `publish`, `subscribe` and its `Subscription`.

It checks topics and messages (`_messages.check_topic`, `encode_message`), sends each request to the world's
messaging actor, and runs the subscribers' callbacks here, on the subscribing server's own event loop: one task per
server (its *pump*) keeps one long poll (`MessagingActor.receive`) open while the server subscribes to anything,
and each delivery it takes waits on the simulated clock until it is due (a manual clock's scheduler fires it when
advanced past it; a virtual node's at its time) before its topic's callbacks get `{"Data": message, "Sent":
seconds since the epoch}`, as Roblox passes them. Blocking methods, and the same as coroutines on `.aio`; a blocking
`subscribe` runs its pump on the world runtime's loop (a background thread), a coroutine `subscribe` on the caller's.
It owns no limits and no fan-out: the engine decides who receives what, and when.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable

from lodestore.storage._clock import ManualClock
from lodestore.storage._errors import ServerClosedError
from lodestore.storage._scheduler import sleep
from lodestore.storage.messaging import _messages as mm
from lodestore.storage.messaging._engine import MESSAGING

__all__ = ["MessagingService", "AsyncMessagingService", "Subscription"]

_log = logging.getLogger("lodestore.messaging")
_RETRY_S = 1.0   # simulated seconds before a pump asks again when the messaging actor did not answer (restarting)
_WATCH_S = 0.01  # real seconds between looks at a manual clock no scheduler of the pump's loop keeps (see `_pumping`)


class Subscription:
    """One `subscribe` (Roblox's RBXScriptConnection): `disconnect()` ends it at once; a message that arrives later
    is not handed to its callback. Disconnecting twice is harmless."""

    def __init__(self, service: "MessagingService", topic: str, callback: Callable[[dict], Any]) -> None:
        self.topic = topic
        self.callback = callback
        self.connected = True
        self._service = service

    def __repr__(self) -> str:
        return f"Subscription({self.topic!r}, connected={self.connected})"

    def disconnect(self) -> None:
        if self.connected:
            self.connected = False
            self._service._forget(self)


class MessagingService:
    """One simulated server's view of MessagingService. Obtain it as `world.server(...).messaging`.

    >>> sub = server.messaging.subscribe("news", lambda m: print(m["Data"], m["Sent"]))
    >>> other.messaging.publish("news", {"text": "double coins"})    # arrives 1-2 simulated s later
    >>> sub.disconnect()
    """

    def __init__(self, world: Any, job_id: str, players: Callable[[], int]) -> None:
        self._world = world
        self.job_id = job_id
        self._players = players
        self._subscriptions: dict[str, list[Subscription]] = {}
        self._pump: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.closed = False
        self.used = False              # published or subscribed: the engine knows this server
        self.callback_errors = 0
        self.aio = AsyncMessagingService(self)

    @property
    def _actor(self) -> Any:
        return self._world._shards(MESSAGING)[0]

    def _check_open(self) -> None:
        if self.closed:
            raise ServerClosedError(f"game server {self.job_id!r} is closed")

    # ---------------------------------------------------------------------------------------------- the API

    def publish(self, topic: str, message: Any) -> None:
        """PublishAsync: send `message` (JSON-representable, at most 1 kB of JSON) to every server subscribed to
        `topic`, this one included; best effort, each arriving after the world's messaging delay or never.
        MessagingServiceError for a bad topic or message, or over this server's send limit."""
        self._check_open()
        topic, text = mm.check_topic(topic), mm.encode_message(message)
        self.used = True
        self._world._call(self._actor, "publish", self.job_id, self._players(), topic, text)

    def subscribe(self, topic: str, callback: Callable[[dict], Any]) -> Subscription:
        """SubscribeAsync: `callback({"Data": message, "Sent": seconds})` for every message published to `topic`
        from now on that reaches this server, run on the world runtime's loop (a coroutine function is awaited).
        MessagingServiceError for a bad topic or over this server's subscription limits."""
        subscription = self._new(topic, callback)
        self._world._call(self._actor, "subscribe", self.job_id, self._players(), topic)
        self._world.runtime.block(self._added(subscription, watch=True))
        return subscription

    def _new(self, topic: str, callback: Any) -> Subscription:
        self._check_open()
        mm.check_topic(topic)
        if not callable(callback):
            raise mm.MessagingServiceError(mm.INVALID_CALLBACK, f"callback must be a function, got "
                                                                f"{type(callback).__name__}")
        self.used = True
        return Subscription(self, topic, callback)

    async def _added(self, subscription: Subscription, watch: bool = False) -> None:
        """Keep the subscription (the engine has it) and make sure this loop's pump runs."""
        self._subscriptions.setdefault(subscription.topic, []).append(subscription)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._pumping(watch))

    def _forget(self, subscription: Subscription) -> None:
        subscriptions = self._subscriptions.get(subscription.topic, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
            if not subscriptions:
                del self._subscriptions[subscription.topic]
            if not self.closed:
                self._world._send(self._actor, "unsubscribe", self.job_id, subscription.topic)

    def close(self) -> None:
        """The server is gone: every subscription ends (the engine forgets them and this server), nothing more is
        delivered. Closing again does the same again."""
        self.closed = True
        self._end_local()
        if self.used:
            self._world._call(self._actor, "close_server", self.job_id)

    def _end_local(self) -> None:
        for subscriptions in self._subscriptions.values():
            for s in subscriptions:
                s.connected = False
        self._subscriptions.clear()

    # ------------------------------------------------------------------------------------------ delivering

    async def _pumping(self, watch: bool) -> None:
        """The long poll: take what the engine queued for this server, deliver each at its time; until this server
        subscribes to nothing or closes. `watch`: the pump runs on the runtime's background loop (a blocking
        `subscribe`), where no scheduler is advanced; a manual clock is then watched (the test moves it from its own
        thread) instead of waited on through a scheduler."""
        world = self._world
        while self._subscriptions and not self.closed:
            try:
                deliveries = await world._acall(self._actor, "receive", self.job_id)
            except world.runtime.failures:
                await sleep(world.clock, _RETRY_S)
                continue
            for delivery in deliveries:
                task = asyncio.get_running_loop().create_task(self._deliver(delivery, watch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _deliver(self, delivery: mm.Delivery, watch: bool) -> None:
        clock = self._world.clock
        if watch and isinstance(clock, ManualClock):
            while clock.now() < delivery.due_ms:
                await asyncio.sleep(_WATCH_S)
        elif delivery.due_ms > clock.now():
            await sleep(clock, (delivery.due_ms - clock.now()) / 1000.0)
        for subscription in list(self._subscriptions.get(delivery.topic, ())):
            if not subscription.connected or self.closed:
                continue
            envelope = {"Data": json.loads(delivery.message), "Sent": delivery.sent_ms / 1000.0}
            try:
                result = subscription.callback(envelope)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:   # as on Roblox, a failing callback is reported and the others still run
                self.callback_errors += 1
                _log.exception("MessagingService callback for topic %r on server %r failed", delivery.topic,
                               self.job_id)


class AsyncMessagingService:
    """`MessagingService`'s calls as coroutines (`server.messaging.aio`), for code on an event loop (an async actor,
    the simulator): the pump runs on the caller's loop. Same checks and effects as the blocking twins."""

    def __init__(self, service: MessagingService) -> None:
        self._service = service

    async def publish(self, topic: str, message: Any) -> None:
        s = self._service
        s._check_open()
        topic, text = mm.check_topic(topic), mm.encode_message(message)
        s.used = True
        await s._world._acall(s._actor, "publish", s.job_id, s._players(), topic, text)

    async def subscribe(self, topic: str, callback: Callable[[dict], Any]) -> Subscription:
        s = self._service
        subscription = s._new(topic, callback)
        await s._world._acall(s._actor, "subscribe", s.job_id, s._players(), topic)
        await s._added(subscription)
        return subscription

    async def close(self) -> None:
        s = self._service
        s.closed = True
        s._end_local()
        if s.used:
            await s._world._acall(s._actor, "close_server", s.job_id)
