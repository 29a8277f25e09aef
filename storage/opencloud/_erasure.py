"""Right to erasure over HTTP: lodestore's own endpoints, not Roblox's. Roblox erases a user's data when an erasure
request reaches it (through its own systems, with the deletion templates set in Data Stores Manager or the Configs
API's `user_data_templates`), and Open Cloud has no public endpoint for either; a tool that runs against lodestore
gets these instead, in v2's shape and error shape, behind `datastores.manage`:

- `POST cloud/v2/universes/{universe}/user-data:erase` with `{"userId": 42}` erases the user (`World.erase_user`:
  every key the templates name, every version and backup, and lodestore's own records of them) and answers the
  ErasureReport: `{userId, removed: [key...], remaining: [key...], complete}`, each key `{dataStore, scope, key,
  versions, reason}`; `complete` is true when the check after it found nothing left.
- `GET cloud/v2/universes/{universe}/user-data:check?userId=42` answers what an erasure would find now
  (`World.check_erased`): `{userId, remaining, complete}`. Reads only.
- `GET` / `PUT cloud/v2/universes/{universe}/user-data-templates` read and replace the deletion templates:
  `{"userDataTemplates": [{"dataStore": "players", "scope": "global", "key": "user_{UserId}"}, ...]}` (scope
  default "global", key default "{UserId}"); PUT answers the templates as stored. A bad list is 400 naming the
  problem and changes nothing.

A user id is a JSON integer (a string of digits is taken too: how Google-style APIs write an int64).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from lodestore.storage import DeletionTemplate, ErasedKey
from lodestore.storage.opencloud._errors import ApiError, Shape, json_response
from lodestore.storage.opencloud._routes import Endpoints, json_object, required

__all__ = ["ENDPOINTS"]

ENDPOINTS = Endpoints()
_USER_DATA = "/cloud/v2/universes/{universe}/user-data"
_TEMPLATES = "/cloud/v2/universes/{universe}/user-data-templates"
_MANAGE = "datastores.manage"
_TEMPLATE_FIELDS = {"dataStore": "store", "scope": "scope", "key": "key"}


def _user_id(raw: Any) -> int:
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    raise ApiError(400, f"userId must be a Roblox user id (an integer), got {raw!r:.40}")


def _key_json(key: ErasedKey) -> dict:
    return {"dataStore": key.store, "scope": key.scope, "key": key.key, "versions": key.versions,
            "reason": key.reason}


@ENDPOINTS.add("POST", _USER_DATA + ":erase", shape=Shape.V2, permission=_MANAGE)
async def erase_user(oc, request: Request) -> Response:
    body = await json_object(request)
    if "userId" not in body:
        raise ApiError(400, "the request body needs a userId")
    report = await oc.world.aio.erase_user(_user_id(body["userId"]))
    return json_response({"userId": report.user_id, "removed": [_key_json(k) for k in report.removed],
                          "remaining": [_key_json(k) for k in report.remaining], "complete": report.complete})


@ENDPOINTS.add("GET", _USER_DATA + ":check", shape=Shape.V2, permission=_MANAGE)
async def check_erased(oc, request: Request) -> Response:
    user_id = _user_id(required(request, "userId"))
    left = await oc.world.aio.check_erased(user_id)
    return json_response({"userId": user_id, "remaining": [_key_json(k) for k in left], "complete": not left})


def _templates_json(templates: tuple[DeletionTemplate, ...]) -> dict:
    return {"userDataTemplates": [{"dataStore": t.store, "scope": t.scope, "key": t.key} for t in templates]}


def _template(i: int, given: Any) -> DeletionTemplate:
    if not isinstance(given, dict):
        raise ApiError(400, f"userDataTemplates[{i}] must be an object {{dataStore, scope, key}}, got {given!r:.60}")
    unknown = sorted(set(given) - set(_TEMPLATE_FIELDS))
    if unknown:
        raise ApiError(400, f"userDataTemplates[{i}] has unknown field(s) {', '.join(unknown)}; a template has "
                            f"{', '.join(_TEMPLATE_FIELDS)}")
    if "dataStore" not in given:
        raise ApiError(400, f"userDataTemplates[{i}] needs a dataStore")
    return DeletionTemplate(**{_TEMPLATE_FIELDS[name]: value for name, value in given.items()})


@ENDPOINTS.add("GET", _TEMPLATES, shape=Shape.V2, permission=_MANAGE)
async def get_templates(oc, request: Request) -> Response:
    return json_response(_templates_json(await oc.world.aio.deletion_templates()))


@ENDPOINTS.add("PUT", _TEMPLATES, shape=Shape.V2, permission=_MANAGE)
async def set_templates(oc, request: Request) -> Response:
    body = await json_object(request)
    given = body.get("userDataTemplates")
    if not isinstance(given, list):
        raise ApiError(400, f"the body needs userDataTemplates, a list of {{dataStore, scope, key}}, got "
                            f"{given!r:.60}")
    await oc.world.aio.set_deletion_templates([_template(i, t) for i, t in enumerate(given)])
    return json_response(_templates_json(await oc.world.aio.deletion_templates()))
