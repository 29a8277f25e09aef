"""How an endpoint is declared and run: the served API's state (`OpenCloud`), the `endpoint` declaration, and the
request-reading helpers every endpoint shares (query flags, page sizes, JSON bodies, Roblox's timestamps).

`Endpoints.add(method, path, shape=..., permission=..., v1_class=...)` declares one route; `OpenCloud.routes()`
wraps each in the steps every request takes, in order: the API key (401 without one, 403 without the permission),
the universe, v1's per-universe limits (429), the endpoint, the error mapping (`_errors.from_exception`), and the
count by route template and status. An endpoint only reads its request, calls the world's coroutine clients and
answers; one that raises changes nothing it has not already sent to the world.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from lodestore.storage import MAX_VALUE_CHARS, OPEN_CLOUD_JOB_ID, Server, World
from lodestore.storage.opencloud._access import ApiKey, RequestStatistics, V1Limits
from lodestore.storage.opencloud._errors import ApiError, Shape, error_response, from_exception

__all__ = ["ENCODED_SLASH", "segment", "OpenCloud", "Endpoints", "Endpoint", "open_cloud_server", "v1_server",
           "flag", "page_size", "starts_with_filter", "query_int", "required", "read_body", "parse_json", "json_body",
           "json_object", "rfc3339", "parse_time", "user_ids_from_names", "MAX_BODY_BYTES"]

log = logging.getLogger("lodestore.opencloud")

MAX_BODY_BYTES = 4 * MAX_VALUE_CHARS + 64 * 1024
"""The largest request body read (a 4 MB value written as JSON with escapes, and the wrapping around it); a larger
one gets 400 before anything is sent to the world."""

ENCODED_SLASH = "\ue000"
"""Stands in, while routing, for an encoded "/" (`%2F`) inside one path segment (a private-use character)."""


def segment(name: str) -> str:
    """`name` as one segment of a resource path in an answer: its slashes encoded (%2F), so that a client that
    splits the path on "/" finds every part where it expects it."""
    return name.replace("/", "%2F")


def open_cloud_server(world: World):
    """The world's client for requests that come in through Open Cloud v2 (and the ordered and memory store APIs):
    `World.open_cloud()`, whose DataStore requests spend the experience budget shared with game servers (a spent
    budget raises a DataStoreError with `retry_after_ms`)."""
    return world.open_cloud()


def v1_server(world: World) -> Server:
    """The client of `/datastores/v1`: since 2026-07-29 v1 has its own per-universe limits (`V1Limits`, applied
    before a request reaches the world) and stays out of the experience budget, so it spends no game budget."""
    return Server(world, f"{OPEN_CLOUD_JOB_ID}-v1", budgeted=False)   # a job id of Open Cloud's, as v2's


Handler = Callable[["OpenCloud", Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str           # Starlette's template, e.g. "/cloud/v2/universes/{universe}/memory-store/..."
    handler: Handler
    shape: Shape
    permission: str
    v1_class: str | None  # Data Stores v1's operation class (its per-universe limit), or None


class Endpoints:
    """The endpoints of one family (v1, v2, ordered, memory store), declared with the `add` decorator."""

    def __init__(self) -> None:
        self.all: list[Endpoint] = []

    def add(self, method: str, path: str, *, shape: Shape, permission: str,
            v1_class: str | None = None) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.all.append(Endpoint(method, path, handler, shape, permission, v1_class))
            return handler
        return register


class OpenCloud:
    """The served API's state: the world and its Open Cloud client, the keys, v1's limits and the statistics. One
    per app, as `app.state.opencloud`."""

    def __init__(self, world: World, keys: dict[str, ApiKey], universe_id: int) -> None:
        self.world = world
        self.keys = keys
        self.universe_id = universe_id
        self.server = open_cloud_server(world)
        self.v1 = v1_server(world)
        self.limits = V1Limits(world.now)
        self.counts = RequestStatistics()

    def statistics(self):
        """Requests answered so far, by endpoint and status (`OpenCloudStatistics`)."""
        return self.counts.snapshot()

    def now(self) -> int:
        return self.world.now()

    # ---------------------------------------------------------------------------- the world's coroutine clients

    def data_store(self, name: str, scope: str | None, *, v1: bool = False):
        """The `.aio` client of a standard data store; `scope` None = every scope (keys are "scope/key"); `v1`:
        through v1's client (outside the experience budget)."""
        datastores = (self.v1 if v1 else self.server).datastores
        store = (datastores.get_data_store(name, all_scopes=True) if scope is None
                 else datastores.get_data_store(name, scope))
        return store.aio

    def ordered_data_store(self, name: str, scope: str):
        return self.server.datastores.get_ordered_data_store(name, scope).aio

    def sorted_map(self, name: str):
        return self.server.memorystores.get_sorted_map(name).aio

    def queue(self, name: str, invisibility_s: float):
        return self.server.memorystores.get_queue(name, invisibility_s).aio

    # ----------------------------------------------------------------------------------------------- routing

    def routes(self, endpoints: list[Endpoint]) -> list[Route]:
        # a data store's name may hold "/" unencoded where more of the path follows it (rblx-open-cloud quotes a
        # name keeping its slashes): ".../data-stores/lodestore/records/players/entries" finds the store
        return [Route(e.path.replace("{data_store}/", "{data_store:path}/"), self._wrap(e), methods=[e.method],
                      name=f"{e.method} {e.path}") for e in endpoints]

    def _wrap(self, endpoint: Endpoint):
        name = f"{endpoint.method} {endpoint.path}"

        async def run(request: Request) -> Response:
            response = await self._answer(endpoint, request)
            self.counts.count(name, response.status_code)
            return response

        return run

    async def _answer(self, endpoint: Endpoint, request: Request) -> Response:
        shape = endpoint.shape
        params = request.path_params
        for name, value in params.items():   # a segment's encoded slashes (`_app._EncodedSlashes`)
            if isinstance(value, str) and ENCODED_SLASH in value:
                params[name] = value.replace(ENCODED_SLASH, "/")
        given = request.headers.get("x-api-key")
        if given is None and request.headers.get("authorization", "").startswith("Bearer "):
            given = request.headers["authorization"][len("Bearer "):]
        key = self.keys.get(given) if given else None
        if key is None:
            message = "Invalid API Key" if given else "API key required (header x-api-key)"
            return error_response(ApiError(401, message), Shape.GATEWAY)
        if not key.allows(endpoint.permission):
            return error_response(ApiError(403, f"this API key does not have the {endpoint.permission!r} "
                                                f"permission", v1_code="InsufficientScope"), shape)
        universe = request.path_params.get("universe")
        if universe != str(self.universe_id):
            return error_response(ApiError(403, f"this API key has no access to universe {universe!r} (serving "
                                                f"universe {self.universe_id})", v1_code="Forbidden"), shape)
        limit_headers: dict[str, str] = {}
        if endpoint.v1_class is not None:
            body_size = int(request.headers.get("content-length") or 0)
            verdict = self.limits.admit(endpoint.v1_class, body_size if endpoint.v1_class == "write" else 0)
            limit_headers = verdict.headers()
            if not verdict.allowed:
                return error_response(ApiError(429, f"Data Stores v1 allows {verdict.what} per universe; retry "
                                                    f"later", v1_code="TooManyRequests", headers=limit_headers),
                                      shape)
        try:
            response = await endpoint.handler(self, request)
        except ApiError as error:
            response = error_response(error, shape)
        except Exception as exc:
            error = from_exception(exc)
            if error is None:
                log.exception("Open Cloud endpoint %s %s failed", endpoint.method, endpoint.path)
                error = ApiError(500, f"internal error: {type(exc).__name__}")
            response = error_response(error, shape)
        if endpoint.v1_class is not None:
            if endpoint.v1_class != "write":
                self.limits.count_read(len(response.body))
            response.headers.update(limit_headers)
        return response


# ------------------------------------------------------------------------------------------- reading a request

def flag(request: Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter: "true"/"false" in any case (the sync client sends Python's "True"/"False")."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise ApiError(400, f"query parameter {name} must be true or false, got {raw[:40]!r}")


def page_size(request: Request, names: tuple[str, ...], default: int, maximum: int) -> int:
    """A page size from the first of `names` present: 1..maximum (Roblox clamps a larger one to the maximum), 0 or
    absent = `default`."""
    for name in names:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            continue
        try:
            n = int(raw)
        except ValueError:
            raise ApiError(400, f"query parameter {name} must be an integer, got {raw[:40]!r}") from None
        if n < 0:
            raise ApiError(400, f"query parameter {name} must be >= 0, got {n}")
        return min(n, maximum) if n else default
    return default


_STARTS_WITH = re.compile(r'^\s*id\.startsWith\("((?:[^"\\]|\\.)*)"\)\s*$')


def starts_with_filter(request: Request) -> str:
    """The prefix of v2's listing `filter=id.startsWith("prefix")` ("" when there is none)."""
    raw = request.query_params.get("filter")
    if not raw:
        return ""
    match = _STARTS_WITH.match(raw)
    if match is None:
        raise ApiError(400, f'filter must be id.startsWith("prefix"), got {raw[:60]!r}')
    return match.group(1).replace('\\"', '"')


def query_int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name} must be an integer, got {raw[:40]!r}") from None


def required(request: Request, name: str) -> str:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        raise ApiError(400, f"query parameter {name} is required")
    return raw


async def read_body(request: Request) -> bytes:
    """The request's body, refused with 400 past `MAX_BODY_BYTES` (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(400, f"request body is {declared} bytes; at most {MAX_BODY_BYTES} are accepted",
                       v1_code="ContentTooBig")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(400, f"request body is over {MAX_BODY_BYTES} bytes", v1_code="ContentTooBig")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(data: bytes, what: str = "request body") -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}", v1_code="ContentNotJson") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def json_body(request: Request, *, empty: Any = None) -> Any:
    """The body parsed as JSON (NaN and Infinity refused); an empty body is `empty`."""
    data = await read_body(request)
    if not data.strip():
        if empty is None:
            raise ApiError(400, "a JSON request body is required")
        return empty
    return parse_json(data)


async def json_object(request: Request) -> dict:
    body = await json_body(request, empty={})
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def rfc3339(ms: int) -> str:
    """Simulated milliseconds as Roblox writes times: "2026-01-02T03:04:05.678Z"."""
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")


def parse_time(text: str, what: str) -> int:
    """An RFC 3339 time (a zone-less one is UTC, as the client's `isoformat` of a naive time) in milliseconds.
    An offset followed by "Z" ("...+00:00Z", what rblx-open-cloud's get_version writes for a time with no
    microseconds) is read as that offset: a user of the client would expect it to work."""
    text = text.strip()
    if re.search(r"[+-]\d{2}:\d{2}Z$", text):
        text = text[:-1]
    if not _TIME.match(text):
        raise ApiError(400, f"{what} must be an RFC 3339 time such as 2026-01-02T03:04:05Z, got {text[:40]!r}")
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"{what} {text[:40]!r} is not a valid time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return round(t.timestamp() * 1000)


def user_ids_from_names(users: Any) -> list[int]:
    """v2's `users: ["users/123", ...]` (plain ids accepted too) as ints."""
    if users is None:
        return []
    if not isinstance(users, list):
        raise ApiError(400, f"users must be a list of \"users/ID\", got {type(users).__name__}",
                       v1_code="InvalidUserIds")
    out = []
    for u in users:
        text = str(u)
        digits = text[len("users/"):] if text.startswith("users/") else text
        if isinstance(u, bool) or not re.fullmatch(r"-?\d{1,19}", digits):
            raise ApiError(400, f"users holds {u!r}: expected \"users/ID\"", v1_code="InvalidUserIds")
        out.append(int(digits))
    return out
