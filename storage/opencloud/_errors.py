"""Roblox's Open Cloud error answers: the four body shapes, the status codes, and lodestore's typed errors mapped to
them.

Owns `ApiError` (what an endpoint raises to answer with an error), `Shape` (which of Roblox's bodies a route family
answers with) and `error_response` / `from_exception` (a lodestore error -> status, code and retry-after). It never
decides whether a request is allowed (that is `_access`) and never calls the world.

Roblox's shapes (reference/opencloud.md): v2 `{code, message, details}`; Data Stores v1 standard `{error, message,
errorDetails: [{errorDetailType: "DatastoreErrorInfo", datastoreErrorCode}]}`; ordered v1 `{code, message}`; the
gateway (keys, unknown paths) `{errors: [{code: 0, message}]}`.
"""

from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any

from starlette.responses import Response

from lodestore.storage import ConfigError, DataStoreError, MemoryStoreError, MessagingServiceError, TransformError
from lodestore.storage.messaging import PUBLISH_THROTTLED

__all__ = ["Shape", "ApiError", "error_response", "from_exception", "json_response", "STATUS_CODES"]


class Shape(str, Enum):
    """Which of Roblox's error bodies a route answers with."""

    V2 = "v2"
    V1 = "v1"
    ORDERED_V1 = "ordered-v1"
    GATEWAY = "gateway"


STATUS_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ABORTED", 412: "FAILED_PRECONDITION", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE"}
"""Roblox's v2 error code of each HTTP status (reference/opencloud.md, "Errors")."""

# Data Stores v1's datastoreErrorCode per status, where no more precise one is known (Roblox's v1 reference).
_V1_DEFAULTS = {400: "InvalidArgument", 401: "Unauthorized", 403: "InsufficientScope", 404: "EntryNotFound",
                412: "PreconditionFailed", 429: "TooManyRequests", 500: "Unknown", 503: "Unknown"}

# lodestore's DataStoreError codes -> (HTTP status, Data Stores v1 datastoreErrorCode). A deleted data store's
# entries (404 `DatastoreDeleted`, `storage.DATASTORE_DELETED`) answer 404 NOT_FOUND (v1: DatastoreNotFound): Roblox
# says only that such requests fail, its v2 errors have no "gone" status (400, 403, 404, 409, 429, 499, 500, 501,
# 503), and to a client the store's entries are not there until it is undeleted; the message names DatastoreDeleted.
_DATASTORE_CODES = {0: (400, "InvalidDataStoreName"), 101: (400, "InvalidEntryKey"), 102: (400, "InvalidEntryKey"),
                    103: (400, "ContentNotJson"), 104: (400, "ContentNotJson"), 105: (400, "ContentTooBig"),
                    106: (400, "InvalidArgument"), 107: (400, "InvalidArgument"), 400: (400, "InvalidArgument"),
                    403: (403, "Forbidden"), 404: (404, "DatastoreNotFound"), 511: (400, "InvalidAttributes"),
                    512: (400, "InvalidUserIds"), 513: (400, "InvalidUserIds")}

# MemoryStoreError names -> HTTP status (Roblox answers a spent quota with 429 RESOURCE_EXHAUSTED)
_MEMORYSTORE_STATUS = {"InvalidRequest": 400, "ItemValueSizeTooLarge": 400, "InvalidExpirationTime": 400,
                       "NoItemFound": 404, "UpdateConflict": 409, "DataUpdateConflict": 409}


class ApiError(Exception):
    """An error answer: `status`, Roblox's `code` (default: the status's v2 code), a `message` naming what was wrong,
    and for Data Stores v1 its `datastoreErrorCode` (`v1_code`). `headers` go on the answer (retry-after)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, v1_code: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "UNKNOWN")
        self.message = message
        self.v1_code = v1_code or _V1_DEFAULTS.get(status, "Unknown")
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer (compact, UTF-8), as Roblox's: `application/json` is what clients look for before parsing."""
    return Response(json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False), status,
                    headers=headers, media_type="application/json")


def error_response(error: ApiError, shape: Shape) -> Response:
    """`error` as the body of `shape`."""
    if shape is Shape.V1:
        body = {"error": error.code, "message": error.message,
                "errorDetails": [{"errorDetailType": "DatastoreErrorInfo", "datastoreErrorCode": error.v1_code}]}
    elif shape is Shape.ORDERED_V1:
        body = {"code": error.code, "message": error.message}
    elif shape is Shape.GATEWAY:
        body = {"errors": [{"code": 0, "message": error.message}]}
    else:
        body = {"code": error.code, "message": error.message, "details": []}
    body.update(error.extra)
    return json_response(body, error.status, error.headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds)))}


def from_exception(exc: BaseException) -> ApiError | None:
    """The answer to a lodestore error an endpoint let through, or None when it is not one (a bug: 500).

    - `DataStoreError`: a throttle (301-306, 429, a name ending in "Throttle"/"Throttled", or any error carrying
      `retry_after_ms`: the experience budget Open Cloud shares with game servers) -> 429 + retry-after (the
      error's own wait, else 1 s); argument errors -> 400; 403/404 as they are (a deleted data store's
      `DatastoreDeleted` is a 404); 5xx -> 500 or 503.
    - `MemoryStoreError`: bad arguments -> 400, NoItemFound -> 404, conflicts -> 409, spent quotas and request
      limits (everything "...OverLimit", "RequestThrottled") -> 429, else 500.
    - `MessagingServiceError`: PublishThrottled -> 429, the rest (a bad topic or message, MessageTooLarge) -> 400.
    - `ConfigError` (a bad name or argument the world refused) -> 400; `TransformError` -> 500.
    """
    if isinstance(exc, DataStoreError):
        wait_ms = getattr(exc, "retry_after_ms", None)
        if (wait_ms is not None or exc.code == 429 or 301 <= exc.code <= 306
                or exc.name.endswith(("Throttle", "Throttled"))):
            seconds = wait_ms / 1000 if isinstance(wait_ms, (int, float)) and wait_ms > 0 else 1
            return ApiError(429, f"{exc.name}: {exc.message}", v1_code="TooManyRequests",
                            headers=_retry_after(seconds))
        status, v1_code = _DATASTORE_CODES.get(exc.code, (None, None))
        if status is None:
            status = 503 if exc.code == 503 else 500 if exc.code >= 500 else 400
        return ApiError(status, f"{exc.name}: {exc.message}", v1_code=v1_code)
    if isinstance(exc, MemoryStoreError):
        status = _MEMORYSTORE_STATUS.get(exc.name)
        if status is None:
            status = 429 if exc.name.endswith(("OverLimit", "Throttled", "QuotaExceeded")) else 500
        return ApiError(status, f"{exc.name}: {exc.message}", headers=_retry_after(1) if status == 429 else None)
    if isinstance(exc, MessagingServiceError):
        if exc.name == PUBLISH_THROTTLED:
            return ApiError(429, f"{exc.name}: {exc.message}", headers=_retry_after(1))
        return ApiError(400, f"{exc.name}: {exc.message}")
    if isinstance(exc, ConfigError):
        return ApiError(400, str(exc))
    if isinstance(exc, TransformError):
        return ApiError(500, exc.message)
    return None
