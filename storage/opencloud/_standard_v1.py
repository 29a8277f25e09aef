"""Data Stores v1 (`datastores/v1/universes/{universe}/standard-datastores/...`): list entries, get, set (with
content-md5, user ids and attributes headers, exclusiveCreate, matchVersion), delete, increment, list versions and
get a version, answered in v1's error shape and counted against v1's per-universe limits.

An entry's value travels as the raw JSON body; its KeyInfo as the `roblox-entry-*` headers. A failed matchVersion or
exclusiveCreate answers 412 with the current value as the body and its headers (what rblx-open-cloud reads).
(List data stores, `standard-datastores` itself, comes with the data stores' lifecycle.)
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lodestore.storage import KeyInfo
from lodestore.storage.opencloud._entries import Refused, increment_entry, write_entry
from lodestore.storage.opencloud._errors import ApiError, Shape, json_response
from lodestore.storage.opencloud._routes import (Endpoints, flag, page_size, parse_json, parse_time, read_body,
                                                 required, rfc3339)

__all__ = ["ENDPOINTS"]

ENDPOINTS = Endpoints()
_BASE = "/datastores/v1/universes/{universe}/standard-datastores/datastore/entries"
_READ, _WRITE = "datastores.read", "datastores.write"
LIST_DEFAULT = 50
LIST_MAX = 1024


def _store(oc, request: Request):
    name, scope = required(request, "datastoreName"), request.query_params.get("scope") or "global"
    return oc.data_store(name, scope, v1=True), required(request, "entryKey")


def _headers(info: KeyInfo) -> dict[str, str]:
    return {"roblox-entry-version": info.version, "roblox-entry-created-time": rfc3339(info.created_time),
            "roblox-entry-version-created-time": rfc3339(info.updated_time),
            "roblox-entry-userids": json.dumps(list(info.user_ids)),
            "roblox-entry-attributes": json.dumps(dict(info.metadata), ensure_ascii=False)}


def _value_response(value: Any, info: KeyInfo, status: int = 200) -> Response:
    response = json_response(value, status, _headers(info))
    response.headers["content-md5"] = base64.b64encode(hashlib.md5(response.body).digest()).decode("ascii")
    return response


def _user_ids(request: Request) -> list[int] | None:
    """roblox-entry-userids: a JSON list (Roblox's examples and the clients) or comma-separated ids."""
    raw = request.headers.get("roblox-entry-userids")
    if raw is None or not raw.strip():
        return None
    try:
        ids = json.loads(raw) if raw.lstrip().startswith("[") else [int(p) for p in raw.split(",") if p.strip()]
    except ValueError:
        raise ApiError(400, f"roblox-entry-userids must be a JSON list of user ids, got {raw[:60]!r}",
                       v1_code="InvalidUserIds") from None
    if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise ApiError(400, f"roblox-entry-userids must be a JSON list of user ids, got {raw[:60]!r}",
                       v1_code="InvalidUserIds")
    return ids


def _attributes(request: Request) -> dict | None:
    raw = request.headers.get("roblox-entry-attributes")
    if raw is None or not raw.strip():
        return None
    attributes = parse_json(raw.encode("utf-8"), "roblox-entry-attributes")
    if not isinstance(attributes, dict):
        raise ApiError(400, "roblox-entry-attributes must be a JSON object", v1_code="InvalidAttributes")
    return attributes


@ENDPOINTS.add("GET", _BASE, shape=Shape.V1, permission=_READ, v1_class="list")
async def list_entries(oc, request: Request) -> Response:
    name = required(request, "datastoreName")
    all_scopes = flag(request, "allScopes")
    store = oc.data_store(name, None if all_scopes else request.query_params.get("scope") or "global", v1=True)
    page = await store.list_keys(request.query_params.get("prefix", ""),
                                 page_size(request, ("limit",), LIST_DEFAULT, LIST_MAX),
                                 request.query_params.get("cursor") or None)
    scope = request.query_params.get("scope") or "global"
    keys = [dict(zip(("scope", "key"), k.split("/", 1))) if all_scopes else {"scope": scope, "key": k}
            for k in page.items]
    return json_response({"keys": keys, "nextPageCursor": page.cursor or ""})


@ENDPOINTS.add("GET", _BASE + "/entry", shape=Shape.V1, permission=_READ, v1_class="read")
async def get_entry(oc, request: Request) -> Response:
    store, key = _store(oc, request)
    value, info = await store.get(key, use_cache=False)
    if info is None:
        raise ApiError(404, f"Entry {key!r} not found in the datastore.", v1_code="EntryNotFound")
    return _value_response(value, info)


@ENDPOINTS.add("POST", _BASE + "/entry", shape=Shape.V1, permission=_WRITE, v1_class="write")
async def set_entry(oc, request: Request) -> Response:
    store, key = _store(oc, request)
    body = await read_body(request)
    md5 = request.headers.get("content-md5")
    if md5 is not None and md5.strip() != base64.b64encode(hashlib.md5(body).digest()).decode("ascii"):
        raise ApiError(400, "content-md5 does not match the body", v1_code="ChecksumMismatch")
    value = parse_json(body)
    exclusive, match = flag(request, "exclusiveCreate"), request.query_params.get("matchVersion") or None
    if exclusive and match:
        raise ApiError(400, "exclusiveCreate and matchVersion cannot both be set",
                       v1_code="ExclusiveCreateAndMatchVersionCannotBeSet")
    users, attributes = _user_ids(request) or [], _attributes(request) or {}
    try:
        _, info = await write_entry(store, key, value, users, attributes, exclusive_create=exclusive,
                                    match_version=match)
    except Refused as refused:
        message = ("A value already exists for this key." if refused.reason == "exists"
                   else f"The current version is not {match!r}.")
        if refused.info is None:
            raise ApiError(412, message, v1_code="PreconditionFailed") from None
        return _value_response(refused.value, refused.info, 412)
    return json_response({"version": info.version, "deleted": False, "contentLength": len(body),
                          "createdTime": rfc3339(info.updated_time), "objectCreatedTime": rfc3339(info.created_time)})


@ENDPOINTS.add("DELETE", _BASE + "/entry", shape=Shape.V1, permission=_WRITE, v1_class="write")
async def delete_entry(oc, request: Request) -> Response:
    store, key = _store(oc, request)
    await store.remove(key)
    return Response(status_code=204)


@ENDPOINTS.add("POST", _BASE + "/entry/increment", shape=Shape.V1, permission=_WRITE, v1_class="write")
async def increment(oc, request: Request) -> Response:
    store, key = _store(oc, request)
    raw = required(request, "incrementBy")
    try:
        amount = int(raw)
    except ValueError:
        raise ApiError(400, f"incrementBy must be an integer, got {raw[:40]!r}", v1_code="InvalidArgument") from None
    value, info = await increment_entry(store, key, amount, _user_ids(request), _attributes(request))
    return _value_response(value, info)


@ENDPOINTS.add("GET", _BASE + "/entry/versions", shape=Shape.V1, permission=_READ, v1_class="list")
async def list_versions(oc, request: Request) -> Response:
    store, key = _store(oc, request)
    start, end = request.query_params.get("startTime"), request.query_params.get("endTime")
    order = request.query_params.get("sortOrder") or "Ascending"
    if order not in ("Ascending", "Descending"):
        raise ApiError(400, f"sortOrder must be Ascending or Descending, got {order[:40]!r}",
                       v1_code="InvalidSortOrder")
    page = await store.list_versions(key, order, parse_time(start, "startTime") if start else None,
                                     parse_time(end, "endTime") if end else None,
                                     page_size(request, ("limit",), LIST_DEFAULT, LIST_MAX),
                                     request.query_params.get("cursor") or None)
    versions = [{"version": v.version, "deleted": v.is_deleted, "createdTime": rfc3339(v.created_time)}
                for v in page.items]
    return json_response({"versions": versions, "nextPageCursor": page.cursor or ""})


@ENDPOINTS.add("GET", _BASE + "/entry/versions/version", shape=Shape.V1, permission=_READ, v1_class="read")
async def get_version(oc, request: Request) -> Response:
    store, key = _store(oc, request)
    version = required(request, "versionId")
    value, info = await store.get_version(key, version)
    if info is None:
        raise ApiError(404, f"version {version!r} of entry {key!r} not found", v1_code="VersionNotFound")
    return _value_response(value, info)

