"""MemoryStore over Open Cloud v2 (`cloud/v2/universes/{universe}/memory-store/...`): sorted-map items (list with
orderBy, filter and pageToken; create; get; PATCH with allowMissing; delete with etag) and queue items, in both
shapes clients use: rblx-open-cloud's and openblox's `items:add`, `items:read` (answer `{data, id}`) and
`items:discard?readId=`, and Roblox's reference `items`, `items:read` with `invisibilityWindow` (answer `{readId,
items}`) and `items:discard` with `{readId}` in the body. A read answers with both sets of fields.

Where the world's client tells less than Roblox's answer holds: an item's `etag` is a digest of its value and sort
key (it changes exactly when they do, as a version would), and the `expireTime` of an item read (not written) is
the latest it can be, now + the longest TTL (3,888,000 s), since the client does not say an item's expiry. Deleting
with an etag compares it with the item's current one first: a writer in between can still win (Roblox's check is
atomic).

`memory-store:flush` (the world's `flush_memory_store`: every hash map, sorted map and queue emptied) is done when
it answers, so its Operation is `done` at once. The operation's id carries what was flushed (when, structures,
items, bytes; lodestore's `metadata`, not Roblox's), so that `GET memory-store/operations/{id}` answers from the id
alone and the app keeps no state. Only the live memory store is emulated: `scope` may be absent or LIVE.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lodestore.storage import MS_MAX_EXPIRATION_S, canonical
from lodestore.storage.memorystore import MemoryStoreFlushed
from lodestore.storage.opencloud._errors import ApiError, Shape, json_response
from lodestore.storage.opencloud._routes import Endpoints, flag, json_object, page_size, query_int, rfc3339

__all__ = ["ENDPOINTS"]

ENDPOINTS = Endpoints()
_MAP = "/cloud/v2/universes/{universe}/memory-store/sorted-maps/{map}/items"
_QUEUE = "/cloud/v2/universes/{universe}/memory-store/queues/{queue}"
_OPERATIONS = "/cloud/v2/universes/{universe}/memory-store/operations"
_READ, _WRITE, _FLUSH = "memorystore.read", "memorystore.write", "memorystore.flush"
LIST_DEFAULT, LIST_MAX = 1, 100
QUEUE_READ_DEFAULT_INVISIBILITY_S = 30


def _field(body: dict, name: str, default: Any = None) -> Any:
    """A body field in any case: the client writes `Value`, `Ttl`, `Id`; Roblox's reference `value`, `ttl`, `id`."""
    lowered = {k.lower(): v for k, v in body.items()}
    return lowered.get(name.lower(), default)


def _seconds(raw: Any, what: str) -> float:
    """A duration as Roblox writes it ("30s"), or a plain number of seconds."""
    if isinstance(raw, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)s\s*", raw)
        if match:
            return float(match.group(1))
    elif not isinstance(raw, bool) and isinstance(raw, (int, float)) and raw >= 0:
        return float(raw)
    raise ApiError(400, f"{what} must be a duration such as \"30s\", got {raw!r:.40}")


# ------------------------------------------------------------------------------------------------ sorted maps

def _etag(value: Any, sort_key: Any) -> str:
    return hashlib.sha256(canonical([value, sort_key])).hexdigest()[:20]


def _item(oc, request: Request, key: str, value: Any, sort_key: Any, ttl_s: float | None = None) -> dict:
    expires = oc.now() + round(1000 * (MS_MAX_EXPIRATION_S if ttl_s is None else ttl_s))
    item = {"path": f"universes/{oc.universe_id}/memory-store/sorted-maps/{request.path_params['map']}/items/{key}",
            "id": key, "value": value, "etag": _etag(value, sort_key), "expireTime": rfc3339(expires)}
    if isinstance(sort_key, str):
        item["stringSortKey"] = sort_key
    elif sort_key is not None:
        item["numericSortKey"] = sort_key
    return item


def _sort_key(body: dict) -> Any:
    numeric, string = _field(body, "numericSortKey"), _field(body, "stringSortKey")
    if numeric is not None and string is not None:
        raise ApiError(400, "an item has a numericSortKey or a stringSortKey, not both")
    if numeric is not None and (isinstance(numeric, bool) or not isinstance(numeric, (int, float))):
        raise ApiError(400, f"numericSortKey must be a number, got {numeric!r:.40}")
    if string is not None and not isinstance(string, str):
        raise ApiError(400, f"stringSortKey must be a string, got {string!r:.40}")
    return numeric if numeric is not None else string


def _written(body: dict) -> tuple[Any, float, Any]:
    if _field(body, "value", _MISSING) is _MISSING:
        raise ApiError(400, "the request body needs a value")
    return _field(body, "value"), _seconds(_field(body, "ttl"), "ttl"), _sort_key(body)


_MISSING = object()
_FILTER_PART = re.compile(r'(id|sortKey)\s*(<|>)\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)')


def _bounds(raw: str | None) -> tuple[tuple | None, tuple | None]:
    """`id > "a" && sortKey < 5` as the exclusive (sort_key, key) bounds of `SortedMap.get_range`."""
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (raw or "").split("&&"))):
        match = _FILTER_PART.fullmatch(part)
        if match is None:
            raise ApiError(400, f'filter must join id > "a", id < "b", sortKey > 1, sortKey < 9 with &&, got '
                                f'{raw[:80]!r}')
        name, op, literal = match.groups()
        value = json.loads(literal)
        if name == "id" and not isinstance(value, str):
            value = str(value)
        (low if op == ">" else high)[name] = value
    as_bound = (lambda b: (b.get("sortKey"), b.get("id")) if b else None)
    return as_bound(low), as_bound(high)


def _token(item: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps([item[2], item[0]]).encode()).decode("ascii")


def _from_token(token: str) -> tuple:
    try:
        sort_key, key = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        if not isinstance(key, str):
            raise ValueError(key)
        return (sort_key, key)
    except Exception:
        raise ApiError(400, f"pageToken {token[:40]!r} is not one this listing returned") from None


@ENDPOINTS.add("GET", _MAP, shape=Shape.V2, permission=_READ)
async def list_items(oc, request: Request) -> Response:
    order = (request.query_params.get("orderBy") or "").strip().lower()
    if order not in ("", "asc", "desc", "id asc", "id desc"):
        raise ApiError(400, f"orderBy must be 'asc' or 'desc', got {order[:40]!r}")
    descending = order.endswith("desc")
    low, high = _bounds(request.query_params.get("filter"))
    token = request.query_params.get("pageToken")
    if token:
        if descending:
            high = _from_token(token)
        else:
            low = _from_token(token)
    count = page_size(request, ("maxPageSize",), LIST_DEFAULT, LIST_MAX)
    found = await oc.sorted_map(request.path_params["map"]).get_range(
        "Descending" if descending else "Ascending", count + 1, low, high)
    page = found[:count]
    return json_response({"items": [_item(oc, request, k, v, s) for k, v, s in page],
                          "nextPageToken": _token(page[-1]) if len(found) > count else ""})


@ENDPOINTS.add("POST", _MAP, shape=Shape.V2, permission=_WRITE)
async def create_item(oc, request: Request) -> Response:
    body = await json_object(request)
    key = request.query_params.get("id") or _field(body, "id")
    if not isinstance(key, str) or not key:
        raise ApiError(400, "the item's id is required (?id= or the body's id)")
    value, ttl, sort_key = _written(body)
    existed: list[bool] = []

    def only_if_missing(old: Any, old_sort_key: Any) -> Any:
        existed[:] = [old is not None]
        return None if old is not None else (value, sort_key)

    await oc.sorted_map(request.path_params["map"]).update(key, only_if_missing, ttl)
    if existed and existed[0]:
        raise ApiError(409, f"item {key!r} already exists", code="ALREADY_EXISTS", extra={"error": "ALREADY_EXISTS"})
    return json_response(_item(oc, request, key, value, sort_key, ttl))


@ENDPOINTS.add("GET", _MAP + "/{item}", shape=Shape.V2, permission=_READ)
async def get_item(oc, request: Request) -> Response:
    key = request.path_params["item"]
    value, sort_key = await oc.sorted_map(request.path_params["map"]).get(key)
    if value is None:
        raise ApiError(404, f"item {key!r} not found")
    return json_response(_item(oc, request, key, value, sort_key))


@ENDPOINTS.add("PATCH", _MAP + "/{item}", shape=Shape.V2, permission=_WRITE)
async def update_item(oc, request: Request) -> Response:
    key = request.path_params["item"]
    value, ttl, sort_key = _written(await json_object(request))
    sorted_map = oc.sorted_map(request.path_params["map"])
    if flag(request, "allowMissing"):
        await sorted_map.set(key, value, ttl, sort_key)
        return json_response(_item(oc, request, key, value, sort_key, ttl))
    missing: list[bool] = []

    def only_if_present(old: Any, old_sort_key: Any) -> Any:
        missing[:] = [old is None]
        return None if old is None else (value, sort_key)

    await sorted_map.update(key, only_if_present, ttl)
    if missing and missing[0]:
        raise ApiError(404, f"item {key!r} not found (allowMissing is false)")
    return json_response(_item(oc, request, key, value, sort_key, ttl))


@ENDPOINTS.add("DELETE", _MAP + "/{item}", shape=Shape.V2, permission=_WRITE)
async def delete_item(oc, request: Request) -> Response:
    key, etag = request.path_params["item"], request.query_params.get("etag")
    sorted_map = oc.sorted_map(request.path_params["map"])
    if etag:
        value, sort_key = await sorted_map.get(key)
        if value is not None and _etag(value, sort_key) != etag:
            raise ApiError(409, f"item {key!r} has changed: its etag is not {etag!r}")
    await sorted_map.remove(key)
    return json_response({})


# ----------------------------------------------------------------------------------------------------- queues

def _queue_item(oc, request: Request, value: Any, priority: float, ttl_s: float | None = None) -> dict:
    expires = oc.now() + round(1000 * (MS_MAX_EXPIRATION_S if ttl_s is None else ttl_s))
    return {"path": f"universes/{oc.universe_id}/memory-store/queues/{request.path_params['queue']}/items",
            "data": value, "priority": priority, "expireTime": rfc3339(expires)}


async def add_item(oc, request: Request) -> Response:
    body = await json_object(request)
    if _field(body, "data", _MISSING) is _MISSING:
        raise ApiError(400, "the request body needs data")
    value, ttl = _field(body, "data"), _seconds(_field(body, "ttl", "30s"), "ttl")
    priority = _field(body, "priority", 0) or 0
    if isinstance(priority, bool) or not isinstance(priority, (int, float)):
        raise ApiError(400, f"priority must be a number, got {priority!r:.40}")
    await oc.queue(request.path_params["queue"], QUEUE_READ_DEFAULT_INVISIBILITY_S).add(value, ttl, priority)
    return json_response(_queue_item(oc, request, value, priority, ttl))


@ENDPOINTS.add("GET", _QUEUE + "/items:read", shape=Shape.V2, permission=_WRITE)
async def read_items(oc, request: Request) -> Response:
    count = query_int(request, "count", 1)
    all_or_nothing = flag(request, "allOrNothing")
    window = request.query_params.get("invisibilityWindow")
    seconds = (_seconds(window, "invisibilityWindow") if window else
               float(query_int(request, "invisibilityTimeoutSeconds", QUEUE_READ_DEFAULT_INVISIBILITY_S)))
    values, read_id = await oc.queue(request.path_params["queue"], seconds).read(count, all_or_nothing)
    if all_or_nothing and not values:
        raise ApiError(404, f"the queue holds fewer than {count} visible items (allOrNothing)")
    return json_response({"data": list(values), "id": read_id, "readId": read_id,
                          "items": [{"data": v} for v in values]})


async def discard_items(oc, request: Request) -> Response:
    body = await json_object(request)
    read_id = request.query_params.get("readId") or _field(body, "readId")
    if not isinstance(read_id, str) or not read_id:
        raise ApiError(400, "readId is required (?readId= or the body's readId)")
    await oc.queue(request.path_params["queue"], QUEUE_READ_DEFAULT_INVISIBILITY_S).remove(read_id)
    return json_response({})


for _path in (_QUEUE + "/items:add", _QUEUE + "/items"):
    ENDPOINTS.add("POST", _path, shape=Shape.V2, permission=_WRITE)(add_item)
ENDPOINTS.add("POST", _QUEUE + "/items:discard", shape=Shape.V2, permission=_WRITE)(discard_items)


# ------------------------------------------------------------------------------------------------------ flush

def _operation_id(at_ms: int, flushed: MemoryStoreFlushed) -> str:
    raw = json.dumps([at_ms, flushed.structures, flushed.items, flushed.bytes], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode("ascii").rstrip("=")


def _operation(oc, operation_id: str) -> dict:
    """The Operation `operation_id` names, or 404 when it is not an id a flush answered."""
    try:
        padded = operation_id + "=" * (-len(operation_id) % 4)
        at_ms, structures, items, nbytes = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in (at_ms, structures, items, nbytes)):
            raise ValueError(operation_id)
    except Exception:
        raise ApiError(404, f"no memory-store operation {operation_id[:40]!r}") from None
    return {"path": f"universes/{oc.universe_id}/memory-store/operations/{operation_id}", "done": True,
            "response": {}, "metadata": {"flushTime": rfc3339(at_ms), "structures": structures, "items": items,
                                         "bytes": nbytes}}


@ENDPOINTS.add("POST", "/cloud/v2/universes/{universe}/memory-store:flush", shape=Shape.V2, permission=_FLUSH)
async def flush(oc, request: Request) -> Response:
    scope = request.query_params.get("scope") or "LIVE"
    if scope != "LIVE":
        raise ApiError(400, f"scope must be LIVE (lodestore emulates the live memory store only), got {scope[:40]!r}")
    at_ms = oc.now()
    flushed = await oc.world.aio.flush_memory_store()
    return json_response(_operation(oc, _operation_id(at_ms, flushed)))


@ENDPOINTS.add("GET", _OPERATIONS + "/{operation}", shape=Shape.V2, permission=_FLUSH)
async def get_operation(oc, request: Request) -> Response:
    return json_response(_operation(oc, request.path_params["operation"]))
