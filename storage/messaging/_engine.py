"""The world's MessagingService: who subscribes to what, Roblox's rate limits, and each server's inbox.

`MessagingEngine` is plain Python on the world's clock. A publish is checked against the sending server's limit, then
fans out to every server subscribed to its topic: each reception is lost at the faults' drop rate, dropped over the
topic's or the game's receive limit, or queued in that server's inbox with an arrival time (sent + a draw of the
faults' `messaging_delay`). Draws are deterministic under the faults' seed: a hash of (seed, topic, server, the
topic's publish count). The engine never runs a callback: a server's client takes its inbox (`take`) and runs them
on its own loop when each message is due.

`MessagingActor` is the thin shell the world runs (a Ray actor named `MESSAGING_NAME`, an object in process, an object
on a virtual world's cloud node). Its `receive(job_id)` is a long poll: it answers a server's queued deliveries as
soon as there are any (or an empty list once the server has no subscription left or closed), so a subscriber costs
one outstanding call, not a poll per tick. `publish` and `subscribe` are coroutines, so that in process they run on
the actor's loop even for a blocking caller on another thread; `unsubscribe` and `close_server` are plain methods,
so that a `disconnect` takes effect before the caller's next request (in process a plain method runs at once), and
wake a long poll on its own loop from any thread. Delivered twice: `publish` would publish twice (the caller sees
one success; Ray never retries it: `max_task_retries=0`); `subscribe` would count a subscription twice;
`unsubscribe` of a server's last subscription, `close_server` and `set_faults` are idempotent; `receive` twice
splits a server's deliveries between the two answers (its client polls once at a time).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from lodestore.storage._faults import FaultConfig
from lodestore.storage._latency import quantile
from lodestore.storage.messaging import _messages as mm

__all__ = ["MessagingEngine", "MessagingActor", "MESSAGING", "MESSAGING_NAME"]

MESSAGING = "messaging"
"""The service's key in a world's actor map (`World._shards(MESSAGING)`)."""
MESSAGING_NAME = "messaging"
"""The Ray name of a world's MessagingService actor, in the world's namespace."""
MAX_CONCURRENCY = 10_000
"""Calls the Ray actor serves at once: one long poll per subscribing server waits in it."""


class _Window:
    """Events of the last minute (simulated ms), for one "per minute" limit."""

    __slots__ = ("times",)

    def __init__(self) -> None:
        self.times: deque[int] = deque()

    def count(self, now: int) -> int:
        while self.times and self.times[0] <= now - mm.LIMIT_WINDOW_MS:
            self.times.popleft()
        return len(self.times)

    def add(self, now: int) -> None:
        self.times.append(now)


class _Server:
    __slots__ = ("players", "topics", "inbox", "sent", "subscribes", "wake", "loop")

    def __init__(self) -> None:
        self.players = 0
        self.topics: dict[str, int] = {}          # topic -> subscriptions this server holds on it
        self.inbox: list[mm.Delivery] = []
        self.sent = _Window()
        self.subscribes = _Window()
        self.wake: asyncio.Event | None = None    # the long poll waiting on this inbox, if any
        self.loop: asyncio.AbstractEventLoop | None = None   # ... and the loop it waits on

    def subscriptions(self) -> int:
        return sum(self.topics.values())

    def poke(self) -> None:
        """Wake the long poll (from its loop, or from another thread: a blocking caller in process)."""
        if self.wake is None:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is self.loop:
            self.wake.set()
        else:
            self.loop.call_soon_threadsafe(self.wake.set)


class MessagingEngine:
    """Topics, limits and inboxes of one experience (see the module docstring).

    "Servers" in the receive limits are the game servers the engine knows: those that published or subscribed and
    have not closed (Roblox counts every running server; one that never calls MessagingService raises no limit
    here). A publish to a topic nobody subscribes to counts as published and reaches no one."""

    def __init__(self, clock: Any, faults: FaultConfig | None = None) -> None:
        self.clock = clock
        self.faults = faults or FaultConfig()
        self._servers: dict[str, _Server] = {}
        self._subscribers: dict[str, dict[str, None]] = {}   # topic -> servers subscribed (insertion-ordered)
        self._topic_windows: dict[str, _Window] = {}
        self._game_window = _Window()
        self._publishes: dict[str, int] = {}                 # topic -> publishes so far: the draws' counter
        self.published = 0
        self.throttled = 0
        self.delivered = 0
        self.dropped: dict[str, int] = {}

    def set_faults(self, faults: FaultConfig) -> None:
        self.faults = faults

    def server(self, job_id: str, players: int | None = None) -> _Server:
        """The server `job_id` (known from its first call on), its player count updated when given."""
        server = self._servers.get(job_id)
        if server is None:
            server = self._servers[job_id] = _Server()
        if players is not None:
            server.players = players
        return server

    # ------------------------------------------------------------------------------------------------ publish

    def publish(self, job_id: str | None, players: int, topic: str, message: str) -> None:
        """Publish `message` (JSON text, checked by the client) to `topic` from game server `job_id` with `players`
        players, or from outside every server (None: Open Cloud, which no server's send limit covers).
        MessagingServiceError PublishThrottled over the server's send limit: nothing is sent."""
        now = self.clock.now()
        if job_id is not None:
            sender = self.server(job_id, players)
            limit = mm.sends_per_minute(sender.players)
            if sender.sent.count(now) >= limit:
                self.throttled += 1
                raise mm.MessagingServiceError(mm.PUBLISH_THROTTLED, f"game server {job_id!r} sent {limit} messages "
                                               f"in the last minute: at most 600 + 240 x players ({sender.players})")
            sender.sent.add(now)
        self.published += 1
        subscribers = self._subscribers.get(topic)
        if not subscribers:
            return   # nobody listens: nothing is received, nothing counts against the receive limits
        n = self._publishes.get(topic, 0)
        self._publishes[topic] = n + 1
        servers = len(self._servers)
        topic_window = self._topic_windows.setdefault(topic, _Window())
        cfg = self.faults
        for target in subscribers:
            if quantile(cfg.seed, "messaging-drop", topic, target, n) < cfg.messaging_drop_rate:
                self._drop(mm.DROP_LOST)
            elif topic_window.count(now) >= mm.topic_receives_per_minute(servers):
                self._drop(mm.DROP_TOPIC_LIMIT)
            elif self._game_window.count(now) >= mm.game_receives_per_minute(servers):
                self._drop(mm.DROP_GAME_LIMIT)
            else:
                topic_window.add(now)
                self._game_window.add(now)
                delay = cfg.messaging_delay.sample(quantile(cfg.seed, "messaging-delay", topic, target, n))
                receiver = self._servers[target]
                receiver.inbox.append(mm.Delivery(topic, message, now, now + int(round(delay))))
                receiver.poke()
                self.delivered += 1

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    # ------------------------------------------------------------------------------------------ subscriptions

    def subscribe(self, job_id: str, players: int, topic: str) -> None:
        """One more subscription of `job_id` to `topic`; MessagingServiceError over the server's subscription
        limits (how many it holds, how many it asked for in the last minute): nothing is subscribed."""
        now = self.clock.now()
        server = self.server(job_id, players)
        held, allowed = server.subscriptions(), mm.subscriptions_allowed(server.players)
        if held >= allowed:
            raise mm.MessagingServiceError(mm.TOO_MANY_SUBSCRIPTIONS, f"game server {job_id!r} holds {held} "
                                           f"subscriptions: at most 20 + 8 x players ({server.players})")
        if server.subscribes.count(now) >= mm.SUBSCRIBE_REQUESTS_PER_MINUTE:
            raise mm.MessagingServiceError(mm.SUBSCRIBE_THROTTLED, f"game server {job_id!r} made "
                                           f"{mm.SUBSCRIBE_REQUESTS_PER_MINUTE} subscribe requests in the last "
                                           f"minute, the most allowed")
        server.subscribes.add(now)
        server.topics[topic] = server.topics.get(topic, 0) + 1
        self._subscribers.setdefault(topic, {})[job_id] = None

    def unsubscribe(self, job_id: str, topic: str) -> None:
        """One subscription of `job_id` to `topic` fewer (none held: nothing happens). Its last one gone, the
        server's long poll answers (empty), so that its client can stop polling."""
        server = self._servers.get(job_id)
        if server is None or topic not in server.topics:
            return
        server.topics[topic] -= 1
        if server.topics[topic] <= 0:
            del server.topics[topic]
            self._leave(topic, job_id)
        if not server.topics:
            server.poke()

    def close_server(self, job_id: str) -> None:
        """The server is gone: its subscriptions and undelivered messages with it; it no longer counts."""
        server = self._servers.pop(job_id, None)
        if server is None:
            return
        for topic in server.topics:
            self._leave(topic, job_id)
        server.topics.clear()
        server.inbox.clear()
        server.poke()

    def _leave(self, topic: str, job_id: str) -> None:
        """`job_id` no longer subscribes to `topic`; a topic nobody subscribes to is forgotten (its receive window
        and draw counter too: a session's "PS_<id>" topic lives as long as the session)."""
        subscribers = self._subscribers.get(topic, {})
        subscribers.pop(job_id, None)
        if not subscribers:
            self._subscribers.pop(topic, None)
            self._topic_windows.pop(topic, None)
            self._publishes.pop(topic, None)

    def take(self, job_id: str) -> list[mm.Delivery]:
        """Everything queued for `job_id` (each with its arrival time), emptying its inbox."""
        server = self._servers.get(job_id)
        if server is None:
            return []
        out, server.inbox = server.inbox, []
        return out

    def waiting(self, job_id: str) -> bool:
        """Whether a long poll of `job_id` should wait: it subscribes to something and has nothing queued."""
        server = self._servers.get(job_id)
        return server is not None and bool(server.topics) and not server.inbox

    def statistics(self) -> mm.MessagingStatistics:
        return mm.MessagingStatistics(self.published, self.throttled, self.delivered,
                                      dict(sorted(self.dropped.items())), len(self._servers),
                                      sum(s.subscriptions() for s in self._servers.values()))


class MessagingActor:
    """The world's MessagingService actor: a thin shell over `MessagingEngine` (see the module docstring)."""

    def __init__(self, info: Any) -> None:
        self.engine = MessagingEngine(info.clock, info.faults)

    async def publish(self, job_id: str | None, players: int, topic: str, message: str) -> None:
        self.engine.publish(job_id, players, topic, message)

    async def subscribe(self, job_id: str, players: int, topic: str) -> None:
        self.engine.subscribe(job_id, players, topic)

    def unsubscribe(self, job_id: str, topic: str) -> None:
        self.engine.unsubscribe(job_id, topic)

    def close_server(self, job_id: str) -> None:
        self.engine.close_server(job_id)

    async def receive(self, job_id: str) -> list[mm.Delivery]:
        """The long poll: `job_id`'s queued deliveries as soon as it has any; [] once it subscribes to nothing."""
        while self.engine.waiting(job_id):
            server = self.engine.server(job_id)
            if server.wake is None:
                server.wake, server.loop = asyncio.Event(), asyncio.get_running_loop()
            wake = server.wake
            await wake.wait()
            wake.clear()
        return self.engine.take(job_id)

    def set_faults(self, faults: FaultConfig) -> None:
        self.engine.set_faults(faults)

    def statistics(self) -> mm.MessagingStatistics:
        return self.engine.statistics()
