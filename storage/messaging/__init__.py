"""The emulated MessagingService (cross-server messages): the client a game server calls, the engine the world's
messaging actor runs, and the values between them.

    >>> sub = server.messaging.subscribe("PS_" + session_id, lambda m: print(m["Data"], m["Sent"]))
    >>> other.messaging.publish("PS_" + session_id, {"LoadCount": 3})    # best effort, typically 1-2 s
    >>> world.publish("announcements", "maintenance in 5 minutes")        # Open Cloud's publish

`_client` checks topics and messages, sends requests to the world's messaging actor and runs the callbacks on the
subscribing server's loop when each message is due; `_engine` applies Roblox's limits (send, receive per topic and
per game, subscriptions), the faults' delay and drop rate, and keeps each server's inbox, which a long poll hands
over; `_messages` holds the limits, the error and the frozen values. Everything public is exported here; a game
server's names are exported from `lodestore.storage` too. The `_`-prefixed modules are private.
"""

from lodestore.storage.messaging._client import AsyncMessagingService, MessagingService, Subscription
from lodestore.storage.messaging._engine import MESSAGING_NAME, MessagingActor, MessagingEngine
from lodestore.storage.messaging._messages import (DROP_GAME_LIMIT, DROP_LOST, DROP_TOPIC_LIMIT, INVALID_CALLBACK,
                                                   INVALID_MESSAGE, INVALID_TOPIC, MAX_MESSAGE_BYTES, MAX_TOPIC,
                                                   MESSAGE_TOO_LARGE, PUBLISH_THROTTLED, SUBSCRIBE_REQUESTS_PER_MINUTE,
                                                   SUBSCRIBE_THROTTLED, TOO_MANY_SUBSCRIPTIONS, Delivery,
                                                   MessagingServiceError, MessagingStatistics, check_topic,
                                                   encode_message, game_receives_per_minute, sends_per_minute,
                                                   subscriptions_allowed, topic_receives_per_minute)

__all__ = [
    # the client
    "MessagingService", "AsyncMessagingService", "Subscription",
    # the engine, its actor and its snapshot
    "MessagingEngine", "MessagingActor", "MESSAGING_NAME", "MessagingStatistics", "Delivery",
    # Roblox's limits, the checks, the error and its names
    "MAX_TOPIC", "MAX_MESSAGE_BYTES", "SUBSCRIBE_REQUESTS_PER_MINUTE", "sends_per_minute",
    "topic_receives_per_minute", "game_receives_per_minute", "subscriptions_allowed", "check_topic",
    "encode_message", "MessagingServiceError", "INVALID_TOPIC", "INVALID_MESSAGE", "INVALID_CALLBACK",
    "MESSAGE_TOO_LARGE", "PUBLISH_THROTTLED", "SUBSCRIBE_THROTTLED", "TOO_MANY_SUBSCRIPTIONS",
    # why a message did not arrive (MessagingStatistics.dropped)
    "DROP_LOST", "DROP_TOPIC_LIMIT", "DROP_GAME_LIMIT",
]
