"""Data Stores v2 entries (`cloud/v2/universes/{universe}/data-stores/{data_store}/[scopes/{scope}/]entries`): list
(`-` = every scope), create (`?id=`, 400 when it exists), get (`@revision`, `@latest`, `@latest:<RFC 3339>`), update
(PATCH, allowMissing), delete (404 when missing), `:increment` and `:listRevisions`, in v2's error shape.

v2 requests are not limited here: they spend the experience budget Open Cloud shares with game servers, in the
world (a spent budget is a DataStoreError with `retry_after_ms`, answered 429). Without a `scopes/{scope}` segment
an entry is in the default scope, "global". (Data stores themselves: list, delete, undelete and snapshot come with
their lifecycle.)
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lodestore.storage.opencloud._entries import Refused, increment_entry, revision_json, write_entry
from lodestore.storage.opencloud._errors import ApiError, Shape, json_response
from lodestore.storage.opencloud._routes import (Endpoints, flag, json_object, page_size, parse_time, required,
                                                 rfc3339, segment, starts_with_filter, user_ids_from_names)

__all__ = ["ENDPOINTS"]

ENDPOINTS = Endpoints()
_STORE = "/cloud/v2/universes/{universe}/data-stores/{data_store}"
_READ, _WRITE = "datastores.read", "datastores.write"
LIST_DEFAULT, LIST_MAX = 10, 256
REVISIONS_DEFAULT, REVISIONS_MAX = 10, 100
ALL_SCOPES = "-"
LATEST_AT_FUTURE_MS = 10 * 60 * 1000
"""How far ahead of now `@latest:<time>` may look (Roblox: 10 minutes)."""


def _scope(request: Request, *, listing: bool = False) -> str | None:
    scope = request.path_params.get("scope", "global")
    if scope == ALL_SCOPES:
        if not listing:
            raise ApiError(400, "scope '-' (every scope) is only for listing entries")
        return None
    return scope


def _path(oc, request: Request, scope: str, key: str) -> str:
    return (f"universes/{oc.universe_id}/data-stores/{segment(request.path_params['data_store'])}/scopes/"
            f"{segment(scope)}/entries/{segment(key)}")


def _entry_json(oc, request: Request, scope: str, key: str, value: Any, info) -> dict:
    return {**revision_json(_path(oc, request, scope, key), key, info), "value": value}


def _users_attributes(body: dict) -> tuple[list[int], dict]:
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise ApiError(400, f"attributes must be a JSON object, got {type(attributes).__name__}")
    return user_ids_from_names(body.get("users")), attributes


def _value(body: dict) -> Any:
    if "value" not in body:
        raise ApiError(400, "the request body needs a value")
    return body["value"]


async def _list(oc, request: Request) -> Response:
    scope = _scope(request, listing=True)
    store = oc.data_store(request.path_params["data_store"], scope)
    prefix = starts_with_filter(request)
    if scope is None and prefix and "/" not in prefix:
        raise ApiError(400, "listing every scope filters on \"scope/prefix\"")
    page = await store.list_keys(prefix, page_size(request, ("maxPageSize",), LIST_DEFAULT, LIST_MAX),
                                 request.query_params.get("pageToken") or None,
                                 not flag(request, "showDeleted"))
    entries = []
    for listed in page.items:
        entry_scope, key = listed.split("/", 1) if scope is None else (scope, listed)
        entries.append({"path": _path(oc, request, entry_scope, key), "id": key})
    return json_response({"dataStoreEntries": entries, "nextPageToken": page.cursor or ""})


async def _create(oc, request: Request) -> Response:
    scope = _scope(request)
    key = required(request, "id")
    body = await json_object(request)
    users, attributes = _users_attributes(body)
    store = oc.data_store(request.path_params["data_store"], scope)
    try:
        value, info = await write_entry(store, key, _value(body), users, attributes, exclusive_create=True)
    except Refused:
        raise ApiError(400, f"Entry {key!r} already exists.") from None
    return json_response(_entry_json(oc, request, scope, key, value, info))


async def _get(oc, request: Request) -> Response:
    scope, entry = _scope(request), request.path_params["entry"]
    if entry.endswith(":listRevisions"):
        return await _list_revisions(oc, request, scope, entry[:-len(":listRevisions")])
    key, _, revision = entry.rpartition("@") if "@" in entry else (entry, "", "latest")
    store = oc.data_store(request.path_params["data_store"], scope)
    if revision == "latest":
        value, info = await store.get(key, use_cache=False)
    elif revision.startswith("latest:"):
        at = parse_time(revision[len("latest:"):], "the time of @latest:")
        if at > oc.now() + LATEST_AT_FUTURE_MS:
            raise ApiError(400, f"@latest:{revision[7:]} is more than 10 minutes in the future")
        value, info = await store.get_version_at_time(key, at)
    else:
        value, info = await store.get_version(key, revision)
        if info is None:
            raise ApiError(400, "Invalid version id.")   # what Roblox answers (and rblx-open-cloud reads)
    if info is None:
        raise ApiError(404, f"entry {key!r} not found")
    return json_response(_entry_json(oc, request, scope, key, value, info))


async def _list_revisions(oc, request: Request, scope: str, key: str) -> Response:
    store = oc.data_store(request.path_params["data_store"], scope)
    after = before = None
    raw = request.query_params.get("filter") or ""
    for part in filter(None, (p.strip() for p in raw.split("&&"))):
        match = re.fullmatch(r"revision_create_time\s*(>=|<=)\s*(\S+)", part)
        if match is None:
            raise ApiError(400, f"filter must be revision_create_time >= T && revision_create_time <= T, "
                                f"got {raw[:80]!r}")
        at = parse_time(match.group(2), "revision_create_time")
        after, before = (at, before) if match.group(1) == ">=" else (after, at)
    cursor = request.query_params.get("pageToken") or request.query_params.get("nextPageToken") or None
    page = await store.list_versions(key, "Ascending", after, before,
                                     page_size(request, ("maxPageSize",), REVISIONS_DEFAULT, REVISIONS_MAX), cursor)
    revisions = [{"path": _path(oc, request, scope, f"{key}@{v.version}"), "id": f"{key}@{v.version}",
                  "revisionId": v.version, "revisionCreateTime": rfc3339(v.created_time), "etag": v.version,
                  "state": "DELETED" if v.is_deleted else "ACTIVE"} for v in page.items]
    return json_response({"dataStoreEntries": revisions, "nextPageToken": page.cursor or ""})


async def _update(oc, request: Request) -> Response:
    scope, key = _scope(request), request.path_params["entry"]
    body = await json_object(request)
    users, attributes = _users_attributes(body)   # absent: cleared, as Roblox's PATCH does
    store = oc.data_store(request.path_params["data_store"], scope)
    try:
        value, info = await write_entry(store, key, _value(body), users, attributes,
                                        must_exist=not flag(request, "allowMissing"))
    except Refused:
        raise ApiError(404, f"entry {key!r} not found (allowMissing is false)") from None
    return json_response(_entry_json(oc, request, scope, key, value, info))


async def _delete(oc, request: Request) -> Response:
    scope, key = _scope(request), request.path_params["entry"]
    _, info = await oc.data_store(request.path_params["data_store"], scope).remove(key)
    if info is None:
        raise ApiError(404, f"entry {key!r} not found")
    return json_response({})


async def _increment(oc, request: Request) -> Response:
    scope, entry = _scope(request), request.path_params["entry"]
    if not entry.endswith(":increment"):
        raise ApiError(404, f"no POST method on entry {entry!r} (POST is for :increment)")
    key = entry[:-len(":increment")]
    body = await json_object(request)
    if "amount" not in body:
        raise ApiError(400, "the request body needs an amount")
    users, attributes = _users_attributes(body)
    store = oc.data_store(request.path_params["data_store"], scope)
    value, info = await increment_entry(store, key, body["amount"], users, attributes)
    return json_response(_entry_json(oc, request, scope, key, value, info))


for _base in (_STORE + "/scopes/{scope}/entries", _STORE + "/entries"):
    ENDPOINTS.add("GET", _base, shape=Shape.V2, permission=_READ)(_list)
    ENDPOINTS.add("POST", _base, shape=Shape.V2, permission=_WRITE)(_create)
    ENDPOINTS.add("GET", _base + "/{entry}", shape=Shape.V2, permission=_READ)(_get)
    ENDPOINTS.add("PATCH", _base + "/{entry}", shape=Shape.V2, permission=_WRITE)(_update)
    ENDPOINTS.add("DELETE", _base + "/{entry}", shape=Shape.V2, permission=_WRITE)(_delete)
    ENDPOINTS.add("POST", _base + "/{entry}", shape=Shape.V2, permission=_WRITE)(_increment)
