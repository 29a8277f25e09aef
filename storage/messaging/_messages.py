"""MessagingService's limits, its error, and the values that travel between the client and the engine.

Roblox's numbers come from the MessagingService class page (create.roblox.com/docs/reference/engine/classes/
MessagingService, 2026-06-11, "Limitations", "subject to change"): topics of 1-80 characters, messages of 1 kB,
messages sent per game server 600 + 240 x its players per minute, messages received per topic (40 + 80 x servers)
per minute, received by the whole game (400 + 200 x servers) per minute, subscriptions allowed per game server
20 + 8 x its players, subscribe requests per game server 240 per minute. `check_topic` and `encode_message` are the
one place a topic and a message are checked (a game server's `publish` and Open Cloud's `World.publish` alike).
Nothing here sends, waits or keeps state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from lodestore.storage._errors import DataStoreError, LodestoreError
from lodestore.storage._values import check_value

__all__ = ["MessagingServiceError", "Delivery", "MessagingStatistics", "check_topic", "encode_message",
           "MAX_TOPIC", "MAX_MESSAGE_BYTES", "LIMIT_WINDOW_MS", "sends_per_minute", "topic_receives_per_minute",
           "game_receives_per_minute", "subscriptions_allowed", "SUBSCRIBE_REQUESTS_PER_MINUTE",
           "INVALID_TOPIC", "INVALID_MESSAGE", "MESSAGE_TOO_LARGE", "PUBLISH_THROTTLED", "SUBSCRIBE_THROTTLED",
           "TOO_MANY_SUBSCRIPTIONS", "INVALID_CALLBACK", "DROP_LOST", "DROP_TOPIC_LIMIT", "DROP_GAME_LIMIT"]

MAX_TOPIC = 80
"""A topic is 1-80 characters."""
MAX_MESSAGE_BYTES = 1024
"""A message is at most 1 kB of its JSON encoding (UTF-8 bytes: what Roblox sends; 1 kB read as 1,024 bytes, as
Open Cloud's messaging guide puts it)."""
LIMIT_WINDOW_MS = 60_000
"""Every rate limit is "per minute": counted over the last 60 simulated seconds (a sliding window)."""
SUBSCRIBE_REQUESTS_PER_MINUTE = 240


def sends_per_minute(players: int) -> int:
    """Messages one game server may send per minute."""
    return 600 + 240 * players


def topic_receives_per_minute(servers: int) -> int:
    """Messages received on one topic per minute, over every subscribing server."""
    return 40 + 80 * servers


def game_receives_per_minute(servers: int) -> int:
    """Messages received by the whole game per minute."""
    return 400 + 200 * servers


def subscriptions_allowed(players: int) -> int:
    """Subscriptions one game server may hold at once."""
    return 20 + 8 * players


# Error names. Roblox documents no names nor texts for MessagingService's errors (PublishAsync and SubscribeAsync
# only "yield" and may "error"): these are lodestore's, one per refusal, and each message names the limit.
INVALID_TOPIC = "InvalidTopic"
INVALID_MESSAGE = "InvalidMessage"
MESSAGE_TOO_LARGE = "MessageTooLarge"
PUBLISH_THROTTLED = "PublishThrottled"
SUBSCRIBE_THROTTLED = "SubscribeThrottled"
TOO_MANY_SUBSCRIPTIONS = "TooManySubscriptions"
INVALID_CALLBACK = "InvalidCallback"

# Why a message did not reach a subscribing server (`MessagingStatistics.dropped`).
DROP_LOST = "lost"                 # best effort: the faults' drop rate (`FaultConfig.messaging_drop_rate`)
DROP_TOPIC_LIMIT = "topic_limit"   # over the topic's receive limit
DROP_GAME_LIMIT = "game_limit"     # over the whole game's receive limit


class MessagingServiceError(LodestoreError):
    """A refused MessagingService call: `name` (one of this module's error names) and a message naming the limit or
    the bad argument. Nothing was sent or subscribed."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name, message)
        self.name, self.message = name, message

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message on its way to one subscribing server: the topic, the message as JSON text, when it was sent and
    when it arrives (simulated ms since the epoch)."""

    topic: str
    message: str
    sent_ms: int
    due_ms: int


@dataclass(frozen=True)
class MessagingStatistics:
    """A snapshot of the world's MessagingService since its actor started (`World.messaging_statistics()`).

    `published` counts accepted publishes (game servers' and Open Cloud's), `throttled` the publishes refused over a
    server's send limit, `delivered` the receptions handed to a subscribing server (one per server per message),
    `dropped` the receptions lost, by reason (`DROP_LOST`, `DROP_TOPIC_LIMIT`, `DROP_GAME_LIMIT`); `servers` the
    game servers it knows (not closed), `subscriptions` the subscriptions they hold."""

    published: int = 0
    throttled: int = 0
    delivered: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    servers: int = 0
    subscriptions: int = 0


def check_topic(topic: Any) -> str:
    """The topic, or MessagingServiceError (InvalidTopic) when it is not a string of 1-80 characters."""
    if not isinstance(topic, str):
        raise MessagingServiceError(INVALID_TOPIC, f"topic must be a string, got {type(topic).__name__}")
    if not 1 <= len(topic) <= MAX_TOPIC:
        raise MessagingServiceError(INVALID_TOPIC, f"topic must be 1-{MAX_TOPIC} characters, got {len(topic)}")
    return topic


def encode_message(message: Any) -> str:
    """The message as the JSON text that travels (what a subscriber decodes), or MessagingServiceError: a value JSON
    cannot hold (storage's value rules: NaN, non-string keys, cycles, ...) is InvalidMessage, more than
    `MAX_MESSAGE_BYTES` of JSON is MessageTooLarge. None (Luau's nil) is a message too."""
    try:
        check_value(message, what="message")
    except DataStoreError as exc:
        name = MESSAGE_TOO_LARGE if exc.name == "ValueTooLarge" else INVALID_MESSAGE
        raise MessagingServiceError(name, exc.message) from None
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    size = len(text.encode("utf-8"))
    if size > MAX_MESSAGE_BYTES:
        raise MessagingServiceError(MESSAGE_TOO_LARGE, f"message is {size} bytes of JSON, at most "
                                                       f"{MAX_MESSAGE_BYTES} (1 kB)")
    return text
