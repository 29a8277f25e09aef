"""`lodestore serve`'s library: Roblox's Open Cloud HTTP API over an emulated world, as a plain ASGI app.

    >>> from lodestore.storage import World
    >>> from lodestore.storage.opencloud import create_app
    >>> app = create_app(World.in_process(), api_keys=["admin", "support:datastores.read"])
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8787)

Tools written for Open Cloud (admin panels, moderation and support dashboards, bulk migrations) then run unchanged
against a simulated live game. Served now: Data Stores v1 standard entries (entries, increment, versions, the list
of data stores, v1's per-universe limits), v2 entries with and without scopes (revisions, `@latest:<time>`, the
experience budget shared with game servers), v2 data stores themselves (list, delete, undelete, snapshot), ordered
data stores v1 and v2, MemoryStore sorted maps, queues and `memory-store:flush` with its operations, Messaging
publish (v2 `:publishMessage` and v1 `messaging-service`), and lodestore's own erasure endpoints (`user-data:erase`,
`user-data:check`, `user-data-templates`: Roblox has none); each in Roblox's error shape for its family, behind API
keys with permissions (`KEY` or `KEY:perm,...`; 401 without a key, 403 without the permission).

Why Starlette and uvicorn: the API is some forty routes of plain request/answer over JSON, and what it needs from an
HTTP layer (routing with path templates, request bodies read as streams, an ASGI server that runs in the caller's
process and event loop) is what a small, well-kept toolkit and server already do, tested against browsers and
clients for years. An HTTP layer of our own would be more code to get wrong (keep-alive, chunked bodies, header
limits) for no gain; a large framework would bring validation and dependency injection we do not use. Being ASGI,
the app also runs in tests without a socket and under any other ASGI server.

The app runs outside the world's actors (`lodestore serve`: in its own process; a scenario's `[serve]`: in a thread
of the simulation's driver, `ServerThread`, reaching the run's world through its ingress) and calls the world only
through its coroutine (`.aio`) clients, so concurrent requests share the world's batched messages. It owns no stored
state: every answer comes from the world.
"""

from lodestore.storage.opencloud._access import (DEFAULT_API_KEY, PERMISSIONS, ApiKey, OpenCloudStatistics,
                                                 parse_api_keys)
from lodestore.storage.opencloud._app import create_app
from lodestore.storage.opencloud._routes import open_cloud_server
from lodestore.storage.opencloud._thread import LOOPBACK_HOSTS, ServerThread, check_listen

__all__ = ["create_app", "parse_api_keys", "ApiKey", "PERMISSIONS", "DEFAULT_API_KEY", "OpenCloudStatistics",
           "open_cloud_server", "ServerThread", "check_listen", "LOOPBACK_HOSTS"]
