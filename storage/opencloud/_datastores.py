"""Data stores themselves over Open Cloud v2 (`cloud/v2/universes/{universe}/data-stores`): list (maxPageSize,
pageToken, showDeleted, filter `id.startsWith("prefix")`), delete and `:undelete` (answering the data store), and
`data-stores:snapshot`, in v2's error shape; and v1's list (`datastores/v1/universes/{universe}/standard-datastores`:
prefix, limit, cursor -> `{datastores: [{name, createdTime}], nextPageCursor}`, v1's shape and list limit; 32 a page
by default, ListDataStoresAsync's, as v1's entry listing takes ListKeysAsync's). All behind `datastores.manage`.

Each calls the world: the list is the Open Cloud client's `list_data_stores` (one StandardList request of the
experience budget shared with game servers; only stores that hold something), delete, undelete and snapshot are the
world's operator calls (`World.aio.delete_data_store` ...), which spend no budget. What a deleted store's entries
answer is `_errors`' mapping of `DatastoreDeleted` (404 NOT_FOUND).

A data store as Roblox's v2 resource: `path`, `id` (its name), `createTime`, `state` (ACTIVE or DELETED) and, for a
deleted one, `expireTime` (when it is purged: deletion + 30 days).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from lodestore.storage import MAX_LIST_PAGE, DataStoreInfo, DataStoreState
from lodestore.storage.opencloud._errors import ApiError, Shape, json_response
from lodestore.storage.opencloud._routes import (Endpoints, flag, json_object, page_size, rfc3339, segment,
                                                 starts_with_filter)

__all__ = ["ENDPOINTS", "data_store_json"]

ENDPOINTS = Endpoints()
_STORES = "/cloud/v2/universes/{universe}/data-stores"
_MANAGE = "datastores.manage"
LIST_DEFAULT, LIST_MAX = 10, 100
"""List Data Stores' page: 10 by default, at most 100 (a larger maxPageSize is taken as 100, as Roblox does)."""
V1_LIST_DEFAULT, V1_LIST_MAX = 32, MAX_LIST_PAGE


def data_store_json(universe_id: int, info: DataStoreInfo) -> dict:
    """`info` as Roblox's DataStore resource."""
    out = {"path": f"universes/{universe_id}/data-stores/{segment(info.name)}", "id": info.name,
           "createTime": rfc3339(info.created_time), "state": DataStoreState(info.state).value}
    if info.expire_time is not None:
        out["expireTime"] = rfc3339(info.expire_time)
    return out


@ENDPOINTS.add("GET", _STORES, shape=Shape.V2, permission=_MANAGE)
async def list_data_stores(oc, request: Request) -> Response:
    prefix = starts_with_filter(request)
    page = await oc.server.datastores.aio.list_data_stores(
        prefix, page_size(request, ("maxPageSize",), LIST_DEFAULT, LIST_MAX),
        request.query_params.get("pageToken") or None, show_deleted=flag(request, "showDeleted"))
    return json_response({"dataStores": [data_store_json(oc.universe_id, info) for info in page.items],
                          "nextPageToken": page.cursor or ""})


@ENDPOINTS.add("GET", "/datastores/v1/universes/{universe}/standard-datastores", shape=Shape.V1, permission=_MANAGE,
               v1_class="list")
async def list_data_stores_v1(oc, request: Request) -> Response:
    page = await oc.v1.datastores.aio.list_data_stores(   # v1's client: out of the experience budget
        request.query_params.get("prefix", ""), page_size(request, ("limit",), V1_LIST_DEFAULT, V1_LIST_MAX),
        request.query_params.get("cursor") or None)
    return json_response({"datastores": [{"name": info.name, "createdTime": rfc3339(info.created_time)}
                                         for info in page.items], "nextPageCursor": page.cursor or ""})


@ENDPOINTS.add("DELETE", _STORES + "/{data_store}", shape=Shape.V2, permission=_MANAGE)
async def delete_data_store(oc, request: Request) -> Response:
    info = await oc.world.aio.delete_data_store(request.path_params["data_store"])
    return json_response(data_store_json(oc.universe_id, info))


@ENDPOINTS.add("POST", _STORES + "/{data_store}:undelete", shape=Shape.V2, permission=_MANAGE)
async def undelete_data_store(oc, request: Request) -> Response:
    info = await oc.world.aio.undelete_data_store(request.path_params["data_store"])
    return json_response(data_store_json(oc.universe_id, info))


@ENDPOINTS.add("POST", _STORES + ":snapshot", shape=Shape.V2, permission=_MANAGE)
async def snapshot_data_stores(oc, request: Request) -> Response:
    body = await json_object(request)   # Roblox's request body is {} (no field is defined)
    if body:
        raise ApiError(400, f"data-stores:snapshot takes an empty body, got the field(s) {', '.join(body)}")
    result = await oc.world.aio.snapshot_data_stores()
    return json_response({"newSnapshotTaken": result.new_snapshot_taken,
                          "latestSnapshotTime": rfc3339(result.latest_snapshot_time)})
