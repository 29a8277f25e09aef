"""MessagingService over Open Cloud: publish a message to every live server subscribed to a topic, from outside the
game (`World.aio.publish`), behind `messaging.publish`.

- v2 `POST cloud/v2/universes/{universe}:publishMessage` with `{"topic": ..., "message": ...}` (Roblox's
  PublishUniverseMessage; what rblx-open-cloud's `Experience.publish_message` sends), in v2's error shape.
- v1 `POST messaging-service/v1/universes/{universe}/topics/{topic}` with `{"message": ...}` (what openblox's
  `MessagingApi.publishMessage` sends). Roblox's reference gives v1 no error body; it answers here in the
  `{code, message}` shape of Roblox's other v1 APIs of that time (ordered data stores), which openblox parses.

Both answer 200 with `{}`. The message is a string, as Open Cloud takes it (another JSON value is 400); subscribers
get it as their callback's `Data`. The world applies MessagingService's rules: topic 1-80 characters, message at most
1 kB (of its JSON encoding), the receive limits (a message over them is dropped, as on Roblox); no server's send
limit applies to Open Cloud.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lodestore.storage.opencloud._errors import ApiError, Shape, json_response
from lodestore.storage.opencloud._routes import Endpoints, json_object

__all__ = ["ENDPOINTS"]

ENDPOINTS = Endpoints()
_PUBLISH = "messaging.publish"


def _message(body: dict) -> str:
    message: Any = body.get("message")
    if not isinstance(message, str):
        raise ApiError(400, f"message must be a string (Open Cloud publishes text), got {message!r:.40}")
    return message


async def _publish(oc, topic: Any, message: str) -> Response:
    if not isinstance(topic, str):
        raise ApiError(400, f"topic must be a string, got {topic!r:.40}")
    await oc.world.aio.publish(topic, message)
    return json_response({})


@ENDPOINTS.add("POST", "/cloud/v2/universes/{universe}:publishMessage", shape=Shape.V2, permission=_PUBLISH)
async def publish_message(oc, request: Request) -> Response:
    body = await json_object(request)
    return await _publish(oc, body.get("topic"), _message(body))


@ENDPOINTS.add("POST", "/messaging-service/v1/universes/{universe}/topics/{topic}", shape=Shape.ORDERED_V1,
               permission=_PUBLISH)
async def publish_message_v1(oc, request: Request) -> Response:
    body = await json_object(request)
    return await _publish(oc, request.path_params["topic"], _message(body))
