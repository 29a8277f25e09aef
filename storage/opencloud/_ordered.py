"""Ordered data stores: v1 (`ordered-data-stores/v1/universes/{universe}/orderedDataStores/...`, the paths
rblx-open-cloud calls, `{code, message}` errors, v1's per-universe limits) and v2 (`cloud/v2/universes/{universe}/
ordered-data-stores/...`, camelCase parameters, v2 errors, the experience budget): list in value order with a value
filter, create (`?id=`), get, update (PATCH, allow missing), increment (`:increment`) and delete.

One set of endpoint bodies serves both; `_Flavour` holds what differs (parameter names, the path written in an
entry, whether deleting a missing entry is 404: v2 says so, v1 deletes idempotently).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lodestore.storage.opencloud._entries import is_int
from lodestore.storage.opencloud._errors import ApiError, Shape, json_response
from lodestore.storage.opencloud._routes import Endpoints, flag, json_object, page_size, required

__all__ = ["ENDPOINTS"]

ENDPOINTS = Endpoints()
_READ, _WRITE = "datastores.read", "datastores.write"
LIST_DEFAULT, LIST_MAX = 10, 100


@dataclass(frozen=True, slots=True)
class _Flavour:
    base: str             # route template of the entries collection
    path: str             # the entry path written in answers, with {universe} {store} {scope} {key}
    shape: Shape
    page_size: str
    page_token: str
    order_by: str
    allow_missing: str
    missing_delete_404: bool
    v1: bool


V1 = _Flavour("/ordered-data-stores/v1/universes/{universe}/orderedDataStores/{store}/scopes/{scope}/entries",
              "universes/{universe}/orderedDataStores/{store}/scopes/{scope}/entries/{key}", Shape.ORDERED_V1,
              "max_page_size", "page_token", "order_by", "allow_missing", False, True)
V2 = _Flavour("/cloud/v2/universes/{universe}/ordered-data-stores/{store}/scopes/{scope}/entries",
              "universes/{universe}/ordered-data-stores/{store}/scopes/{scope}/entries/{key}", Shape.V2,
              "maxPageSize", "pageToken", "orderBy", "allowMissing", True, False)


def _store(oc, request: Request):
    return oc.ordered_data_store(request.path_params["store"], request.path_params["scope"])


def _entry(flavour: _Flavour, oc, request: Request, key: str, value: int) -> dict:
    path = flavour.path.format(universe=oc.universe_id, store=request.path_params["store"],
                               scope=request.path_params["scope"], key=key)
    return {"path": path, "id": key, "value": value}


def _int(value: Any, what: str) -> int:
    """An ordered entry's integer: a JSON integer, or one written as a string (Roblox's int64 in JSON)."""
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
        value = int(value)
    if not is_int(value):
        raise ApiError(400, f"{what} must be an integer, got {value!r:.60}")
    return value


_BOUND = re.compile(r"entry\s*(>=|<=)\s*(-?\d{1,19})")


def _filter(raw: str | None) -> tuple[int | None, int | None]:
    low = high = None
    for part in filter(None, (p.strip() for p in (raw or "").split("&&"))):
        match = _BOUND.fullmatch(part)
        if match is None:
            raise ApiError(400, f"filter must be 'entry >= A && entry <= B', got {raw[:80]!r}")
        if match.group(1) == ">=":
            low = int(match.group(2))
        else:
            high = int(match.group(2))
    return low, high


def _descending(flavour: _Flavour, raw: str | None) -> bool:
    order = (raw or "").strip().lower()
    if order in ("", "asc", "value", "value asc"):
        return False
    if order in ("desc", "value desc"):
        return True
    raise ApiError(400, f"{flavour.order_by} must be 'value' or 'value desc', got {raw[:40]!r}")


def _endpoints(flavour: _Flavour) -> None:
    async def list_entries(oc, request: Request) -> Response:
        low, high = _filter(request.query_params.get("filter"))
        page = await _store(oc, request).get_sorted(
            not _descending(flavour, request.query_params.get(flavour.order_by)),
            page_size(request, (flavour.page_size,), LIST_DEFAULT, LIST_MAX), low, high,
            request.query_params.get(flavour.page_token) or None)
        return json_response({"entries": [_entry(flavour, oc, request, k, v) for k, v in page.items],
                              "nextPageToken": page.cursor or ""})

    async def create(oc, request: Request) -> Response:
        key = required(request, "id")
        value = _int((await json_object(request)).get("value"), "value")
        existed: list[int] = []

        def only_if_missing(old: int | None) -> int | None:
            existed[:] = [] if old is None else [old]
            return value if old is None else None

        await _store(oc, request).update(key, only_if_missing)
        if existed:
            raise ApiError(400, "Entry already exists.")
        return json_response(_entry(flavour, oc, request, key, value))

    async def get(oc, request: Request) -> Response:
        key = request.path_params["entry"]
        value = await _store(oc, request).get(key)
        if value is None:
            raise ApiError(404, f"entry {key!r} not found")
        return json_response(_entry(flavour, oc, request, key, value))

    async def update(oc, request: Request) -> Response:
        key = request.path_params["entry"]
        value = _int((await json_object(request)).get("value"), "value")
        store = _store(oc, request)
        if flag(request, flavour.allow_missing):
            await store.set(key, value)
            return json_response(_entry(flavour, oc, request, key, value))
        missing: list[bool] = []

        def only_if_present(old: int | None) -> int | None:
            missing[:] = [old is None]
            return None if old is None else value

        await store.update(key, only_if_present)
        if missing and missing[0]:
            raise ApiError(404, f"entry {key!r} not found ({flavour.allow_missing} is false)")
        return json_response(_entry(flavour, oc, request, key, value))

    async def increment(oc, request: Request) -> Response:
        entry = request.path_params["entry"]
        if not entry.endswith(":increment"):
            raise ApiError(404, f"no POST method on entry {entry!r} (POST is for :increment)")
        key = entry[:-len(":increment")]
        amount = _int((await json_object(request)).get("amount"), "amount")
        value = await _store(oc, request).increment(key, amount)
        return json_response(_entry(flavour, oc, request, key, value))

    async def delete(oc, request: Request) -> Response:
        key = request.path_params["entry"]
        old = await _store(oc, request).remove(key)
        if old is None and flavour.missing_delete_404:
            raise ApiError(404, f"entry {key!r} not found")
        return Response(status_code=204) if flavour.v1 else json_response({})

    read = {"v1_class": "read"} if flavour.v1 else {}
    listing = {"v1_class": "list"} if flavour.v1 else {}
    write = {"v1_class": "write"} if flavour.v1 else {}
    add = ENDPOINTS.add
    add("GET", flavour.base, shape=flavour.shape, permission=_READ, **listing)(list_entries)
    add("POST", flavour.base, shape=flavour.shape, permission=_WRITE, **write)(create)
    add("GET", flavour.base + "/{entry}", shape=flavour.shape, permission=_READ, **read)(get)
    add("PATCH", flavour.base + "/{entry}", shape=flavour.shape, permission=_WRITE, **write)(update)
    add("POST", flavour.base + "/{entry}", shape=flavour.shape, permission=_WRITE, **write)(increment)
    add("DELETE", flavour.base + "/{entry}", shape=flavour.shape, permission=_WRITE, **write)(delete)


_endpoints(V1)
_endpoints(V2)
