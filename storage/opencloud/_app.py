"""`create_app`: the Starlette app serving Open Cloud over a world, every endpoint family mounted, unknown paths and
methods answered in the gateway's shape.

Adding an endpoint family: a module with its `ENDPOINTS` (see `_routes.Endpoints`), listed in `FAMILIES`.
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from lodestore.storage import ConfigError, World
from lodestore.storage.opencloud import (_datastores, _erasure, _memorystore, _messaging, _ordered, _standard_v1,
                                         _standard_v2)
from lodestore.storage.opencloud._access import parse_api_keys
from lodestore.storage.opencloud._errors import ApiError, Shape, error_response
from lodestore.storage.opencloud._routes import ENCODED_SLASH, OpenCloud

__all__ = ["create_app", "FAMILIES"]

FAMILIES = (_standard_v1, _standard_v2, _datastores, _ordered, _memorystore, _messaging, _erasure)
"""The endpoint families served, each a module with `ENDPOINTS`."""


def create_app(world: World, *, api_keys: Iterable[str] | None = None, universe_id: int = 1) -> Starlette:
    """A Starlette (ASGI) app that serves Roblox's Open Cloud API for `world` as universe `universe_id`.

    `api_keys`: specs `KEY` (every permission) or `KEY:perm,perm` (see `PERMISSIONS`); None = `DEFAULT_API_KEY`
    with every permission. The world is called only through its coroutine clients (`.aio`), so concurrent requests
    share the world's messages. `app.state.opencloud.statistics()` counts the requests answered, by endpoint and
    status.

    >>> app = create_app(World.in_process(), api_keys=["admin", "viewer:datastores.read"])
    >>> uvicorn.run(app, host="127.0.0.1", port=8787)
    """
    if isinstance(universe_id, bool) or not isinstance(universe_id, int) or universe_id <= 0:
        raise ConfigError(f"universe_id must be a positive int, got {universe_id!r}", field="universe_id")
    opencloud = OpenCloud(world, parse_api_keys(api_keys), universe_id)

    async def not_served(request: Request, exc: HTTPException) -> Response:
        message = ("Not Found: no such Open Cloud endpoint" if exc.status_code == 404
                   else f"{request.method} is not allowed on this endpoint" if exc.status_code == 405
                   else str(exc.detail))
        opencloud.counts.count("unknown", exc.status_code)
        return error_response(ApiError(exc.status_code, message), Shape.GATEWAY)

    routes = opencloud.routes([e for family in FAMILIES for e in family.ENDPOINTS.all])
    app = Starlette(routes=routes, exception_handlers={HTTPException: not_served},
                    middleware=[Middleware(_EncodedSlashes)])
    app.state.opencloud = opencloud
    return app


class _EncodedSlashes:
    """A path segment may hold an encoded "/" (`%2F`: a data store named "lodestore/records/players"), which the
    server decodes before routing: the segment is kept whole, its slashes stood in for by `ENCODED_SLASH` until the
    endpoint's path parameters are read (`OpenCloud._answer` puts them back)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%2f" in raw.lower():
            path = raw.split(b"?", 1)[0].decode("latin-1")
            parts = [unquote(part) for part in path.replace("%2f", "%2F").split("%2F")]
            scope = {**scope, "path": ENCODED_SLASH.join(parts)}
        await self.app(scope, receive, send)
